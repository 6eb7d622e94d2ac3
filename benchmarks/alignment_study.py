"""The paper's claim in the paper's regime: does Alignment Regularization (α = 0.7) align a MASK-FREE base
faster than plain fine-tuning (α = 0)?  (issue 16)

    python benchmarks/alignment_study.py --dataset builtin --base runs/tiny_base_mask_free
    python benchmarks/alignment_study.py --dataset magnetic-tile --data ../shared/datasets/magnetic-tile \\
        --base runs/tiny_base_mask_free --crop-size 128 --oracle runs/mt_unet/real_s0

Setting: the base never saw a mask (``pretrain-base --mask-free``); ``train-generator`` widens its conv_in
with zero-initialised mask channels and fine-tunes on the user's pairs — exactly what happens to Stable
Diffusion. Every (α, seed) run is checkpointed at each budget in ``--budgets`` and each checkpoint is
scored on the held-out masks:

- oracle IoU: a segmenter trained on more real data of the same kind segments the generated images;
  IoU against the conditioning mask, and against the same mask moved 16 px (the control: a generator
  that ignores masks scores the same on both);
- free-lunch: on real test images, how often the denoising loss with the true mask is lower than with
  the moved AND the empty mask, and the mean free-lunch score (``synthesis.scoring``).

Data: ``builtin`` renders the built-in dataset for ONE material (default carbon: held out of the
mask-free base's corpus) — the fine-tuning pairs, and a 4× larger set of the same material for the
oracle; ``magnetic-tile`` splits the folder (seeded, per defect type) and either resizes whole images
to the base's resolution (the defects vanish: an oracle trained that way scored 0.007 IoU on real test
images) or, with ``--crop-size``, fine-tunes on native-scale crops and scores one anomaly-centred crop per
test anomaly with a native-resolution oracle (e.g. the real-only U-Net of docs/results.md, same split).
Stages already done in --work are reused; a table (mean ± sd over seeds) is appended to --doc and the
raw numbers go to WORK/results.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from anomalign.config import build_config
from anomalign.metrics import mean_sd
from anomalign.data import load_dataset
from anomalign.data.crops import crop_bank
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.builtin import MakeDemoConfig, make_demo_dataset
from anomalign.generator.model import MaskGenerator, build_generator
from anomalign.generator.sampler import sample
from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
from anomalign.segmenter.model import Segmenter
from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
from anomalign.synthesis.scoring import free_lunch, oracle_iou, shift_masks
from common import machine, print_and_append


def builtin_data(work: Path, material: str, size: int) -> tuple[Path, Path]:
    """(fine-tuning dataset: 12 pairs per defect type + 8 normals, val/test; oracle dataset: 48 per type)."""
    ft, oracle = work / "data", work / "oracle_data"
    if not ft.exists():
        make_demo_dataset(build_config(MakeDemoConfig, dict(
            out=str(ft), materials=[material], size=size, train_per_defect=12, val_per_defect=2,
            test_per_defect=10, normal_train=8, normal_val=2, normal_test=4, seed=0)), progress=False)
    if not oracle.exists():
        make_demo_dataset(build_config(MakeDemoConfig, dict(
            out=str(oracle), materials=[material], size=size, train_per_defect=48, val_per_defect=4,
            test_per_defect=2, normal_train=16, normal_val=2, normal_test=2, seed=1)), progress=False)
    return ft, oracle


def checkpoint_generator(run: Path, step: int) -> MaskGenerator:
    spec = json.loads((run / "generator.json").read_text())
    gen = build_generator(spec)
    gen.load_trainable_state(load_file(str(run / "checkpoints" / f"step-{step:07d}" / "model.safetensors")))
    return gen.eval()


def last_step(run: Path) -> int:
    """Steps a (finished) fine-tuning run in ``run`` has done: its newest checkpoint; 0 if unfinished."""
    if not (run / "generator.safetensors").exists():
        return 0
    steps = [int(c.name.split("-")[1]) for c in (run / "checkpoints").glob("step-*")]
    return max(steps, default=0)


def score(gen: MaskGenerator, oracle: Segmenter, images, masks, prompts, guidance: float, steps: int,
          x0_clip: float | None = None) -> dict:
    fake = sample(gen, masks, prompts, list(range(len(prompts))), "ddim", steps, guidance, x0_clip=x0_clip)
    iou = oracle_iou(oracle, fake, masks)
    moved = oracle_iou(oracle, fake, shift_masks(masks))
    fl = free_lunch(gen, images, masks, prompts)
    return {"oracle_iou": float(iou.mean()), "moved_iou": float(moved.mean()),
            "free_lunch_both": fl["frac_true_lt_both"], "free_lunch_score": float(fl["score"].mean())}


def mean_sd3(values: list[float]) -> str:
    return mean_sd(values, fmt="{:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["builtin", "magnetic-tile"], default="builtin")
    ap.add_argument("--data", type=Path, help="magnetic-tile: the dataset folder")
    ap.add_argument("--material", default="carbon", help="builtin: the material fine-tuned on")
    ap.add_argument("--base", required=True, help="the mask-free tiny base")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=[200, 400, 800, 1600])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--mask-encoding", default="unshuffle", choices=["unshuffle", "resize", "vae"])
    ap.add_argument("--stop-grad", default="none", choices=["none", "image", "mask"])
    ap.add_argument("--crop-size", type=int, default=0,
                    help="magnetic-tile: fine-tune and score on CROP-px crops at native scale (train-generator's crop "
                         "bank; one anomaly-centred test crop per test anomaly) instead of whole images resized to "
                         "the base's resolution, where the defects vanish; pass a native-resolution --oracle")
    ap.add_argument("--eval-masks", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--x0-clip", type=float, default=None,
                    help="sampling bound on the x0 estimate (sampler.bound_x0; default: the base's own, 0 = none)")
    ap.add_argument("--train-only", action="store_true",
                    help="fine-tune the missing runs and stop (score them in a later call)")
    ap.add_argument("--oracle-steps", type=int, default=1500)
    ap.add_argument("--oracle", type=Path, default=None, help="reuse this oracle run folder (same data and size)")
    ap.add_argument("--doc", type=Path, default=Path("docs/generator.md"))
    args = ap.parse_args()
    base = MaskGenerator.load(Path(args.base), mask_free_ok=True)
    size = base.resolution
    work = args.work or Path("runs") / f"alignment_{args.dataset}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.dataset == "builtin":
        data, oracle_data = builtin_data(work, args.material, size)
        extra = {}
    else:
        if not args.data:
            ap.error("--dataset magnetic-tile needs --data")
        data = oracle_data = args.data
        # crop_size 0: whole images resized to the base's resolution (issue 16's first plan; the defects vanish)
        extra = dict(crop_size=args.crop_size)
    oracle_dir = args.oracle or work / "oracle"
    if not (oracle_dir / "best").exists():
        run_train_segmenter(build_config(TrainSegmenterConfig, dict(
            recipe="paper", train=str(oracle_data), out=str(oracle_dir), size=size, max_steps=args.oracle_steps, batch_size=16,
            anomaly_weight=10.0, validate_every=500, checkpoint_every=100_000, log_every=50, device="cpu",
            **extra)), progress=False)
    oracle = Segmenter.load(oracle_dir / "best")
    test = [s for s in load_dataset(data).split("test") if not s.normal][: args.eval_masks]
    if args.crop_size:  # one anomaly-centred native-scale crop per test anomaly, as the generator trained on
        images, masks, test = crop_bank(test, args.crop_size, per_image=1, seed=0)
    else:
        images, masks = PairDataset(test, size=size).tensors()
    prompts = [default_prompt(s) for s in test]
    oracle_real = float(oracle_iou(oracle, images, masks).mean())
    print(f"oracle IoU on {len(test)} real test anomalies: {oracle_real:.3f}")
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    tag_extra = ((f"_crop{args.crop_size}" if args.crop_size else "")
                 + (f"_{args.mask_encoding}" if args.mask_encoding != "unshuffle" else "")
                 + (f"_sg-{args.stop_grad}" if args.stop_grad != "none" else ""))
    clip_tag = f"_x0clip{args.x0_clip:g}" if args.x0_clip is not None else ""  # results keyed by the bound too
    for seed in args.seeds:  # seed-major: an interrupted study still has paired α arms for the seeds it did
        for alpha in args.alphas:
            tag = f"a{alpha:g}{tag_extra}_s{seed}"
            run = work / tag
            done = last_step(run)
            if done < max(args.budgets):
                # A finished run of a smaller budget is continued from its last checkpoint (constant learning
                # rate, batches drawn by step: the same as training to the larger budget in one go)
                t = time.perf_counter()
                run_train_generator(build_config(TrainGeneratorConfig, dict(
                    data=str(data), out=str(run), base=str(args.base), alpha=alpha, al_stop_grad=args.stop_grad,
                    mask_encoding=args.mask_encoding, max_steps=max(args.budgets), batch_size=args.batch_size,
                    learning_rate=args.learning_rate, seed=seed, checkpoint_every=min(args.budgets),
                    keep_checkpoints=max(args.budgets) // min(args.budgets), validate_every=0, validation_masks=4,
                    log_every=50, device="cpu", resume="latest" if (run / "checkpoints").is_dir() else None,
                    **extra)), progress=False)
                timing = run / "train_seconds.txt"
                before = float(timing.read_text()) if timing.exists() else 0.0
                timing.write_text(f"{before + time.perf_counter() - t:.1f}\n")
            secs = float((run / "train_seconds.txt").read_text())
            secs_per_step = secs / max(last_step(run), 1)
            if args.train_only:
                continue
            for step in args.budgets:
                key = f"{tag}@{step}{clip_tag}"
                if key in results:
                    continue
                r = score(checkpoint_generator(run, step), oracle, images, masks, prompts, args.guidance,
                          args.sample_steps, args.x0_clip)
                r.update(alpha=alpha, seed=seed, step=step, train_seconds=secs_per_step * step)
                results[key] = r
                results_file.write_text(json.dumps(results, indent=1))
                print(key, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    if args.train_only:
        return
    report(args, results, tag_extra, clip_tag, oracle_real, len(test), time.perf_counter() - t0)


def report(args, results: dict, tag_extra: str, clip_tag: str, oracle_real: float, n_test: int, seconds: float) -> None:
    lines = [f"\n### Alignment study, {args.dataset} ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"`python benchmarks/alignment_study.py --dataset {args.dataset} --base {args.base} "
             f"{f'--crop-size {args.crop_size} ' if args.crop_size else ''}--mask-encoding {args.mask_encoding} --stop-grad {args.stop_grad} --batch-size {args.batch_size}"
             + (f" --x0-clip {args.x0_clip:g}" if args.x0_clip is not None else "") + "`; "
             f"{len(args.seeds)} seeds, {n_test} test masks, DDIM-{args.sample_steps}, guidance {args.guidance:g}; "
             f"oracle IoU on the real test anomalies {oracle_real:.3f}; wall {seconds / 60:.0f} min.", "",
             "| steps | α | oracle IoU gen | moved-mask control | true mask beats moved & empty | free-lunch score "
             "| fine-tune s (mean) |", "|---|---|---|---|---|---|---|"]
    for step in args.budgets:
        for alpha in args.alphas:
            keys = [f"a{alpha:g}{tag_extra}_s{s}@{step}{clip_tag}" for s in args.seeds]
            rs = [results[k] for k in keys if k in results]
            if not rs:
                continue
            col = lambda k: mean_sd3([r[k] for r in rs])  # noqa: E731
            lines.append(f"| {step} | {alpha:g} | {col('oracle_iou')} | {col('moved_iou')} | {col('free_lunch_both')} "
                         f"| {col('free_lunch_score')} | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    print_and_append(args.doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
