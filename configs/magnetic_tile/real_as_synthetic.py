"""The control of the synthetic arms (docs/results.md): the real training pairs themselves, laid out as a
"synthetic" set, so that `train-segmenter --synthetic` adds them through exactly the code path of generated
pairs. Whatever this arm changes against real only is the mechanism (4 more crops per step, drawn apart),
not the content of generated pairs.

    python configs/magnetic_tile/real_as_synthetic.py MT_DIR OUT_DIR

Writes OUT_DIR/images/<defect>/<stem>.jpg and masks/<defect>/<stem>.png as symbolic links to the train
split's anomalous pairs (split_seed 0, 10 % val, 30 % test: segmenter_unet.yaml's split).
"""
import sys
from pathlib import Path

from anomalign.config import build_config
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset

data, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
opts = build_config(DataOptions, dict(layout="same-folder", split_seed=0, val_fraction=0.1, test_fraction=0.3))
train = [s for s in load_dataset(data, opts, announce=False).split("train") if not s.normal]
for s in train:
    for sub, src in (("images", s.image), ("masks", s.mask)):
        link = out / sub / s.defect / (s.image.stem + src.suffix)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(src)
print(f"{out}: {len(train)} real training pairs linked")
