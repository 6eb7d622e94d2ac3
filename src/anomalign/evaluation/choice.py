"""Choosing among segmenters on the validation split in a way that holds with a few dozen pairs — and with a few.

A "best checkpoint" picked on 5 val images is noise, and so is a 1-point gap between two runs (the same recipe
moved magnetic-tile seeds by -6 to +1.5 test mIoU). Here the arms are compared *paired*: the same val images,
each arm's final weights, per-image IoU. The rule (``choose``; pre-registered in docs/run.md, "Pre-registered
choice rule", with its simulated false-adoption rate and power) adopts an arm only when

- the val split holds at least ``MIN_VAL_ANOMALIES`` anomalous images with a non-empty mask (below that it
  never adopts, and says so),
- its paired per-image gain passes a one-sided paired t-test at ``ALPHA`` after Holm's correction over the arms
  compared (``paired_t``, ``holm``): the family of arms, not each arm, has a 5 % chance of a false adoption,
- its mean gain is at least ``min_gain`` (1 mIoU point by default), and
- it does not raise more false alarms on the val normal images than the baseline: its mean false-positive area
  there is at most ``FP_TOLERANCE`` above the baseline's (``false_positive_check``).

Among the arms that pass, the one with the largest mean gain replaces the baseline. Images whose mask is empty
follow ``metrics.has_anomaly``: they are scored by false-positive area, never by IoU, as in ``SegmentationMeter``.

The rule before issue 45 (``choose_bootstrap``: a 5 % percentile-bootstrap bound per arm, no correction, no
minimum) is kept for the simulation benchmark that compares the two (benchmarks/choice_rule_simulation.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from anomalign.data.dataset import load_pair
from anomalign.data.transforms import to_model_range
from anomalign.metrics import false_positive_area, has_anomaly, iou_dice

ALPHA = 0.05            # one-sided family-wise error of adopting an arm that does not help (over all arms: Holm)
MIN_VAL_ANOMALIES = 10  # fewer val anomalies: never adopt (t-tests on skewed per-image gains are off below it)
FP_TOLERANCE = 0.001    # mean false-positive area an arm may add on the val normals: 0.1 % of each image's pixels
RULE = (f"one-sided paired t-test of the per-image val IoU gain, Holm over the arms at {ALPHA:g}, at least "
        f"{MIN_VAL_ANOMALIES} val anomalies, mean gain >= min_gain, false-positive area on the val normals at most "
        f"{100 * FP_TOLERANCE:g} % of the pixels above the baseline's")


@torch.no_grad()
def per_image_scores(model, samples: list, device="cpu", threshold: float = 0.5, mask_threshold: float = 0.5,
                     size: int | None = None) -> dict[str, np.ndarray]:
    """``model``'s full-size predictions (``segmenter.sliding.predict_full_size``) scored per image:
    {"iou": [N] over the images whose mask has an anomaly, "fp": [M] false-positive area over the images with
    an empty mask (normal images, and anomalous ones whose mask is empty: ``metrics.has_anomaly``)}, each in the
    order of ``samples``."""
    from anomalign.segmenter.sliding import predict_full_size
    model.eval()
    ious, fps = [], []
    for s in samples:
        image, mask = load_pair(s, None, mask_threshold)
        prob = predict_full_size(model, to_model_range(image).to(device), size or model.size)
        pred, target = (prob >= threshold)[None], torch.from_numpy(mask)[None, None].to(prob.device)
        if bool(has_anomaly(target)[0]):
            ious.append(float(iou_dice(pred, target)[0][0]))
        else:
            fps.append(float(false_positive_area(pred, target)[0]))
    return {"iou": np.asarray(ious, dtype=np.float64), "fp": np.asarray(fps, dtype=np.float64)}


def per_image_iou(model, samples: list, device="cpu", threshold: float = 0.5, mask_threshold: float = 0.5,
                  size: int | None = None) -> np.ndarray:
    """IoU [N] of ``model``'s full-size prediction on each sample whose mask has an anomaly (``per_image_scores``)."""
    return per_image_scores(model, samples, device, threshold, mask_threshold, size)["iou"]


# the statistics ----------------------------------------------------------------------------------------------


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz; Numerical Recipes
    6.4), so the t distribution needs no scipy."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def student_t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom: Newton steps on ``student_t_sf`` (a few
    suffice), kept inside a bisection bracket so that it cannot diverge in the heavy tails of small ``df``."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    lo, hi, x = -1e6, 1e6, 0.0
    for _ in range(200):
        err = (1.0 - student_t_sf(x, df)) - q
        if abs(err) < 1e-14:
            break
        if err < 0:
            lo = x
        else:
            hi = x
        pdf = math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))
        step = x - err / pdf if pdf > 0 else (lo + hi) / 2
        x = step if lo < step < hi else (lo + hi) / 2
        if hi - lo < 1e-12 * max(1.0, abs(x)):
            break
    return x


def paired_t(gain: np.ndarray, alpha: float = ALPHA) -> dict[str, float]:
    """One-sided paired t-test of "the mean gain is > 0" on per-image gains [N]: {"mean", "sd", "t", "p", "bound"}
    with ``bound`` the lower (1 - alpha) confidence bound of the mean. Gains that are all equal have sd 0: p is 0
    when they are positive (every image gained the same), else 1. Fewer than 2 images: p and bound are NaN (no
    spread to judge the mean against)."""
    gain = np.asarray(gain, dtype=np.float64)
    n = len(gain)
    mean = float(gain.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "sd": float("nan"), "t": float("nan"), "p": float("nan"), "bound": float("nan")}
    sd = float(gain.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # all equal, up to float rounding
        return {"mean": mean, "sd": 0.0, "t": math.copysign(math.inf, mean) if mean else 0.0,
                "p": 0.0 if mean > 0 else 1.0, "bound": mean}
    se = sd / math.sqrt(n)
    t = mean / se
    return {"mean": mean, "sd": sd, "t": t, "p": student_t_sf(t, n - 1),
            "bound": mean - student_t_quantile(1 - alpha, n - 1) * se}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down; NaN stays NaN and counts as 1): an arm is adopted only when its adjusted
    p is <= alpha, which keeps the chance of any false adoption among the arms at alpha."""
    names = sorted(pvalues, key=lambda k: (not pvalues[k] <= 1.0, pvalues[k] if pvalues[k] <= 1.0 else 0.0))
    m, running, out = len(names), 0.0, {}
    for i, name in enumerate(names):
        p = pvalues[name]
        running = max(running, min(1.0, (m - i) * p) if p <= 1.0 else 1.0)
        out[name] = running if p <= 1.0 else float("nan")
    return out


def false_positive_check(fp_baseline: np.ndarray | None, fp_arm: np.ndarray | None,
                         tolerance: float = FP_TOLERANCE) -> dict:
    """The second criterion: the arm's mean false-positive area on the val normal images [M] minus the
    baseline's, and whether it is within ``tolerance``. No normal images: not checked (``ok`` True, ``images``
    0), and the reason says so."""
    m = 0 if fp_baseline is None else len(fp_baseline)
    if m == 0:
        return {"images": 0, "baseline": float("nan"), "arm": float("nan"), "increase": float("nan"), "ok": True}
    if fp_arm is None or len(fp_arm) != m:
        raise ValueError(f"false-positive areas: the baseline was scored on {m} normal images, the arm on "
                         f"{0 if fp_arm is None else len(fp_arm)}")
    base, arm = float(np.mean(fp_baseline)), float(np.mean(fp_arm))
    return {"images": m, "baseline": base, "arm": arm, "increase": arm - base, "ok": bool(arm - base <= tolerance)}


# the rule ----------------------------------------------------------------------------------------------------


def choose(baseline: np.ndarray, arms: dict[str, np.ndarray], min_gain: float = 0.01, *,
           fp_baseline: np.ndarray | None = None, fp_arms: dict[str, np.ndarray] | None = None,
           alpha: float = ALPHA, min_images: int = MIN_VAL_ANOMALIES, fp_tolerance: float = FP_TOLERANCE) -> dict:
    """The arm that replaces the baseline, if any (the rule in the module docstring).

    ``baseline``: per-image val IoU [N] (anomalous images with a non-empty mask); ``arms``: name -> per-image val
    IoU [N] on the same images; ``fp_baseline`` / ``fp_arms``: false-positive area [M] on the val images with an
    empty mask (None: no normals). Returns {"chosen": "baseline" or an arm, "reason": str, "rule": str,
    "baseline": mIoU, "images": N, "normals": M, "arms": {name: {"mIoU", "gain", "sd", "bound", "p", "p_holm",
    "fp_increase", "fp_ok", "wins"}}} (gains, bounds and areas as fractions)."""
    baseline = np.asarray(baseline, dtype=np.float64)
    n = len(baseline)
    tests = {}
    for name, scores in arms.items():
        if np.shape(scores) != baseline.shape:
            raise ValueError(f"arm {name!r} was scored on {len(scores)} images, the baseline on {n}")
        tests[name] = paired_t(np.asarray(scores, dtype=np.float64) - baseline, alpha)
    adjusted = holm({k: r["p"] for k, r in tests.items()})
    rows = {}
    for name, r in tests.items():
        fp = false_positive_check(fp_baseline, (fp_arms or {}).get(name), fp_tolerance)
        wins = bool(n >= min_images and adjusted[name] <= alpha and r["mean"] >= min_gain and fp["ok"])
        rows[name] = {"mIoU": float(np.mean(arms[name])) if n else float("nan"), "gain": r["mean"], "sd": r["sd"],
                      "bound": r["bound"], "p": r["p"], "p_holm": adjusted[name], "fp_increase": fp["increase"],
                      "fp_ok": fp["ok"], "wins": wins}
    m = 0 if fp_baseline is None else len(fp_baseline)
    result = {"rule": RULE, "baseline": float(baseline.mean()) if n else float("nan"), "images": int(n),
              "normals": int(m), "baseline_fp": float(np.mean(fp_baseline)) if m else float("nan"),
              "min_gain": min_gain, "alpha": alpha, "quantile": alpha, "min_images": min_images,
              "fp_tolerance": fp_tolerance, "arms": rows}
    return result | decision(rows, n, m, min_gain=min_gain, alpha=alpha, min_images=min_images,
                             fp_tolerance=fp_tolerance)


def decision(rows: dict, n: int, m: int, *, min_gain: float, alpha: float, min_images: int,
             fp_tolerance: float, split: str = "val", test: str = "one-sided paired t",
             more: str = "More val anomalies (--val-fraction) let it judge") -> dict:
    """{"chosen", "reason"} from ``choose``'s rows: the winner with the largest gain, or why none won (``split``,
    ``test``, ``more``: the words for the images judged on, the test, and how to get more of them)."""
    fp_note = (f"false-positive area on {m} {split} normals" if m
               else f"no {split} normal images: false alarms not checked")
    if not rows:
        return {"chosen": "baseline", "reason": "no arm was run"}
    winners = [k for k, r in rows.items() if r["wins"]]
    if winners:
        best = max(winners, key=lambda k: rows[k]["gain"])
        r = rows[best]
        fp = f"{fp_note} {100 * r['fp_increase']:+.2f} % of the pixels" if m else fp_note
        return {"chosen": best, "reason": (
            f"{best} gains {100 * r['gain']:+.1f} {split} mIoU points over the baseline on {n} images ({test}, "
            f"Holm over {len(rows)} arm(s): p {r['p_holm']:.3f} <= {alpha:g}; lower {100 * (1 - alpha):g} % bound "
            f"{100 * r['bound']:+.1f}); {fp}")}
    if n < min_images:
        return {"chosen": "baseline", "reason": (
            f"only {n} {split} anomal{'y' if n == 1 else 'ies'}: the rule needs >= {min_images} to adopt an arm (with "
            f"fewer, a {split} gain cannot be told from noise); kept the baseline. {more}")}
    top = max(rows, key=lambda k: rows[k]["gain"] if rows[k]["gain"] == rows[k]["gain"] else -math.inf)
    r = rows[top]
    why = []
    if not r["p_holm"] <= alpha:
        why.append(f"Holm-adjusted p {r['p_holm']:.3f} (needs <= {alpha:g}; lower {100 * (1 - alpha):g} % bound "
                   f"{100 * r['bound']:+.1f})")
    if not r["gain"] >= min_gain:
        why.append(f"needs a gain >= {100 * min_gain:g}")
    if not r["fp_ok"]:
        why.append(f"it adds {100 * r['fp_increase']:.2f} % of the pixels as false alarms on {m} {split} normals "
                   f"(tolerance {100 * fp_tolerance:g} %)")
    return {"chosen": "baseline", "reason": (
        f"no arm wins by more than the noise: the best, {top}, gains {100 * r['gain']:+.1f} {split} mIoU points on {n} "
        f"images; {'; '.join(why)}")}


def bootstrap_bound(gain: np.ndarray, quantile: float = 0.05, n_boot: int = 2000, seed: int = 0) -> float:
    """The ``quantile`` of the mean of ``gain`` [N] over ``n_boot`` resamples of its entries (with replacement)."""
    if len(gain) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    means = gain[rng.integers(0, len(gain), size=(n_boot, len(gain)))].mean(axis=1)
    return float(np.quantile(means, quantile))


def choose_bootstrap(baseline: np.ndarray, arms: dict[str, np.ndarray], min_gain: float = 0.01,
                     quantile: float = 0.05, n_boot: int = 2000, seed: int = 0) -> str:
    """The rule before issue 45, kept only so that the simulation benchmark can measure it beside ``choose``:
    an arm wins when its mean gain is >= ``min_gain`` and the ``quantile`` percentile-bootstrap bound of its
    mean gain is > 0, each arm on its own (no correction, no minimum of images); the winner with the largest
    gain is returned ("baseline" when none wins)."""
    best, best_gain = "baseline", -math.inf
    for name, scores in arms.items():
        gain = np.asarray(scores, dtype=np.float64) - baseline
        mean = float(gain.mean())
        if mean >= min_gain and bootstrap_bound(gain, quantile, n_boot, seed) > 0 and mean > best_gain:
            best, best_gain = name, mean
    return best


# the cross-fitted choice (--choice cv): its statistics, ahead of the pipeline's K-fold training -------------------

MIN_FOLDS = 3  # a t on fold means needs a spread of them: with 2 folds it has 1 degree of freedom


def pooled_fold_gain(fold_gains: list[np.ndarray], alpha: float = ALPHA) -> dict:
    """The paired gain of one arm pooled over K cross-fitting folds, each fold's per-image held-out gains [n_k]
    (fold k's arm minus fold k's baseline, on the images fold k held out).

    Images of one fold share its two models, so their gains are not independent: the test is a one-sided t on
    the K fold means (``paired_t`` of the means, K - 1 degrees of freedom), which stays valid whatever the
    models add within a fold, at the price of few degrees of freedom. Returns ``paired_t``'s keys for the fold
    means ("mean" is the mean of the fold means) plus "folds" (K), "images" (sum n_k), "fold_means" and
    "image_mean" (the mean over all images, for the report)."""
    means = [float(np.mean(g)) for g in fold_gains if len(g)]
    images = int(sum(len(g) for g in fold_gains))
    r = paired_t(np.asarray(means), alpha)
    pooled = float(np.concatenate([np.asarray(g, dtype=np.float64) for g in fold_gains]).mean()) if images else \
        float("nan")
    return r | {"folds": len(means), "images": images, "fold_means": means, "image_mean": pooled}


def choose_cv(baseline_folds: list[np.ndarray], arms_folds: dict[str, list[np.ndarray]], min_gain: float = 0.01, *,
              fp_baseline: np.ndarray | None = None, fp_arms: dict[str, np.ndarray] | None = None,
              alpha: float = ALPHA, min_images: int = MIN_VAL_ANOMALIES, min_folds: int = MIN_FOLDS,
              fp_tolerance: float = FP_TOLERANCE) -> dict:
    """The cross-fitted choice: ``choose``'s rule with the held-out images of K folds instead of one val split.

    ``baseline_folds``: per fold, the per-image held-out IoU [n_k] of that fold's baseline; ``arms_folds``: arm ->
    per fold, its per-image IoU on the same images; ``fp_baseline`` / ``fp_arms``: false-positive areas on the
    held-out images with an empty mask, pooled over the folds. An arm is adopted when there are at least
    ``min_images`` held-out anomalies and ``min_folds`` folds, the t-test on its fold-mean gains passes at
    ``alpha`` after Holm over the arms, its mean gain is >= ``min_gain`` and it adds at most ``fp_tolerance``
    false-positive area. Returns ``choose``'s keys, each arm's row with "folds" (its fold means)."""
    k = len(baseline_folds)
    n = int(sum(len(b) for b in baseline_folds))
    tests = {}
    for name, folds in arms_folds.items():
        if len(folds) != k or any(np.shape(a) != np.shape(b) for a, b in zip(folds, baseline_folds)):
            raise ValueError(f"arm {name!r} was scored on other folds or images than the baseline")
        tests[name] = pooled_fold_gain([np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
                                        for a, b in zip(folds, baseline_folds)], alpha)
    adjusted = holm({name: r["p"] for name, r in tests.items()})
    rows = {}
    for name, r in tests.items():
        fp = false_positive_check(fp_baseline, (fp_arms or {}).get(name), fp_tolerance)
        wins = bool(n >= min_images and r["folds"] >= min_folds and adjusted[name] <= alpha and r["mean"] >= min_gain
                    and fp["ok"])
        rows[name] = {"mIoU": float(np.mean(np.concatenate(arms_folds[name]))) if n else float("nan"),
                      "gain": r["mean"], "image_gain": r["image_mean"], "folds": r["fold_means"], "sd": r["sd"],
                      "bound": r["bound"], "p": r["p"], "p_holm": adjusted[name], "fp_increase": fp["increase"],
                      "fp_ok": fp["ok"], "wins": wins}
    m = 0 if fp_baseline is None else len(fp_baseline)
    result = {"rule": RULE_CV, "baseline": float(np.mean(np.concatenate(baseline_folds))) if n else float("nan"),
              "images": n, "folds": k, "normals": int(m),
              "baseline_fp": float(np.mean(fp_baseline)) if m else float("nan"), "min_gain": min_gain,
              "alpha": alpha, "quantile": alpha, "min_images": min_images, "min_folds": min_folds,
              "fp_tolerance": fp_tolerance, "arms": rows}
    if n >= min_images and k < min_folds:
        return result | {"chosen": "baseline", "reason": f"only {k} fold(s): the cross-fitted rule needs >= "
                                                          f"{min_folds} to judge a gain; kept the baseline"}
    return result | decision(rows, n, m, min_gain=min_gain, alpha=alpha, min_images=min_images,
                             fp_tolerance=fp_tolerance, split="held-out", test=f"one-sided t on {k} fold means",
                             more="More labelled anomalies let it judge")


RULE_CV = (f"cross-fitted: one-sided t-test on the fold means of the per-image held-out IoU gain, Holm over the arms "
           f"at {ALPHA:g}, at least {MIN_VAL_ANOMALIES} held-out anomalies and {MIN_FOLDS} folds, mean gain >= "
           f"min_gain, false-positive area on the held-out normals at most {100 * FP_TOLERANCE:g} % of the pixels "
           "above the baseline's")
