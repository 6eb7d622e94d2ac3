"""Figure for docs/results.md: test anomalies with the ground-truth contour, then each segmenter's prediction.

    python studies/scripts/overlays.py WORK_DIR MT_DIR docs/figures/mt_overlays.png [SPLIT_FILE]

Columns: ground truth | real only | + synthetic (α = 0.7) | full method; rows spread over the test split.
The data options (layout, split) come from SPLIT_FILE (default studies/splits/magnetic_tile.yaml).
"""
import sys
from pathlib import Path

import yaml

from anomalign.config import build_config
from anomalign.data.folders import DataOptions
from anomalign.evaluation.overlays import segmentation_overlays

work, data, png = (Path(a) for a in sys.argv[1:4])
split = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(__file__).resolve().parents[1] / "splits" / "magnetic_tile.yaml"
options = build_config(DataOptions, yaml.safe_load(split.read_text()))
# seed 0's run folders of studies/magnetic_tile_128px.yaml
arms = [a for a in ("seg_real_s0", "seg_syn_a07_s0", "seg_full_s0") if (work / a / "best" / "segmenter.safetensors").is_file()]
print(segmentation_overlays(work, arms, data, n=10, options=options, path=png), "columns: truth,", ", ".join(arms))
