"""bf16 against fp32 full-size prediction on a trained segmenter's test split (issue 40): per-image IoU of
each with the ground truth, agreement of their masks, and time.

    python benchmarks/precision_agreement.py RUN/baseline DATA [--test-fraction 0.2] [--threads 1]

Both precisions predict every anomalous test image through `anomalign.segmenter.sliding.image_probability`
(what `segment` writes), alternately per image. Appended to docs/benchmarks.md.
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
from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.segmenter.sliding import image_probability  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("segmenter", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Segmenter.load(args.segmenter)
    index = load_dataset(args.data, build_config(DataOptions, {"test_fraction": args.test_fraction}))
    samples = [s for s in index.split("test") if not s.normal]
    iou = {"fp32": [], "bf16": []}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    agree = []
    for s in samples:
        image, mask = load_pair(s, None, 0.5)
        masks = {}
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            masks[precision] = image_probability(model, image, precision=precision) >= 0.5
            seconds[precision] += time.perf_counter() - t
            union = (masks[precision] | mask).sum()
            iou[precision].append((masks[precision] & mask).sum() / union if union else 1.0)
        union = (masks["fp32"] | masks["bf16"]).sum()
        agree.append((masks["fp32"] & masks["bf16"]).sum() / union if union else 1.0)
    rows = ["| precision | mean per-image IoU with the ground truth | seconds | speed vs fp32 |", "|---|---|---|---|"]
    rows += [f"| {p} | {100 * np.mean(iou[p]):.2f} | {seconds[p]:.1f} | {seconds['fp32'] / seconds[p]:.2f}x |"
             for p in ("fp32", "bf16")]
    body = "\n".join(rows) + (
        f"\n\nMasks of bf16 against fp32: mean IoU {np.mean(agree):.4f}, lowest {np.min(agree):.4f}, over "
        f"{len(samples)} anomalous test images of {args.data} (test fraction {args.test_fraction:g}); segmenter "
        f"{args.segmenter}; {args.threads} thread(s); {machine()}.")
    publish("Full-size prediction: bf16 against fp32", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
