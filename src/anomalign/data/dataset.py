"""A torch Dataset over ``Sample``s: decode, resize to the model size, augment, scale to the model range."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from anomalign.data.imageio import DEFAULT_MASK_THRESHOLD, load_mask, read_image
from anomalign.data.sample import Sample
from anomalign.errors import DataError
from anomalign.data.transforms import (Interp, PairedAugment, mask_to_tensor, resize_pair_pil,
                                       to_model_range)

ResizeMode = Literal["stretch", "center-crop"]


def default_prompt(sample: Sample) -> str:
    """The prompt for a sample: its own ``prompt`` if set, else built from defect type and category."""
    if sample.prompt:
        return sample.prompt
    what = sample.category.replace("_", " ") if sample.category else "surface"
    if sample.normal:
        return f"a photo of a defect-free {what}"
    return f"a photo of a {what} with {defect_phrase(sample.defect)}"


def defect_phrase(defect: str) -> str:
    """"a scratch defect", "an uneven defect"; the generic name gives "an anomaly" (not "a anomaly defect")."""
    name = defect.replace("_", " ").strip().lower() or "anomaly"
    if name == "anomaly":
        return "an anomaly"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} defect"


def load_pair(sample: Sample, size: int | tuple[int, int] | None, threshold: float = DEFAULT_MASK_THRESHOLD,
              resize_mode: ResizeMode = "stretch", interpolation: Interp = "bicubic"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair at ``size`` (None: native). Returns uint8 [H, W, 3], bool [H, W]."""
    image = read_image(sample.image)
    mask = (load_mask(sample.mask, threshold, sample.mask_ids) if sample.mask is not None
            else np.zeros(image.shape[:2], dtype=bool))
    if mask.shape != image.shape[:2]:
        raise DataError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image.name} "
                        f"is {image.shape[1]}x{image.shape[0]}")
    if size is None:
        return image, mask
    h, w = (size, size) if isinstance(size, int) else size
    if resize_mode == "center-crop":
        # Scale the short side to the target, then cut the centre: no distortion, edges may be lost.
        H, W = image.shape[:2]
        s = max(h / H, w / W)
        image, mask = resize_pair_pil(image, mask, (max(h, round(H * s)), max(w, round(W * s))), interpolation)
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        return image[top:top + h, left:left + w], mask[top:top + h, left:left + w]
    return resize_pair_pil(image, mask, (h, w), interpolation)


class PairDataset(Dataset):
    """Items: {"image": float [3, S, S] in [-1, 1], "mask": float [1, S, S] in {0, 1}, "prompt": str,
    "defect": str, "category": str, "normal": bool, "index": int}.

    ``cache=True`` keeps the decoded, resized uint8 pairs in memory (small datasets: decode once).
    Augmentation is seeded per (seed, epoch, index) via ``set_epoch`` so runs are reproducible.
    """

    def __init__(self, samples: list[Sample], size: int = 64, augment: PairedAugment | None = None,
                 threshold: float = DEFAULT_MASK_THRESHOLD, resize_mode: ResizeMode = "stretch",
                 interpolation: Interp = "bicubic", cache: bool = True, seed: int = 0):
        self.samples = list(samples)
        self.size, self.augment, self.threshold = size, augment, threshold
        self.resize_mode, self.interpolation = resize_mode, interpolation
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, resized uint8 image [S, S, 3] and bool mask [S, S] of sample ``i``."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        out = load_pair(self.samples[i], self.size, self.threshold, self.resize_mode, self.interpolation)
        if self.cache is not None:
            self.cache[i] = out
        return out

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items start..stop stacked: images [N, 3, S, S] in [-1, 1], masks [N, 1, S, S] (each item read once)."""
        items = [self[i] for i in range(start, len(self) if stop is None else min(stop, len(self)))]
        return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])

    def __getitem__(self, i: int) -> dict:
        image, mask = self.pair(i)
        x, m = to_model_range(image), mask_to_tensor(mask)
        if self.augment is not None:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i) % 2**63)
            x, m = self.augment(x, m, g)
        s = self.samples[i]
        return {"image": x, "mask": m, "prompt": default_prompt(s), "defect": s.defect,
                "category": s.category, "normal": s.normal, "index": i}
