"""Synthesis speed and alignment: DDIM-50 vs DPM-Solver++-20, and anomalign's sampler vs a
diffusers-pipeline-style reference loop on the same UNet, scheduler, steps and guidance.

    python benchmarks/synthesis_speed.py --generator runs/demo_gen --data runs/demo_data

Prints a table and appends it to docs/benchmarks.md. Alignment per configuration: the free-lunch score
(1 - L(true mask) / min(L(moved), L(empty)), > 0 = aligned) and the fraction of samples whose
denoising loss is lower with their own mask than with the moved mask, on ``--num`` generated images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, interleaved, median, peak_rss_mb  # noqa: E402

from anomalign.data.dataset import PairDataset, default_prompt  # noqa: E402
from anomalign.data.validate import load_dataset  # noqa: E402
from anomalign.generator.model import MaskGenerator  # noqa: E402
from anomalign.generator.sampler import make_scheduler, sample  # noqa: E402
from anomalign.seeding import seeded_noise  # noqa: E402
from anomalign.synthesis.scoring import free_lunch  # noqa: E402


@torch.no_grad()
def reference_loop(gen, masks, prompts, seeds, scheduler: str, steps: int, guidance: float) -> torch.Tensor:
    """The loop structure of diffusers' StableDiffusionPipeline.__call__ (latents duplicated for CFG,
    scale_model_input, one UNet call, chunk, guidance, scheduler.step), written against the same model."""
    sched = make_scheduler(gen.scheduler, scheduler)
    sched.set_timesteps(steps, device=gen.device)
    f = gen.factor
    b, _, h, w = masks.shape
    latents = seeded_noise(seeds, (gen.latent_channels, h // f, w // f), gen.device, gen.unet.dtype)
    latents = latents * sched.init_noise_sigma
    cond = gen.condition(masks.to(gen.device))
    prompt_embeds = torch.cat([gen.encode_prompts([""] * b), gen.encode_prompts(list(prompts))])
    cond = torch.cat([torch.zeros_like(cond), cond])
    for t in sched.timesteps:
        latent_model_input = sched.scale_model_input(torch.cat([latents] * 2), t)
        tt = torch.full((2 * b,), int(t), device=gen.device, dtype=torch.long)
        noise_pred = gen.predict_noise(latent_model_input, tt, prompt_embeds, cond)
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance * (noise_pred_text - noise_pred_uncond)
        latents = sched.step(noise_pred, t, latents).prev_sample
    return gen.decode(latents).clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", type=Path, help="trained generator run (or use --random-sd)")
    ap.add_argument("--data", type=Path, help="dataset whose train masks condition the samples")
    ap.add_argument("--random-sd", type=float, default=None, metavar="WIDTH",
                    help="speed only: an SD-1.5-shaped random model (channel widths x WIDTH) at --size, random "
                         "masks; no alignment scores")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--num", type=int, default=32, help="images per configuration for the alignment scores")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (one batch each)")
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    t_start = time.perf_counter()

    if args.random_sd is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from models import sd_generator
        gen = sd_generator(args.random_sd, lora=False)[0].to(args.device).eval()
        g = torch.Generator().manual_seed(0)
        masks = (torch.rand(args.num, 1, args.size // 32, args.size // 32, generator=g) > 0.8).float()
        masks = torch.nn.functional.interpolate(masks, size=(args.size, args.size), mode="nearest")
        prompts = ["a photo of a surface with a scratch defect"] * args.num
    else:
        if args.generator is None or args.data is None:
            ap.error("--generator and --data are required unless --random-sd is given")
        gen = MaskGenerator.load(args.generator, device=args.device).eval()
        index = load_dataset(args.data)
        samples = [s for s in index.split("train") if not s.normal][: args.num]
        _, masks = PairDataset(samples, size=gen.resolution).tensors()
        prompts = [default_prompt(s) for s in samples]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gen.unet.to(dtype)
    gen.vae.to(dtype)
    seeds = list(range(len(prompts)))
    bs = args.batch_size
    mb, pb, sb = masks[:bs], prompts[:bs], seeds[:bs]
    configs = {"DDIM-50": ("ddim", 50), "DPM-Solver++-20": ("dpm++", 20)}

    # speed: one batch per call, configurations and implementations interleaved
    fns = {}
    for name, (sch, steps) in configs.items():
        fns[f"anomalign {name}"] = lambda sch=sch, steps=steps: sample(gen, mb, pb, sb, sch, steps, args.guidance)
        fns[f"reference {name}"] = lambda sch=sch, steps=steps: reference_loop(gen, mb, pb, sb, sch, steps,
                                                                              args.guidance)
    times = interleaved(fns, args.repeats, args.device)
    same = {name: float((sample(gen, mb, pb, sb, sch, steps, args.guidance)
                         - reference_loop(gen, mb, pb, sb, sch, steps, args.guidance)).abs().max())
            for name, (sch, steps) in configs.items()}

    # alignment: all --num masks, each configuration (trained generators only)
    align = {name: {"score": float("nan"), "score_sd": float("nan"), "lt_moved": float("nan"),
                    "lt_empty": float("nan")} for name in configs}
    for name, (sch, steps) in configs.items() if args.random_sd is None else ():
        fake = torch.cat([sample(gen, masks[i:i + bs], prompts[i:i + bs], seeds[i:i + bs], sch, steps, args.guidance)
                          for i in range(0, len(seeds), bs)]).cpu()
        fl = free_lunch(gen, fake, masks, prompts, shift=masks.shape[-1] // 4)
        align[name] = {"score": float(fl["score"].mean()), "score_sd": float(fl["score"].std()),
                       "lt_moved": fl["frac_true_lt_moved"], "lt_empty": fl["frac_true_lt_empty"]}

    rows = ["| configuration | images/s (anomalign) | images/s (reference loop) | anomalign / reference speed | "
            "max abs pixel diff | free-lunch score (mean ± sd) | L(true) < L(moved) | L(true) < L(empty) |",
            "|---|---|---|---|---|---|---|---|"]
    for name in configs:
        ours, ref = median(times[f"anomalign {name}"]), median(times[f"reference {name}"])
        a = align[name]
        scores = (f"{a['score']:+.4f} ± {a['score_sd']:.4f} | {100 * a['lt_moved']:.0f}% | {100 * a['lt_empty']:.0f}%"
                  if args.random_sd is None else "— | — | —")
        rows.append(f"| {name} | {bs / ours:.2f} | {bs / ref:.2f} | {ref / ours:.3f}× | {same[name]:.1e} | {scores} |")
    ddim, dpm = median(times["anomalign DDIM-50"]), median(times["anomalign DPM-Solver++-20"])
    body = "\n".join(rows) + (
        f"\n\nGenerator `{args.generator or f'random SD-1.5 shape x {args.random_sd}'}` ({gen.spec['backend']}, "
        f"{masks.shape[-1]} px, {args.dtype}, device {args.device}), guidance {args.guidance}, batch {bs}, "
        f"{args.repeats} timed repeats (median)"
        + (f", alignment on {len(seeds)} train masks of `{args.data}`. " if args.random_sd is None else ". ")
        + f"max abs pixel diff = largest difference between the two implementations' images (in [-1, 1] units). "
        f"DPM-Solver++-20 is {ddim / dpm:.2f}× the images/s of DDIM-50. Peak RSS {peak_rss_mb():.0f} MiB; "
        f"wall {time.perf_counter() - t_start:.0f} s.")
    publish("Synthesis: samplers and reference loop", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
