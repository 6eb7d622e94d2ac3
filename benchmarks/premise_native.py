"""The Generative Feedback premise at native resolution (issue 17): for each generator run folder, on one
anomaly-centred crop (the generator's size, native scale) of every real anomaly of a split — as the
feedback sees the segmenter's crops — how often the generator denoises the crop better with its true mask
than with the mask moved by a quarter width, than with the empty mask, and than both.

    python benchmarks/premise_native.py --data ../shared/datasets/magnetic-tile --split test \\
        --generators runs/mt_native/gen_s0 runs/mt_v/gen_s0 --doc docs/results.md

The split follows --split-seed / --val-fraction / --test-fraction (the defaults of every config here).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from anomalign.config import build_config
from anomalign.data.crops import crop_bank
from anomalign.data.dataset import default_prompt
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset
from anomalign.generator.model import MaskGenerator
from anomalign.synthesis.scoring import premise
from common import machine, print_and_append


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--generators", type=Path, nargs="+", required=True)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0, help="crop jitter and noise draws")
    ap.add_argument("--doc", type=Path, default=None, help="append the table here")
    args = ap.parse_args()
    options = build_config(DataOptions, dict(split_seed=args.split_seed, val_fraction=args.val_fraction,
                                             test_fraction=args.test_fraction))
    samples = [s for s in load_dataset(args.data, options).split(args.split) if not s.normal]
    lines = [f"\n#### Feedback premise on native crops ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"`python benchmarks/premise_native.py --data {args.data} --split {args.split} --generators "
             f"{' '.join(map(str, args.generators))}`; one anomaly-centred crop per real {args.split} anomaly "
             f"({len(samples)}).", "",
             "| generator | crops | true < moved (%) | true < empty (%) | true < both (%) | mean free-lunch score |",
             "|---|---|---|---|---|---|"]
    crops: dict[int, tuple] = {}
    for run in args.generators:
        gen = MaskGenerator.load(run).eval()
        size = gen.resolution
        if size not in crops:
            x, m, src = crop_bank(samples, size, per_image=1, seed=args.seed)
            crops[size] = (x, m, [default_prompt(s) for s in src])
        x, m, prompts = crops[size]
        with torch.no_grad():
            p = premise(gen, x, m, prompts, seed=args.seed)
        lines.append(f"| {run} | {p['images']} | {100 * p['frac_true_lt_moved']:.0f} | "
                     f"{100 * p['frac_true_lt_empty']:.0f} | {100 * p['frac_true_lt_both']:.0f} | "
                     f"{p['free_lunch_mean']:+.4f} |")
        print(lines[-1], flush=True)
    if args.doc:
        print_and_append(args.doc, "\n".join(lines) + "\n")
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
