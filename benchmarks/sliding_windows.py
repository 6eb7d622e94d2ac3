"""Native resolution: sliding-window inference speed (megapixels/s) and the 1-MP thin-defect case.

    python benchmarks/sliding_windows.py                       # CPU, tiny Segformer
    python benchmarks/sliding_windows.py --preset tiny unet-tiny --skip-accuracy   # presets side by side, one run
    python benchmarks/sliding_windows.py --device cuda --preset b0 --skip-accuracy

Speed: ``predict_native`` on a 1000 x 1000 image with 64- and 128-px windows (overlap 0.5) against one
pass of the whole image resized to the window size (what a segmenter trained on resized images does).
Accuracy: a tiny segmenter trained 300 steps on 256-px images with 10-px-wide line defects, once on 64-px
crops at native resolution and once on the whole images resized to 64 px, then ``anomalign segment`` on a
new 1000 x 1000 image with such a defect: IoU of each at full size.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "tests")]
from common import interleaved, median, publish  # noqa: E402
from dummy_data import line_defect, save, write_line_dataset  # noqa: E402

from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.segmenter.sliding import predict_native  # noqa: E402


def speed(presets: list[str], device: str, repeats: int, onnx: bool = False) -> list[str]:
    torch.manual_seed(0)
    x = (torch.rand(3, 1000, 1000) * 2 - 1).to(device)
    fns = {}
    for preset in presets:  # every preset's methods interleaved in one run, so their times compare
        model = Segmenter(preset).to(device).eval()

        def whole(size, model=model):
            return lambda: F.interpolate(model.predict_proba(F.interpolate(x[None], size=(size, size), mode="bilinear")),
                                         size=(1000, 1000), mode="bilinear")
        fns |= {f"{preset}: sliding {p} px": (lambda p=p, model=model: predict_native(model.predict_proba, x, p))
                for p in (64, 128)}
        fns |= {f"{preset}: one pass resized to {p} px": whole(p) for p in (64, 128)}
        if onnx and preset.startswith("unet"):  # the same windows through the exported graph (segment --runtime onnx)
            from anomalign.segmenter.export import OnnxSegmenter
            folder = Path(tempfile.mkdtemp()) / preset
            model.save(folder, {"crop_size": 128, "size": 128})
            graph = OnnxSegmenter.of(Segmenter.load(folder), folder)
            fns[f"{preset}: onnxruntime, sliding 128 px"] = lambda g=graph: predict_native(g.predict_proba, x, 128)
    with torch.no_grad():
        times = interleaved(fns, repeats, device)
    rows = ["| preset: method (1000 x 1000 image) | median s | megapixels/s |", "|---|---|---|"]
    rows += [f"| {k} | {median(v):.3f} | {1.0 / median(v):.2f} |" for k, v in times.items()]
    return rows


def accuracy(steps: int) -> list[str]:
    from anomalign.cli import main
    from PIL import Image

    rows = ["| training | IoU on a new 1000 x 1000 image (10-px line) | predicted px | true px |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_line_dataset(tmp / "data")
        image, mask = line_defect(np.random.default_rng(7), 1000, 1000, 10)
        save(tmp / "big.png", image)
        for name, flags in (("64-px crops at native resolution", ["--crop-size", "64"]),
                            ("whole images resized to 64 px", ["--crop-size", "0"])):
            out = tmp / name.split()[0]
            args = ["train-segmenter", "--train", str(tmp / "data"), "--out", str(out), "--size", "64", "--max-steps",
                    str(steps), "--batch-size", "8", "--validate-every", "0", "--device", "cpu", "--anomaly-weight",
                    "5", "--learning-rate", "2e-3", *flags]
            assert main(args) == 0
            assert main(["segment", str(tmp / "big.png"), "--segmenter", str(out), "--out", str(out / "pred")]) == 0
            pred = np.asarray(Image.open(out / "pred" / "masks" / "big.png")) > 127
            iou = (pred & mask).sum() / max(1, (pred | mask).sum())
            rows.append(f"| {name} | {iou:.3f} | {int(pred.sum())} | {int(mask.sum())} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", nargs="+", default=["tiny"], help="segmenter presets, measured side by side")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--onnx", action="store_true", help="also the U-Nets' windows through onnxruntime")
    ap.add_argument("--no-doc", action="store_true", help="print only, do not append to docs/benchmarks.md")
    args = ap.parse_args()
    body = [f"Sliding-window inference, segmenter presets {', '.join(args.preset)}, {args.device}, "
            f"{torch.get_num_threads()} threads:", "", *speed(args.preset, args.device, args.repeats, args.onnx)]
    if not args.skip_accuracy:
        body += ["", f"Thin defect at 1 MP (tiny Segformer, {args.steps} steps, CPU):", "", *accuracy(args.steps)]
    publish("Native resolution: sliding windows", "\n".join(body), to_doc=not args.no_doc)


if __name__ == "__main__":
    main()
