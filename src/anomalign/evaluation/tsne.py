"""Exact t-SNE (van der Maaten & Hinton, 2008) in torch, and a dependency-free scatter plot.

A few hundred points (the paper's Fig. 5: encoded masks, real images, generated images) make the
exact O(N²) algorithm fast; no scikit-learn or matplotlib needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric P [N, N] with each row's Gaussian bandwidth found by bisection to match ``perplexity``."""
    n = x.shape[0]
    d = torch.cdist(x, x).pow(2)
    target = np.log(perplexity)
    beta = torch.ones(n, dtype=x.dtype)
    lo, hi = torch.full_like(beta, 0.0), torch.full_like(beta, float("inf"))
    eye = torch.eye(n, dtype=torch.bool)
    for _ in range(64):
        p = torch.exp(-d * beta[:, None]).masked_fill(eye, 0)
        s = p.sum(1).clamp_min(1e-12)
        entropy = torch.log(s) + beta * (d * p).sum(1) / s
        too_flat = entropy > target  # entropy too high -> narrower kernel -> larger beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    p = p / s[:, None]
    p = (p + p.T) / (2 * n)
    return p.clamp_min(1e-12)


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> np.ndarray:
    """float [N, D] -> [N, 2] embedding. PCA to 50 dims first; early exaggeration 12 for 250 iterations."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float64)
    xt = xt - xt.mean(0)
    if xt.shape[1] > 50:
        _, _, v = torch.linalg.svd(xt, full_matrices=False)
        xt = xt @ v[:50].T
    xt = xt / xt.std().clamp_min(1e-12)
    n = xt.shape[0]
    perplexity = min(perplexity, max(2.0, (n - 1) / 3))
    p = _affinities(xt, perplexity)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64) * 1e-4
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    lr = max(n / 12, 50.0)
    for it in range(iterations):
        exag = 12.0 if it < 250 else 1.0
        momentum = 0.5 if it < 250 else 0.8
        num = 1 / (1 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0)
        q = (num / num.sum()).clamp_min(1e-12)
        pq = (exag * p - q) * num
        grad = 4 * (torch.diag(pq.sum(1)) - pq) @ y
        same = (grad > 0) == (velocity > 0)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        velocity = momentum * velocity - lr * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y.numpy()


def scatter_png(points: dict[str, np.ndarray], path: Path, title: str = "", size: int = 520) -> Path:
    """Scatter plot of named 2-D point groups with a legend, as a PNG (PIL only)."""
    margin, legend_h = 20, 18 * len(points) + 10
    img = Image.new("RGB", (size, size + legend_h + (20 if title else 0)), "white")
    draw = ImageDraw.Draw(img)
    top = 20 if title else 0
    if title:
        draw.text((margin, 4), title, fill="black")
    allp = np.concatenate(list(points.values()))
    lo, hi = allp.min(0), allp.max(0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-9)
    for k, (name, pts) in enumerate(points.items()):
        color = PALETTE[k % len(PALETTE)]
        for x, y in (pts - lo) * scale + margin:
            draw.ellipse([x - 3, top + y - 3, x + 3, top + y + 3], fill=color)
        ly = top + size + 6 + 18 * k
        draw.rectangle([margin, ly, margin + 10, ly + 10], fill=color)
        draw.text((margin + 16, ly - 1), f"{name} ({len(pts)})", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
