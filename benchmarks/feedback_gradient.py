"""Where does Generative Feedback push the segmenter? (issue 17: "if no setting helps, say why with evidence")

For each generator/segmenter pair and one anomaly-centred crop per real anomaly of a split, at the generator's
size and native scale (as training feeds the feedback): the segmenter's soft mask m̃ = softmax(l/λ)[:, 1]
(Eq. 8-9), and the gradient of L_fb (Eq. 10, averaged over K noise/timestep draws with t in [t_min, t_max))
with respect to m̃ and to the logits l. Printed per pair:

- cos(−∇L_fb, y − m̃): does a step against the feedback gradient move m̃ towards the truth y (1: exactly
  the error pattern, 0: unrelated)? Mean over crops; beside it the same with y moved by a quarter of the
  crop (a control: a gradient that only knows "cracks are somewhere" scores as high there).
- agree: among pixels the segmenter gets wrong (|y − m̃| > 0.5), the |∇|-weighted share where −∇L_fb points
  towards y.
- |∇_l L_fb| / |∇_l L_ce|: the feedback gradient's size on the logits next to that of the recipe's CE
  (anomaly weight ``--anomaly-weight``) on the same crops; with --fb-rows r of B rows the training step
  scales it by r/B again.

    python benchmarks/feedback_gradient.py --data ../shared/datasets/crackforest --split val \\
        --pairs runs/cf/gen_s0:runs/cf/real_s0/best --doc docs/results.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anomalign.config import build_config
from anomalign.metrics import mean_sd
from anomalign.data.crops import crop_bank
from anomalign.data.dataset import default_prompt
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset
from anomalign.generator.model import MaskGenerator
from anomalign.generator.task import seeded_draws
from anomalign.segmenter.losses import loss_ce, loss_feedback, soft_mask
from anomalign.segmenter.model import Segmenter
from anomalign.training import sample_seed
from common import machine, print_and_append


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float((a @ b) / (a.norm() * b.norm() + 1e-30))


def analyse(gen, seg, x, y, prompts, temperature, t_min, t_max, draws, anomaly_weight, seed):
    """Per-crop statistics (see the module docstring) for crops x [N, 3, R, R] with masks y [N, 1, R, R]."""
    rows = []
    shift = x.shape[-1] // 4
    for i in range(len(x)):
        xi, yi = x[i:i + 1], y[i:i + 1]
        logits = seg(xi).detach().requires_grad_(True)
        m = soft_mask(logits, temperature)
        with torch.no_grad():
            z0 = gen.encode(xi).float()
            emb = gen.encode_prompts(prompts[i:i + 1])
        l_fb = 0.0
        for d in range(draws):
            _, t, noise = seeded_draws([sample_seed(seed, i, d)], z0.shape[1:], t_min, t_max)
            l_fb = l_fb + loss_feedback(gen, z0, m, emb, noise, t) / draws
        g_m, g_l = torch.autograd.grad(l_fb, [m, logits])
        l_ce = loss_ce(logits, yi, torch.zeros(1, dtype=torch.bool), anomaly_weight)
        (g_ce,) = torch.autograd.grad(l_ce, [logits])
        err = yi - m.detach()
        moved = torch.roll(yi, shifts=(shift, shift), dims=(-2, -1)) - m.detach()
        wrong = err.abs() > 0.5
        w = g_m.abs()[wrong]
        agree = (float((w * ((-g_m)[wrong] * err[wrong] > 0)).sum() / w.sum()) if wrong.any() and w.sum() > 0
                 else float("nan"))
        rows.append({"cos": cosine(-g_m, err), "cos_moved": cosine(-g_m, moved), "agree": agree,
                     "ratio": float(g_l.norm() / (g_ce.norm() + 1e-30)), "l_fb": float(l_fb)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--pairs", nargs="+", required=True,
                    help="GENERATOR_RUN:SEGMENTER_FOLDER (or GENERATOR_RUN:init=PRESET for an untrained one)")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--t-min", type=int, default=0)
    ap.add_argument("--t-max", type=int, default=500)
    ap.add_argument("--draws", type=int, default=8, help="noise/timestep draws averaged per crop")
    ap.add_argument("--anomaly-weight", type=float, default=5.0)
    ap.add_argument("--per-image", type=int, default=2, help="anomaly-centred crops per image")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", type=Path, default=None, help="append the table here")
    args = ap.parse_args()
    options = build_config(DataOptions, dict(split_seed=args.split_seed, val_fraction=args.val_fraction,
                                             test_fraction=args.test_fraction))
    samples = [s for s in load_dataset(args.data, options).split(args.split) if not s.normal]
    lines = [f"\n#### Feedback gradient against the truth ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"`python benchmarks/feedback_gradient.py --data {args.data} --split {args.split} --pairs "
             f"{' '.join(args.pairs)}`; λ {args.temperature}, t in [{args.t_min}, {args.t_max}), {args.draws} draws "
             f"per crop, {args.per_image} anomaly-centred crops per {args.split} anomaly.", "",
             "| generator : segmenter | λ | t | crops | cos(−∇L_fb, y − m̃) | same, y moved ¼ "
             "| agree on wrong pixels (%) | \\|∇_l L_fb\\| / \\|∇_l L_ce\\| | L_fb |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pair in args.pairs:
        gen_dir, seg_dir = pair.split(":")
        gen = MaskGenerator.load(Path(gen_dir)).eval().requires_grad_(False)
        if seg_dir.startswith("init="):  # an untrained segmenter (m̃ far from the truth everywhere)
            torch.manual_seed(args.seed)
            seg = Segmenter(seg_dir[len("init="):]).eval().requires_grad_(False)
        else:
            seg = Segmenter.load(Path(seg_dir)).eval().requires_grad_(False)
        x, y, src = crop_bank(samples, gen.resolution, per_image=args.per_image, seed=args.seed)
        rows = analyse(gen, seg, x, y, [default_prompt(s) for s in src], args.temperature, args.t_min, args.t_max,
                       args.draws, args.anomaly_weight, args.seed)

        def ms(key, scale=1.0):
            return mean_sd([r[key] for r in rows], scale, "{:.1f}" if scale != 1.0 else "{:.3f}", empty="n/a")
        lines.append(f"| {gen_dir} : {seg_dir} | {args.temperature:g} | [{args.t_min}, {args.t_max}) | {len(rows)} | "
                     f"{ms('cos')} | {ms('cos_moved')} | {ms('agree', 100)} | {ms('ratio')} | {ms('l_fb')} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.doc:
        print_and_append(args.doc, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
