"""Issue 45, item 1: what a cross-fitted run should ship — the refit on all of train + val (RUN/baseline,
RUN/arm_<chosen>: what `run --choice cv` ships today) or the K fold models as an ensemble (nnU-Net's way:
the mean of their probabilities). Scores both on the run's test split, the way `run`'s test stage does
(full size, sliding windows; the ensemble averages the members' window probabilities).

    python studies/scripts/ensemble_vs_refit.py RUN [--threads 1]

RUN is a finished `anomalign run --choice cv` folder (its run.yaml gives the data and the split). Prints a
table (and, per model, on how many test anomalies it is below the baseline's refit) and writes
RUN/ensemble_vs_refit.json, with each model's per-image test IoU (``per_image_iou``: the anomalous test images,
in the split's order). Nothing in RUN is changed otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


class Ensemble(torch.nn.Module):
    """The fold models as one segmenter: ``predict_proba`` is the mean of the members' (same crop and scale)."""

    def __init__(self, members: list):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        first = members[0]
        if any((m.crop_size, m.scale) != (first.crop_size, first.scale) for m in members):
            raise SystemExit("the fold models differ in crop size or scale: not one ensemble")
        self.crop_size, self.scale, self.size = first.crop_size, first.scale, first.size

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict_proba(images) for m in self.members]).mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from anomalign.config import load_config
    from anomalign.data.validate import load_dataset
    from anomalign.pipeline import RunConfig
    from anomalign.evaluation.choice import per_image_iou
    from anomalign.segmenter.model import Segmenter
    from anomalign.segmenter.validation import evaluate_run_style
    cfg = load_config(RunConfig, args.run / "run.yaml")
    test = load_dataset(cfg.data, cfg, announce=False).split("test")
    folds = sorted((args.run / "cv").glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    rows = {}
    print("| model | test mIoU | mDice | AUROC | anomalies below the baseline's refit |\n|---|---|---|---|---|")
    for name in ("baseline", "arm_synthetic", "arm_feedback", "arm_both"):
        members = [f / name for f in folds if (f / name / "segmenter.safetensors").is_file()]
        candidates = {}
        if (args.run / name / "segmenter.safetensors").is_file():
            candidates[f"{name}: refit on train + val"] = Segmenter.load(args.run / name)
        if members and len(members) == len(folds):
            candidates[f"{name}: ensemble of the {len(members)} fold models"] = Ensemble(
                [Segmenter.load(m) for m in members])
        for label, model in candidates.items():
            rows[label] = evaluate_run_style(model, test, model.size or 64, "cpu", mask_threshold=cfg.mask_threshold,
                                             full_size=True)
            r = rows[label]
            r["per_image_iou"] = per_image_iou(model, test, mask_threshold=cfg.mask_threshold).tolist()
            reference = rows.get("baseline: refit on train + val", r)["per_image_iou"]
            below = sum(a < b for a, b in zip(r["per_image_iou"], reference))
            print(f"| {label} | {100 * r['mIoU']:.1f} | {100 * r['mDice']:.1f} | {100 * r['AUROC']:.1f} | "
                  f"{below} of {len(reference)} |", flush=True)
    (args.run / "ensemble_vs_refit.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
