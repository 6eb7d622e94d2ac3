"""Choosing among segmenters on the validation split in a way that holds with a few dozen pairs.

A "best checkpoint" picked on 5 val images is noise, and so is a 1-point gap between two runs (the same recipe
moved magnetic-tile seeds by -6 to +1.5 test mIoU). Here the arms are compared *paired*: the same val images,
each arm's final weights, per-image IoU, and an arm replaces the baseline only when

- its mean gain over the baseline is at least ``min_gain`` (1 mIoU point by default), and
- the ``quantile`` (5 %) bootstrap bound of that mean gain, resampling the val images, is above 0.

With few val anomalies the bound is wide, so the baseline is kept unless the gain is large and consistent:
the choice errs towards "synthesis did not help", which is what the measurements here mostly found.
"""
from __future__ import annotations

import numpy as np
import torch

from anomalign.data.dataset import load_pair
from anomalign.data.transforms import to_model_range
from anomalign.metrics import iou_dice


@torch.no_grad()
def per_image_iou(model, samples: list, device="cpu", threshold: float = 0.5, mask_threshold: float = 0.5,
                  size: int | None = None) -> np.ndarray:
    """IoU [N] of ``model``'s full-size prediction (``segmenter.sliding.predict_full_size``) with the mask of
    each anomalous sample (normal samples are skipped: their IoU is undefined)."""
    from anomalign.segmenter.sliding import predict_full_size
    model.eval()
    out = []
    for s in samples:
        if s.normal:
            continue
        image, mask = load_pair(s, None, mask_threshold)
        prob = predict_full_size(model, to_model_range(image).to(device), size or model.size)
        iou, _ = iou_dice((prob >= threshold)[None], torch.from_numpy(mask)[None, None].to(prob.device))
        out.append(float(iou[0]))
    return np.asarray(out, dtype=np.float64)


def bootstrap_bound(gain: np.ndarray, quantile: float = 0.05, n_boot: int = 2000, seed: int = 0) -> float:
    """The ``quantile`` of the mean of ``gain`` [N] over ``n_boot`` resamples of its entries (with replacement)."""
    if len(gain) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    means = gain[rng.integers(0, len(gain), size=(n_boot, len(gain)))].mean(axis=1)
    return float(np.quantile(means, quantile))


def choose(baseline: np.ndarray, arms: dict[str, np.ndarray], min_gain: float = 0.01, quantile: float = 0.05,
           n_boot: int = 2000, seed: int = 0) -> dict:
    """The arm that replaces the baseline, if any (rules in the module docstring).

    ``baseline``: per-image val IoU [N]; ``arms``: name -> per-image val IoU [N] on the same images. Returns
    {"chosen": "baseline" or an arm's name, "reason": str, "baseline": mIoU, "images": N,
    "arms": {name: {"mIoU", "gain", "bound", "wins"}}}."""
    rows = {}
    for name, scores in arms.items():
        if scores.shape != baseline.shape:
            raise ValueError(f"arm {name!r} was scored on {len(scores)} images, the baseline on {len(baseline)}")
        gain = scores - baseline
        mean = float(gain.mean()) if len(gain) else float("nan")
        bound = bootstrap_bound(gain, quantile, n_boot, seed)
        rows[name] = {"mIoU": float(scores.mean()) if len(scores) else float("nan"), "gain": mean, "bound": bound,
                      "wins": bool(mean >= min_gain and bound > 0)}
    winners = [n for n, r in rows.items() if r["wins"]]
    result = {"baseline": float(baseline.mean()) if len(baseline) else float("nan"), "images": int(len(baseline)),
              "min_gain": min_gain, "quantile": quantile, "arms": rows}
    if winners:
        best = max(winners, key=lambda n: rows[n]["gain"])
        r = rows[best]
        result |= {"chosen": best, "reason": f"{best} gains {100 * r['gain']:+.1f} val mIoU points over the baseline "
                                             f"on {len(baseline)} images ({100 * quantile:g} % bootstrap bound "
                                             f"{100 * r['bound']:+.1f} > 0)"}
    elif rows:
        top = max(rows, key=lambda n: rows[n]["gain"])
        r = rows[top]
        result |= {"chosen": "baseline", "reason": (
            f"no arm wins by more than the noise: the best, {top}, gains {100 * r['gain']:+.1f} val mIoU points "
            f"(needs >= {100 * min_gain:g}) with a {100 * quantile:g} % bootstrap bound of {100 * r['bound']:+.1f} "
            f"(needs > 0) on {len(baseline)} images")}
    else:
        result |= {"chosen": "baseline", "reason": "no arm was run"}
    return result
