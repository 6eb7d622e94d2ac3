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

Either way the estimate leaves out the image's **frame** (``frame_mask``): flat near-black or flat plain-coloured
regions connected to the image border (an endoscope's black frame, a vignette's black corners, the plain
background around an object that fills most of the picture), decided from the pixels alone, so a defect lands
only on the imaged surface.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F


def estimate_foreground(image: np.ndarray, tolerance: float = 30.0, texture_share: float = 0.85,
                        ignore: np.ndarray | None = None, plain_border: float = 0.97, min_object: float = 0.05,
                        contrast: float = 2.0) -> np.ndarray:
    """bool [H, W] foreground of uint8 image [H, W, 3] (see module docstring). ``ignore``: bool [H, W] pixels
    that count as background colour (an anomalous host's own defect, which would otherwise pass for the object).

    The image counts as an object on a background only when all of these hold; otherwise it is a texture and
    the whole image is foreground, less its frame (``frame_mask``, also taken out of an object's foreground): at
    least ``plain_border`` of the border pixels are within ``tolerance`` of the border's median colour (a plain
    background all round), the pixels farther than that cover between ``min_object`` and ``texture_share`` of
    the image, and their median distance from the background colour is at least ``contrast`` x ``tolerance``.
    A lighting gradient or a grainy surface (magnetic tile, road asphalt, the built-in textures) fails these:
    its "foreground" is the bright part of a continuous texture, just past the tolerance, and a defect placed
    only there would be placed by lighting."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    background = np.median(border, axis=0)
    everything = ~frame_mask(image)  # a texture's foreground: all but a frame
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
        return everything
    return fg & everything


def frame_mask(image: np.ndarray, dark: float = 40.0, flat: float = 10.0, tolerance: float = 30.0,
               min_share: float = 0.005, max_share: float = 0.7, contrast: float = 60.0, work: int = 256,
               support: float = 0.25) -> np.ndarray:
    """bool [H, W]: the frame of uint8 image [H, W, 3] — what is not the imaged surface; all False when there is
    none. Decided from the pixels (never from a dataset's name), on a copy area-averaged to at most ``work`` px
    on its longer side (JPEG noise averages out; 1-MP hosts stay cheap):

    1. a pixel is *flat* when the range of every channel over its 5 x 5 neighbourhood is at most ``flat``;
    2. a *frame candidate* is a flat pixel that is near-black (every channel at most ``dark``) or within
       ``tolerance`` of the border's plain colour — the median colour of the flat border pixels, used only when
       at least ``support`` of the border pixels are flat and that close to it (a plain background);
    3. the frame is every candidate connected (4-neighbour) to the image border through candidates, closed with
       a kernel k of ~1/30 of the shorter side;
    4. it counts only when it covers ``min_share``–``max_share`` of the image and the rest lies a median of at
       least ``contrast`` grey levels (max over channels) from the frame's colour: a dark or smooth stretch of a
       texture that reaches the border (magnetic tile's dark grain, a uniform patch) is still surface;
    5. surface islands with no place ``2k + 1`` px wide (letters printed on the frame, specks) join the frame,
       and so do frame-coloured pixels (within ``tolerance`` of its median colour) connected to it within 2 px
       of it (the flatness test's blind band along its edge, and at full resolution the reduced pixels that
       straddle that edge), and, once there is a frame, every frame-coloured pixel within 3 px (of the reduced
       copy; at full resolution its scale + 2 px) of the picture's edge (slivers too thin for the 5 x 5 test).
       Not handled: letters that touch the surface stay attached to it, as surface.

    Tested: a black endoscope-style frame is found whole and no placed defect pixel lands on it; textures without
    a frame (the built-in materials, noise) get none. Measured on the shared sets: every polyp-dev image has one
    (6-60 % of the image: the black frame, and dark unlit corners connected to it), CrackForest none, magnetic
    tile 247 of 1 344 images (the dark background strips beside the tile, at most 21 %)."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    scale = max(1, math.ceil(max(h, w) / work))
    sh, sw = math.ceil(h / scale), math.ceil(w / scale)
    small = F.interpolate(x, size=(sh, sw), mode="area") if scale > 1 else x
    is_flat = (_dilate(small, 5) + _dilate(-small, 5)).amax(1, keepdim=True) <= flat
    border = torch.zeros(1, 1, sh, sw, dtype=torch.bool)
    border[..., 0, :] = border[..., -1, :] = border[..., :, 0] = border[..., :, -1] = True
    candidate = is_flat & (small.amax(1, keepdim=True) <= dark)
    plain = small[0].permute(1, 2, 0)[(border & is_flat)[0, 0]]
    if len(plain):
        near = (small - plain.median(0).values[None, :, None, None]).abs().amax(1, keepdim=True) <= tolerance
        if (near & is_flat & border).sum() >= support * border.sum():
            candidate |= is_flat & near
    frame = _reconstruct(border & candidate, candidate)
    none = np.zeros((h, w), dtype=bool)
    if not frame.any():
        return none
    k = max(3, (min(sh, sw) // 30) | 1)
    frame = -_dilate(-_dilate(frame.float(), k), k) > 0.5  # closing (max_pool's -inf pad never erodes the border)
    share = float(frame.float().mean())
    if not min_share <= share <= max_share:
        return none
    colours = small[0].permute(1, 2, 0)
    colour = colours[frame[0, 0]].median(0).values
    if float((colours[~frame[0, 0]] - colour).abs().amax(1).median()) < contrast:
        return none
    # islands of surface too thin to hold a disc of 2k px (letters, specks inside the frame) join the frame:
    # opening by reconstruction keeps every surface region that is thick somewhere, whole
    surface = ~frame
    outside = F.pad((~surface).float(), (k, k, k, k), value=1.0)  # beyond the picture is not surface here
    core = F.max_pool2d(outside, 2 * k + 1, 1) < 0.5
    frame = ~_reconstruct(core, surface) if core.any() else frame
    # the flatness test misses the frame's last 2 px along the surface, and slivers thinner than its 5 x 5 window
    # along the picture's edge (a circle nearly touching the side): frame-coloured pixels there join it
    like = (small - colour[None, :, None, None]).abs().amax(1, keepdim=True) <= tolerance
    edge = torch.zeros_like(border)
    edge[..., :3, :] = edge[..., -3:, :] = edge[..., :, :3] = edge[..., :, -3:] = True
    frame |= _reconstruct(frame, like & ((_dilate(frame.float(), 5) > 0.5) | edge))
    full = torch.from_numpy(frame[0, 0].numpy().repeat(scale, 0).repeat(scale, 1)[:h, :w].copy())[None, None]
    # at full resolution, frame-coloured pixels join it where a reduced pixel straddles its edge (a mixed pixel is
    # no colour of either) and along the picture's edge, where a sliver thinner than a reduced pixel vanished
    like = (x - colour[None, :, None, None]).abs().amax(1, keepdim=True) <= tolerance
    edge = torch.zeros_like(full)
    b = scale + 2
    edge[..., :b, :] = edge[..., -b:, :] = edge[..., :, :b] = edge[..., :, -b:] = True
    full |= ((_dilate(full.float(), 2 * scale + 1) > 0.5) | edge) & like
    return full[0, 0].numpy()


def _dilate(t: torch.Tensor, k: int) -> torch.Tensor:
    """[B, C, H, W] max over a k x k neighbourhood (k odd; the same size out)."""
    return F.max_pool2d(t, k, 1, k // 2) if k > 1 else t


def _reconstruct(seed: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """bool [1, 1, H, W]: the pixels of ``allowed`` connected (4-neighbour) to ``seed`` through ``allowed`` —
    geodesic dilation until it stops growing (no scipy here: torch only, fast enough at <= 256 px)."""
    cross = torch.tensor([[0., 1, 0], [1, 1, 1], [0, 1, 0]])[None, None]
    a, cur = allowed.float(), (seed & allowed).float()
    while True:
        nxt = cur
        for _ in range(16):  # test for the fixed point every 16 steps: the test costs as much as a step
            nxt = (F.conv2d(nxt, cross, padding=1) > 0).float() * a
        if torch.equal(nxt, cur):
            return cur > 0.5
        cur = nxt


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
