"""Segmentation metrics of the anomaly class (shared by the segmenter's validation, ``evaluate`` and the
oracle score of ``generate``).

Conventions (the ``evaluate`` command, docs/segmenter.md#evaluation):
- mIoU / mDice: per-image IoU / Dice of the anomaly class, averaged over images whose ground truth is
  non-empty (the polyp benchmarks' per-image mean; an empty-GT image has no defined IoU);
- IoU / Dice (dataset): all pixels of all images pooled, normals included, so false alarms count;
- pixel AUROC from the anomaly probabilities over all pixels.
"""
from __future__ import annotations

import numpy as np
import torch


def iou_dice(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image IoU and Dice. pred, target [B, 1, H, W] (or [B, H, W]) bool/{0,1}. Returns ([B], [B]).

    Images where both are empty get IoU = Dice = 1 (nothing to find, nothing found).
    """
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    total = p.sum(1).float() + t.sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return iou, dice


def has_anomaly(target: torch.Tensor) -> torch.Tensor:
    """Bool [B]: which images of ``target`` [B, 1, H, W] (or [B, H, W]) have at least one anomaly pixel.

    The one convention for empty masks, shared by ``SegmentationMeter`` and the run's validation choice: an image
    whose mask is empty (a normal image, or an anomalous one whose mask is empty) has no defect to find, so it is
    left out of mIoU / mDice (where it would score 1 or 0 by whether anything was predicted) and is scored by
    its false-positive area (``false_positive_area``) instead."""
    return target.reshape(target.shape[0], -1).bool().any(1)


def false_positive_area(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Float [B]: the fraction of each image's pixels predicted anomalous outside its mask (pred, target [B, 1, H,
    W] bool/{0,1}). On an image with an empty mask: the share of the image raised as a false alarm."""
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    return (p & ~t).float().mean(1)


def pixel_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of pixel scores (rank statistic, ties averaged). NaN if one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    avg = (starts + ends - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class SegmentationMeter:
    """Accumulates predictions batch by batch; ``result()`` gives mIoU, mDice, IoU, Dice, AUROC (fractions)."""

    def __init__(self, threshold: float = 0.5, auroc_max_pixels: int = 2_000_000):
        self.threshold, self.auroc_max = threshold, auroc_max_pixels
        self.ious, self.dices = [], []
        self.inter = self.union = self.psum = self.tsum = 0.0
        self.scores, self.labels = [], []

    def update(self, prob: torch.Tensor, target: torch.Tensor, auroc_stride: int = 1) -> None:
        """prob [B, 1, H, W] anomaly probability; target [B, 1, H, W] in {0, 1}. ``auroc_stride``: only every
        k-th row and column enter the AUROC (full-size images: every image contributes, within the cap)."""
        pred, tgt = prob >= self.threshold, target > 0.5
        iou, dice = iou_dice(pred, tgt)
        has_gt = has_anomaly(tgt)  # empty masks: not in mIoU (the convention of has_anomaly)
        self.ious += iou[has_gt].tolist()
        self.dices += dice[has_gt].tolist()
        self.inter += float((pred & tgt).sum())
        self.union += float((pred | tgt).sum())
        self.psum += float(pred.sum())
        self.tsum += float(tgt.sum())
        if sum(s.size for s in self.scores) < self.auroc_max:
            k = max(1, auroc_stride)
            self.scores.append(prob[..., ::k, ::k].detach().float().cpu().numpy().ravel())
            self.labels.append(tgt[..., ::k, ::k].cpu().numpy().ravel())

    def result(self) -> dict[str, float]:
        return {
            "mIoU": float(np.mean(self.ious)) if self.ious else float("nan"),
            "mDice": float(np.mean(self.dices)) if self.dices else float("nan"),
            "IoU": self.inter / self.union if self.union else float("nan"),
            "Dice": 2 * self.inter / (self.psum + self.tsum) if (self.psum + self.tsum) else float("nan"),
            "AUROC": pixel_auroc(np.concatenate(self.scores), np.concatenate(self.labels)) if self.scores else float("nan"),
            "images": len(self.ious),
        }


def mean_sd(values, scale: float = 1.0, fmt: str = "{:.1f}", empty: str = "—") -> str:
    """"mean ± sd" of ``values`` × ``scale`` (sample sd, ddof 1; missing values (None, NaN) left out): how every
    table of seeds in this project is written. One value prints alone; none prints ``empty``."""
    v = np.array([float(x) for x in values if x is not None and x == x], dtype=np.float64) * scale
    if len(v) == 0:
        return empty
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1)).lstrip('+')}"
