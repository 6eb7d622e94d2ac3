"""Full-size prediction paths against a reference path on trained segmenters' test splits (issue 40): per-image
IoU of each path with the ground truth, agreement of its masks with the reference path's, and time.

    python benchmarks/prediction_agreement.py RUN/baseline [RUN2/baseline ...] --data DATA
        [--paths windows:0.5:fp32 windows:0.5:bf16] [--test-fraction 0.2] [--threads 1]

A path is INFERENCE:OVERLAP:PRECISION (inference windows or one-pass; the windows' overlap; fp32 or bf16);
the first is the reference. Every path predicts every anomalous test image through
`anomalign.segmenter.sliding.image_probability` (what `segment` writes), the paths alternating per image.
Several segmenters (e.g. one run per seed) give mean ± sd over them. Appended to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, publish  # noqa: E402

from anomalign.config import build_config  # noqa: E402
from anomalign.data.dataset import load_pair  # noqa: E402
from anomalign.data.folders import DataOptions  # noqa: E402
from anomalign.data.validate import load_dataset  # noqa: E402
from anomalign.metrics import iou_dice, mean_sd  # noqa: E402
from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.segmenter.sliding import image_probability  # noqa: E402


def parse_path(text: str) -> tuple[str, float, str]:
    inference, overlap, precision = text.split(":")
    if inference not in ("windows", "one-pass") or precision not in ("fp32", "bf16"):
        raise SystemExit(f"bad path {text!r}: INFERENCE (windows, one-pass):OVERLAP:PRECISION (fp32, bf16)")
    return inference, float(overlap), precision


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks [H, W] (1 when both are empty), as every metric of the project."""
    return float(iou_dice(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0][0])


def measure(segmenter: Path, samples, paths: list[str]) -> dict[str, dict[str, float]]:
    """Per path: test mIoU (mean per-image IoU with the ground truth), agreement with the first path, seconds."""
    model = Segmenter.load(segmenter)
    gt_iou = {p: [] for p in paths}
    agree = {p: [] for p in paths}
    seconds = dict.fromkeys(paths, 0.0)
    for s in samples:
        image, mask = load_pair(s, None, 0.5)
        masks = {}
        for p in paths:
            inference, overlap, precision = parse_path(p)
            t = time.perf_counter()
            masks[p] = image_probability(model, image, mode=inference, overlap=overlap, precision=precision) >= 0.5
            seconds[p] += time.perf_counter() - t
            gt_iou[p].append(iou(masks[p], mask))
            agree[p].append(iou(masks[p], masks[paths[0]]))
    return {p: {"miou": 100 * np.mean(gt_iou[p]), "agree": np.mean(agree[p]), "lowest": np.min(agree[p]),
                "seconds": seconds[p]} for p in paths}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("segmenters", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--paths", nargs="+", default=["windows:0.5:fp32", "windows:0.5:bf16"])
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    for p in args.paths:
        parse_path(p)
    torch.set_num_threads(args.threads)
    index = load_dataset(args.data, build_config(DataOptions, {"test_fraction": args.test_fraction}))
    samples = [s for s in index.split("test") if not s.normal]
    runs = [measure(seg, samples, args.paths) for seg in args.segmenters]
    ref = args.paths[0]
    rows = [f"| path (inference:overlap:precision) | test mIoU (per image) | mask agreement with {ref} (mean IoU; "
            "lowest image) | speed vs the first |", "|---|---|---|---|"]
    for p in args.paths:
        speed = [r[ref]["seconds"] / r[p]["seconds"] for r in runs]
        rows.append(f"| {p} | {mean_sd([r[p]['miou'] for r in runs], fmt='{:.2f}')} | "
                    f"{mean_sd([r[p]['agree'] for r in runs], fmt='{:.4f}')}; {min(r[p]['lowest'] for r in runs):.4f} | "
                    f"{mean_sd(speed, fmt='{:.2f}')}x |")
    body = "\n".join(rows) + (
        f"\n\n{len(samples)} anomalous test images of {args.data} (test fraction {args.test_fraction:g}); "
        f"segmenters {', '.join(map(str, args.segmenters))} (mean ± sd over them); {args.threads} thread(s); "
        f"{machine()}.")
    publish("Full-size prediction paths against " + ref, body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
