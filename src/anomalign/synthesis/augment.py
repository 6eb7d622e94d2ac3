"""Mask augmentation for synthesis: new anomaly layouts from the real masks.

Each op is drawn from a per-sample ``torch.Generator`` so sample i's layout depends only on (seed, i).
Masks are float [1, H, W] in {0, 1}; geometric warps resample bilinearly and re-threshold at 0.5.
If an op would leave the mask empty (e.g. moved off the image) that op is skipped, so every sample keeps
an anomaly. ``augment_pair`` moves an image [3, H, W] with its mask through the same ops and draws (the
cut-paste baseline pastes the defect's own pixels in the augmented layout).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_AUGMENTS = ("flip", "rot90", "affine", "elastic", "replace")


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample [C, H, W] (channel 0 the mask, re-thresholded; any others image channels, kept bilinear)."""
    out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return torch.cat([(out[:1] >= 0.5).to(x.dtype), out[1:]])


def affine(mask: torch.Tensor, g: torch.Generator, max_degrees: float = 30, scale=(0.8, 1.25),
           max_shift: float = 0.15) -> torch.Tensor:
    """Random rotation (±max_degrees), isotropic scale and shift (fraction of the size) of [C, H, W]."""
    a = math.radians(_u(g, -max_degrees, max_degrees))
    s = _u(g, *scale)
    tx, ty = _u(g, -max_shift, max_shift) * 2, _u(g, -max_shift, max_shift) * 2
    # grid_sample maps output -> input coordinates, so use the inverse transform.
    theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, tx], [math.sin(a) / s, math.cos(a) / s, ty]],
                         dtype=mask.dtype)
    grid = F.affine_grid(theta[None], [1, *mask.shape], align_corners=False)
    return _warp(mask, grid)


def elastic(mask: torch.Tensor, g: torch.Generator, strength: float = 0.06, cells: int = 4) -> torch.Tensor:
    """Smooth random displacement field (a ``cells`` x ``cells`` grid of offsets, bicubic-upsampled) of [C, H, W]."""
    h, w = mask.shape[-2:]
    coarse = (torch.rand((1, 2, cells, cells), generator=g, dtype=mask.dtype) * 2 - 1) * strength
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=mask.dtype), torch.linspace(-1, 1, w, dtype=mask.dtype),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1) + flow
    return _warp(mask, grid[None])


def replace(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Move the whole anomaly (its bounding box, every channel of [C, H, W]) to a uniformly random position."""
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    h, w = mask.shape[-2:]
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    ny = int(torch.randint(0, h - (y1 - y0) + 1, (), generator=g))
    nx = int(torch.randint(0, w - (x1 - x0) + 1, (), generator=g))
    out = torch.zeros_like(mask)
    out[:, ny:ny + y1 - y0, nx:nx + x1 - x0] = mask[:, y0:y1, x0:x1]
    return out


def augment_mask(mask: torch.Tensor, ops: list[str], g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Apply ``ops`` (subset of MASK_AUGMENTS, in that order) to mask [1, H, W]; returns (mask, ops applied).

    ``flip`` flips each axis with p = 0.5; ``rot90`` turns by a random multiple of 90° (square masks);
    the others always apply. Every draw happens whether or not an op is skipped, so the random stream
    (and hence the layout of later samples) never depends on what an earlier op did.
    """
    out, applied = _augment(mask, ops, g)
    return out, applied


def augment_pair(mask: torch.Tensor, image: torch.Tensor, ops: list[str], g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``augment_mask`` for mask [1, H, W] and its image [3, H, W], moved together: the same draws, so the
    mask equals what ``augment_mask`` gives with the same generator state. Returns (mask, image, ops)."""
    out, applied = _augment(torch.cat([mask, image.to(mask.dtype)]), ops, g)
    return out[:1], out[1:], applied


def _augment(x: torch.Tensor, ops: list[str], g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    unknown = [o for o in ops if o not in MASK_AUGMENTS]
    if unknown:
        raise ValueError(f"unknown mask augmentation(s) {unknown}; choose from {list(MASK_AUGMENTS)}")
    applied: list[str] = []
    for op in MASK_AUGMENTS:
        if op not in ops:
            continue
        if op == "flip":
            h_flip, v_flip = bool(torch.rand((), generator=g) < 0.5), bool(torch.rand((), generator=g) < 0.5)
            cand = x.flip(-1) if h_flip else x
            cand = cand.flip(-2) if v_flip else cand
            name = "+".join(n for n, on in (("hflip", h_flip), ("vflip", v_flip)) if on)
        elif op == "rot90":
            k = int(torch.randint(0, 4, (), generator=g)) if x.shape[-1] == x.shape[-2] else 0
            cand, name = torch.rot90(x, k, dims=(-2, -1)), f"rot{90 * k}" if k else ""
        elif op == "affine":
            cand, name = affine(x, g), "affine"
        elif op == "elastic":
            cand, name = elastic(x, g), "elastic"
        else:
            cand, name = replace(x, g), "replace"
        if cand[0].sum() > 0:
            x = cand
            if name:
                applied.append(name)
    return x, applied
