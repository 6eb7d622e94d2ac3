"""Can a model tell a generated defect from a real one, and by what? A classifier two-sample test (C2ST).

Crops centred on real defects and on synthetic defects (same rule, so same scale and context) are turned into
a few dozen pooled image statistics; an L2-regularised logistic regression is cross-fitted over k = 10 folds
(stratified), so every crop is scored once by a model that never saw it, and the AUC of those scores says how
separable the two sets are: **0.5 = indistinguishable, 1.0 = always told apart**. Below 0.5 is chance too:
cross-fitting is biased downwards when there is nothing to find, most when both sets hold the same mix of
categories by design (real train vs real test defects of the built-in data: 0.42-0.45 with 10 folds, 0.38-0.47
with 5, which is why 10 is the default). Two variants:

- ``crop``: the whole crop — colour, brightness and texture inside the defect, in a ring along its boundary and in
  the context around it (what a person sees: "not a polyp", "too grey", "specks");
- ``seam``: only the ring of ``ring`` px on both sides of the mask boundary, and only statistics that ignore the
  absolute colour (gradients, Laplacians, local contrast on each side, the step across the boundary): a
  pasted-looking edge, whatever the defect's colour.

Why this classifier: a few hundred crops are too few for a CNN to learn from without overfitting, and one costs
minutes on a CPU thread; pooled statistics plus a convex model take milliseconds, give the same answer for the
same data and seed (only the fold split and the permutations draw random numbers), and their coefficients name
the statistics that separate the sets (``top_features``). The price: the test only sees what its features see —
an AUC near 0.5 means "not separable by these statistics", a bound from below on what a CNN could find.

Control: the whole cross-fit repeated with the labels permuted (``permutations`` times); its AUC should be ~0.5,
and ``p_permutation`` is the share of permuted AUCs at least as high as the real one (with the +1 correction).
Interval: DeLong's variance of the AUC on the cross-fitted scores, normal, clipped to [0, 1]. DeLong treats the
scores as coming from one fixed model, but each fold's model is fitted on a different sample, which adds spread:
on exchangeable crops (100 + 100, labels shuffled 30 times) the cross-fitted AUC varied with a standard
deviation of 0.04-0.06 where DeLong said 0.041. So the standard error is multiplied by ``ci_widening`` = the
permuted AUCs' standard deviation / their mean DeLong error (at least 1), measured on the same crops. Crops are
still taken as independent (several synthetic defects may share a source mask or host): a little narrow then.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP = 64  # crop side the statistics are computed at
CONTEXT = 2.0  # crop side / the defect's longer side: the defect fills about the middle half
MAX_SCALE = 4.0  # the crop covers at most MAX_SCALE x CROP native px (a long crack is not shrunk to a hair)
RING = 3  # px (at CROP) on each side of the mask boundary that make the seam ring


def defect_crop(image: np.ndarray, mask: np.ndarray, size: int = CROP, context: float = CONTEXT,
                max_scale: float = MAX_SCALE) -> tuple[np.ndarray, np.ndarray] | None:
    """The square around one defect, resized to ``size``: uint8 [size, size, 3] and bool [size, size]; None for an
    empty mask. ``image`` uint8 [H, W, 3] (or [H, W], grey), ``mask`` bool [H, W].

    Centre: the defect pixel nearest its bounding box's centre (a curved crack's box centre may miss it). Side
    (native px): ``context`` x the box's longer side, at least ``size`` (small defects keep their native pixels)
    and at most ``max_scale`` x ``size`` and the image's shorter side; the square is shifted to stay inside the
    image, never padded. Applied identically to real and synthetic pairs, so both are seen at the same scale.
    When shrinking, a crop pixel is defect if any native defect pixel falls in it (thin cracks survive)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    h, w = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    k = int(np.argmin((ys - (y0 + y1) / 2) ** 2 + (xs - (x0 + x1) / 2) ** 2))
    side = round(context * (max(y1 - y0, x1 - x0) + 1))
    side = int(min(max(side, size), max_scale * size, h, w))
    top = min(max(0, int(ys[k]) - side // 2), h - side)
    left = min(max(0, int(xs[k]) - side // 2), w - side)
    crop, m = image[top:top + side, left:left + side], mask[top:top + side, left:left + side]
    if side != size:  # area averaging (BOX) when shrinking, as a camera further away would see it
        shrink = side > size
        crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
            (size, size), Image.BOX if shrink else Image.BILINEAR))
        # shrinking, a pixel is defect when any defect pixel falls in it: a 1-px crack must not vanish
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
            (size, size), Image.BOX if shrink else Image.NEAREST)) > (0 if shrink else 127)
    return np.ascontiguousarray(crop), m


def defect_crops(images, masks, size: int = CROP, context: float = CONTEXT, max_scale: float = MAX_SCALE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``defect_crop`` of every pair (iterables of uint8 [H, W, 3] and bool [H, W], sizes may differ); pairs whose
    mask is empty, or empty after resizing, are left out. Returns uint8 [N, size, size, 3], bool [N, size, size]."""
    out = [c for c in (defect_crop(im, m, size, context, max_scale) for im, m in zip(images, masks))
           if c is not None and c[1].any()]
    if not out:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool)
    return np.stack([c[0] for c in out]), np.stack([c[1] for c in out])


def boundary_ring(masks: np.ndarray, width: int = RING) -> np.ndarray:
    """bool [N, S, S]: the pixels within ``width`` px of the boundary of bool masks [N, S, S] — dilated minus
    eroded (square neighbourhood), so the ring reaches ``width`` px into the defect and ``width`` px out of it."""
    t = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    k = 2 * width + 1
    grown = F.max_pool2d(t, k, 1, width)
    shrunk = -F.max_pool2d(-t, k, 1, width)
    return ((grown > 0.5) & ~(shrunk > 0.5))[:, 0].numpy()


def _channels(crops: np.ndarray) -> torch.Tensor:
    """float [N, 3, S, S]: luminance and two opponent colours (red-green, yellow-blue) of uint8 [N, S, S, 3]."""
    x = torch.from_numpy(np.asarray(crops, dtype=np.float32) / 255).permute(0, 3, 1, 2)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([(r + g + b) / 3, r - g, (r + g) / 2 - b], 1)


def _shift_diff(x: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences at distance ``s`` (replicate padding) of [N, C, S, S]: (d/dy, d/dx)."""
    p = F.pad(x, (s, s, s, s), mode="replicate")
    dy = (p[..., 2 * s:, s:-s] - p[..., :-2 * s, s:-s]) / (2 * s)
    dx = (p[..., s:-s, 2 * s:] - p[..., s:-s, :-2 * s]) / (2 * s)
    return dy, dx


def _laplacian(x: torch.Tensor, s: int) -> torch.Tensor:
    p = F.pad(x, (s, s, s, s), mode="replicate")
    return (p[..., 2 * s:, s:-s] + p[..., :-2 * s, s:-s] + p[..., s:-s, 2 * s:] + p[..., s:-s, :-2 * s]
            - 4 * x) / s ** 2


def _pooled(v: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of maps [N, S, S] over bool regions [N, S, S] (0 where a region is empty)."""
    w = region.float()
    n = w.sum((1, 2)).clamp(min=1)
    mean = (v * w).sum((1, 2)) / n
    var = (((v - mean[:, None, None]) ** 2) * w).sum((1, 2)) / n
    return mean, var.sqrt()


def _log(v: torch.Tensor) -> torch.Tensor:
    return torch.log(v + 1e-3)  # gradient energies are heavy-tailed: a log puts them on a linear scale


def crop_features(crops: np.ndarray, masks: np.ndarray, variant: str = "crop", ring: int = RING
                  ) -> tuple[np.ndarray, list[str]]:
    """float64 [N, F] statistics of uint8 crops [N, S, S, 3] with bool masks [N, S, S], and the F names.

    ``crop``: per region — inside the defect, the boundary ring, the context outside both — the mean and
    standard deviation of luminance and of two opponent colours, and the mean log gradient magnitude (1 and 3 px)
    and log |Laplacian| (1 and 3 px) of the luminance: 3 x 10 = 30 statistics.
    ``seam``: the ring only, split at the boundary into its inner and outer half, with no absolute colour or
    brightness: per half the log gradient magnitude (1 and 3 px, mean and spread), log |Laplacian| (1 and 3 px)
    and the local contrast (std of luminance and of each opponent colour); along the boundary the log step
    across it (the derivative along the mask's normal, 1 and 3 px, luminance and colour) and that step
    relative to the gradient on either side and to itself at 3 px (sharpness): 2 x 8 + 6 = 22 statistics."""
    if variant not in ("crop", "seam"):
        raise ValueError(f"variant must be 'crop' or 'seam', not {variant!r}")
    x = _channels(crops)
    m = torch.from_numpy(np.asarray(masks, dtype=bool))
    band = torch.from_numpy(boundary_ring(masks, ring))
    lum = x[:, :1]
    grads = {s: torch.sqrt(sum(d ** 2 for d in _shift_diff(lum, s)))[:, 0] for s in (1, 3)}
    laps = {s: _laplacian(lum, s).abs()[:, 0] for s in (1, 3)}
    feats, names = [], []

    def add(value: torch.Tensor, name: str) -> None:
        feats.append(value)
        names.append(name)

    if variant == "crop":
        for region_name, region in (("inside", m), ("ring", band), ("context", ~m & ~band)):
            for c, cname in enumerate(("luminance", "red-green", "yellow-blue")):
                mean, std = _pooled(x[:, c], region)
                add(mean, f"{region_name}: mean {cname}")
                add(std, f"{region_name}: std {cname}")
            for s in (1, 3):
                add(_log(_pooled(grads[s], region)[0]), f"{region_name}: log gradient {s} px")
                add(_log(_pooled(laps[s], region)[0]), f"{region_name}: log |Laplacian| {s} px")
    else:
        halves = (("ring inside", band & m), ("ring outside", band & ~m))
        for half_name, region in halves:
            for s in (1, 3):
                mean, std = _pooled(grads[s], region)
                add(_log(mean), f"{half_name}: log gradient {s} px")
                if s == 1:
                    add(_log(std), f"{half_name}: log spread of gradient 1 px")
                add(_log(_pooled(laps[s], region)[0]), f"{half_name}: log |Laplacian| {s} px")
            for c, cname in enumerate(("luminance", "red-green", "yellow-blue")):
                add(_log(_pooled(x[:, c], region)[1]), f"{half_name}: log local contrast {cname}")
        # the mask's normal: the gradient of the box-blurred mask, unit length where defined
        soft = F.avg_pool2d(m[:, None].float(), 5, 1, 2, count_include_pad=False)
        ny, nx = _shift_diff(soft, 1)
        norm = torch.sqrt(ny ** 2 + nx ** 2)
        edge = (norm[:, 0] > 1e-3) & band  # the boundary's own neighbourhood, where the normal exists
        ny, nx = ny / norm.clamp(min=1e-6), nx / norm.clamp(min=1e-6)
        steps = {}
        for s in (1, 3):
            dy, dx = _shift_diff(x, s)
            across = (dy * ny + dx * nx).abs()  # [N, 3, S, S]
            steps[s] = _pooled(across[:, 0], edge)[0]
            add(_log(steps[s]), f"boundary: log step across, luminance {s} px")
            if s == 1:
                add(_log(_pooled(across[:, 1], edge)[0]), "boundary: log step across, red-green 1 px")
                add(_log(_pooled(across[:, 2], edge)[0]), "boundary: log step across, yellow-blue 1 px")
        side = 0.5 * (_pooled(grads[1], band & m)[0] + _pooled(grads[1], band & ~m)[0])
        add(_log(steps[1]) - _log(side), "boundary: step across / gradient beside it (log)")
        add(_log(steps[1]) - _log(steps[3]), "boundary: sharpness, step across 1 px / 3 px (log)")
    return torch.stack(feats, 1).double().numpy(), names


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features, classes weighted to equal
    total weight. X float [N, F], y {0, 1} [N] -> (coefficients [F] on the standardised scale, intercept, the
    features' means [F] and scales [F]). The objective is convex: the same data give the same model."""
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    pos = y.mean()
    weights = np.where(y == 1, 0.5 / max(pos, 1e-12), 0.5 / max(1 - pos, 1e-12)) / len(y)
    penalty = np.full(Z.shape[1], l2)
    penalty[-1] = 0.0  # the intercept is not shrunk
    beta = np.zeros(Z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(Z @ beta, -30, 30)))
        grad = Z.T @ (weights * (p - y)) + penalty * beta
        hess = (Z * (weights * p * (1 - p))[:, None]).T @ Z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1]), mu, sd


def logistic_scores(X: np.ndarray, model: tuple[np.ndarray, float, np.ndarray, np.ndarray]) -> np.ndarray:
    """The decision value [N] (log-odds of "synthetic") of ``fit_logistic``'s model on features X [N, F]."""
    coef, intercept, mu, sd = model
    return ((X - mu) / sd) @ coef + intercept


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int [N]: fold of each sample, each class dealt out evenly over the k folds in an order drawn from
    ``seed``."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), dtype=int)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    return folds


def cross_fitted_scores(X: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float = 1.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold decision values [N] (each sample scored by the model fitted on the other folds) and the
    mean standardised coefficients [F] over the folds."""
    scores = np.zeros(len(y))
    coefs = []
    for f in np.unique(folds):
        test = folds == f
        model = fit_logistic(X[~test], y[~test], l2)
        scores[test] = logistic_scores(X[test], model)
        coefs.append(model[0])
    return scores, np.mean(coefs, 0)


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of scores [N] for labels y {0, 1} [N] (Mann-Whitney U with mid-ranks for ties):
    the chance that a random positive scores above a random negative."""
    v10, _ = _placements(scores, y)
    return float(v10.mean())


def _placements(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it beats (ties count half), and per
    negative, the share of positives that beat it."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("the AUC needs samples of both classes")
    cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return cmp.mean(1), cmp.mean(0)


def delong_interval(scores: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, standard error) of the AUC of scores [N] for labels y [N]: DeLong et al. (1988)'s variance,
    a normal interval clipped to [0, 1]."""
    v10, v01 = _placements(scores, y)
    var = (v10.var(ddof=1) if len(v10) > 1 else 0.0) / len(v10) + (v01.var(ddof=1) if len(v01) > 1 else 0.0) / len(v01)
    se = math.sqrt(max(var, 0.0))
    z = _normal_quantile(0.5 + level / 2)
    a = float(v10.mean())
    return max(0.0, a - z * se), min(1.0, a + z * se), se


def _normal_quantile(p: float) -> float:
    """The standard normal's p-quantile (bisection on erf: no scipy here)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def permutation_control(X: np.ndarray, y: np.ndarray, k: int = 10, seed: int = 0, permutations: int = 30,
                        l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The cross-fitted AUC with the labels shuffled (a fresh shuffle and fold split per repetition, drawn from
    ``seed``): what the test gives when there is nothing to find (~0.5). Returns the AUCs [permutations] and
    DeLong's standard errors of them [permutations]."""
    rng = np.random.default_rng([seed, 1])
    aucs, ses = [], []
    for _ in range(permutations):
        shuffled = rng.permutation(y)
        folds = stratified_folds(shuffled, k, int(rng.integers(2 ** 31)))
        scores = cross_fitted_scores(X, shuffled, folds, l2)[0]
        aucs.append(auc(scores, shuffled))
        ses.append(delong_interval(scores, shuffled)[2])
    return np.array(aucs), np.array(ses)


def c2st(X: np.ndarray, y: np.ndarray, names: list[str] | None = None, k: int = 10, seed: int = 0,
         permutations: int = 30, l2: float = 1.0, level: float = 0.95, top: int = 3) -> dict:
    """The classifier two-sample test on features X [N, F] with labels y [N] (1 = synthetic, 0 = real).

    Returns {"auc", "ci_low", "ci_high", "se", "ci_widening" (see the module docstring), "auc_permuted" (mean
    over the permutations), "auc_permuted_sd", "p_permutation", "folds", "top_features" ([name, mean
    standardised coefficient] of the ``top`` largest in size; > 0: higher on the synthetic side)}."""
    y = np.asarray(y, dtype=int)
    k = int(min(k, np.bincount(y, minlength=2).min()))
    if k < 2:
        raise ValueError("the two-sample test needs at least 2 samples of each set")
    scores, coef = cross_fitted_scores(X, y, stratified_folds(y, k, seed), l2)
    value = auc(scores, y)
    se = delong_interval(scores, y, level)[2]
    out = {"auc": value, "folds": k}
    widen = 1.0
    if permutations:
        perm, perm_se = permutation_control(X, y, k, seed, permutations, l2)
        # DeLong sees one fixed scorer; refitting on other folds adds spread. The permuted runs measure it where
        # the truth is known (their AUCs' spread against DeLong's error for them): the interval widens by that.
        if len(perm) > 2 and perm_se.mean() > 0:
            widen = max(1.0, float(perm.std(ddof=1) / perm_se.mean()))
        out |= {"auc_permuted": float(perm.mean()), "auc_permuted_sd": float(perm.std(ddof=1)) if len(perm) > 1
                else 0.0, "p_permutation": float((1 + (perm >= value).sum()) / (1 + len(perm)))}
    z = _normal_quantile(0.5 + level / 2)
    out |= {"se": se * widen, "ci_low": max(0.0, value - z * se * widen), "ci_high": min(1.0, value + z * se * widen),
            "ci_widening": widen}
    if names is not None:
        order = np.argsort(-np.abs(coef))[:top]
        out["top_features"] = [[names[i], round(float(coef[i]), 3)] for i in order]
    return out


def discriminability(real_crops: np.ndarray, real_masks: np.ndarray, synthetic_crops: np.ndarray,
                     synthetic_masks: np.ndarray, seed: int = 0, k: int = 10, permutations: int = 30,
                     ring: int = RING, l2: float = 1.0, max_crops: int = 500) -> dict:
    """How well real and synthetic defect crops (``defect_crops``: uint8 [N, S, S, 3] + bool [N, S, S] each) can
    be told apart: ``c2st`` of the ``crop`` and of the ``seam`` features. Each set is cut to ``max_crops`` spread
    evenly over it. Returns {"crop": c2st dict, "seam": c2st dict, "real": N, "synthetic": M, "size": S,
    "ring": px, "seed": seed}."""
    def cap(images, masks):
        if len(images) <= max_crops:
            return images, masks
        pick = np.linspace(0, len(images) - 1, max_crops).round().astype(int)
        return images[pick], masks[pick]

    real_crops, real_masks = cap(real_crops, real_masks)
    synthetic_crops, synthetic_masks = cap(synthetic_crops, synthetic_masks)
    crops = np.concatenate([real_crops, synthetic_crops])
    masks = np.concatenate([real_masks, synthetic_masks])
    y = np.r_[np.zeros(len(real_crops), int), np.ones(len(synthetic_crops), int)]
    out: dict = {}
    for variant in ("crop", "seam"):
        X, names = crop_features(crops, masks, variant, ring)
        out[variant] = c2st(X, y, names, k, seed, permutations, l2)
    return out | {"real": len(real_crops), "synthetic": len(synthetic_crops), "size": int(crops.shape[1]),
                  "ring": ring, "seed": seed}
