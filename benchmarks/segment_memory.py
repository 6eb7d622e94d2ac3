"""Peak memory of `anomalign segment` on very large images (issue 48, item 7).

    python benchmarks/segment_memory.py [--megapixels 25 100 144] [--threads 2] [--before SRC]

For each size, a square RGB PNG of that many megapixels (a smooth texture with a dark defect, written by a
child process) is segmented by the `anomalign segment` command in a fresh process, default options
(windows, `--precision auto`) plus `--max-megapixels 200`, with unet-tiny at 128-px crops (random weights:
memory and speed do not depend on them). Per size: the child's peak resident set (``ru_maxrss``), its wall
time, and the size of the image in bytes per pixel of peak. ``--before SRC`` runs the same command with another
checkout's ``src`` first on the ``PYTHONPATH`` (e.g. a `git worktree` of the commit before the change), side by
side. Appended to docs/benchmarks.md (``--no-doc``: printed only).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, publish  # noqa: E402


def write_image(path: Path, megapixels: float) -> int:
    """A side x side RGB PNG (side = sqrt(megapixels) M px): a smooth texture, a dark 2 %-wide defect."""
    import numpy as np
    from PIL import Image
    side = max(64, round((megapixels * 1e6) ** 0.5))
    y = np.arange(side, dtype=np.float32)[:, None]
    image = np.empty((side, side, 3), np.uint8)
    for c in range(3):  # row by row in bands: the writer stays small as well
        for y0 in range(0, side, 1024):
            yy = y[y0:y0 + 1024]
            xx = np.arange(side, dtype=np.float32)[None]
            image[y0:y0 + 1024, :, c] = (128 + 40 * np.sin(yy / 37 + c) * np.cos(xx / 53)).astype(np.uint8)
    d = max(2, side // 50)
    image[side // 2:side // 2 + d, side // 3:2 * side // 3] = 20
    Image.fromarray(image).save(path, compress_level=1)
    return side


def make_segmenter(folder: Path) -> None:
    import torch

    from anomalign.segmenter.model import Segmenter
    torch.manual_seed(0)
    Segmenter("unet-tiny").save(folder, {"crop_size": 128, "size": 128, "scale": 1.0})


def segment(image: Path, seg: Path, out: Path, threads: int, src: str | None) -> tuple[float, float]:
    """(peak MB, seconds) of one `anomalign segment` in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if src:
        env["PYTHONPATH"] = src
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "anomalign", "segment", str(image), "--segmenter", str(seg),
                             "--out", str(out), "--max-megapixels", "200"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"segment failed on {image}: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megapixels", type=float, nargs="+", default=[25, 100, 144])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--before", help="another checkout's src folder, measured side by side (e.g. the commit before)")
    ap.add_argument("--now", help="src folder of the code measured as 'now' (default: the installed anomalign)")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="segment_memory_"))
    seg = work / "seg"
    make_segmenter(seg)
    arms = [("before", args.before)] if args.before else []
    arms.append(("now", args.now))
    rows = ["| image | side | " + " | ".join(f"{a}: peak MB | {a}: bytes/px | {a}: s" for a, _ in arms) + " |",
            "|---|---|" + "---|---|---|" * len(arms)]
    for mp in args.megapixels:
        image = work / f"{mp:g}mp.png"
        side = write_image(image, mp)
        cells = []
        for name, src in arms:
            peak, seconds = segment(image, seg, work / f"out_{name}_{mp:g}", args.threads, src)
            cells += [f"{peak:.0f}", f"{peak * 2**20 / side**2:.1f}", f"{seconds:.0f}"]
        rows.append(f"| {side ** 2 / 1e6:.0f} MP | {side} | " + " | ".join(cells) + " |")
        image.unlink()
    body = "\n".join(rows) + (f"\n\nunet-tiny, 128-px windows, overlap 0.5, default precision; {args.threads} "
                              f"thread(s); {machine()}.\n")
    publish("segment: peak memory on very large images", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
