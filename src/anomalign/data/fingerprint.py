"""A dataset's fingerprint: the few numbers a plan is decided from (nnU-Net's idea, for image/mask pairs).

Image sizes, how large the defects are (per connected component, at native resolution), grey or colour,
and how many anomalous pairs and normal images each split holds. Read once from the files (masks decoded,
images from their headers plus a few decoded to tell grey from colour, and how colourful), written as ``fingerprint.json``.

Every number a plan is decided from is measured on the train and val splits only (``PLANNING_SPLITS``): the test
split is what the run is judged on, so its masks (and images) must not set the crop, the scale or the defect
sizes. The test split enters only the counts per split (the run's minimums) and ``smallest_side``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from anomalign.data.imageio import header_size, load_mask, read_image
from anomalign.data.sample import DatasetIndex
from anomalign.data.transforms import is_grey

PLANNING_SPLITS = ("train", "val")  # the splits a plan may look at; test is held out until the end


@dataclass
class Fingerprint:
    """What a plan needs to know about a dataset (sizes in pixels, at native resolution)."""

    pairs: dict[str, int]             # anomalous pairs with a non-empty mask, per split
    normals: dict[str, int]           # normal (defect-free) images, per split
    short_side: dict[str, float]      # shorter image side: min, median, max
    long_side: dict[str, float]       # longer image side: min, median, max
    defect_extent: dict[str, float]   # longer side of each defect component's box: p10, median, p90, max
    defect_share: dict[str, float]    # share of an anomalous image covered by its mask: median, p90
    defect_elongation: float          # median over components of extent^2 / area: ~1-2 blobs, >> 1 thin cracks
    components_per_image: float       # median number of defect components per anomalous image
    grey: bool                        # every image checked has equal channels
    empty_masks: int = 0              # anomalous images whose mask is empty (left out of ``pairs``)
    smallest_side: float = 0.0        # shorter side of the smallest image of any split (the run's check only)
    saturation: float = 0.0           # median over the checked images of their median HSV saturation (0 grey, ~0.5 vivid)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(values: list[float], qs: dict[str, float]) -> dict[str, float]:
    if not values:
        return {k: 0.0 for k in qs}
    v = np.asarray(values, dtype=np.float64)
    return {k: float(np.quantile(v, q)) for k, q in qs.items()}


def component_extents(mask: np.ndarray, max_pixels: int = 20_000) -> list[tuple[int, int]]:
    """(longer side of the bounding box, area) in px of each 8-connected component of bool mask [H, W]. A mask with
    more than ``max_pixels`` anomaly pixels is max-pooled first (the walk over components is plain Python),
    and the extents are scaled back: exact to the pooling factor."""
    from anomalign.data.crops import components
    f = 1
    while mask.sum() > max_pixels and min(mask.shape) >= 4:
        h, w = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
        mask = mask[:h, :w].reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
        f *= 2
    out = []
    for c in components(mask):
        ys, xs = c[:, 0], c[:, 1]
        out.append((int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)) * f, len(c) * f * f))
    return out


def fingerprint(index: DatasetIndex, threshold: float = 0.5, grey_checks: int = 8, max_masks: int = 400
                ) -> Fingerprint:
    """The fingerprint of a loaded dataset (``load_dataset``'s index: its files already checked).

    Masks of up to ``max_masks`` anomalous train/val images (spread over them) are measured for the defect sizes;
    every image's size comes from its header; ``grey_checks`` images are decoded to tell grey from colour. Every
    mask is decoded to count the pairs with a non-empty mask per split (test included: the run's minimums).
    """
    pairs: dict[str, int] = {}
    normals: dict[str, int] = {}
    shorts, longs, extents, shares, counts, elongation = [], [], [], [], [], []
    planning = [s for s in index.samples if (s.split or "train") in PLANNING_SPLITS]
    anomalous = [s for s in planning if not s.normal]
    step = max(1, len(anomalous) // max_masks)
    read = {id(s) for s in anomalous[::step]}  # only train/val masks are measured
    empty = 0
    smallest = float("inf")
    for s in index.samples:
        w, h = header_size(s.image)
        smallest = min(smallest, min(w, h))
        split = s.split or "train"
        if split in PLANNING_SPLITS:
            shorts.append(min(w, h))
            longs.append(max(w, h))
        if s.normal:
            normals[split] = normals.get(split, 0) + 1
            continue
        if s.mask is None:
            empty += 1
            continue
        mask = load_mask(s.mask, threshold, s.mask_ids)  # every mask: an empty one is no training pair
        if not mask.any():
            empty += 1
            continue
        pairs[split] = pairs.get(split, 0) + 1
        if id(s) in read:
            ext = component_extents(mask)
            extents += [e for e, _ in ext]
            elongation += [e * e / a for e, a in ext]
            counts.append(len(ext))
            shares.append(float(mask.mean()))
    probe = planning[:: max(1, len(planning) // grey_checks)][:grey_checks]
    probed = [read_image(s.image) for s in probe]
    grey = all(is_grey(a) for a in probed)
    return Fingerprint(
        pairs=pairs, normals=normals,
        short_side=_stats(shorts, {"min": 0, "median": 0.5, "max": 1}),
        long_side=_stats(longs, {"min": 0, "median": 0.5, "max": 1}),
        defect_extent=_stats(extents, {"p10": 0.1, "median": 0.5, "p90": 0.9, "max": 1}),
        defect_share=_stats(shares, {"median": 0.5, "p90": 0.9}),
        defect_elongation=float(np.median(elongation)) if elongation else 0.0,
        components_per_image=float(np.median(counts)) if counts else 0.0, grey=grey, empty_masks=empty,
        smallest_side=float(smallest if index.samples else 0.0),
        saturation=float(np.median([median_saturation(a) for a in probed])) if probed else 0.0)


def median_saturation(image: np.ndarray) -> float:
    """Median HSV saturation (max - min) / max of the pixels of a uint8 image [H, W, 3]: 0 for grey data, ~0.05
    for a photograph of a grey surface (asphalt), ~0.5 for vivid colour (tissue)."""
    a = image.astype(np.float32)
    hi, lo = a.max(-1), a.min(-1)
    return float(np.median(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)))
