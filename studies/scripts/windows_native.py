"""Figure for docs/results.md ("Native resolution"): generation windows of a full-size synthetic set, enlarged,
each twice — with the conditioning mask's contour (red) and without — spread over the defect types.

    python studies/scripts/windows_native.py runs/mt_v/syn_s0 docs/figures/mt_v_synthetic_windows.jpg [N] [OTHER_SET]
    python studies/scripts/windows_native.py runs/mt_v/syn_s0 OUT.jpg [N] --rejected-by runs/mt_v/syn_orc_s0

``--rejected-by FILTERED``: only the windows that FILTERED (the same seed and config made with
``--min-alignment``) dropped; an unfiltered set holds them, since attempt i draws the same pair in both.

Reads the set's metadata.jsonl (``window`` = top, left, side in the full-size image's pixels). ``window_pairs``
is also what oracle_windows.py scores.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anomalign.figures import draw_contour, grid


def window_records(syn: Path) -> list[dict]:
    """The kept rows of a full-size synthetic set's metadata.jsonl that say where their defect is."""
    rows = [json.loads(line) for line in (syn / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kept", True) and (r.get("window") or r.get("defect_box"))]


def window_pair(syn: Path, r: dict, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The window of record ``r``: uint8 [s, s, 3] and bool [s, s] in the full-size image's pixels. Cut-paste
    pairs have no generation window: a square of the same rule (side ≥ ``size``) centred on the defect."""
    image = Image.open(syn / r["file_name"]).convert("RGB")
    mask = Image.open(syn / r["mask_file_name"]).convert("L")
    if r.get("window"):
        top, left, side = r["window"]
    else:  # a defect longer than the image is tall or wide gets a square padded with black (PIL's crop)
        (t, l, h, w), side = r["defect_box"], max(size, *r["defect_box"][2:])
        top = min(max(t + h // 2 - side // 2, 0), image.height - side)
        left = min(max(l + w // 2 - side // 2, 0), image.width - side)
    box = (left, top, left + side, top + side)
    return np.asarray(image.crop(box)), np.asarray(mask.crop(box)) > 127


def spread_by_type(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` rows, round-robin over the defect types."""
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["defect"], []).append(r)
    picked, k = [], 0
    while len(picked) < n and any(k < len(v) for v in by_type.values()):
        picked += [v[k] for v in by_type.values() if k < len(v)][: n - len(picked)]
        k += 1
    return picked


if __name__ == "__main__":
    rejected_by = None
    if "--rejected-by" in sys.argv:
        k = sys.argv.index("--rejected-by")
        rejected_by = Path(sys.argv[k + 1])
        del sys.argv[k:k + 2]
    syn, out = Path(sys.argv[1]), Path(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    # a 4th argument: another set made with the same seed and config (e.g. syn_a0_s0 beside syn_s0), whose
    # window of the same record is added without a contour, so the two generators are seen on the same masks
    other = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    rows = window_records(syn)
    if rejected_by is not None:
        dropped = {json.loads(line)["index"]
                   for line in (rejected_by / "rejected.jsonl").read_text().splitlines() if line.strip()}
        rows = [r for r in rows if r["index"] in dropped]
        print(f"{len(rows)} of {len(dropped)} attempts dropped by {rejected_by} are in {syn}")
    others = {r["index"]: r for r in window_records(other)} if other else {}
    if other:
        # a filtered set keeps only some attempts: show the ones both sets kept (attempt i draws the same pair)
        shared = [r for r in rows if others.get(r["index"], {}).get("window") == r.get("window")]
        if not shared:
            sys.exit(f"{other}: no record shares an attempt and window with {syn}; "
                     "make both sets with one seed and config")
        print(f"{len(shared)} of {len(rows)} attempts of {syn} are also in {other}")
        rows = shared
    picked = spread_by_type(rows, n)
    tiles = []
    for r in picked:
        image, mask = window_pair(syn, r)
        scale = max(1, 128 // image.shape[0])
        tiles += [draw_contour(image, mask, scale=scale), draw_contour(image, np.zeros_like(mask), scale=scale)]
        if other:
            image, _ = window_pair(other, others[r["index"]])
            tiles.append(draw_contour(image, np.zeros_like(mask), scale=scale))
    side = 160  # one tile size (larger windows shrink, smaller ones were enlarged)
    tiles = [np.asarray(Image.fromarray(t).resize((side, side), Image.BILINEAR)) for t in tiles]
    Image.fromarray(grid(tiles, columns=9 if other else 8)).save(out, quality=85)
    print(f"{len(picked)} windows of {syn}{' and ' + str(other) if other else ''} -> {out}")
