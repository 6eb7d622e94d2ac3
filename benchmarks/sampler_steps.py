"""Few-step synthesis (issue 40, item 4): DDIM at 50 / 25 steps against DPM-Solver++(2M) and UniPC at 8-10 steps.

    python benchmarks/sampler_steps.py --run anomalign_demo --seeds 0 1 2 --work runs/samplers
    python benchmarks/sampler_steps.py --run runs/mt_s0 --data ../shared/datasets/magnetic-tile --num 96 ...

``--run``: an `anomalign run` (or `demo`) folder: its generator, its baseline segmenter (the oracle), its data
and split. Per sampler and seed, `generate` makes ``--num`` pairs exactly as the run's synthesis stage does
(full size, into the same hosts, no filter, so every sampler is scored on the same masks and placements), and
`evaluate-generation` scores them against the real test anomalies: FID, oracle IoU with its moved-mask control.
The sampler's own cost is timed apart from placement and scoring: seconds per pair of `sample()` on one batch
of the run's masks, the samplers interleaved (A B C A B C ...), median of ``--repeats``. Appended to
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, median, publish  # noqa: E402

from anomalign.config import build_config, load_config  # noqa: E402
from anomalign.metrics import mean_sd  # noqa: E402

SAMPLERS = {"DDIM-50": ("ddim", 50), "DDIM-25": ("ddim", 25), "DPM++-10": ("dpm++", 10), "DPM++-8": ("dpm++", 8),
            "UniPC-10": ("unipc", 10), "UniPC-8": ("unipc", 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="an `anomalign run` or `demo` folder")
    ap.add_argument("--data", type=Path, help="its dataset (default: the run's)")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num", type=int, default=96, help="pairs per sampler and seed")
    ap.add_argument("--batch", type=int, default=16, help="masks in the timed sampling batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("runs/samplers"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()

    from anomalign.evaluation.generation import EvaluateGenerationConfig, run_evaluate_generation
    from anomalign.generator.model import MaskGenerator
    from anomalign.generator.sampler import sample
    from anomalign.pipeline import RunConfig, data_values
    from anomalign.plan import read_plan
    from anomalign.synthesis.generate import GenerateConfig, run_generate

    run_cfg = load_config(RunConfig, args.run / "run.yaml")
    data = args.data or Path(run_cfg.data)
    plan = read_plan(args.run / "plan.yaml")
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    for name in args.samplers:
        scheduler, steps = SAMPLERS[name]
        for seed in args.seeds:
            out = args.work / f"{name}_s{seed}"
            if not (out / "summary.json").is_file():
                run_generate(build_config(GenerateConfig, {
                    **data_values(run_cfg), "generator": str(args.run / "generator"), "masks": str(data), "out": str(out),
                    "split": "train", "num": args.num, "augment": ["flip"] if plan.hosts == "normal" else ["flip", "rot90"],
                    "scheduler": scheduler, "steps": steps, "guidance": plan.guidance, "batch_size": 16, "seed": seed,
                    "normals": str(run_cfg.normals or data), "hosts": plan.hosts, "max_defect_size": plan.max_defect_size,
                    "device": "cpu"}), progress=False)
            ev = out / "eval" / "generation.json"
            if not ev.is_file():
                run_evaluate_generation(build_config(EvaluateGenerationConfig, {
                    **data_values(run_cfg), "generated": [str(out)], "labels": [name], "real": str(data), "split": "test",
                    "out": str(out / "eval"), "oracle": str(args.run / "baseline"), "extra_metrics": False}))
            r = json.loads(ev.read_text())["sets"][name]
            for k in ("fid", "oracle_iou", "oracle_iou_moved"):
                rows.setdefault(name, {}).setdefault(k, []).append(r.get(k))
    # the sampler alone: one batch of the run's kept masks at the generator's resolution, same seeds for all
    gen = MaskGenerator.load(args.run / "generator").eval()
    res = gen.resolution
    masks = torch.zeros(args.batch, 1, res, res)
    for i in range(args.batch):  # a spread of rectangles, the defects' typical share of a window
        y, x = (7 * i) % (res // 2), (11 * i) % (res // 2)
        masks[i, :, y:y + res // 4, x:x + res // 3] = 1
    prompts = ["a photo of a surface with a defect"] * args.batch

    def job(s, k):
        return lambda: sample(gen, masks, prompts, list(range(args.batch)), s, k, plan.guidance)
    with torch.no_grad():
        times = interleaved({n: job(*SAMPLERS[n]) for n in args.samplers}, args.repeats)
    per_pair = {n: median(t) / args.batch for n, t in times.items()}
    base = per_pair.get("DDIM-50")
    lines = ["| sampler | s / pair (sampling only) | vs DDIM-50 | oracle IoU | oracle IoU, mask moved | FID |",
             "|---|---|---|---|---|---|"]
    for n in args.samplers:
        r = rows[n]
        speed = f"{base / per_pair[n]:.1f}x faster" if base else "–"
        lines.append(f"| {n} | {per_pair[n]:.3f} | {speed} | {mean_sd(r['oracle_iou'], fmt='{:.3f}')} | "
                     f"{mean_sd(r['oracle_iou_moved'], fmt='{:.3f}')} | {mean_sd(r['fid'])} |")
    body = "\n".join(lines) + (
        f"\n\n`{args.run}` (generator, baseline as oracle, plan's guidance {plan.guidance:g}), {args.num} pairs per "
        f"sampler and seed, seeds {args.seeds} (mean ± sd); sampling timed on a batch of {args.batch} masks at "
        f"{res} px, median of {args.repeats}, samplers interleaved; {machine()}; wall "
        f"{(time.perf_counter() - t0) / 60:.0f} min.")
    publish(f"Few-step synthesis: {args.run.name}", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
