"""Collect the magnetic-tile study's numbers from its run folders into markdown tables (docs/results.md).

    python configs/magnetic_tile/collect.py runs/magnetic_tile

Reads seed*/seg_*/eval/eval.json, seed*/syn_*/summary.json, seed*/generation/generation.json (FID from
seed*/generation_fid/generation.json when the first has none, e.g. computed later on another machine) and
table5/seed*/seg_syn_n*/eval/eval.json. A missing run shows as "not run"; n = seeds that ran.
"""
import json
import sys
from pathlib import Path

import numpy as np

W = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/magnetic_tile")
seeds = sorted(p for p in W.glob("seed*") if p.is_dir())
t5_seeds = sorted(p for p in (W / "table5").glob("seed*") if p.is_dir())


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


def per_seed(dirs, vals, scale=100.0, fmt="{:.1f}"):
    return ", ".join(f"{d.name}: " + (fmt.format(scale * v) if v is not None else "—") for d, v in zip(dirs, vals))


def metric(run: Path, key: str):
    e = load(run / "eval" / "eval.json")
    return e["average"][key] if e else None


print("### Study 2 — Table 4 (test split; mean ± sd over seeds)\n")
print("| segmenter | mIoU (%) | mDice (%) | IoU (%) | pixel AUROC (%) | per seed mIoU |")
print("|---|---|---|---|---|---|")
rows = {"real only": "seg_real", "+ synthetic (α = 0)": "seg_syn_a0", "+ synthetic (α = 0.7)": "seg_syn_a0.7",
        "+ feedback only": "seg_fb", "full method": "seg_full"}
for name, run in rows.items():
    get = lambda k: [metric(s / run, k) for s in seeds]  # noqa: E731
    print(f"| {name} | {ms(get('mIoU'))} | {ms(get('mDice'))} | {ms(get('IoU'))} | {ms(get('AUROC'))} | "
          f"{per_seed(seeds, get('mIoU'))} |")

print("\n### Study 1 — alignment of generated pairs, and study 5 — FID\n")
print("| generator | free-lunch score | share > 0 (%) | L(true) < L(moved) (%) | L(true) < L(empty) (%) "
      "| oracle IoU (%) | oracle IoU, mask moved (%) | FID |")
print("|---|---|---|---|---|---|---|---|")
for a in ("0", "0.7"):
    sums = [load(s / f"syn_a{a}" / "summary.json") for s in seeds]
    gens = [(load(s / "generation" / "generation.json") or {}).get("sets", {}).get(f"alpha={a}") for s in seeds]
    fids = [(load(s / "generation_fid" / "generation.json") or {}).get("sets", {}).get(f"alpha={a}") for s in seeds]
    fl = [x["scores"]["free_lunch"]["mean"] if x else None for x in sums]
    pos = [x["scores"]["free_lunch"]["frac_positive"] if x else None for x in sums]
    lm = [g["true_lt_moved"] if g else None for g in gens]
    le = [g["true_lt_empty"] if g else None for g in gens]
    fid = [(g or {}).get("fid", (f or {}).get("fid")) for g, f in zip(gens, fids)]
    oi = [(g or {}).get("oracle_iou") for g in gens]
    om = [(g or {}).get("oracle_iou_moved") for g in gens]
    print(f"| α = {a} | {ms(fl, 1, '{:+.4f}')} | {ms(pos)} | {ms(lm)} | {ms(le)} | {ms(oi)} | {ms(om)} | "
          f"{ms(fid, 1)} |")

print("\n### Study 3 — Table 5: generator training pairs -> real + synthetic segmenter (test split)\n")
print("| generator trained on | mIoU (%) | mDice (%) | free-lunch score of its samples | per seed mIoU |")
print("|---|---|---|---|---|")
for n in ("20", "50", "100", "all"):
    if n == "all":  # seed S's α = 0.7 generator of Table 4 uses every training pair
        dirs = [W / s.name for s in t5_seeds]
        runs, syns = [d / "seg_syn_a0.7" for d in dirs], [d / "syn_a0.7" for d in dirs]
    else:
        runs = [s / f"seg_syn_n{n}" for s in t5_seeds]
        syns = [s / f"syn_n{n}" for s in t5_seeds]
    fl = [(load(y / "summary.json") or {}).get("scores", {}).get("free_lunch", {}).get("mean") for y in syns]
    miou = [metric(r, "mIoU") for r in runs]
    print(f"| {n} pairs | {ms(miou)} | {ms([metric(r, 'mDice') for r in runs])} | {ms(fl, 1, '{:+.4f}')} | "
          f"{per_seed(t5_seeds, miou)} |")

print("\n### Study 4 — the free-lunch premise on real test images (α = 0.7 generator of each seed)\n")
print("| seed | images | L(true) < L(moved) (%) | L(true) < L(empty) (%) | < both (%) |")
print("|---|---|---|---|---|")
prem = [(load(s / "generation" / "generation.json") or {}).get("premise") for s in seeds]
for s, p in zip(seeds, prem):
    if p:
        print(f"| {s.name} | {p['images']} | {100 * p['frac_true_lt_moved']:.0f} | {100 * p['frac_true_lt_empty']:.0f} "
              f"| {100 * p['frac_true_lt_both']:.0f} |")
if any(prem):
    print(f"| mean ± sd | | {ms([p and p['frac_true_lt_moved'] for p in prem])} | "
          f"{ms([p and p['frac_true_lt_empty'] for p in prem])} | {ms([p and p['frac_true_lt_both'] for p in prem])} |")
