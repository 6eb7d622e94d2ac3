"""Prediction at the image's own resolution: overlapping sliding windows with weighted blending.

A segmenter trained on ``patch`` x ``patch`` crops sees every full-size image through windows of that size,
spaced ``stride = patch * (1 - overlap)`` apart (the last window of each row/column is aligned with the
image's edge, so every pixel is covered). Window probabilities are blended with a weight that falls off
towards the window's border (a separable Gaussian, sigma = patch / 4, as nnU-Net does), because a window's
border pixels see less context than its centre. Weights are normalised per pixel, so a model whose output
does not depend on the window gives exactly its single-pass answer. Images smaller than the patch are padded
(reflection) and the padding is cut from the result.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from anomalign.data.transforms import resize_images


def pad_bottom_right(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """x [B, C, H, W] padded by ``ph`` rows at the bottom and ``pw`` columns at the right: reflection where
    the pad is smaller than the side, else replication (reflection cannot pad past the image)."""
    if not (ph or pw):
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """x [B, C, H, W] padded by reflection, repeated where a pad is longer than the side (a 1-px side is
    replicated: it has nothing to reflect)."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        l, r, t, b = min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1)
        if not (l or r or t or b):
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, (l, r, t, b), mode="reflect")
        left, right, top, bottom = left - l, right - r, top - t, bottom - b
    return x


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``patch`` (the last one flush with the end)."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def blend_weight(patch: int, sigma_fraction: float = 0.25) -> torch.Tensor:
    """[patch, patch] weight, 1 at the centre, smallest at the corners (never 0: edges still count)."""
    r = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
    g = torch.exp(-0.5 * (r / (sigma_fraction * patch)) ** 2)
    w = g[:, None] * g[None, :]
    return (w / w.max()).clamp_min(1e-3)


@torch.no_grad()
def sliding_window_proba(predict, image: torch.Tensor, patch: int, overlap: float = 0.5, batch_size: int = 16,
                         on_windows=None) -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] (model range), through ``predict``.

    ``predict``: images [B, 3, patch, patch] -> probabilities [B, 1, patch, patch] (e.g. a Segmenter's
    ``predict_proba``). ``overlap`` in [0, 1): the share of a window its neighbour covers. ``on_windows``:
    called as ``on_windows(done, total)`` after each batch of windows (progress for very large images).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    _, h, w = image.shape
    ph, pw = max(0, patch - h), max(0, patch - w)
    image = pad_bottom_right(image[None], ph, pw)[0]  # smaller than a window
    H, W = image.shape[1:]
    stride = max(1, math.floor(patch * (1 - overlap)))
    boxes = [(y, x) for y in window_starts(H, patch, stride) for x in window_starts(W, patch, stride)]
    weight = blend_weight(patch).to(image.device)
    total = torch.zeros(1, H, W, device=image.device)
    norm = torch.zeros(1, H, W, device=image.device)
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s:s + batch_size]
        prob = predict(torch.stack([image[:, y:y + patch, x:x + patch] for y, x in chunk])).float()
        for (y, x), p in zip(chunk, prob):
            total[:, y:y + patch, x:x + patch] += p * weight
            norm[:, y:y + patch, x:x + patch] += weight
        if on_windows is not None:
            on_windows(s + len(chunk), len(boxes))
    return (total / norm)[:, :h, :w]


# One pass in tiles (a network without spatial statistics, Segmenter.one_pass): each TILE x TILE input keeps
# its centre and drops MARGIN px of context on every side. 64 px holds the tiny U-Net's effective receptive
# field at the crop sizes the plan picks; both are multiples of 32 so every tile sits on the network's
# pooling grid. 1024-px tiles bound memory (about 0.3 GB for unet-tiny) whatever the image's size and cost
# (1024 / 896)^2 = 1.3x the pixels, against about 4x for half-overlapping windows.
TILE, MARGIN = 1024, 64
MODES = ("auto", "windows", "one-pass")


def tiled_proba(predict, image: torch.Tensor, tile: int = TILE, margin: int = MARGIN, batch_size: int = 1,
                on_windows=None) -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] from ``tile``-px inputs, each keeping its central
    ``tile - 2 * margin`` px (the image is reflect-padded by ``margin`` so its border gets the same context).
    Equal to one pass over the whole image wherever ``margin`` covers the network's receptive field, with
    memory bounded by the tile whatever the image's size. An image that fits one tile is one input of its own
    size plus the margins."""
    if not 0 <= 2 * margin < tile:
        raise ValueError(f"need 0 <= 2 * margin < tile, got margin {margin}, tile {tile}")
    _, h, w = image.shape
    core = tile - 2 * margin
    ny, nx = math.ceil(h / core), math.ceil(w / core)
    tile_h, tile_w = (min(tile, h + 2 * margin) if ny == 1 else tile), (min(tile, w + 2 * margin) if nx == 1 else tile)
    # pad: margin on the top/left, and on the bottom/right up to the last tile's end
    need_h, need_w = (ny - 1) * core + tile_h, (nx - 1) * core + tile_w
    x = reflect_pad(image[None], margin, need_w - w - margin, margin, need_h - h - margin)[0]
    boxes = [(i * core, j * core) for i in range(ny) for j in range(nx)]
    out = torch.zeros(1, h, w, device=image.device)
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s:s + batch_size]
        prob = predict(torch.stack([x[:, y:y + tile_h, x0:x0 + tile_w] for y, x0 in chunk])).float()
        for (y, x0), p in zip(chunk, prob):
            ch, cw = min(core, h - y), min(core, w - x0)
            out[:, y:y + ch, x0:x0 + cw] = p[:, margin:margin + ch, margin:margin + cw]
        if on_windows is not None:
            on_windows(s + len(chunk), len(boxes))
    return out


def predict_native(predict, image: torch.Tensor, patch: int, scale: float = 1.0, overlap: float = 0.5,
                   batch_size: int = 16, on_windows=None, one_pass: bool = False) -> torch.Tensor:
    """Probability [1, H, W] at the size of ``image`` [3, H, W]: resampled by ``scale`` (the scale the model
    was trained at), predicted there — sliding ``patch``-px windows, or with ``one_pass`` large tiles
    (``tiled_proba``) — and the probability resampled back (bilinear)."""
    _, h, w = image.shape
    x = image
    if scale != 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = (resize_images(image[None], size) if scale < 1  # shrinking: antialiased, as in training
             else F.interpolate(image[None], size=size, mode="bilinear", align_corners=False))[0]
    if one_pass:
        prob = tiled_proba(predict, x, on_windows=on_windows)
    else:
        prob = sliding_window_proba(predict, x, patch, overlap, batch_size, on_windows)
    if prob.shape[-2:] != (h, w):
        prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return prob.clamp(0, 1)


def uses_one_pass(model, mode: str = "auto") -> bool:
    """Whether ``model`` predicts full-size images in one pass (tiles) rather than with sliding windows:
    ``mode`` auto = when the network has no spatial statistics (``Segmenter.one_pass``), else as named."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {list(MODES)}")
    return bool(getattr(model, "one_pass", False)) if mode == "auto" else mode == "one-pass"


@torch.no_grad()
def predict_full_size(model, image: torch.Tensor, size: int | None = None, overlap: float = 0.5,
                      batch_size: int = 16, on_windows=None, mode: str = "auto") -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] (model range, on the model's device) at the image's
    own size: the one predictor behind ``segment``, ``evaluate`` and validation, so the masks a user gets are
    the masks that were scored.

    A segmenter trained on crops (``model.crop_size``) sees the image resampled by ``model.scale`` through
    sliding windows, or in one pass when it can (``uses_one_pass(model, mode)``; ``predict_native``); one trained on whole resized images sees it resized to ``size``
    (bilinear, antialiased), and its probability is resized back (bilinear).
    """
    crop = getattr(model, "crop_size", None)
    if crop:
        return predict_native(model.predict_proba, image, crop, getattr(model, "scale", 1.0) or 1.0, overlap,
                              batch_size, on_windows, one_pass=uses_one_pass(model, mode))
    if not size:
        raise ValueError("a segmenter trained on whole resized images needs the size to resize to")
    small = resize_images(image[None], size)
    prob = model.predict_proba(small.clamp(-1, 1))
    return F.interpolate(prob.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)[0].clamp(0, 1)


def image_probability(model, image, size: int | None = None, on_windows=None, mode: str = "auto") -> np.ndarray:
    """Anomaly probability float32 [H, W] of one uint8 image [H, W, 3] at its own size, on the model's device
    (``predict_full_size``): what ``Segmenter.predict``, ``segment`` and the reports use."""
    from anomalign.data.transforms import to_model_range
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else "cpu"
    x = to_model_range(image).to(device)
    return predict_full_size(model, x, size or getattr(model, "size", None), on_windows=on_windows,
                             mode=mode)[0].cpu().numpy()
