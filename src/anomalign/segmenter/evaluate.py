"""The segmentation metrics of a segmenter on a dataset: the loop both training-time validation and
``anomalign evaluate`` run."""
from __future__ import annotations

import torch

from anomalign.data.dataset import PairDataset
from anomalign.metrics import SegmentationMeter


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
