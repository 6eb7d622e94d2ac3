"""The patience rule's before / after on the same runs (docs/run.md, "The patience rule").

    python studies/scripts/patience.py RUN [RUN ...]

Each RUN is a finished `anomalign run DATA --out RUN --seed S --arms none --no-export`. For each, the baseline's
val curve (baseline/logs/validation.csv), whether the rule trained on (the baseline's steps beyond `seg_steps`),
and the test mIoU / mDice / pixel AUROC (full size, the run's test split) of two segmenters of that one run: the
weights at `seg_steps` (its checkpoint: what `run` shipped before the rule) and the weights the run shipped.
Paired: the same training up to `seg_steps`, the same test images. Writes RUN/patience.json.
"""
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

from anomalign.config import load_config
from anomalign.data.validate import load_dataset
from anomalign.pipeline import RunConfig
from anomalign.plan import read_plan
from anomalign.segmenter.model import WEIGHTS_NAME, Segmenter
from anomalign.segmenter.validation import evaluate_run_style
from checkpoints import artifact_at  # studies/scripts/checkpoints.py


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    for run in map(Path, runs):
        cfg = load_config(RunConfig, run / "run.yaml")
        steps = read_plan(run / "plan.yaml").seg_steps
        base = run / "baseline"
        with open(base / "logs" / "validation.csv") as f:
            curve = [(int(r["step"]), 100 * float(r["mIoU"])) for r in csv.DictReader(f)]
        test = load_dataset(cfg.data, cfg, announce=False).split("test")
        result = {"val": curve, "seg_steps": steps, "trained_to": max(s for s, _ in curve)}
        with tempfile.TemporaryDirectory() as tmp:
            folders = {"shipped": base}
            if result["trained_to"] > steps:
                folders["at_seg_steps"] = artifact_at(base, steps, Path(tmp), WEIGHTS_NAME, ("config.yaml",))
            for name, folder in folders.items():
                model = Segmenter.load(folder, device="cpu")
                m = evaluate_run_style(model, test, model.size or 64, "cpu", mask_threshold=cfg.mask_threshold,
                                       full_size=True)
                result[name] = {k: round(100 * float(m[k]), 1) for k in ("mIoU", "mDice", "AUROC")}
        result.setdefault("at_seg_steps", result["shipped"])  # no extension: the same weights
        (run / "patience.json").write_text(json.dumps(result, indent=1))
        print(f"{run}: val {' '.join(f'{s}:{v:.1f}' for s, v in curve)}; trained to {result['trained_to']}; "
              f"test at {steps} {result['at_seg_steps']} -> shipped {result['shipped']}")


if __name__ == "__main__":
    main(sys.argv[1:])
