"""Full-size segmentation without sliding windows (issue 40, item 1): why whole-image masks of a U-Net trained
on crops differ from its sliding-window masks.

    python benchmarks/full_size_probe.py RUN/baseline DATA [--options JSON] [--threads N]

On the test split's anomalous images, four predictors of the same segmenter: sliding windows (overlap 0.5,
today's `segment`), windows without overlap, one pass over the whole image, and one pass whose GroupNorm layers
take their statistics from the crop-sized window around each position (clamped inside the image, as the sliding
windows are) instead of the whole input. Printed: each one's mask agreement with the windows (mean IoU), its test
mIoU against the ground truth, and its speed (MP/s). Appended to docs/benchmarks.md.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, publish  # noqa: E402

from anomalign.config import build_config  # noqa: E402
from anomalign.data.dataset import load_pair  # noqa: E402
from anomalign.data.folders import DataOptions  # noqa: E402
from anomalign.data.transforms import to_model_range  # noqa: E402
from anomalign.data.validate import load_dataset  # noqa: E402
from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.segmenter.sliding import predict_full_size  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", type=Path)
ap.add_argument("data", type=Path)
ap.add_argument("--options", default="{}", help="data options as JSON (layout, split), default: the default split")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--no-doc", action="store_true")
args = ap.parse_args()
torch.set_num_threads(args.threads)
run, data = args.run, args.data
opts = build_config(DataOptions, json.loads(args.options))
model = Segmenter.load(run)
crop = model.crop_size
test = [s for s in load_dataset(data, opts, announce=False).split("test") if not s.normal]

def window_mean(v, k, dim):
    """Mean over the k-long window around each index along dim, the window shifted to stay inside (as sliding windows are)."""
    n = v.shape[dim]
    k = min(k, n)
    c = torch.cumsum(F.pad(v.movedim(dim, -1), (1, 0)), -1)  # [..., n+1]
    start = (torch.arange(n) - k // 2).clamp(0, n - k)
    out = (c[..., start + k] - c[..., start]) / k
    return out.movedim(-1, dim)

class LocalGN(nn.Module):
    state = {"H": None}
    def __init__(self, gn):
        super().__init__(); self.gn = gn
    def forward(self, x):
        H = LocalGN.state["H"]
        if H is None:
            return self.gn(x)
        B, C, h, w = x.shape; G = self.gn.num_groups
        k = max(1, round(crop * h / H))
        xg = x.view(B, G, C // G, h, w)
        m1, m2 = xg.mean(2), (xg * xg).mean(2)
        mean = window_mean(window_mean(m1, k, -2), k, -1)
        sq = window_mean(window_mean(m2, k, -2), k, -1)
        var = (sq - mean * mean).clamp_min(0)
        y = ((xg - mean[:, :, None]) / torch.sqrt(var[:, :, None] + self.gn.eps)).view(B, C, h, w)
        return y * self.gn.weight[None, :, None, None] + self.gn.bias[None, :, None, None]

def swap(mod):
    for name, child in mod.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(mod, name, LocalGN(child))
        else:
            swap(child)
swap(model.net)
net = model.net
k_total = net.stem_stride * 2 ** (len(net.widths) - 1)

def iou(a, b):
    u = (a | b).sum()
    return 1.0 if u == 0 else (a & b).sum() / u

rows = []
T = {"windows": 0.0, "windows_no_overlap": 0.0, "whole": 0.0, "local": 0.0}
pix = 0
with torch.no_grad():
    for s in test:
        image, gt = load_pair(s, None)
        x = to_model_range(image)
        pix += x.shape[-1] * x.shape[-2]
        LocalGN.state["H"] = None
        t = time.perf_counter(); pw = predict_full_size(model, x, model.size)[0].numpy(); T["windows"] += time.perf_counter() - t
        t = time.perf_counter(); p0 = predict_full_size(model, x, model.size, overlap=0.0)[0].numpy(); T["windows_no_overlap"] += time.perf_counter() - t
        t = time.perf_counter(); pa = model.predict_proba(x[None])[0, 0].numpy(); T["whole"] += time.perf_counter() - t
        H = x.shape[-2] + (-x.shape[-2]) % k_total
        LocalGN.state["H"] = H
        t = time.perf_counter(); pl = model.predict_proba(x[None])[0, 0].numpy(); T["local"] += time.perf_counter() - t
        LocalGN.state["H"] = None
        W, A, L, W0 = pw >= .5, pa >= .5, pl >= .5, p0 >= .5
        rows.append(dict(agree_no_overlap=iou(W0, W), gt_w0=iou(W0, gt), agree_whole=iou(A, W), agree_local=iou(L, W), gt_w=iou(W, gt), gt_a=iou(A, gt), gt_l=iou(L, gt),
                         maxdiff_local=float(np.abs(pl - pw).max())))
r = {k: float(np.mean([x[k] for x in rows])) for k in rows[0]}
mps = {k: pix / 1e6 / v for k, v in T.items()}
table = ["| predictor | agreement with windows (mean IoU) | test mIoU | MP/s | speed vs windows |", "|---|---|---|---|---|",
         f"| sliding windows, overlap 0.5 (today) | 1 | {100 * r['gt_w']:.1f} | {mps['windows']:.2f} | 1.0x |",
         f"| windows, no overlap | {r['agree_no_overlap']:.2f} | {100 * r['gt_w0']:.1f} | {mps['windows_no_overlap']:.2f} | "
         f"{mps['windows_no_overlap'] / mps['windows']:.1f}x |",
         f"| whole image, one pass | {r['agree_whole']:.2f} | {100 * r['gt_a']:.1f} | {mps['whole']:.2f} | "
         f"{mps['whole'] / mps['windows']:.1f}x |",
         f"| whole image, window-local GroupNorm statistics | {r['agree_local']:.2f} | {100 * r['gt_l']:.1f} | "
         f"{mps['local']:.2f} | {mps['local'] / mps['windows']:.1f}x |"]
body_text = "\n".join(table) + (f"\n\n{len(rows)} anomalous test images ({pix / 1e6:.1f} MP) of {data}, segmenter {run} "
                                 f"(crop {crop}); {args.threads} thread(s); {machine()}.")
publish("Full-size segmentation without windows (issue 40)", body_text, to_doc=not args.no_doc)
