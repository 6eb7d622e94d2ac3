"""The native-resolution table of docs/results.md from the run folders of run_native.sh.

    python configs/magnetic_tile/collect_native.py runs/mt_unet [runs/mt_native ...]

First the val choice: every seed-0 segmenter of the folder with its best val mIoU, the step and the val pixel
AUROC there (RUN/logs/validation.csv). Then the test table for the arms of ARMS (run folders PREFIX_sS/), scored
by `evaluate` on the test split at full size (RUN/eval/eval.json), with their best val mIoU and, per arm, the
per-seed difference to real only (at 3 200 steps for the arms named *_3200); then the diffusion sets' free-lunch scores (syn*_s*/summary.json) and the feedback
premise on the training images of every feedback run (RUN/premise.json).
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
    rows = val_rows(run)
    return max(float(r["mIoU"]) for r in rows) if rows else None


def arm(folder: Path, prefix: str):
    runs = sorted(p for p in folder.glob(f"{prefix}_s*") if (p / "eval" / "eval.json").is_file())
    ev = [json.loads((p / "eval" / "eval.json").read_text())["average"] for p in runs]
    return runs, ev


ARMS = (("real", "real only"),
        ("synth", "real + diffusion pairs (1/2 of each batch)"),
        ("synth25", "real + diffusion pairs (1/4 of each batch)"),
        ("cutpaste", "real + cut-paste pairs (1/2 of each batch)"),
        ("plus4_w100", "real (16 crops, as real only) + 4 diffusion crops per step, w_syn 1"),
        ("plus4_w30", "real (16 crops, as real only) + 4 diffusion crops per step, w_syn 0.3"),
        ("a0plus4_w30", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3; generator at α = 0"),
        ("n20plus4_w30", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3; generator on 20 pairs (Table 5)"),
        ("n50plus4_w30", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3; generator on 50 pairs (Table 5)"),
        ("n100plus4_w30", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3; generator on 100 pairs (Table 5)"),
        ("pre800", "diffusion pairs only, 800 steps (stage 1 of the pre-training arm)"),
        ("pre800ft1600", "pre-trained 800 steps on diffusion pairs, then 1 600 real-only steps (2 400 in all)"),
        ("pre800ft2400", "pre-trained 800 steps on diffusion pairs, then 2 400 real-only steps (3 200 in all)"),
        ("real3200", "real only, 3 200 steps (the control of the same budget)"),
        ("plus4_w30_3200", "real (16 crops, as real3200) + 4 diffusion crops per step, w_syn 0.3, 3 200 steps"),
        ("plus4real_3200", "control: real (16 crops) + 4 crops of the real training pairs themselves, through the "
                           "synthetic path, w_syn 0.3, 3 200 steps"),
        ("hostsplus4_w30_3200", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3, 3 200 steps; defects "
                                "generated into the anomalous training tiles (--hosts anomalous)"),
        ("orcplus4_w30_3200", "real (16 crops) + 4 diffusion crops per step, w_syn 0.3, 3 200 steps; only pairs the "
                              "seed's real3200 segmenter finds at IoU >= 0.3 (generate --oracle --min-alignment 0.3)"),
        ("fbwarm_3200", "real only, 3 200 steps, + Generative Feedback from step 1 600 (λ 0.1; 4 of the 16 real crops, "
                        "every 2nd step; the feedback search's val choice)"),
        ("fullorc_3200", "full method with both findings: the oracle-filtered arm + feedback from step 1 600 (λ 0.1), "
                         "3 200 steps"),
        ("cpplus4_w100", "real (16 crops, as real only) + 4 cut-paste crops per step, w_syn 1"),
        ("cpplus4_w30", "real (16 crops, as real only) + 4 cut-paste crops per step, w_syn 0.3"),
        ("real12", "real only, 12 crops per step (control: the real crops of the 1/4 arm)"),
        ("fb", "real + Generative Feedback (feedback only: 4 of the 16 real crops, every 2nd step)"),
        ("full", "full method: the w_syn 0.3 diffusion arm + Generative Feedback as above"))


def seed_of(run: Path) -> str:
    """The seed of a run folder PREFIX_sS, as written in its name."""
    return run.name.split("_s")[-1]


def val_rows(run: Path):
    path = run / "logs" / "validation.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


FOLDERS = [Path(f) for f in sys.argv[1:] or ["runs/mt_unet"]]
for folder in FOLDERS:
    print(f"\n{folder}: val choice, seed 0 (best val mIoU, step, val pixel AUROC there)\n")
    print("| run | best val mIoU | at step | val AUROC |\n|---|---|---|---|")
    for run in sorted(folder.glob("*_s0")):
        rows = val_rows(run)
        if rows and "mIoU" in rows[0]:  # segmenters only (generators log other things)
            b = max(rows, key=lambda r: float(r["mIoU"]))
            print(f"| {run.name} | {100 * float(b['mIoU']):.1f} | {b['step']} | {float(b['AUROC']):.2f} |")
print()
print("| folder | arm | n | test mIoU | mDice | IoU | pixel AUROC | per seed test mIoU (best val) |")
print("|---|---|---|---|---|---|---|---|")
for folder in FOLDERS:
    base = {}
    for prefix, name in ARMS:
        runs, ev = arm(folder, prefix)
        if not runs:
            continue
        seeds = ", ".join(f"{seed_of(p)}: {100 * e['mIoU']:.1f} ({100 * (best_val(p) or float('nan')):.1f})"
                          for p, e in zip(runs, ev))
        print(f"| {folder.name} | {name} | {len(runs)} | {ms([e['mIoU'] for e in ev])} | {ms([e['mDice'] for e in ev])} | "
              f"{ms([e['IoU'] for e in ev])} | {ms([e['AUROC'] for e in ev])} | {seeds} |")
        if prefix in ("real", "real3200"):
            base[prefix] = {seed_of(p): e["mIoU"] for p, e in zip(runs, ev)}
        else:  # 3 200-step arms against real only at 3 200 steps, the rest against real only at 2 400
            b = "real3200" if prefix.endswith("_3200") else "real"
            real = base.get(b, {})
            gains = [100 * (e["mIoU"] - real[seed_of(p)]) for p, e in zip(runs, ev) if seed_of(p) in real]
            if gains:
                print(f"| {folder.name} | ↳ minus {'real only' if b == 'real' else b}, per seed | {len(gains)} | "
                      + " | ".join(["", "", "", ""]) + " | " + ", ".join(f"{g:+.1f}" for g in gains) + " |")
    for s in sorted(folder.glob("syn*_s*/summary.json")):  # syn_sS, syn_a0_sS, syn_n20_sS, ...
        fl = json.loads(s.read_text())["scores"]["free_lunch"]
        print(f"<!-- {s.parent}: {json.loads(s.read_text())['kept']} pairs, free-lunch mean {fl['mean']:+.3f}, "
              f"{100 * fl['frac_positive']:.0f} % > 0 -->")
print("\nThe feedback premise on the training images (RUN/premise.json, printed by train-segmenter):\n")
print("| run | images | true < moved (%) | true < empty (%) | true < both (%) |\n|---|---|---|---|---|")
for folder in FOLDERS:
    for p in sorted(folder.glob("*_s*/premise.json")):
        pr = json.loads(p.read_text())
        if pr.get("images"):
            print(f"| {p.parent} | {pr['images']} | {100 * pr['frac_true_lt_moved']:.0f} | "
                  f"{100 * pr['frac_true_lt_empty']:.0f} | {100 * pr['frac_true_lt_both']:.0f} |")
