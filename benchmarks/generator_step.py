"""Generator training step: single branch (α = 0) vs dual branch batched vs dual branch as two UNet
calls; frozen-encoder latents cached vs encoded every step.

    python benchmarks/generator_step.py                        # tiny @ 64 px and sd (width 0.25) @ 256 px, CPU
    python benchmarks/generator_step.py --backends sd --width 1.0 --size 512 --batch-size 4 --device cuda --dtype bf16

A step = forward + backward of the loss (+ encoding when not cached); medians of interleaved repeats.
Targets: dual batched ≤ 2.0× single; cached ≥ 1.3× faster than encoding every step (sd).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, interleaved, median, peak_rss_mb  # noqa: E402
from models import sd_generator, tiny_generator  # noqa: E402

from anomalign.generator.losses import add_noise, dual_branch_loss, loss_al, loss_gen, loss_sd  # noqa: E402


def two_call_loss(gen, z0, h0, cond, emb, noise, t, alpha=0.7):
    """The dual-branch loss with the two branches as two separate UNet calls (the naive implementation)."""
    eps_z = gen.predict_noise(add_noise(gen.scheduler, z0, noise, t), t, emb, cond)
    eps_h = gen.predict_noise(add_noise(gen.scheduler, h0, noise, t), t, emb, cond)
    return loss_gen(loss_sd(noise, eps_z), loss_al(eps_z, eps_h), alpha)


def bench(name: str, gen, ctx: int, size: int, bs: int, repeats: int, device: str, dtype) -> list[str]:
    gen.to(device)
    if dtype != torch.float32:
        gen.unet.to(dtype)
        gen.vae.to(dtype)
    gen.unet.train()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(bs, 3, size, size, generator=g) * 2 - 1).to(device, dtype)
    m = (torch.rand(bs, 1, size, size, generator=g) > 0.9).float().to(device, dtype)
    emb = torch.randn(bs, 77 if name.startswith("sd") else 12, ctx, generator=g).to(device, dtype)
    with torch.no_grad():
        z0, h0 = gen.encode(x), gen.encode_mask_image(m)
        cond = gen.condition(m)
    noise = torch.randn(z0.shape, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (bs,), generator=g).to(device)
    params = [p for p in gen.parameters() if p.requires_grad]

    def step(loss_fn):
        def run():
            for p in params:
                p.grad = None
            loss_fn().backward()
        return run

    def encode_then(fn):
        def run():
            with torch.no_grad():
                gen.encode(x), gen.encode_mask_image(m), gen.condition(m)
            return fn()
        return run

    single = lambda: dual_branch_loss(gen, z0, h0, cond, emb, alpha=0.0, noise=noise, t=t)["loss"]  # noqa: E731
    dual = lambda: dual_branch_loss(gen, z0, h0, cond, emb, alpha=0.7, noise=noise, t=t)["loss"]  # noqa: E731
    two = lambda: two_call_loss(gen, z0, h0, cond, emb, noise, t)  # noqa: E731
    fns = {"single branch (α = 0)": step(single), "dual, batched (anomalign)": step(dual),
           "dual, two UNet calls": step(two), "dual batched, encode every step": step(encode_then(dual))}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = interleaved(fns, repeats, device)
    med = {k: median(v) for k, v in times.items()}
    mem = (f"CUDA max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda")
           else f"peak RSS of the process so far {peak_rss_mb():.0f} MiB")
    s, d, tw, enc = (med[k] for k in fns)
    rows = [f"| {name} | {k} | {1 / v:.2f} | {v / s:.2f}× |" for k, v in med.items()]
    rows.append(f"| {name} | **dual batched / single** | | **{d / s:.2f}×** (target ≤ 2.0×: "
                f"{'met' if d / s <= 2.0 else 'MISSED'}) |")
    rows.append(f"| {name} | two calls / batched | | {tw / d:.2f}× |")
    verdict = (f" (target ≥ 1.3×: {'met' if enc / d >= 1.3 else 'MISSED'})" if name.startswith("sd")
               else " (no target for tiny)")
    rows.append(f"| {name} | **encode every step / cached** | | **{enc / d:.2f}×**{verdict} |")
    rows.append(f"| {name} | memory | | {mem} |")
    gen.to("cpu")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["tiny", "sd"], choices=["tiny", "sd"])
    ap.add_argument("--width", type=float, default=0.25, help="sd: channel-width multiplier of SD-1.5")
    ap.add_argument("--size", type=int, default=256, help="sd: image size")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    t0 = time.perf_counter()
    rows = ["| model | variant | steps/s | time vs single |", "|---|---|---|---|"]
    for backend in args.backends:
        if backend == "tiny":
            gen, ctx = tiny_generator()
            rows += bench("tiny @ 64 px", gen, ctx, 64, args.batch_size, args.repeats, args.device, dtype)
        else:
            gen, ctx = sd_generator(args.width)
            rows += bench(f"sd (SD-1.5 shape × {args.width}, LoRA 8) @ {args.size} px", gen, ctx, args.size,
                          args.batch_size, args.repeats, args.device, dtype)
    body = "\n".join(rows) + (f"\n\nBatch {args.batch_size}, {args.dtype}, device {args.device}, {args.repeats} "
                              f"interleaved repeats (median) after one warm-up; step = forward + backward. "
                              f"Wall {time.perf_counter() - t0:.0f} s.")
    publish("Generator training step", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
