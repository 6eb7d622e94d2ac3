"""Figure for docs/results.md ("Native resolution"): full-size test tiles, ground-truth contour, then the
full-size sliding-window prediction of each segmenter (red fill), one row per tile spread over the test split.

    python studies/scripts/overlays_native.py runs/mt_unet MT_DIR docs/figures/mt_native_overlays.jpg [SEED [ARMS]]

Columns: truth | real only | + diffusion pairs | + cut-paste pairs (those of the seed that exist; ARMS: other
run-folder prefixes, comma-separated, e.g. real,plus4_w30,cpplus4_w30). Tiles are shown at their own
resolution, padded to the tallest of their row. SPLIT=studies/splits/crackforest.yaml reads that split file
(the split) instead of this one's.
"""
import os
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from anomalign.config import build_config
from anomalign.data.dataset import load_pair
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset
from anomalign.evaluation.generation import spread
from anomalign.figures import draw_contour, grid
from anomalign.segmenter.infer import overlay
from anomalign.segmenter.model import Segmenter

work, data, out = (Path(a) for a in sys.argv[1:4])
seed = sys.argv[4] if len(sys.argv) > 4 else "0"
prefixes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["real", "synth", "cutpaste"]
split = Path(os.environ.get("SPLIT", Path(__file__).resolve().parents[1] / "splits" / "magnetic_tile.yaml"))
options = build_config(DataOptions, yaml.safe_load(split.read_text()))
arms = [a for a in (f"{p}_s{seed}" for p in prefixes) if (work / a / "best").is_dir()]
models = [Segmenter.load(work / a / "best") for a in arms]
test = [s for s in load_dataset(data, options).split("test") if not s.normal]
test = [test[i] for i in spread(len(test), 6)]
tiles = []
for s in test:
    image, mask = load_pair(s, None)
    row = [draw_contour(image, mask)] + [overlay(image, m.predict(image)) for m in models]
    h, w = max(t.shape[0] for t in row), max(t.shape[1] for t in row)
    tiles += [np.pad(t, ((0, h - t.shape[0]), (0, w - t.shape[1]), (0, 0)), constant_values=255) for t in row]
side = max(max(t.shape[:2]) for t in tiles)
tiles = [np.pad(t, ((0, side - t.shape[0]), (0, side - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
fig = Image.fromarray(grid(tiles, columns=1 + len(models)))
if fig.width > 1400:  # a page-wide figure; the defects stay visible at this size
    fig = fig.resize((1400, round(fig.height * 1400 / fig.width)), Image.LANCZOS)
fig.save(out, quality=88)
print(out, "columns: truth,", ", ".join(arms))
