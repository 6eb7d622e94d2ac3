"""Issue 47's ablation on polyp-dev (docs/run.md, "Object-like anomalies: polyp-dev"): the plan `anomalign run`
makes for split seed S, and the two variants with the new rules switched off, written as plan files for
`anomalign run DATA --plan FILE --arms none`:

  old  the plan before issue 47: scale = crop / median defect (the defect fills the crop), no colour jitter
  ctx  the object-like scale rule only (no colour jitter)
  new  the plan as `run` writes it (object-like scale + colour jitter)

    python studies/polyp_dev/plans.py ../shared/datasets/polyp-dev 0 OUT_DIR      # then, per variant V:
    anomalign run ../shared/datasets/polyp-dev --out R_V --split-seed 0 --seed 0 --arms none --no-export \
        --plan OUT_DIR/plan_V_s0.yaml
"""
import sys
from pathlib import Path

from anomalign.data.fingerprint import fingerprint
from anomalign.data.validate import load_dataset
from anomalign.pipeline import RunConfig
from anomalign.plan import CROP, make_plan, write_plan

data, s, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
cfg = RunConfig(data=data, out=out / "unused", split_seed=s, seed=s)
fp = fingerprint(load_dataset(data, cfg, announce=False), cfg.mask_threshold)
for name in ("old", "ctx", "new"):
    p = make_plan(fp)
    p.arms = []  # with 4 val frames the choice keeps the baseline whatever the arms do: it is what run ships
    if name in ("old", "ctx"):
        p.colour = 0.0
        p.reasons["colour"] = "ablation: off"
    if name == "old":
        extent = fp.defect_extent["median"]
        p.scale = max(0.25, round(CROP / extent, 3)) if extent > CROP else 1.0
        p.reasons["scale"] = "ablation: the rule before issue 47 (the median defect fits the crop)"
    write_plan(p, out / f"plan_{name}_s{s}.yaml", fp)
    print(name, s, "scale", p.scale, "colour", p.colour)
