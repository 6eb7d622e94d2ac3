"""Issue 47 polyp-dev table (`python studies/polyp_dev/collect.py RUNS_DIR`, runs named {old,ctx,new,ref}_s{S}): test mIoU / mDice (9 test frames) of the shipped segmenter (the baseline: 4 val frames,
under the choice rule's minimum of 10) per arm and split seed; val mIoU (final weights), best val step."""
import csv
import json
import statistics as st
import sys
from pathlib import Path
E = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/polyp_dev")
rows = {}
for arm in ("old", "ctx", "new", "ref"):
    for s in (0, 1, 2):
        d = E / f"{arm}_s{s}"
        if arm == "ref":
            f = d / "eval" / "eval.json"
            if not f.is_file():
                continue
            ev = json.loads(f.read_text())
            t = next(iter(ev["sets"].values()))
            val_csv = d / "logs" / "validation.csv"
            wall = json.loads((d / "run.json").read_text()).get("wall_s") if (d / "run.json").is_file() else None
        else:
            f = d / "result.json"
            if not f.is_file():
                continue
            r = json.loads(f.read_text())
            t = r["test"]["baseline"]
            val_csv = d / "baseline" / "logs" / "validation.csv"
            wall = r["wall_s"]
        vals = list(csv.DictReader(val_csv.open())) if val_csv.is_file() else []
        best = max(vals, key=lambda v: float(v["mIoU"])) if vals else None
        rows[(arm, s)] = dict(test=100 * t["mIoU"], dice=100 * t["mDice"], auroc=100 * t.get("AUROC", float("nan")),
                              val=100 * float(vals[-1]["mIoU"]) if vals else float("nan"),
                              best=f"{best['step']}/{vals[-1]['step']}" if best else "-", wall=(wall or 0) / 60)
for (arm, s), v in sorted(rows.items()):
    print(f"{arm} s{s}: test mIoU {v['test']:.1f} mDice {v['dice']:.1f} AUROC {v['auroc']:.1f} | val (last) {v['val']:.1f} "
          f"best at {v['best']} | {v['wall']:.1f} min")
for arm in ("old", "ctx", "new", "ref"):
    xs = [rows[(arm, s)]["test"] for s in (0, 1, 2) if (arm, s) in rows]
    ds = [rows[(arm, s)]["dice"] for s in (0, 1, 2) if (arm, s) in rows]
    if xs:
        sd = st.stdev(xs) if len(xs) > 1 else float("nan")
        print(f"{arm}: test mIoU {st.mean(xs):.1f} ± {sd:.1f} (n={len(xs)}), mDice {st.mean(ds):.1f}")
