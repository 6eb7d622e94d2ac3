"""Prompt fidelity of a tiny base: does "a photo of a wood with a crack defect" give wood?

    python benchmarks/base_fidelity.py --base OLD.safetensors NEW.safetensors [--per-material 40]

A small material classifier (a 4-layer CNN, this script's own) is trained on real built-in images of
the five procedural materials (rendered by ``anomalign.data.procedural``, the generator behind the
built-in dataset; defects and defect-free mixed) and checked on held-out real images. Each base then
samples ``--per-material`` images per material with the built-in prompt (defects spread evenly; a
mask-aware base gets the rendered defect's mask, a mask-free one none), and the classifier's verdicts
give the fidelity: the fraction assigned to the material named in the prompt, overall and per material.
Images are compared at 64 px (classifier input), whatever the base's own resolution. A grid of the
samples (one row per material) goes to docs/figures/base_samples_<codec>_<regime>_<px>[_v].jpg (``--figures``); the Markdown table is printed
and appended to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from anomalign.data.dataset import default_prompt
from anomalign.data.procedural import DEFECTS, MATERIALS, render_sample
from anomalign.data.sample import Sample
from anomalign.data.transforms import from_model_range
from anomalign.figures import grid
from anomalign.generator.model import MaskGenerator
from anomalign.generator.sampler import sample, x0_bound_of
from common import DOCS, base_tag, machine, print_and_append

SIDE = 64


def real_set(n_per_material: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered images [N, 3, SIDE, SIDE] in [0, 1] (rendered at ``size``, then area-resized) and labels [N]."""
    xs, ys = [], []
    for mi, material in enumerate(MATERIALS):
        for i in range(n_per_material):
            rng = np.random.default_rng([seed, mi, i])
            defect = None if i % 5 == 4 else DEFECTS[i % len(DEFECTS)]
            img, _ = render_sample(rng, size, material, defect)
            xs.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
            ys.append(mi)
    x = torch.stack(xs)
    return (F.interpolate(x, size=SIDE, mode="area") if size != SIDE else x), torch.tensor(ys)


class MaterialNet(nn.Module):
    """[B, 3, 64, 64] in [0, 1] -> logits [B, 5]."""

    def __init__(self, n: int = len(MATERIALS)):
        super().__init__()
        layers, c = [], 3
        for w in (32, 64, 96, 128):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).mean((2, 3)))


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> MaterialNet:
    torch.manual_seed(seed)
    net = MaterialNet()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        xb = x[idx]
        if torch.rand((), generator=g) < 0.5:
            xb = xb.flip(-1)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def base_samples(gen: MaskGenerator, per_material: int, steps: int, guidance: float, seed: int,
                 x0_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples [N, 3, R, R] in [0, 1] and the material index named in each prompt [N]."""
    r = gen.resolution
    out, labels = [], []
    for mi, material in enumerate(MATERIALS):
        masks, prompts = [], []
        for i in range(per_material):
            defect = DEFECTS[i % len(DEFECTS)]
            _, m = render_sample(np.random.default_rng([seed, 99, mi, i]), r, material, defect)
            masks.append(torch.from_numpy(m).float()[None])
            prompts.append(default_prompt(Sample(Path(""), None, defect, False, category=material)))
        seeds = [seed * 100_000 + mi * 1000 + i for i in range(per_material)]
        x = sample(gen, torch.stack(masks), prompts, seeds, "ddim", steps, guidance, x0_clip=x0_clip)
        out.append((x.float().clamp(-1, 1) + 1) / 2)
        labels += [mi] * per_material
    return torch.cat(out), torch.tensor(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", required=True, help="tiny bases (generator folders or files) to compare")
    ap.add_argument("--per-material", type=int, default=40)
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--x0-clip", type=float, nargs="+", default=[None],
                    help="x0 bounds to compare for each base (sampler.bound_x0; 0 = none; default: each base's own)")
    ap.add_argument("--train-per-material", type=int, default=300)
    ap.add_argument("--classifier-steps", type=int, default=600)
    ap.add_argument("--render-size", type=int, default=128, help="size the real images are rendered at")
    ap.add_argument("--doc", type=Path, default=DOCS)
    ap.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "figures",
                    help="folder of the sample grids (a trial run can keep the documented grids untouched)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    x, y = real_set(args.train_per_material, 1, args.render_size)
    xt, yt = real_set(60, 2, args.render_size)
    net = train_classifier(x, y, args.classifier_steps)
    with torch.no_grad():
        acc_real = float((net(xt).argmax(1) == yt).float().mean())
    print(f"material classifier: {acc_real:.3f} accuracy on {len(yt)} held-out real images")
    rows = []
    for b, clip in [(b, c) for b in args.base for c in args.x0_clip]:
        gen = MaskGenerator.load(Path(b), mask_free_ok=True).eval()
        bound = x0_bound_of(gen, clip)
        t = time.perf_counter()
        imgs, labels = base_samples(gen, args.per_material, args.steps, args.guidance, seed=0, x0_clip=clip)
        secs = time.perf_counter() - t
        small = F.interpolate(imgs, size=SIDE, mode="area") if imgs.shape[-1] != SIDE else imgs
        with torch.no_grad():
            pred = net(small).argmax(1)
        per = [float((pred[labels == i] == i).float().mean()) for i in range(len(MATERIALS))]
        held = gen.spec.get("held_out_materials", [])
        seen = [i for i, m in enumerate(MATERIALS) if m not in held]
        fid_seen = float(np.mean([per[i] for i in seen]))
        pred_type = gen.scheduler.config.prediction_type
        name = base_tag(gen)
        u8 = from_model_range(imgs[:: max(1, args.per_material // 8)] * 2 - 1)
        args.figures.mkdir(parents=True, exist_ok=True)
        figure = args.figures / f"base_samples_{name}{f'_x0clip{bound:g}' if bound else ''}.jpg"
        Image.fromarray(grid(list(u8), columns=min(8, args.per_material))).save(figure, quality=85)
        rows.append((b, bound, pred_type, gen.spec.get("codec", "autoencoder_kl"), gen.spec.get("base_regime", "mask-aware"),
                     gen.resolution, float((pred == labels).float().mean()), fid_seen, per, held, secs))
        print(f"{b} (x0 bound {bound or 'none'}): fidelity {rows[-1][6]:.3f} (materials seen in pretraining {fid_seen:.3f}); per material "
              + ", ".join(f"{m} {p:.2f}" for m, p in zip(MATERIALS, per)))
    lines = [f"\n## Base prompt fidelity ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"`python benchmarks/base_fidelity.py --base {' '.join(args.base)} --per-material {args.per_material} "
             f"--steps {args.steps} --guidance {args.guidance:g}"
             + (f" --x0-clip {' '.join(f'{c:g}' for c in args.x0_clip)}" if args.x0_clip != [None] else "") + "`; material classifier accuracy on "
             f"{len(yt)} held-out real images: {acc_real:.3f}; wall {time.perf_counter() - t0:.0f} s.", "",
             "| base | x0 bound | predicts | codec | regime | px | fidelity (all) | fidelity (materials seen) | "
             + " | ".join(MATERIALS) + " | held out | sampling s |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(MATERIALS) + "---|---|"]
    for b, bound, pred_type, codec, regime, res, f_all, f_seen, per, held, secs in rows:
        lines.append(f"| {b} | {bound or 'none'} | {pred_type} | {codec} | {regime} | {res} | {f_all:.3f} | {f_seen:.3f} | "
                     + " | ".join(f"{p:.2f}" for p in per) + f" | {', '.join(held) or '—'} | {secs:.0f} |")
    print_and_append(args.doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
