"""Figure for docs/results.md ("Native resolution"): generation windows of a full-size synthetic set, enlarged,
each twice — with the conditioning mask's contour (red) and without — spread over the defect types.

    python configs/magnetic_tile/windows_native.py runs/mt_v/syn_s0 docs/figures/mt_v_synthetic_windows.jpg [N]

Reads the set's metadata.jsonl (``window`` = top, left, side in the full-size image's pixels).
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anomalign.figures import draw_contour, grid

syn, out = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 12
rows = [json.loads(line) for line in (syn / "metadata.jsonl").read_text().splitlines() if line.strip()]
rows = [r for r in rows if r.get("kept", True) and r.get("window")]
by_type: dict[str, list[dict]] = {}
for r in rows:
    by_type.setdefault(r["defect"], []).append(r)
picked, k = [], 0
while len(picked) < n and any(k < len(v) for v in by_type.values()):  # round-robin over the defect types
    picked += [v[k] for v in by_type.values() if k < len(v)][: n - len(picked)]
    k += 1
tiles = []
for r in picked:
    top, left, side = r["window"]
    image = np.asarray(Image.open(syn / r["file_name"]).convert("RGB"))[top:top + side, left:left + side]
    mask = np.asarray(Image.open(syn / r["mask_file_name"]).convert("L"))[top:top + side, left:left + side] > 127
    scale = max(1, 128 // side)
    tiles += [draw_contour(image, mask, scale=scale), draw_contour(image, np.zeros_like(mask), scale=scale)]
side = 160  # one tile size (larger windows shrink, smaller ones were enlarged)
tiles = [np.asarray(Image.fromarray(t).resize((side, side), Image.BILINEAR)) for t in tiles]
Image.fromarray(grid(tiles, columns=8)).save(out, quality=85)
print(f"{len(picked)} windows of {syn} -> {out}")
