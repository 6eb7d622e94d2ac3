"""A defect generated in a square window of a full-size image and pasted back: the one inpainting path of
``generate --normals`` (``synthesis.fullsize``, which also chooses where the defect goes) and of
``MaskGenerator.inpaint`` (where the caller's mask says where it goes).

The window (``window_around``, or ``centred_window``) is a square of the generator's resolution R around the
defect (larger when the defect is, then resized to R for generation and back); the defect is generated inside
the mask grown by ``DILATE_PX`` (the inpainting region) and pasted back through that region only (``paste``),
so every other pixel of the image keeps its exact value. Grey images stay grey.

Seamless placement (``margin`` > 0, the default of ``generate``; docs/synthesis.md "Seamless placement"): the
window covers R / ``scale`` native pixels (the scale the generator was fine-tuned at), widened when the defect
plus its context would not fit (``window_side``); the region is soft (``seamless_masks``): 1 on the mask grown
by ``DILATE_PX``, ramping linearly to 0 across a context band of ``margin`` x the defect's longer side, and 0 on
the window's border ring (``BORDER_PX``) wherever the window does not lie on the image's edge. The same soft
mask weights the latent known-region blending and the pixel paste, so the surroundings adapt gradually and the
window's own border cannot show; the written label stays the original mask. ``margin`` 0 is the old region.

These functions sit in the generator layer (below synthesis) so that the Python API's ``inpaint`` and the
``generate`` command share them instead of keeping copies.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomalign.data.transforms import grey_u8, is_grey, resize_images, to_model_range

# Defaults of ``generate --dilate / --feather``: the mask grown by 3 px is regenerated (room for the defect's
# rim), and the generated pixels are blended in over its inner 2 px.
DILATE_PX, FEATHER_PX = 3, 2
# Default of ``generate --margin``: the context band around the defect (beyond DILATE_PX) across which the
# generated window is blended into the host, as a fraction of the defect's longer side (at least FEATHER_PX).
# A quarter: a 51-px defect (the plan's median object at R = 128) gets a 13-px band each side, and the whole
# region (51 + 2 x (3 + 13)) still leaves the window's border ring untouched.
MARGIN = 0.25
# Window pixels along the window's border that always keep the host's values (where the window is not on the
# image's edge): the generated pixels never reach the window's square outline.
BORDER_PX = 2


def dilate(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow masks [B, 1, H, W] by ``pixels`` (square structuring element)."""
    if pixels <= 0:
        return masks
    return torch.nn.functional.max_pool2d(masks, 2 * pixels + 1, stride=1, padding=pixels)


def band_px(extent: float, margin: float, feather_px: int = FEATHER_PX) -> int:
    """Width in window pixels of the context band around a defect whose longer side is ``extent`` window px:
    ``margin`` x extent, at least ``feather_px`` (0 when ``margin`` is 0: the old region)."""
    return 0 if margin <= 0 else max(feather_px, round(margin * extent))


def window_side(h: int, w: int, size: int, H: int, W: int, scale: float = 1.0, margin: float = 0.0) -> int:
    """Side in native pixels of the square generation window of an h x w defect in an H x W image, generated at
    the generator's resolution R = ``size``.

    The window covers R / ``scale`` native pixels, so the generator sees the host at the scale it was fine-tuned
    at (``train-generator --scale``, the plan's ``scale``); with ``margin`` > 0 it is widened until the defect, its
    context band (``band_px``), ``DILATE_PX`` and the border ring fit inside it at R, so a large defect is neither
    cut nor pressed against the window's edge. At most the image's shorter side, at least the defect."""
    side = round(size / scale)
    if margin > 0:  # e (1 + 2 margin) + 2 (dilate + border + rounding) <= R, with e = extent * R / side
        free = size - 2 * (DILATE_PX + BORDER_PX + 1)
        side = max(side, math.ceil(max(h, w) * (1 + 2 * margin) * size / max(free, 1)))
    return max(min(side, H, W), h, w)


def window_pad(h: int, w: int, side: int, size: int, margin: float) -> int:
    """Native pixels to keep between the defect box and a window side that is not on the image's edge: the
    grown mask, the context band and the border ring (0 when ``margin`` is 0)."""
    if margin <= 0:
        return 0
    ratio = size / side
    return math.ceil((DILATE_PX + band_px(max(h, w) * ratio, margin) + BORDER_PX) / ratio)


def _offsets(start: int, length: int, side: int, limit: int, pad: int) -> list[int]:
    """Window offsets along one axis that hold [start, start + length) with ``pad`` px to spare on each window
    side that is not on the image's edge (0 or limit); all holding offsets when none has that room."""
    hold = list(range(max(0, start + length - side), min(start, limit - side) + 1))
    if pad <= 0:
        return hold
    roomy = [o for o in hold if (o == 0 or o <= start - pad) and (o + side == limit or o + side >= start + length + pad)]
    return roomy or hold


def window_around(y: int, x: int, h: int, w: int, size: int, H: int, W: int, rng: random.Random, pad: int = 0
                  ) -> tuple[int, int, int]:
    """(top, left, side) of a square window inside the image [H, W] that contains the box (y, x, h, w):
    side ``size`` (less if the image is smaller, more if the box is larger), the box at a random place in it,
    ``pad`` px from each window side that is not on the image's edge where the window has that room."""
    side = max(min(size, H, W), h, w)
    if side > min(H, W):
        raise ValueError(f"a {h}x{w} defect does not fit a square window inside a {H}x{W} image")
    if pad <= 0:  # the old draws, unchanged
        top = rng.randint(max(0, y + h - side), min(y, H - side))
        left = rng.randint(max(0, x + w - side), min(x, W - side))
        return top, left, side
    return rng.choice(_offsets(y, h, side, H, pad)), rng.choice(_offsets(x, w, side, W, pad)), side


def centred_window(y: int, x: int, h: int, w: int, size: int, H: int, W: int) -> tuple[int, int, int]:
    """(top, left, side): ``window_around``'s window (same side) with the box at its centre, moved inside the
    image where the centre would leave it (deterministic: the window a caller's mask gets)."""
    side = max(min(size, H, W), h, w)
    if side > min(H, W):
        raise ValueError(f"a {h}x{w} defect does not fit a square window inside a {H}x{W} image")
    top = min(max(0, y + h // 2 - side // 2), H - side)
    left = min(max(0, x + w // 2 - side // 2), W - side)
    return top, left, side


def open_edges(top: int, left: int, side: int, H: int, W: int) -> tuple[bool, bool, bool, bool]:
    """Which sides of the window (top, bottom, left, right) lie on the H x W image's edge: no host pixel lies
    beyond them, so the border ring need not keep the host there (a defect may touch the image's edge)."""
    return top == 0, top + side == H, left == 0, left + side == W


def _grow_one(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [B, 1, H, W] grown by one pixel: a 3 x 3 square on odd steps, a cross on even ones, so the distance the
    growth measures is octagonal (closer to Euclidean than either alone: no square halo around round defects)."""
    if k % 2:
        return F.max_pool2d(x, 3, 1, 1)
    return torch.maximum(F.max_pool2d(x, (3, 1), 1, (1, 0)), F.max_pool2d(x, (1, 3), 1, (0, 1)))


def seamless_masks(masks: torch.Tensor, margin: float, edges: list[tuple[bool, bool, bool, bool]] | None = None,
                   dilate_px: int = DILATE_PX, feather_px: int = FEATHER_PX, border_px: int = BORDER_PX,
                   keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(region, alpha), both [B, 1, R, R] in [0, 1], of defect masks [B, 1, R, R] in {0, 1}: the known-region
    mask of the latent blending (``sampler.sample``'s ``region``: 1 = regenerate) and the pixel composite alpha.

    ``margin`` > 0: one soft mask for both, 1 on the mask grown by ``dilate_px``, falling linearly to 0 across a
    band of ``band_px`` (``margin`` x the defect's longer side, at least ``feather_px``) px beyond it, capped to
    0 on the ``border_px`` ring along each window side not on the image's edge (``edges``: per sample, from
    ``open_edges``; None = all four sides closed) and ramping up from it as fast as the band does; the mask's own
    pixels stay 1 whatever the cap (the label is never ungenerated), which ``window_pad`` makes moot.
    ``keep`` [B, 1, R, R] in {0, 1}: pixels that must keep the host (not the surface: an endoscope's frame, an
    anomalous host's own defects); the band is capped to 0 on them grown by 1 px (so the bilinear paste at
    native size cannot reach them either) and ramps up from there as the band does.
    ``margin`` 0: the old pair, the mask grown by ``dilate_px`` (binary) and ``sampler.feather`` of it."""
    from anomalign.generator.sampler import feather
    if margin <= 0:
        region = dilate(masks, dilate_px)
        return region, feather(region, feather_px)
    out = torch.zeros_like(masks, dtype=torch.float32)
    size = masks.shape[-1]
    pos = torch.arange(size, dtype=torch.float32)
    for b in range(masks.shape[0]):
        m = (masks[b:b + 1] > 0.5).float()
        if not m.any():
            continue
        ys, xs = torch.nonzero(m[0, 0], as_tuple=True)
        extent = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
        band = band_px(extent, margin, feather_px)
        grown = dilate(m, dilate_px)
        acc = grown.clone()
        for k in range(1, band + 1):  # acc = band + 1 - distance from the grown mask, where positive
            grown = _grow_one(grown, k)
            acc += grown
        soft = acc / (band + 1)
        top, bottom, left, right = edges[b] if edges is not None else (False,) * 4
        inf = torch.full_like(pos, float("inf"))
        dy = torch.minimum(inf if top else pos, inf if bottom else size - 1 - pos)
        dx = torch.minimum(inf if left else pos, inf if right else size - 1 - pos)
        cap = ((torch.minimum(dy[:, None], dx[None, :]) - border_px + 1) / (band + 1)).clamp(0, 1)
        if keep is not None and keep[b].any():
            near = dilate((keep[b:b + 1] > 0.5).float(), 1)
            free = 1 - near
            for k in range(1, band + 1):  # free = distance from the kept pixels, up to band + 1
                near = _grow_one(near, k)
                free += 1 - near
            cap = torch.minimum(cap, free[0, 0] / (band + 1))
        out[b] = torch.maximum(torch.minimum(soft[0], cap), m[0])
    return out, out


def keep_tensor(off: np.ndarray, size: int) -> torch.Tensor:
    """[1, R, R] in {0, 1}: bool [side, side] pixels of a window that must keep the host (``seamless_masks``'s
    ``keep``) at the generator's resolution R = ``size``; a cell counts as kept if any of its native pixels does,
    so a thin crack survives the reduction."""
    t = torch.from_numpy(np.asarray(off, bool)).float()[None, None]
    side = t.shape[-1]
    if side > size:
        t = F.adaptive_max_pool2d(t, size)
    elif side < size:
        t = F.interpolate(t, size=(size, size))
    return (t[0] > 0).float()


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
    region [1, R, R] (resized to ``side`` when R differs: bicubic for the image; nearest-exact for a binary
    region, the old path, bilinear for a soft one from ``seamless_masks``, so its ramp stays a ramp), blended by
    it: every pixel where it is 0 keeps its exact value. A grey image (equal channels) gets the window's channel
    mean: grey data stays grey."""
    if window_u8.shape[0] != side:
        window_u8 = np.asarray(Image.fromarray(window_u8).resize((side, side), Image.BICUBIC))
    binary = bool(((region == 0) | (region == 1)).all())
    alpha = region if region.shape[-1] == side else F.interpolate(
        region[None].float(), size=(side, side), mode="nearest-exact" if binary else "bilinear")[0]
    if is_grey(image):  # the generated pixels lose the colour the codec may add
        window_u8 = np.repeat(grey_u8(window_u8)[..., None], 3, axis=2)
    return paste(image, window_u8, alpha[0].numpy(), top, left)
