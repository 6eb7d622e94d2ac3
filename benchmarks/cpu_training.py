"""CPU training speed of the segmenter (issue 40, item 3): one training step of unet-tiny at batch 16 on 128-px
crops (the measured recipe's step) in fp32, channels-last, bf16 autocast and both, and the BatchNorm U-Net
(`--norm batch`), interleaved in one run, with FLOPs per step and the share of the matmul limit (issue 40, item 5).

    python benchmarks/cpu_training.py [--threads 2] [--repeats 6]

bf16 autocast is what `train-segmenter --mixed-precision bf16` does on the CPU (accelerate's autocast); it pays
off on CPUs with native bf16 (avx512_bf16 / amx_bf16 in /proc/cpuinfo). Appended to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_gflops, median, publish  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from anomalign.segmenter.model import Segmenter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.size, args.size) * 2 - 1
    y = (torch.rand(args.batch_size, args.size, args.size) > 0.95).long()
    fns = {}
    arms = [("fp32 (NCHW: the step before issue 40)", False, False, "group"), ("channels-last", True, False, "group"),
            ("bf16 autocast", False, True, "group"), ("bf16 autocast + channels-last", True, True, "group"),
            ("BatchNorm (--norm batch), fp32", False, False, "batch"), ("BatchNorm, bf16 autocast", False, True, "batch"),
            ("BatchNorm, bf16 autocast + channels-last", True, True, "batch")]
    for name, channels_last, bf16, norm in arms:
        model = Segmenter("unet-tiny", norm=norm).train()  # U-Nets are built channels-last since issue 40
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        def step(model=model, opt=opt, xx=xx, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(xx)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        fns[name] = step
    flops = {}
    for name, fn in fns.items():  # forward + backward, counted on the step itself
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    limit = {dt: matmul_gflops(dt, args.repeats) for dt in (torch.float32, torch.bfloat16)}
    times = interleaved(fns, args.repeats, warmup=2)
    base = median(times[arms[0][0]])
    rows = ["| step (unet-tiny, forward + backward + AdamW) | GFLOP per step | median s | vs the first row | GFLOP/s | "
            "share of the limit |", "|---|---|---|---|---|---|"]
    for k, v in times.items():
        t, lim = median(v), limit[torch.bfloat16 if "bf16" in k else torch.float32]
        rows.append(f"| {k} | {flops[k] / 1e9:.1f} | {t:.3f} | {base / t:.2f}x | {flops[k] / t / 1e9:.0f} | "
                    f"{flops[k] / t / 1e9 / lim:.0%} |")
    rows += ["", f"Arithmetic limit (2048² matmul, same run): fp32 {limit[torch.float32]:.0f} GFLOP/s, bf16 "
                 f"{limit[torch.bfloat16]:.0f} GFLOP/s."]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    publish("CPU training step: fp32, channels-last, bf16", "\n".join(rows) + (
        f"\n\nBatch {args.batch_size}, {args.size}-px crops, {args.threads} threads, {args.repeats} interleaved repeats; "
        f"native bf16: {', '.join(native) or 'none'}; {machine()}."), to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
