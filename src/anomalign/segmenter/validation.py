"""The segmentation metrics of a segmenter on a dataset: the loop both training-time validation and
``anomalign evaluate`` run."""
from __future__ import annotations

import math

import torch

from anomalign.data.dataset import PairDataset, load_pair
from anomalign.data.transforms import mask_to_tensor, to_model_range
from anomalign.metrics import SegmentationMeter
from anomalign.segmenter.sliding import predict_full_size, predict_native, uses_one_pass


@torch.no_grad()
def evaluate_samples(model, dataset: PairDataset, device="cpu", batch_size: int = 32,
                     threshold: float = 0.5) -> dict[str, float]:
    """Segmentation metrics (``anomalign.metrics``: mIoU, mDice, IoU, Dice, AUROC, images) of a segmenter on a
    PairDataset, batch by batch: images [B, 3, S, S] in [-1, 1] -> ``model.predict_proba`` [B, 1, S, S]
    against masks [B, 1, S, S]; the model is put back in the mode it was in."""
    was = model.training
    model.eval()
    meter = SegmentationMeter(threshold)
    try:
        for s in range(0, len(dataset), batch_size):
            x, m = dataset.tensors(s, s + batch_size)
            meter.update(model.predict_proba(x.to(device)), m.to(device))
    finally:
        model.train(was)
    return meter.result()


@torch.no_grad()
def evaluate_native(model, samples: list, crop: int, scale: float = 1.0, device="cpu", threshold: float = 0.5,
                    mask_threshold: float = 0.5, overlap: float = 0.5, batch_size: int = 16,
                    auroc_pixels: int = 2_000_000, whole_image: bool = False, mode: str = "windows",
                    precision: str = "auto") -> dict[str, float]:
    """The same metrics at each image's own size: the probability from sliding ``crop``-px windows at
    ``scale``, or in one pass with ``mode`` one-pass (``segmenter.sliding.uses_one_pass``;
    ``predict_native``) — or, with ``whole_image``, from the image resized to
    ``crop`` and the probability resized back — against the full-size mask [H, W] of every sample.
    Each image gives about the same number of pixels to the AUROC (at most ``auroc_pixels`` in all)."""
    was = model.training
    model.eval()
    meter = SegmentationMeter(threshold, auroc_max_pixels=auroc_pixels)
    try:
        for s in samples:
            image, mask = load_pair(s, None, mask_threshold)
            x = to_model_range(image).to(device)
            if whole_image:  # what `segment` writes for this model: the same function
                prob = predict_full_size(model, x, crop, precision=precision)
            else:
                prob = predict_native(model.predict_proba, x, crop, scale, overlap, batch_size,
                                      one_pass=uses_one_pass(mode), precision=precision)
            stride = math.ceil(math.sqrt(mask.size * len(samples) / auroc_pixels))
            meter.update(prob[None], mask_to_tensor(mask)[None].to(device), auroc_stride=stride)
    finally:
        model.train(was)
    return meter.result()


def evaluate_run_style(model, samples: list, size: int, device="cpu", threshold: float = 0.5,
                       mask_threshold: float = 0.5, batch_size: int = 32, full_size: bool = False,
                       mode: str = "windows", precision: str = "auto") -> dict[str, float]:
    """Metrics the way ``model`` was trained: at native resolution with sliding windows when it was trained on
    crops (``model.crop_size``), else on images resized to ``size`` — or, with ``full_size``, its prediction at
    ``size`` resized back to each image and scored against the full-size mask (what ``segment`` delivers)."""
    if getattr(model, "crop_size", None):
        return evaluate_native(model, samples, model.crop_size, model.scale or 1.0, device, threshold, mask_threshold,
                               mode=mode, precision=precision)
    if full_size:
        return evaluate_native(model, samples, size, device=device, threshold=threshold,
                               mask_threshold=mask_threshold, whole_image=True, precision=precision)
    ds = PairDataset(samples, size=size, cache=False, threshold=mask_threshold)
    return evaluate_samples(model, ds, device, batch_size, threshold)
