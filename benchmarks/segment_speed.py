"""Full-size segmentation against the CPU's arithmetic limit (issue 40, items 1, 2 and 5).

    python benchmarks/segment_speed.py [--threads 2] [--repeats 5] [--big 5000]

One 1-MP grey image (1000 x 1000), unet-tiny (speed does not depend on the weights: random ones), every path
side by side, interleaved (A B C A B C ...), medians:

- sliding 128-px windows, overlap 0.5 (the GroupNorm U-Net): as before issue 40 (NCHW), channels-last (what
  `segment` loads now), and channels-last under bf16 autocast (`--precision bf16`);
- the exported graph through onnxruntime (`segment --runtime onnx`) and OpenVINO (`--runtime openvino`, fp32
  and bf16), when they are installed;
- one pass in tiles of at most 1024 px with 64 px of context (the BatchNorm U-Net, `--norm batch`), fp32 and
  bf16.

Per path: FLOPs per megapixel (counted by torch's FlopCounterMode on the path itself: overlap and tile margins
included), achieved GFLOP/s, MP/s, and the share of the arithmetic limit (a 2048^2 matmul measured in the same
run, fp32 or bf16 as the path). Peak memory: each path on a ``--big`` x ``--big`` image in a fresh process
(its peak resident set). Appended to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_gflops, median, peak_rss_mb, publish  # noqa: E402

from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.segmenter.sliding import predict_native  # noqa: E402

PATHS = ("windows, overlap 0.5 (GroupNorm; the path before issue 40)", "windows, overlap 0.5, channels-last (GroupNorm)",
         "windows, overlap 0.5, channels-last, bf16 (GroupNorm)", "onnxruntime windows, overlap 0.5 (GroupNorm)",
         "one pass, tiles of <= 1024 px + 64 px context, channels-last (BatchNorm)",
         "one pass, tiles, channels-last, bf16 (BatchNorm)", "openvino windows, overlap 0.5, fp32 (GroupNorm)",
         "openvino one pass, tiles, fp32 (BatchNorm)", "openvino one pass, tiles, bf16 (BatchNorm)")


def segmenter(norm: str, channels_last: bool = True) -> Segmenter:
    """unet-tiny as `segment` loads it (saved and loaded: channels-last), random weights."""
    import tempfile
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / norm
    Segmenter("unet-tiny", norm=norm).save(folder, {"crop_size": 128, "size": 128, "scale": 1.0})
    model = Segmenter.load(folder)
    model.saved_to = folder
    if not channels_last:
        model.net = model.net.to(memory_format=torch.contiguous_format)
    return model


def path_fn(name: str, x: torch.Tensor):
    """A call predicting the full-size probability of image x [3, H, W] along path ``name``."""
    if "onnxruntime" in name or "openvino" in name:
        from anomalign.segmenter.export import OnnxSegmenter
        model = segmenter("batch" if "one pass" in name else "group")
        graph = OnnxSegmenter.of(model, Path(model.saved_to), "openvino" if "openvino" in name else "onnx",
                                 "bf16" if "bf16" in name else "fp32")
        return lambda: predict_native(graph.predict_proba, x, 128, one_pass="one pass" in name)
    model = segmenter("batch" if "one pass" in name else "group", channels_last="channels-last" in name)
    precision = "bf16" if "bf16" in name else "fp32"

    def run():
        with torch.no_grad():
            return predict_native(model.predict_proba, x, 128, one_pass="one pass" in name, precision=precision)
    return run


def high_water_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike getrusage's ru_maxrss, which a child
    inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def child(name: str, side: int) -> None:
    """Peak memory of one path on a side x side image: printed as JSON (run in a fresh process)."""
    x = torch.rand(3, side, side) * 2 - 1
    fn = path_fn(name, x)
    before = high_water_mb()
    fn()
    print(json.dumps({"peak_mb": high_water_mb(), "before_mb": before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big", type=int, default=5000, help="side of the image whose peak memory is measured")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args.big)
    import importlib.util
    paths = [p for p in PATHS if all(importlib.util.find_spec(m) is not None
                                     for m in (["onnxruntime"] if "onnxruntime" in p else [])
                                     + (["openvino"] if "openvino" in p else []))]
    x = torch.rand(3, 1000, 1000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fns = {name: path_fn(name, x) for name in paths}
    flops = {}
    for name, fn in fns.items():
        if "onnxruntime" in name or "openvino" in name:  # the same graph: the PyTorch path's count
            continue
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    for name in paths:
        if name not in flops:
            flops[name] = flops[PATHS[4] if "one pass" in name else PATHS[0]]
    limit = {"fp32": matmul_gflops(torch.float32, args.repeats), "bf16": matmul_gflops(torch.bfloat16, args.repeats)}
    times = interleaved(fns, args.repeats)
    base = median(times[PATHS[0]])
    rows = ["| path (1-MP image, unet-tiny) | GFLOP per MP | median s | MP/s | vs today | GFLOP/s | share of the "
            f"limit | peak MB, {args.big}² image |", "|---|---|---|---|---|---|---|---|"]
    for name in paths:
        t = median(times[name])
        lim = limit["bf16" if "bf16" in name else "fp32"]
        mem = subprocess.run([sys.executable, __file__, "--child", name, "--big", str(args.big), "--threads",
                              str(args.threads)], capture_output=True, text=True)
        peak = f'{json.loads(mem.stdout.strip().splitlines()[-1])["peak_mb"]:.0f}' if mem.returncode == 0 else "failed"
        rows.append(f"| {name} | {flops[name] / 1e9:.1f} | {t:.3f} | {1 / t:.2f} | {base / t:.2f}x | "
                    f"{flops[name] / t / 1e9:.0f} | {flops[name] / t / 1e9 / lim:.0%} | {peak} |")
    body = "\n".join(rows) + (
        f"\n\nArithmetic limit measured in the same run (2048² matmul): fp32 {limit['fp32']:.0f} GFLOP/s, bf16 "
        f"{limit['bf16']:.0f} GFLOP/s. {args.repeats} interleaved repeats, {args.threads} threads; {machine()}.")
    publish("Full-size segmentation: paths against the arithmetic limit (issue 40)", body, to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
