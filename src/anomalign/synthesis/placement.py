"""Where a synthetic defect goes in a full-size normal image, and how it is pasted back.

``generate --normals`` works at the image's own resolution: it takes a defect-free image, a training mask
(with the usual augmentation) cut to its bounding box, chooses a location, generates the defect in a
window around it with the inpainting sampler, and pastes the window back through the dilated mask only,
so every other pixel of the normal image is kept exactly.

Foreground (object categories such as MVTec bottle or screw, where a defect must sit on the object): given
as masks (``--foreground DIR``, same stems as the normal images), or estimated: the background colour is the
median of the image's border pixels, the foreground is every pixel farther than ``tolerance`` from it
(max over channels, 0-255), closed and hole-filled — but only for an image that clearly is an object on a
plain background (``estimate_foreground``'s three tests). Everything else is a texture (carpet, tile, wood,
magnetic tile, asphalt), and for a texture the whole image is foreground.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

# moved to the generator layer, which MaskGenerator.inpaint shares with generate --normals; kept importable here
from anomalign.generator.window import paste, window_around  # noqa: F401


def estimate_foreground(image: np.ndarray, tolerance: float = 30.0, texture_share: float = 0.85,
                        ignore: np.ndarray | None = None, plain_border: float = 0.97, min_object: float = 0.05,
                        contrast: float = 2.0) -> np.ndarray:
    """bool [H, W] foreground of uint8 image [H, W, 3] (see module docstring). ``ignore``: bool [H, W] pixels
    that count as background colour (an anomalous host's own defect, which would otherwise pass for the object).

    The image counts as an object on a background only when all of these hold; otherwise it is a texture and
    the whole image is foreground: at least ``plain_border`` of the border pixels are within ``tolerance`` of
    the border's median colour (a plain background all round), the pixels farther than that cover between
    ``min_object`` and ``texture_share`` of the image, and their median distance from the background colour
    is at least ``contrast`` x ``tolerance``. A lighting gradient or a grainy surface (magnetic tile, road
    asphalt, the built-in textures) fails these: its "foreground" is the bright part of a continuous texture,
    just past the tolerance, and a defect placed only there would be placed by lighting."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    background = np.median(border, axis=0)
    everything = np.ones(image.shape[:2], dtype=bool)
    if (np.abs(border - background).max(axis=1) <= tolerance).mean() < plain_border:
        return everything
    distance = np.abs(image.astype(np.float32) - background).max(axis=2)
    fg = distance > tolerance
    if ignore is not None:
        fg &= ~ignore
    if not fg.any() or fg.mean() < min_object or np.median(distance[fg]) < contrast * tolerance:
        return everything
    t = torch.from_numpy(fg).float()[None, None]
    k = max(3, (min(image.shape[:2]) // 50) | 1)  # close small gaps (odd kernel, ~2 % of the image)
    t = -F.max_pool2d(-F.max_pool2d(t, k, 1, k // 2), k, 1, k // 2)
    fg = fill_holes(t[0, 0].numpy() > 0.5)
    if fg.mean() >= texture_share or not fg.any():
        return np.ones(image.shape[:2], dtype=bool)
    return fg


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] with enclosed background regions filled (background not reachable from the border)."""
    outside = np.zeros(mask.shape, dtype=bool)
    h, w = mask.shape
    stack = [(y, x) for y in range(h) for x in (0, w - 1) if not mask[y, x]]
    stack += [(y, x) for x in range(w) for y in (0, h - 1) if not mask[y, x]]
    while stack:
        y, x = stack.pop()
        if outside[y, x] or mask[y, x]:
            continue
        outside[y, x] = True
        stack += [(ny, nx) for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                  if 0 <= ny < h and 0 <= nx < w and not outside[ny, nx] and not mask[ny, nx]]
    return ~outside


def place(defect: np.ndarray, foreground: np.ndarray, rng: random.Random, tries: int = 200
          ) -> tuple[int, int] | None:
    """Top-left (y, x) where bool [h, w] ``defect`` lies entirely on ``foreground`` [H, W]; None if no try fits.

    Positions are drawn uniformly among those that keep the defect inside the image; the first that puts
    every defect pixel on the foreground wins (deterministic for a given ``rng``)."""
    h, w = defect.shape
    H, W = foreground.shape
    if h > H or w > W:
        return None
    for _ in range(tries):
        y, x = rng.randint(0, H - h), rng.randint(0, W - w)
        if foreground[y:y + h, x:x + w][defect].all():
            return y, x
    return None
