"""How real do full-size synthetic defects look to a segmenter trained on real pairs only? (docs/results.md)

    python studies/scripts/oracle_windows.py ORACLE_RUN MT_DIR SET [SET ...]

For every pair of each synthetic set (``generate --normals``: metadata.jsonl holds each generation window
= top, left, side), the oracle (e.g. runs/mt_unet/real_s0/best) segments the window; IoU with the
conditioning mask, and with the mask moved by a quarter width (the control). The first row is the same
measure on one anomaly-centred 128-px crop of every real test anomaly (split_seed 0, 10 % val, 30 % test).
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomalign.config import build_config
from anomalign.data.crops import crop_bank
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset
from anomalign.segmenter.model import Segmenter
from anomalign.synthesis.scoring import oracle_scores, shift_masks
from windows_native import window_pair, window_records


def windows(syn: Path, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The defect windows of a full-size synthetic set (``windows_native.window_pair``), resized to ``size``:
    [N, 3, s, s] in [-1, 1] and [N, 1, s, s]."""
    xs, ms = [], []
    for r in window_records(syn):
        image, mask = window_pair(syn, r, size)
        xs.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)))
        ms.append(np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST)))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(np.stack(ms))[:, None].float()


def row(name: str, oracle, x: torch.Tensor, m: torch.Tensor) -> str:
    with torch.no_grad():
        iou = np.array(oracle_scores(oracle, x, m))
        moved = np.array(oracle_scores(oracle, x, shift_masks(m, m.shape[-1] // 4)))
    return (f"| {name} | {len(iou)} | {iou.mean():.3f} | {moved.mean():.3f} | {100 * (iou >= 0.3).mean():.0f} |")


oracle_run, data, sets = Path(sys.argv[1]), Path(sys.argv[2]), [Path(a) for a in sys.argv[3:]]
oracle = Segmenter.load(oracle_run).eval()
print(f"oracle {oracle_run}\n\n| pairs | n | oracle IoU | moved-mask control | IoU ≥ 0.3 (%) |\n|---|---|---|---|---|")
test = [s for s in load_dataset(data, build_config(DataOptions, dict(val_fraction=0.1, test_fraction=0.3))).split("test") if not s.normal]
x, m, _ = crop_bank(test, 128, per_image=1, seed=0)
print(row("real test anomalies (one 128-px crop each)", oracle, x, m), flush=True)
for syn in sets:
    print(row(str(syn), oracle, *windows(syn)), flush=True)
