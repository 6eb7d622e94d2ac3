"""Where along the noise schedule does a tiny base fail?  Denoising quality per timestep, and SDEdit starts.

    python benchmarks/base_denoising.py --base A B ... [--images 20]

For real built-in images of the five materials (rendered at the base's resolution, a hole or scratch each):
- x0 PSNR per t: noise the image's latent to t, predict x0 in one step (with the true mask and prompt,
  guidance 1), decode, PSNR against the image. A base that samples well keeps this high until t is large;
  the one-step prediction at large t is an average, so the numbers fall with t for every model.
- SDEdit: start DDIM-50 (guidance 3) from the image's latent noised to t0 ∈ {400, 600, 800, 900} and from
  pure noise; PSNR of the result against the image (how much of the image survives) and a figure per base
  (rows: real, then each start) in docs/figures/denoising_<codec>_<regime>_<px>[_v]_<schedule>.jpg.
The table goes to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomalign.data.dataset import default_prompt
from anomalign.data.procedural import MATERIALS, render_sample
from anomalign.data.sample import Sample
from anomalign.data.transforms import from_model_range, to_model_range
from anomalign.figures import grid
from anomalign.generator.model import MaskGenerator
from anomalign.generator.sampler import bound_x0, make_scheduler, x0_bound_of
from common import DOCS, base_tag, machine, print_and_append

T_ONE_STEP = (100, 300, 500, 700, 800, 900, 999)
T_STARTS = (400, 600, 800, 900, 999)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1], per image on [0, 1]."""
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def sdedit(gen, z0, emb, cond, start: int, seed: int = 0, steps: int = 50, guidance: float = 3.0,
           x0_clip: float | None = None) -> torch.Tensor:
    sch = make_scheduler(gen.scheduler, "ddim")
    bound = x0_bound_of(gen, x0_clip)
    sch.set_timesteps(steps)
    ts = [t for t in sch.timesteps.tolist() if t <= start]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    ab = gen.scheduler.alphas_cumprod[ts[0]]
    z = noise if start >= 999 else ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    emb2, cond2 = torch.cat([emb, gen.encode_prompts([""] * len(z0))]), torch.cat([cond, torch.zeros_like(cond)])
    for t in ts:
        e = gen.predict_noise(torch.cat([z, z]), torch.full((2 * len(z),), t), emb2, cond2)
        ec, eu = e.chunk(2)
        e = eu + guidance * (ec - eu)
        if bound is not None:  # as sampler.sample does
            e = bound_x0(e, z, gen.scheduler.alphas_cumprod[t], bound)
        z = sch.step(e, t, z).prev_sample
    return gen.decode(z)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--x0-clip", type=float, default=None,
                    help="sampling bound on the x0 estimate (sampler.bound_x0; default: each base's own, 0 = none)")
    ap.add_argument("--doc", type=Path, default=DOCS)
    ap.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "figures",
                    help="folder of the figure")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for b in args.base:
        gen = MaskGenerator.load(Path(b), mask_free_ok=True).eval()
        r = gen.resolution
        xs, ms, prompts = [], [], []
        for i in range(args.images):
            material, defect = MATERIALS[i % len(MATERIALS)], ("hole", "scratch")[i % 2]
            img, m = render_sample(np.random.default_rng([7, i]), r, material, defect)
            xs.append(to_model_range(img))
            ms.append(torch.from_numpy(m).float()[None])
            prompts.append(default_prompt(Sample(Path(""), None, defect, False, category=material)))
        x, m = torch.stack(xs), torch.stack(ms)
        with torch.no_grad():
            z0, emb, cond = gen.encode(x), gen.encode_prompts(prompts), gen.condition(m)
            one = {}
            for t in T_ONE_STEP:
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
                ab = gen.scheduler.alphas_cumprod[t]
                zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
                eps = gen.predict_noise(zt, torch.full((len(x),), t), emb, cond)
                one[t] = psnr(gen.decode((zt - (1 - ab).sqrt() * eps) / ab.sqrt()), x)
            starts, tiles = {}, list(from_model_range(x[:5]))
            for s in T_STARTS:
                out = sdedit(gen, z0, emb, cond, s, x0_clip=args.x0_clip)
                starts[s] = psnr(out, x)
                tiles += list(from_model_range(out[:5]))
        sched = gen.scheduler.config
        bound = x0_bound_of(gen, args.x0_clip)
        name = f"{base_tag(gen)}_{sched.beta_schedule}" + (f"_x0clip{bound:g}" if bound else "")
        figure = args.figures / f"denoising_{name}.jpg"
        Image.fromarray(grid(tiles, 5)).save(figure, quality=85)
        rows.append((b, name, f"{sched.beta_schedule} {sched.beta_start:g}-{sched.beta_end:g}", one, starts))
        print(b, {k: round(v, 1) for k, v in one.items()}, {k: round(v, 1) for k, v in starts.items()}, flush=True)
    lines = [f"\n## Base denoising per timestep ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"`python benchmarks/base_denoising.py --base {' '.join(args.base)} --images {args.images}"
             + (f" --x0-clip {args.x0_clip:g}" if args.x0_clip is not None else "") + "`; PSNR dB "
             f"against {args.images} real built-in images; wall {time.perf_counter() - t0:.0f} s.", "",
             "| base | kind | schedule | " + " | ".join(f"x0 @ t={t}" for t in T_ONE_STEP) + " | "
             + " | ".join(f"SDEdit from {t}" for t in T_STARTS) + " |",
             "|---|---|---|" + "---|" * (len(T_ONE_STEP) + len(T_STARTS))]
    for b, name, sched, one, starts in rows:
        lines.append(f"| {b} | {name} | {sched} | " + " | ".join(f"{one[t]:.1f}" for t in T_ONE_STEP) + " | "
                     + " | ".join(f"{starts[t]:.1f}" for t in T_STARTS) + " |")
    print_and_append(args.doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
