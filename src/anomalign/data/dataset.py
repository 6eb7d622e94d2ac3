"""A torch Dataset over ``Sample``s: decode, resize to the model size, scale to the model range."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from anomalign.data.imageio import DEFAULT_MASK_THRESHOLD, load_mask, read_image
from anomalign.data.sample import Sample
from anomalign.errors import DataError
from anomalign.data.transforms import Interp, mask_to_tensor, resize_pair_pil, to_model_range

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
              interpolation: Interp = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair at ``size`` (None: native), stretched to it (every defect kept, aspect ratio not).
    Returns uint8 [H, W, 3], bool [H, W]."""
    image = read_image(sample.image)
    mask = (load_mask(sample.mask, threshold, sample.mask_ids) if sample.mask is not None
            else np.zeros(image.shape[:2], dtype=bool))
    if mask.shape != image.shape[:2]:
        raise DataError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image.name} "
                        f"is {image.shape[1]}x{image.shape[0]}")
    if size is None:
        return image, mask
    h, w = (size, size) if isinstance(size, int) else size
    return resize_pair_pil(image, mask, (h, w), interpolation)


class PairDataset(Dataset):
    """Items: {"image": float [3, S, S] in [-1, 1], "mask": float [1, S, S] in {0, 1}, "prompt": str,
    "defect": str, "category": str, "normal": bool, "index": int}.

    ``cache=True`` keeps the decoded, resized uint8 pairs in memory (small datasets: decode once).
    Training augments with exact dihedral views of these tensors (``transforms.DihedralViews``).
    """

    def __init__(self, samples: list[Sample], size: int = 64, threshold: float = DEFAULT_MASK_THRESHOLD,
                 interpolation: Interp = "bicubic", cache: bool = True):
        self.samples = list(samples)
        self.size, self.threshold, self.interpolation = size, threshold, interpolation
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, resized uint8 image [S, S, 3] and bool mask [S, S] of sample ``i``."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        out = load_pair(self.samples[i], self.size, self.threshold, self.interpolation)
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
        s = self.samples[i]
        return {"image": x, "mask": m, "prompt": default_prompt(s), "defect": s.defect,
                "category": s.category, "normal": s.normal, "index": i}
