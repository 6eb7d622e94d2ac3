"""A defect generated in a square window of a full-size image and pasted back: the one inpainting path of
``generate --normals`` (``synthesis.fullsize``, which also chooses where the defect goes) and of
``MaskGenerator.inpaint`` (where the caller's mask says where it goes).

The window (``window_around``, or ``centred_window``) is a square of the generator's resolution R around the
defect (larger when the defect is, then resized to R for generation and back); the defect is generated inside
the mask grown by ``DILATE_PX`` (the inpainting region) and pasted back through that region only (``paste``),
so every other pixel of the image keeps its exact value. Grey images stay grey.

These functions sit in the generator layer (below synthesis) so that the Python API's ``inpaint`` and the
``generate`` command share them instead of keeping copies.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomalign.data.transforms import grey_u8, is_grey, resize_images, to_model_range

# Defaults of ``generate --dilate / --feather``: the mask grown by 3 px is regenerated (room for the defect's
# rim), and the generated pixels are blended in over its inner 2 px.
DILATE_PX, FEATHER_PX = 3, 2


def dilate(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow masks [B, 1, H, W] by ``pixels`` (square structuring element)."""
    if pixels <= 0:
        return masks
    return torch.nn.functional.max_pool2d(masks, 2 * pixels + 1, stride=1, padding=pixels)


def window_around(y: int, x: int, h: int, w: int, size: int, H: int, W: int, rng: random.Random
                  ) -> tuple[int, int, int]:
    """(top, left, side) of a square window inside the image [H, W] that contains the box (y, x, h, w):
    side ``size`` (less if the image is smaller, more if the box is larger), the box at a random place in it."""
    side = max(min(size, H, W), h, w)
    if side > min(H, W):
        raise ValueError(f"a {h}x{w} defect does not fit a square window inside a {H}x{W} image")
    top = rng.randint(max(0, y + h - side), min(y, H - side))
    left = rng.randint(max(0, x + w - side), min(x, W - side))
    return top, left, side


def centred_window(y: int, x: int, h: int, w: int, size: int, H: int, W: int) -> tuple[int, int, int]:
    """(top, left, side): ``window_around``'s window (same side) with the box at its centre, moved inside the
    image where the centre would leave it (deterministic: the window a caller's mask gets)."""
    side = max(min(size, H, W), h, w)
    if side > min(H, W):
        raise ValueError(f"a {h}x{w} defect does not fit a square window inside a {H}x{W} image")
    top = min(max(0, y + h // 2 - side // 2), H - side)
    left = min(max(0, x + w // 2 - side // 2), W - side)
    return top, left, side


def paste(full: np.ndarray, window: np.ndarray, alpha: np.ndarray, top: int, left: int) -> np.ndarray:
    """Copy of uint8 ``full`` [H, W, C] with ``window`` [s, s, C] blended in at (top, left) by alpha [s, s] in
    [0, 1]: pixels where alpha is 0 keep their exact value."""
    out = full.copy()
    s = window.shape[0]
    region = out[top:top + s, left:left + s].astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    blended = np.rint(a * window.astype(np.float32) + (1 - a) * region).astype(np.uint8)
    keep = alpha <= 0
    blended[keep] = out[top:top + s, left:left + s][keep]
    out[top:top + s, left:left + s] = blended
    return out


def window_tensors(image: np.ndarray, top: int, left: int, side: int, mask: np.ndarray, size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation inputs of a window at the generator's resolution R = ``size``: the image's window
    [3, R, R] in [-1, 1] and the defect mask in it [1, R, R] in {0, 1}.

    ``image``: uint8 [H, W, 3]; the window is ``image[top:top + side, left:left + side]``; ``mask``: float or
    bool [side, side], the defect inside the window. A window larger than R is resized to R (antialiased
    bilinear for the image, nearest-exact for the mask, so the two stay aligned)."""
    window = image[top:top + side, left:left + side]
    x, m = to_model_range(window), torch.from_numpy(np.asarray(mask, np.float32))[None]
    if side != size:
        x = resize_images(x[None], size)[0]
        m = F.interpolate(m[None], size=(size, size), mode="nearest-exact")[0]
    return x.clamp(-1, 1), m


def paste_window(image: np.ndarray, window_u8: np.ndarray, region: torch.Tensor, top: int, left: int,
                 side: int) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` [H, W, 3] with the generated window [R, R, 3] pasted at (top, left) through the
    inpainting region [1, R, R] only (resized to ``side`` when R differs: bicubic for the image, nearest-exact for
    the region), so every pixel outside the region keeps its value. A grey image (equal channels) gets the
    window's channel mean: grey data stays grey."""
    if window_u8.shape[0] != side:
        window_u8 = np.asarray(Image.fromarray(window_u8).resize((side, side), Image.BICUBIC))
    alpha = region if region.shape[-1] == side else F.interpolate(region[None], size=(side, side),
                                                                  mode="nearest-exact")[0]
    if is_grey(image):  # the generated pixels lose the colour the codec may add
        window_u8 = np.repeat(grey_u8(window_u8)[..., None], 3, axis=2)
    return paste(image, window_u8, alpha[0].numpy(), top, left)
