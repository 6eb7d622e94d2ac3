"""The control of the synthetic arms (docs/results.md): the real training pairs themselves, laid out as a
"synthetic" set, so that `train-segmenter --synthetic` adds them through exactly the code path of generated
pairs. Whatever this arm changes against real only is the mechanism (4 more crops per step, drawn apart),
not the content of generated pairs.

    python studies/scripts/real_as_synthetic.py MT_DIR OUT_DIR [SPLIT_FILE]

Writes OUT_DIR/images/<defect>/<stem>.jpg and masks/<defect>/<stem>.png as symbolic links to the train
split's anomalous pairs, split as SPLIT_FILE says (default studies/splits/magnetic_tile.yaml); OUT_DIR/linked.json marks it done.
"""
import sys
from pathlib import Path

import yaml

from anomalign.config import build_config
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset

data, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
config = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[1] / "splits" / "magnetic_tile.yaml"
seg = yaml.safe_load(config.read_text())
opts = build_config(DataOptions, {k: seg[k] for k in ("layout", "split_seed", "val_fraction", "test_fraction")})
train = [s for s in load_dataset(data, opts, announce=False).split("train") if not s.normal]
for s in train:
    for sub, src in (("images", s.image), ("masks", s.mask)):
        link = out / sub / s.defect / (s.image.stem + src.suffix)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(src)
(out / "linked.json").write_text(f'{{"pairs": {len(train)}}}\n')
print(f"{out}: {len(train)} real training pairs linked")
