"""``anomalign evaluate``: segmentation metrics per test set, as JSON and as a table shaped like the paper's Table 1."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from anomalign.config import option
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset, skipped_records
from anomalign.errors import AnomalignError
from anomalign.files import write_text_atomic
from anomalign.runs import check_output_folder, mark_output_folder
from anomalign.segmenter.infer import PredictOptions
from anomalign.segmenter.sliding import inference_precision, uses_one_pass
from anomalign.segmenter.validation import evaluate_run_style

COLUMNS = ("mDice", "mIoU", "Dice", "IoU", "AUROC")


@dataclass(kw_only=True)
class EvaluateConfig(DataOptions, PredictOptions):
    """Options of ``anomalign evaluate``."""

    segmenter: Path = option(help="segmenter run folder (or its best/ sub-folder)")
    test: list[str] = option(help="test datasets; a PraNet-style dataset gives one row per test set")
    out: Path | None = option(None, "folder for eval.json and eval.md (default: SEGMENTER/eval)")
    size: int | None = option(None, "input size (default: the size the segmenter was trained at)")
    batch_size: int = option(32, "images per forward pass")
    threshold: float = option(0.5, "probability threshold of the anomaly class")
    split: Literal["test", "val", "train"] = option(
        "test", "split to score (val or train: e.g. how well the segmenter fits its own training images, to tell "
                "a label-noise ceiling from too little data)")
    full_size: bool = option(False, "score a segmenter trained on resized images against the full-size masks "
                                    "(its prediction resized back, as `segment` delivers it); crop-trained "
                                    "segmenters are always scored at full size")


def test_sets(path: Path, opts: DataOptions, skipped: list | None = None, split: str = "test") -> dict[str, list]:
    """{row name: samples of ``split``}: one row per named subset (PraNet) or one for the whole split.
    The problems of files ``--policy skip`` left out are appended to ``skipped``."""
    index = load_dataset(path, opts)
    if skipped is not None:
        skipped += index.skipped
    rows = {}
    for subset in index.subsets(split) or [""]:
        samples = index.split(split, subset=subset)
        name = subset or path.name
        if not any(s.mask is not None and not s.normal for s in samples):
            raise AnomalignError(f"{path}: {split} set {name!r} has no anomalous images with masks to evaluate "
                                 "against")
        rows[name] = samples
    return rows


@torch.no_grad()
def run_evaluate(cfg: EvaluateConfig) -> dict:
    from anomalign.segmenter.model import check_size
    from anomalign.segmenter.model import Segmenter
    check_size(cfg.size)
    out = check_output_folder(Path(cfg.out) if cfg.out else Path(cfg.segmenter) / "eval", "evaluate", _legacy_eval)
    model = Segmenter.load(cfg.segmenter, device="cpu")  # evaluate has no --device: it scores on the CPU
    size = cfg.size or model.size or 256
    results: dict[str, dict] = {}
    skipped: list = []
    for path in map(Path, cfg.test):
        for name, samples in test_sets(path, cfg, skipped, cfg.split).items():
            key = name if name not in results else f"{path.name}/{name}"
            # a segmenter trained on crops is scored at each image's own size (sliding windows), others at `size`
            results[key] = evaluate_run_style(model, samples, size, threshold=cfg.threshold,
                                              mask_threshold=cfg.mask_threshold, batch_size=cfg.batch_size,
                                              full_size=cfg.full_size, mode=cfg.inference,
                                              precision=cfg.precision)
    average = {c: sum(r[c] for r in results.values()) / len(results) for c in COLUMNS}
    mark_output_folder(out, "evaluate")
    payload = {"segmenter": str(cfg.segmenter), "split": cfg.split, "size": size, "threshold": cfg.threshold,
               "precision": inference_precision(cfg.precision, next(model.parameters()).device.type),
               "resolution": (f"native, one pass in tiles at scale {model.scale:g}"
                              if model.crop_size and uses_one_pass(cfg.inference)
                              else f"native, {model.crop_size}-px sliding windows at scale {model.scale:g}"
                              if model.crop_size else f"predicted at {size} px, scored at full size"
                              if cfg.full_size else f"resized to {size} px"),
               "sets": results, "average": average}
    if skipped:  # metrics over fewer images than the test set holds: say which were left out
        payload["skipped"] = skipped_records(skipped)
    write_text_atomic(out / "eval.json", json.dumps(payload, indent=1))
    write_text_atomic(out / "eval.md", format_table(results, average))
    print(format_table(results, average))
    print(f"written to {out / 'eval.json'} and {out / 'eval.md'}")
    return payload


def _legacy_eval(out: Path) -> bool:
    """An eval folder from before ``run.json``: only eval.json / eval.md, and eval.json is ours."""
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    try:
        ours = {"segmenter", "sets", "average"} <= set(json.loads((out / "eval.json").read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False
    return ours and names <= {"eval.json", "eval.md"}


def format_table(results: dict[str, dict], average: dict[str, float]) -> str:
    """Markdown table, one row per test set plus the average row (percentages, as in the paper)."""
    def pct(v: float) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"
    lines = ["| test set | images | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, r in results.items():
        lines.append(f"| {name} | {r['images']} | " + " | ".join(pct(r[c]) for c in COLUMNS) + " |")
    lines.append("| **average** | | " + " | ".join(pct(average[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
