"""Crops at the image's own resolution: training on native pixels instead of shrinking whole images.

Real inspection images are large and their defects small; resizing a 1 250 x 500 image to 64 px leaves a
hairline crack a few pixels or nothing. Instead every training sample is a ``crop`` x ``crop`` window of the
image resampled once by ``scale`` (1 = native pixels; masks resampled with nearest neighbour, so they stay
exactly binary). A share ``anomaly_fraction`` of the crops of an anomalous image is centred on an anomaly:
a connected component is chosen uniformly (so a 3-pixel defect is drawn as often as a large one, and every
component is reachable), then a pixel of it, then the centre is jittered by up to ``jitter`` x crop. The
other crops, and all crops of normal images, are uniform over the image. Every draw comes from
``(seed, step, position)``: a run's crops do not depend on the number of processes or on a resume.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomalign.config import option
from anomalign.data.dataset import default_prompt, load_pair
from anomalign.data.transforms import dihedral_variants, dihedral_view, mask_to_tensor, to_model_range
from anomalign.errors import ConfigError, DataError
from anomalign.training import sample_seed


@dataclass(kw_only=True)
class CropOptions:
    """How training samples are cut from the images (every command that trains on crops has these)."""

    crop_size: int | None = option(None, "train on crop_size x crop_size crops of each image at --scale "
                                         "(native resolution); 0: resize whole images; unset: crops when the "
                                         "images are at least twice the model size")
    scale: float = option(1.0, "resampling of the images before cropping (1 = native pixels; masks nearest)")
    anomaly_fraction: float = option(0.5, "share of the crops of an anomalous image centred on an anomaly "
                                          "(one connected component drawn uniformly, jittered)")
    crop_jitter: float = option(0.25, "largest shift of an anomaly-centred crop, as a fraction of the crop "
                                      "(< 0.5: the anomaly stays inside the crop)")

    def validate_crops(self) -> None:
        if self.crop_size is not None and self.crop_size != 0 and self.crop_size < 8:
            raise ConfigError(f"crop_size must be 0 (whole images) or >= 8 pixels, got {self.crop_size}")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if not 0 <= self.anomaly_fraction <= 1:
            raise ConfigError(f"anomaly_fraction must be in [0, 1], got {self.anomaly_fraction}")
        if not 0 <= self.crop_jitter < 0.5:
            raise ConfigError(f"crop_jitter must be in [0, 0.5), got {self.crop_jitter}")


def rescale_pair(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample uint8 [H, W, 3] (bicubic) and bool [H, W] (nearest: exact, binary) by ``scale``."""
    if scale == 1:
        return image, mask
    h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    msk = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    return img, msk


def load_scaled_pair(sample, scale: float, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image uint8 [H, W, 3] and mask bool [H, W] resampled by ``scale`` (``rescale_pair``); an
    image whose resampled size is over the megapixel limit is refused before it is resampled."""
    from anomalign.data.imageio import check_scaled_size
    image, mask = load_pair(sample, None, threshold)
    check_scaled_size(sample.image, image.shape[1], image.shape[0], scale)
    return rescale_pair(image, mask, scale)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a bool mask [H, W], each as an int array [n, 2] of (y, x) pixels."""
    seen = np.zeros(mask.shape, dtype=bool)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        out.append(np.array(pixels, dtype=np.int64))
    return out


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Pad [H, W, ...] at the bottom/right up to ``size`` in each spatial direction: one symmetric reflection
    (at most the image's own size), then zeros. Never more than one reflection: repeated reflection tiles a
    tiny image, and the one defect pixel of a 1 x 1 image would become a whole crop of label; zeros are
    consistent for image and mask alike (a black border, no defect)."""
    h, w = array.shape[:2]
    ph, pw = max(0, min(size - h, h)), max(0, min(size - w, w))
    array = np.pad(array, [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2), mode="symmetric")
    h, w = array.shape[:2]
    return np.pad(array, [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (array.ndim - 2))


class CropSampler:
    """Deterministic crops of a list of (image, mask) pairs held in memory at ``scale``.

    ``images``: uint8 [H_i, W_i, 3]; ``masks``: bool [H_i, W_i] (already rescaled with ``rescale_pair``);
    ``names``: the files, for error messages. ``crop(i, seed)`` -> (uint8 [c, c, 3], bool [c, c], box).
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], crop: int, anomaly_fraction: float = 0.5,
                 jitter: float = 0.25, names: list[str | Path] | None = None):
        self.crop, self.anomaly_fraction, self.jitter = crop, anomaly_fraction, jitter
        if images and crop > max(max(im.shape[:2]) for im in images):
            k = max(range(len(images)), key=lambda i: images[i].shape[0] * images[i].shape[1])
            name = names[k] if names else f"image {k}"
            raise DataError(f"{name}: the largest image is {images[k].shape[1]}x{images[k].shape[0]} px at this scale, "
                            f"smaller than the crop of {crop} px; lower --crop-size or raise --scale")
        # Images narrower than the crop in one direction (a dataset of mixed sizes) are reflect-padded, image and
        # mask together, so the pair stays consistent (``pad_to``: one reflection at most, then zeros).
        self.padded = sum(min(im.shape[:2]) < crop for im in images)
        self.images = [pad_to(im, crop) for im in images]
        self.masks = [pad_to(m, crop) for m in masks]
        self.parts = [components(m) if m.any() else [] for m in self.masks]

    def __len__(self) -> int:
        return len(self.images)

    def box(self, i: int, seed: int) -> tuple[int, int]:
        """Top-left (y, x) of the crop of pair ``i`` for the draw ``seed``."""
        rng = random.Random(seed)
        h, w = self.masks[i].shape
        c = self.crop
        parts = self.parts[i]
        if parts and rng.random() < self.anomaly_fraction:
            comp = parts[rng.randrange(len(parts))]
            cy, cx = comp[rng.randrange(len(comp))]
            j = min(int(self.jitter * c), c // 2 - 1)
            cy, cx = cy + rng.randint(-j, j), cx + rng.randint(-j, j)
            # the window keeps the chosen pixel inside it even after jitter and clamping to the image
            top = min(max(cy - c // 2, 0), h - c)
            left = min(max(cx - c // 2, 0), w - c)
            return top, left
        return rng.randint(0, h - c), rng.randint(0, w - c)

    def crop_pair(self, i: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        top, left = self.box(i, seed)
        c = self.crop
        return (self.images[i][top:top + c, left:left + c], self.masks[i][top:top + c, left:left + c],
                (top, left))


class CropPairs:
    """Training pairs served as crops at native resolution, each with an exact dihedral view.

    ``sample(k, i, position)`` -> image [3, c, c] in [-1, 1], mask [1, c, c] in {0, 1}: the crop of pair i
    for the sample at ``position`` of global micro-batch k (seeded by ``(seed, k, position)``), flipped/rotated
    by a view drawn from the same seed. The pairs are decoded once, at ``scale``.
    """

    def __init__(self, samples, crop: int, scale: float = 1.0, augment: list[str] = (), seed: int = 0,
                 anomaly_fraction: float = 0.5, jitter: float = 0.25, threshold: float = 0.5):
        self.samples = list(samples)
        pairs = [load_scaled_pair(s, scale, threshold) for s in self.samples]
        self.sampler = CropSampler([p[0] for p in pairs], [p[1] for p in pairs], crop, anomaly_fraction, jitter,
                                   names=[s.image for s in self.samples])
        self.prompts = [default_prompt(s) for s in self.samples]
        self.variants = dihedral_variants(list(augment))
        self.seed, self.crop = seed, crop

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, k: int, i: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        draw = sample_seed(self.seed, k, position)
        image, mask, _ = self.sampler.crop_pair(i, draw)
        x, m = to_model_range(image), mask_to_tensor(mask)
        x, m = dihedral_view(x, m, self.variants[random.Random(draw).randrange(len(self.variants))])
        return x.contiguous(), m.contiguous()


def median_image_side(samples, limit: int = 200) -> int:
    """Median shorter side (px) of up to ``limit`` sample images, read from their headers only."""
    sides = []
    for s in samples[:: max(1, len(samples) // limit)][:limit]:
        with Image.open(s.image) as im:
            sides.append(min(im.size))
    return int(np.median(sides)) if sides else 0


def auto_crop_size(samples, size: int, scale: float = 1.0) -> tuple[int, int]:
    """The crop rule of ``--crop-size`` left unset, shared by both trainers: (crop size, median shorter side
    of the files). Crops of ``size`` px when the images, resampled by ``scale``, are at least twice ``size``
    (resizing whole images would shrink their defects away), else 0 (whole images resized to ``size``)."""
    side = median_image_side(samples)
    return (size if side * scale >= 2 * size else 0), side


def crop_bank(samples, crop: int, scale: float = 1.0, per_image: int = 8, jitter: float = 0.25, seed: int = 0,
              threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, list]:
    """A fixed set of crops to fine-tune a generator on (so their latents can be encoded once and cached):
    ``per_image`` anomaly-centred crops of every anomalous sample and one uniform crop of every normal one,
    at ``scale``. Returns images [N, 3, c, c] in [-1, 1], masks [N, 1, c, c] in {0, 1}, and the source sample
    of each crop. Deterministic in ``seed``."""
    pairs = [load_scaled_pair(s, scale, threshold) for s in samples]
    sampler = CropSampler([p[0] for p in pairs], [p[1] for p in pairs], crop, anomaly_fraction=1.0, jitter=jitter,
                          names=[s.image for s in samples])
    images, masks, sources = [], [], []
    for i, s in enumerate(samples):
        for j in range(1 if s.normal or not sampler.parts[i] else per_image):
            image, mask, _ = sampler.crop_pair(i, sample_seed(seed, i, j))
            images.append(to_model_range(image))
            masks.append(mask_to_tensor(mask))
            sources.append(s)
    return torch.stack(images), torch.stack(masks), sources
