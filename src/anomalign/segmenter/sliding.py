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


# Rows are produced and consumed in bands of about this many pixels, so memory stays bounded whatever the image's
# size (issue 48: a 144-MP image peaked at 5.8 GB when whole-image float tensors were held). An image (after the
# segmenter's resampling) of at most this many pixels is one band: computed exactly as a whole image.
BAND_PIXELS = 4_000_000


def band_rows(width: int, band_pixels: int = BAND_PIXELS) -> int:
    """Rows per band for an image ``width`` px wide."""
    return max(1, band_pixels // max(1, width))


class RowStream:
    """Rows of a [C, H, W] image served by ``rows(a, b)`` (a tensor [C, b - a, W]) from ``bands``, an iterator of
    consecutive row bands [C, r, W] top to bottom. Calls must not go back up (``a`` never decreases): rows above
    ``a`` are dropped, so only the rows between the lowest row still needed and the last one asked for are held."""

    def __init__(self, bands, height: int):
        self.bands, self.height = iter(bands), height
        self.buf, self.start = None, 0  # buf holds rows [start, start + buf rows)

    def rows(self, a: int, b: int) -> torch.Tensor:
        if a < self.start or not 0 <= a <= b <= self.height:
            raise ValueError(f"rows {a}:{b} requested after row {self.start} (or outside 0:{self.height})")
        if self.buf is not None and a > self.start:  # drop what no later call can ask for
            self.buf, self.start = self.buf[:, a - self.start:], a
        while self.buf is None or self.start + self.buf.shape[1] < b:
            band = next(self.bands)
            self.buf = band if self.buf is None else torch.cat([self.buf, band], 1)
        return self.buf[:, a - self.start:b - self.start]


def resize_grow(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] to ``size`` by bilinear interpolation (enlarging; also how probabilities go back to full size)."""
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] to ``size``, antialiased, as training shrinks its images (``data.transforms.resize_images``)."""
    return resize_images(x[None], size)[0]


def resized_bands(rows, h: int, w: int, out_h: int, out_w: int, resize, band_pixels: int = BAND_PIXELS):
    """Bands [C, r, out_w] of the [C, h, w] image read through ``rows(a, b)``, resized to (out_h, out_w) by
    ``resize`` ([C, H, W], size -> [C, *size]; separable), top to bottom.

    An output of at most ``band_pixels`` is one call of ``resize`` on the whole image. Larger ones are resized
    band by band: each band's rows are resized along the width by ``resize`` itself (whole rows: the same
    sampling as the whole image), then along the height with ``resize``'s own weights for those output rows
    (read off by resizing unit vectors over the full height), so a band equals the same rows of the whole-image
    result up to float rounding."""
    step = band_rows(out_w, band_pixels)
    if out_h <= step:
        yield resize(rows(0, h), (out_h, out_w))
        return
    ratio = h / out_h
    reach = math.ceil(max(1.0, ratio)) + 2  # input rows on either side that can weigh on an output row
    for o0 in range(0, out_h, step):
        o1 = min(out_h, o0 + step)
        i0 = max(0, math.floor((o0 + 0.5) * ratio - 0.5) - reach)
        i1 = min(h, math.ceil((o1 - 0.5) * ratio - 0.5) + reach + 1)
        # two columns, not one: torch's antialiased resize of a 1-px-wide image is wrong (seen in 2.13)
        basis = torch.zeros(i1 - i0, h, 2)
        basis[torch.arange(i1 - i0), torch.arange(i0, i1)] = 1.0
        weights = resize(basis, (out_h, 2))[:, o0:o1, 0].T  # [o1 - o0, i1 - i0]
        if not torch.allclose(weights.sum(1), torch.ones(o1 - o0), atol=1e-4):
            raise RuntimeError(f"band resize: rows {i0}:{i1} do not cover output rows {o0}:{o1}")  # a bug, not input
        src = rows(i0, i1)
        src = resize(src, (i1 - i0, out_w))  # along the width only
        yield torch.einsum("oi,ciw->cow", weights.to(src), src)


def window_bands(predict, rows, H: int, W: int, patch: int, overlap: float, batch_size: int, on_windows=None):
    """Anomaly probability rows [1, r, W] (top to bottom) of the [3, H, W] image read through ``rows(a, b)``
    (H, W >= ``patch``), from ``patch``-px windows ``stride = patch * (1 - overlap)`` apart, blended with
    ``blend_weight``. Windows run in row-major order, ``batch_size`` at a time; after each batch the rows above
    the next window are final and are yielded, so only about ``patch`` rows of sums are held. Every pixel's sum
    adds the same windows in the same order as summing over the whole image at once."""
    stride = max(1, math.floor(patch * (1 - overlap)))
    boxes = [(y, x) for y in window_starts(H, patch, stride) for x in window_starts(W, patch, stride)]
    weight = None
    done = 0  # rows above this are yielded; total/norm hold the rows from here down
    total = norm = None
    for s in range(0, len(boxes), batch_size):
        chunk = boxes[s:s + batch_size]
        top, bottom = chunk[0][0], chunk[-1][0] + patch
        src = rows(top, bottom)
        prob = predict(torch.stack([src[:, y - top:y - top + patch, x:x + patch] for y, x in chunk])).float()
        if weight is None:
            weight = blend_weight(patch).to(prob.device)
            total = norm = torch.zeros(1, 0, W, device=prob.device)
        if done + total.shape[1] < bottom:  # new rows of sums, zero
            grow = torch.zeros(1, bottom - done - total.shape[1], W, device=prob.device)
            total, norm = torch.cat([total, grow], 1), torch.cat([norm, grow], 1)
        for (y, x), p in zip(chunk, prob):
            total[:, y - done:y - done + patch, x:x + patch] += p * weight
            norm[:, y - done:y - done + patch, x:x + patch] += weight
        if on_windows is not None:
            on_windows(s + len(chunk), len(boxes))
        final = boxes[s + batch_size][0] if s + batch_size < len(boxes) else H
        if final > done:
            k = final - done
            yield total[:, :k] / norm[:, :k]
            total, norm, done = total[:, k:], norm[:, k:], final


def uint8_rows(image: np.ndarray, device="cpu"):
    """``rows(a, b)`` of a uint8 image [H, W, 3]: float32 [3, b - a, W] in the model range on ``device``,
    converted band by band (the whole image is never held as float)."""
    from anomalign.data.transforms import to_model_range
    return lambda a, b: to_model_range(image[a:b]).to(device)


def tensor_rows(image: torch.Tensor):
    """``rows(a, b)`` of an image tensor [C, H, W]."""
    return lambda a, b: image[:, a:b]


@torch.no_grad()
def sliding_window_proba(predict, image: torch.Tensor, patch: int, overlap: float = 0.5, batch_size: int = 16,
                         on_windows=None) -> torch.Tensor:
    """Anomaly probability [1, H, W] of one image [3, H, W] (model range), through ``predict``.

    ``predict``: images [B, 3, patch, patch] -> probabilities [B, 1, patch, patch] (e.g. a Segmenter's
    ``predict_proba``). ``overlap`` in [0, 1): the share of a window its neighbour covers. ``on_windows``:
    called as ``on_windows(done, total)`` after each batch of windows (progress for very large images).
    The whole image at once; ``native_probability`` streams it in bands.
    """
    check_overlap(overlap)
    _, h, w = image.shape
    x = pad_bottom_right(image[None], max(0, patch - h), max(0, patch - w))[0]  # smaller than a window
    bands = window_bands(predict, tensor_rows(x), *x.shape[1:], patch, overlap, batch_size, on_windows)
    return torch.cat(list(bands), 1)[:, :h, :w]


def check_overlap(overlap: float) -> None:
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


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


def collect(bands, h: int, w: int) -> torch.Tensor:
    """float32 [h, w] on the CPU from probability bands [1, r, w] (top to bottom), clamped to [0, 1]."""
    out = torch.empty(h, w)
    y = 0
    for band in bands:
        out[y:y + band.shape[1]] = band[0].clamp(0, 1).cpu()
        y += band.shape[1]
    if y != h:
        raise RuntimeError(f"bands cover {y} of {h} rows")  # a bug, not the input
    return out


@torch.no_grad()
def native_probability(predict, rows, h: int, w: int, patch: int, scale: float = 1.0, overlap: float = 0.5,
                       batch_size: int = 16, on_windows=None, one_pass: bool = False,
                       precision: str = "auto") -> torch.Tensor:
    """Probability float32 [h, w] (CPU) of the [3, h, w] image read through ``rows(a, b)`` (model range, on the
    model's device): resampled by ``scale`` (the scale the model was trained at), predicted there — sliding
    ``patch``-px windows, or with ``one_pass`` large tiles (``tiled_proba``) — and the probability resampled
    back (bilinear). ``precision`` bf16: the network runs under bf16 autocast (``PRECISIONS``).

    Windows stream: the image is read, resampled, predicted and resampled back in row bands
    (``BAND_PIXELS``), so memory beyond the result does not grow with the image. One pass and images with a
    side smaller than a window are predicted whole."""
    check_overlap(overlap)
    H, W = (max(1, round(h * scale)), max(1, round(w * scale))) if scale != 1 else (h, w)

    def predict_in(batch: torch.Tensor) -> torch.Tensor:
        with autocast(batch, precision):
            return predict(batch)

    scaled = rows if (H, W) == (h, w) else \
        RowStream(resized_bands(rows, h, w, H, W, resize_shrink if scale < 1 else resize_grow), H).rows
    if one_pass:
        bands = [tiled_proba(predict_in, scaled(0, H), on_windows=on_windows)]
    elif H < patch or W < patch:
        bands = [sliding_window_proba(predict_in, scaled(0, H), patch, overlap, batch_size, on_windows)]
    else:
        bands = window_bands(predict_in, scaled, H, W, patch, overlap, batch_size, on_windows)
    if (H, W) != (h, w):
        bands = resized_bands(RowStream(bands, H).rows, H, W, h, w, resize_grow)
    return collect(bands, h, w)


@torch.no_grad()
def predict_native(predict, image: torch.Tensor, patch: int, scale: float = 1.0, overlap: float = 0.5,
                   batch_size: int = 16, on_windows=None, one_pass: bool = False,
                   precision: str = "auto") -> torch.Tensor:
    """Probability [1, H, W] (on ``image``'s device) at the size of ``image`` [3, H, W]: ``native_probability``
    of an image tensor."""
    _, h, w = image.shape
    prob = native_probability(predict, tensor_rows(image), h, w, patch, scale, overlap, batch_size, on_windows,
                              one_pass, precision)
    return prob[None].to(image.device)


def uses_one_pass(mode: str = "windows") -> bool:
    """Whether inference ``mode`` (``MODES``) predicts full-size images in one pass (tiles) rather than with
    sliding windows of the crop size."""
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {list(MODES)}")
    return mode == "one-pass"


@torch.no_grad()
def full_size_probability(model, rows, h: int, w: int, size: int | None = None, overlap: float = 0.5,
                          batch_size: int = 16, on_windows=None, mode: str = "windows",
                          precision: str = "auto") -> torch.Tensor:
    """Anomaly probability float32 [h, w] (CPU) of the [3, h, w] image read through ``rows(a, b)`` (model range,
    on the model's device) at the image's own size: the one predictor behind ``segment``, ``evaluate`` and
    validation, so the masks a user gets are the masks that were scored.

    A segmenter trained on crops (``model.crop_size``) sees the image resampled by ``model.scale`` through
    sliding windows, or in one pass with ``mode`` one-pass (``native_probability``); one trained on whole
    resized images sees it resized to ``size`` (bilinear, antialiased), and its probability is resized back
    (bilinear). Either way the image is read and the result written in bands (``BAND_PIXELS``).
    """
    crop = getattr(model, "crop_size", None)
    if crop:
        return native_probability(model.predict_proba, rows, h, w, crop, getattr(model, "scale", 1.0) or 1.0,
                                  overlap, batch_size, on_windows, one_pass=uses_one_pass(mode), precision=precision)
    if not size:
        raise ValueError("a segmenter trained on whole resized images needs the size to resize to")
    small = torch.cat(list(resized_bands(rows, h, w, size, size, resize_shrink)), 1)
    with autocast(small, precision):
        prob = model.predict_proba(small[None].clamp(-1, 1))
    return collect(resized_bands(tensor_rows(prob[0].float()), size, size, h, w, resize_grow), h, w)


def predict_full_size(model, image: torch.Tensor, size: int | None = None, overlap: float = 0.5,
                      batch_size: int = 16, on_windows=None, mode: str = "windows", precision: str = "auto") -> torch.Tensor:
    """Anomaly probability [1, H, W] (on ``image``'s device) of one image tensor [3, H, W] (model range, on the
    model's device): ``full_size_probability``."""
    _, h, w = image.shape
    prob = full_size_probability(model, tensor_rows(image), h, w, size, overlap, batch_size, on_windows, mode,
                                 precision)
    return prob[None].to(image.device)


def image_probability(model, image, size: int | None = None, on_windows=None, mode: str = "windows",
                      precision: str = "auto", overlap: float = 0.5) -> np.ndarray:
    """Anomaly probability float32 [H, W] of one uint8 image [H, W, 3] at its own size, on the model's device
    (``full_size_probability``): what ``Segmenter.predict``, ``segment`` and the reports use. The image is
    converted to the model's range band by band, never whole."""
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else "cpu"
    h, w = image.shape[:2]
    return full_size_probability(model, uint8_rows(image, device), h, w, size or getattr(model, "size", None),
                                 overlap, on_windows=on_windows, mode=mode, precision=precision).numpy()
