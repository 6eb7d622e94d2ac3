"""The native-resolution table of docs/results.md from the run folders of run_native.sh.

    python configs/magnetic_tile/collect_native.py runs/mt_unet [runs/mt_native ...]

For each folder: real_s*/ (real only), synth_s*/ (real + diffusion pairs, half of each batch), synth25_s*/
(the same, a quarter of each batch) and cutpaste_s*/ (real + cut-paste pairs) segmenters, scored by `evaluate`
on the test split at full size (RUN/eval/eval.json), with their best val mIoU (RUN/logs/validation.csv) and,
per arm, the per-seed difference to real only; then the diffusion sets' free-lunch scores (syn_s*/summary.json).
A missing run is left out; n = the seeds that ran.
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np


def ms(vals):
    v = [100 * x for x in vals]
    if not v:
        return "not run"
    return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def best_val(run: Path):
    rows = list(csv.DictReader((run / "logs" / "validation.csv").open())) if (run / "logs" / "validation.csv").is_file() else []
    return max(float(r["mIoU"]) for r in rows) if rows else None


def arm(folder: Path, prefix: str):
    runs = sorted(p for p in folder.glob(f"{prefix}_s*") if (p / "eval" / "eval.json").is_file())
    ev = [json.loads((p / "eval" / "eval.json").read_text())["average"] for p in runs]
    return runs, ev


print("| folder | arm | n | test mIoU | mDice | IoU | pixel AUROC | per seed test mIoU (best val) |")
print("|---|---|---|---|---|---|---|---|")
for folder in map(Path, sys.argv[1:] or ["runs/mt_unet"]):
    real = {}
    for prefix, name in (("real", "real only"), ("synth", "real + diffusion pairs (1/2 of each batch)"),
                         ("synth25", "real + diffusion pairs (1/4 of each batch)"),
                         ("cutpaste", "real + cut-paste pairs (1/2 of each batch)")):
        runs, ev = arm(folder, prefix)
        if not runs:
            continue
        seeds = ", ".join(f"{p.name.split('_s')[-1]}: {100 * e['mIoU']:.1f} ({100 * (best_val(p) or float('nan')):.1f})"
                          for p, e in zip(runs, ev))
        print(f"| {folder.name} | {name} | {len(runs)} | {ms([e['mIoU'] for e in ev])} | {ms([e['mDice'] for e in ev])} | "
              f"{ms([e['IoU'] for e in ev])} | {ms([e['AUROC'] for e in ev])} | {seeds} |")
        if prefix == "real":
            real = {p.name.split("_s")[-1]: e["mIoU"] for p, e in zip(runs, ev)}
        else:
            gains = [100 * (e["mIoU"] - real[p.name.split("_s")[-1]]) for p, e in zip(runs, ev) if p.name.split("_s")[-1] in real]
            if gains:
                print(f"| {folder.name} | ↳ minus real only, per seed | {len(gains)} | "
                      + " | ".join(["", "", "", ""]) + " | " + ", ".join(f"{g:+.1f}" for g in gains) + " |")
    for s in sorted(folder.glob("syn_s*/summary.json")):
        fl = json.loads(s.read_text())["scores"]["free_lunch"]
        print(f"<!-- {s.parent}: {json.loads(s.read_text())['kept']} pairs, free-lunch mean {fl['mean']:+.3f}, "
              f"{100 * fl['frac_positive']:.0f} % > 0 -->")
