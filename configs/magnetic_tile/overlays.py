"""Figure for docs/results.md: test anomalies with the ground-truth contour, then each segmenter's prediction.

    python configs/magnetic_tile/overlays.py WORK_DIR/seed0 MT_DIR docs/figures/mt_overlays.png

Columns: ground truth | real only | + synthetic (α = 0.7) | full method; rows spread over the test split.
The data options (layout, split) come from configs/magnetic_tile/evaluate.yaml.
"""
import sys
from pathlib import Path

import yaml

from anomalign.config import build_config
from anomalign.data.folders import DataOptions
from anomalign.evaluation.overlays import segmentation_overlays

seed_dir, data, png = (Path(a) for a in sys.argv[1:4])
options = build_config(DataOptions, yaml.safe_load((Path(__file__).parent / "evaluate.yaml").read_text()))
arms = [a for a in ("seg_real", "seg_syn_a0.7", "seg_full") if (seed_dir / a / "best" / "segmenter.safetensors").is_file()]
print(segmentation_overlays(seed_dir, arms, data, n=10, options=options, path=png), "columns: truth,", ", ".join(arms))
