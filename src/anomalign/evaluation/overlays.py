"""Overlay grids of several segmenter runs on the same test images (studies compare their arms with them)."""
from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def segmentation_overlays(out: Path, arms: list[str], data: Path, n: int = 8, options=None,
                          path: Path | None = None) -> Path:
    """``OUT/overlays.png`` (or ``path``): rows of anomalous test images spread over the split — ground-truth
    contour, then the prediction overlay of each segmenter run ``OUT/ARM/best``. ``options``: DataOptions
    of ``data`` (layout, split seed and fractions)."""
    from anomalign.data.dataset import PairDataset
    from anomalign.data.validate import load_dataset
    from anomalign.figures import draw_contour, grid, save_png
    from anomalign.evaluation.generation import spread
    from anomalign.segmenter.infer import overlay
    from anomalign.segmenter.model import Segmenter

    test = [s for s in load_dataset(data, options).split("test") if not s.normal]
    test = [test[i] for i in spread(len(test), n)]
    models = [Segmenter.load(out / a / "best", device="cpu") for a in arms]  # CPU tensors below
    size = models[0].size or 64
    ds = PairDataset(test, size=size)
    x, m = ds.tensors()
    scale = max(1, 128 // size)
    tiles = []
    for i in range(len(test)):
        image, mask = ds.pair(i)
        tiles.append(draw_contour(image, mask, scale=scale))
        for model in models:
            pred = (model.predict_proba(x[i:i + 1])[0, 0] >= 0.5).numpy()
            tiles.append(overlay(image, pred).repeat(scale, 0).repeat(scale, 1))
    return save_png(grid(tiles, columns=1 + len(models)), path or out / "overlays.png")
