"""Segmenter training step: Eq. 6 CE only vs CE + Generative Feedback (Eq. 10-11); inference images/s.

    python benchmarks/segmenter_step.py                      # tiny Segformer @ 64 px + tiny generator, CPU
    python benchmarks/segmenter_step.py --preset b0 --size 512 --generator sd --width 1.0 --device cuda

Target: feedback adds no more than one frozen generator forward + backward (measured separately here:
the generator's UNet forward + backward to its mask input, same batch).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, interleaved, median, peak_rss_mb  # noqa: E402
from models import sd_generator, tiny_generator  # noqa: E402

from anomalign.segmenter.losses import loss_ce, loss_feedback, loss_seg, soft_mask  # noqa: E402
from anomalign.segmenter.model import Segmenter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=64, help="training size of the step benchmark")
    ap.add_argument("--generator", default="tiny", choices=["tiny", "sd"])
    ap.add_argument("--width", type=float, default=0.25, help="sd generator width multiplier")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--infer-sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    t0, dev, bs = time.perf_counter(), args.device, args.batch_size
    torch.manual_seed(0)
    seg = Segmenter(args.preset).to(dev).train()
    gen, ctx = tiny_generator() if args.generator == "tiny" else sd_generator(args.width, lora=False)
    gen.to(dev).eval().requires_grad_(False)
    res = gen.resolution if args.generator == "tiny" else args.size
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(bs, 3, args.size, args.size, generator=g) * 2 - 1).to(dev)
    m = (torch.rand(bs, 1, args.size, args.size, generator=g) > 0.9).float().to(dev)
    x_gen = F.interpolate(x, size=(res, res), mode="bilinear") if res != args.size else x
    with torch.no_grad():
        z0 = gen.encode(x_gen)  # cached in training
    emb = torch.randn(bs, 12 if args.generator == "tiny" else 77, ctx, generator=g).to(dev)
    noise = torch.randn(z0.shape, generator=g).to(dev)
    t = torch.randint(0, 500, (bs,), generator=g).to(dev)
    synthetic = torch.zeros(bs, dtype=torch.bool, device=dev)

    def zero():
        for p in seg.parameters():
            p.grad = None

    def ce_step():
        zero()
        loss_ce(seg(x), m, synthetic).backward()

    def fb_step():
        zero()
        logits = seg(x)
        ms = soft_mask(logits, 0.5)
        ms = F.interpolate(ms, size=(res, res), mode="area") if res != args.size else ms
        loss_seg(loss_ce(logits, m, synthetic), loss_feedback(gen, z0, ms, emb, noise, t)).backward()

    def gen_fwd_bwd():  # one frozen generator forward + backward to its (soft) mask input
        ms = F.interpolate(m, size=(res, res), mode="area").requires_grad_(True)
        loss_feedback(gen, z0, ms, emb, noise, t).backward()

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = interleaved({"CE only": ce_step, "CE + feedback": fb_step, "generator fwd+bwd": gen_fwd_bwd},
                        args.repeats, dev)
    med = {k: median(v) for k, v in times.items()}
    extra = med["CE + feedback"] - med["CE only"]
    rows = ["| measurement | value |", "|---|---|",
            f"| CE-only step ({args.preset} @ {args.size} px, batch {bs}) | {1 / med['CE only']:.2f} steps/s |",
            f"| CE + feedback step | {1 / med['CE + feedback']:.2f} steps/s ({med['CE + feedback'] / med['CE only']:.2f}× "
            f"the time) |",
            f"| added by feedback | {1000 * extra:.1f} ms |",
            f"| one frozen generator fwd + bwd ({args.generator} @ {res} px) | {1000 * med['generator fwd+bwd']:.1f} ms |",
            f"| **feedback cost / generator fwd+bwd** | **{extra / med['generator fwd+bwd']:.2f}** (target ≤ 1, 5 % timing tolerance: "
            f"{'met' if extra <= med['generator fwd+bwd'] * 1.05 else 'MISSED'}) |"]
    seg.eval()
    for s in args.infer_sizes:
        xi = (torch.rand(8, 3, s, s, generator=g) * 2 - 1).to(dev)
        with torch.no_grad():
            ti = interleaved({"infer": lambda: seg.predict_proba(xi)}, args.repeats, dev)
        rows.append(f"| inference @ {s} px (batch 8) | {8 / median(ti['infer']):.1f} images/s |")
    rows.append("| memory | " + (f"CUDA max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                 if dev.startswith("cuda") else f"peak RSS {peak_rss_mb():.0f} MiB") + " |")
    body = "\n".join(rows) + f"\n\nDevice {dev}, {args.repeats} interleaved repeats (median). Wall " \
                             f"{time.perf_counter() - t0:.0f} s."
    publish("Segmenter step and inference", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
