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
from anomalign.devices import native_bf16


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


# One pass in tiles (``--inference one-pass``; measured: faster, but worse than windows for a segmenter trained
# on crops, docs/segmenter.md): each tile keeps at most
# CORE x CORE px and sees MARGIN px of context on every side. 64 px holds the tiny U-Net's effective receptive
# field at the crop sizes the plan picks; sides are multiples of 32 so every tile sits on the network's pooling
# grid. Tiles of at most (1024 + 128)^2 px bound memory whatever the image's size; a 1-MP image is one tile
# (1.27x its pixels computed, against about 4x for half-overlapping windows).
CORE, MARGIN = 1024, 64
MODES = ("windows", "one-pass")
# fp32, or bf16 autocast: 1.8x faster on this project's CPU (native bf16), with the same test mIoU and masks
# that agree with fp32's at IoU 0.99 on magnetic tile (docs/segmenter.md); auto = bf16 where the hardware has
# it, fp32 elsewhere (emulated bf16 is slower than fp32)
PRECISIONS = ("auto", "fp32", "bf16")


def inference_precision(precision: str, device_type: str = "cpu") -> str:
    """fp32 or bf16: ``precision`` itself, or for auto whatever ``device_type`` computes natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


def autocast(x: torch.Tensor, precision: str):
    """The autocast context of ``precision`` (auto resolved for ``x``'s device; a no-op for fp32)."""
    precision = inference_precision(precision, x.device.type)
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def tiled_proba(predict, image: torch.Tensor, core: int = CORE, margin: int = MARGIN, batch_size: int = 1,
                on_windows=None) -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] from tiles that each keep at most ``core`` px per
    side of their centre and see ``margin`` px of context around it (the image is reflect-padded by ``margin``
    so its border gets context too). The image is split into as few tiles as ``core`` allows, of equal size
    (a multiple of 32). Equal to one pass over the whole image wherever ``margin`` covers the network's
    receptive field, with memory bounded by the tile whatever the image's size."""
    if core < 1 or margin < 0:
        raise ValueError(f"need core >= 1 and margin >= 0, got core {core}, margin {margin}")
    _, h, w = image.shape
    ny, nx = math.ceil(h / core), math.ceil(w / core)
    step_h, step_w = (32 * math.ceil(math.ceil(n / k) / 32) for n, k in ((h, ny), (w, nx)))  # kept px per tile
    x = reflect_pad(image[None], margin, nx * step_w - w + margin, margin, ny * step_h - h + margin)[0]
    boxes = [(i * step_h, j * step_w) for i in range(ny) for j in range(nx)]
    out = torch.zeros(1, h, w, device=image.device)
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s:s + batch_size]
        prob = predict(torch.stack([x[:, y:y + step_h + 2 * margin, x0:x0 + step_w + 2 * margin]
                                    for y, x0 in chunk])).float()
        for (y, x0), p in zip(chunk, prob):
            ch, cw = min(step_h, h - y), min(step_w, w - x0)
            out[:, y:y + ch, x0:x0 + cw] = p[:, margin:margin + ch, margin:margin + cw]
        if on_windows is not None:
            on_windows(s + len(chunk), len(boxes))
    return out


def predict_native(predict, image: torch.Tensor, patch: int, scale: float = 1.0, overlap: float = 0.5,
                   batch_size: int = 16, on_windows=None, one_pass: bool = False,
                   precision: str = "auto") -> torch.Tensor:
    """Probability [1, H, W] at the size of ``image`` [3, H, W]: resampled by ``scale`` (the scale the model
    was trained at), predicted there — sliding ``patch``-px windows, or with ``one_pass`` large tiles
    (``tiled_proba``) — and the probability resampled back (bilinear). ``precision`` bf16: the network runs
    under bf16 autocast (``PRECISIONS``)."""
    _, h, w = image.shape
    x = image
    if scale != 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = (resize_images(image[None], size) if scale < 1  # shrinking: antialiased, as in training
             else F.interpolate(image[None], size=size, mode="bilinear", align_corners=False))[0]
    with autocast(x, precision):
        if one_pass:
            prob = tiled_proba(predict, x, on_windows=on_windows)
        else:
            prob = sliding_window_proba(predict, x, patch, overlap, batch_size, on_windows)
    if prob.shape[-2:] != (h, w):
        prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return prob.clamp(0, 1)


def uses_one_pass(mode: str = "windows") -> bool:
    """Whether inference ``mode`` (``MODES``) predicts full-size images in one pass (tiles) rather than with
    sliding windows of the crop size."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {list(MODES)}")
    return mode == "one-pass"


@torch.no_grad()
def predict_full_size(model, image: torch.Tensor, size: int | None = None, overlap: float = 0.5,
                      batch_size: int = 16, on_windows=None, mode: str = "windows", precision: str = "auto") -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] (model range, on the model's device) at the image's
    own size: the one predictor behind ``segment``, ``evaluate`` and validation, so the masks a user gets are
    the masks that were scored.

    A segmenter trained on crops (``model.crop_size``) sees the image resampled by ``model.scale`` through
    sliding windows, or in one pass with ``mode`` one-pass (``predict_native``); one
    trained on whole resized images sees it resized to ``size``
    (bilinear, antialiased), and its probability is resized back (bilinear).
    """
    crop = getattr(model, "crop_size", None)
    if crop:
        return predict_native(model.predict_proba, image, crop, getattr(model, "scale", 1.0) or 1.0, overlap,
                              batch_size, on_windows, one_pass=uses_one_pass(mode), precision=precision)
    if not size:
        raise ValueError("a segmenter trained on whole resized images needs the size to resize to")
    small = resize_images(image[None], size)
    with autocast(small, precision):
        prob = model.predict_proba(small.clamp(-1, 1))
    return F.interpolate(prob.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)[0].clamp(0, 1)


def image_probability(model, image, size: int | None = None, on_windows=None, mode: str = "windows",
                      precision: str = "auto", overlap: float = 0.5) -> np.ndarray:
    """Anomaly probability float32 [H, W] of one uint8 image [H, W, 3] at its own size, on the model's device
    (``predict_full_size``): what ``Segmenter.predict``, ``segment`` and the reports use."""
    from anomalign.data.transforms import to_model_range
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else "cpu"
    x = to_model_range(image).to(device)
    return predict_full_size(model, x, size or getattr(model, "size", None), overlap, on_windows=on_windows,
                             mode=mode, precision=precision)[0].cpu().numpy()
