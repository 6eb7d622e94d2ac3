"""Collect the magnetic-tile study's numbers from its run folders into markdown tables (docs/results.md).

    python configs/magnetic_tile/collect.py runs/magnetic_tile

Reads seed*/seg_*/eval/eval.json, seed*/syn_*/summary.json, seed*/generation*/generation.json and
table5/seg_syn_n*/eval/eval.json. A missing run shows as "not run".
"""
import json
import sys
from pathlib import Path

import numpy as np

W = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/magnetic_tile")
seeds = sorted(p for p in W.glob("seed*") if p.is_dir())


def load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def ms(vals, scale=100.0, fmt="{:.1f}"):
    v = [x * scale for x in vals if x is not None]
    if not v:
        return "not run"
    s = fmt.format(np.mean(v))
    if len(v) > 1:
        s += " ± " + fmt.format(np.std(v, ddof=1)).lstrip("+")
    return s + f" (n={len(v)})"


print("### Study 2 — Table 4 (test split; mean ± sd over seeds)\n")
print("| segmenter | mIoU (%) | mDice (%) | IoU (%) | pixel AUROC (%) | per seed mIoU |")
print("|---|---|---|---|---|---|")
rows = {"real only": "seg_real", "+ synthetic (α = 0)": "seg_syn_a0", "+ synthetic (α = 0.7)": "seg_syn_a0.7",
        "+ feedback only": "seg_fb", "full method": "seg_full"}
for name, run in rows.items():
    ev = [load(s / run / "eval" / "eval.json") for s in seeds]
    avg = [e["average"] if e else None for e in ev]
    get = lambda k: [a[k] if a else None for a in avg]  # noqa: E731
    per = ", ".join(f"{s.name}: {100 * a['mIoU']:.1f}" if a else f"{s.name}: —" for s, a in zip(seeds, avg))
    print(f"| {name} | {ms(get('mIoU'))} | {ms(get('mDice'))} | {ms(get('IoU'))} | {ms(get('AUROC'))} | {per} |")

print("\n### Study 1 — alignment of generated pairs (free-lunch score of each generated set)\n")
print("| generator | free-lunch score | share > 0 | L(true) < L(moved) | L(true) < L(empty) |")
print("|---|---|---|---|---|")
for a in ("0", "0.7"):
    sums = [load(s / f"syn_a{a}" / "summary.json") for s in seeds]
    gens = [load(s / "generation" / "generation.json") for s in seeds]
    fl = [x["scores"]["free_lunch"]["mean"] if x else None for x in sums]
    pos = [x["scores"]["free_lunch"]["frac_positive"] if x else None for x in sums]
    lm = [g["sets"][f"alpha={a}"]["true_lt_moved"] if g else None for g in gens]
    le = [g["sets"][f"alpha={a}"]["true_lt_empty"] if g else None for g in gens]
    print(f"| α = {a} | {ms(fl, 1, '{:+.4f}')} | {ms(pos)} % | {ms(lm)} % | {ms(le)} % |")

print("\n### Study 5 — FID of synthetic vs real test anomalies (TF-Inception, 100 vs 100 images, 128 px)\n")
print("| generator | FID |")
print("|---|---|")
for a in ("0", "0.7"):
    gens = [load(s / "generation" / "generation.json") for s in seeds]
    print(f"| α = {a} | {ms([g['sets'][f'alpha={a}'].get('fid') if g else None for g in gens], 1)} |")

print("\n### Study 3 — Table 5 (seed 0): generator training pairs -> + synthetic segmenter\n")
print("| generator trained on | test mIoU (%) | test mDice (%) | free-lunch score of its samples |")
print("|---|---|---|---|")
for n in ("20", "50", "100", "all"):
    run = W / "table5" / f"seg_syn_n{n}" if n != "all" else W / "seed0" / "seg_syn_a0.7"
    syn = W / "table5" / f"syn_n{n}" if n != "all" else W / "seed0" / "syn_a0.7"
    e, s = load(run / "eval" / "eval.json"), load(syn / "summary.json")
    fl = f"{s['scores']['free_lunch']['mean']:+.4f}" if s else "not run"
    if e:
        print(f"| {n} pairs | {100 * e['average']['mIoU']:.1f} | {100 * e['average']['mDice']:.1f} | {fl} |")
    else:
        print(f"| {n} pairs | not run | not run | {fl} |")

print("\n### Study 4 — the free-lunch premise on real test images (α = 0.7 generator)\n")
for s in seeds:
    for g in sorted(s.glob("generation*/generation.json")):
        p = load(g).get("premise")
        if p:
            print(f"- {s.name} ({g.parent.name}): true mask < moved mask on {100 * p['frac_true_lt_moved']:.0f} %, "
                  f"< empty mask on {100 * p['frac_true_lt_empty']:.0f} %, < both on {100 * p['frac_true_lt_both']:.0f} % "
                  f"of {p['images']} images")
