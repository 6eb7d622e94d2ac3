"""Using a trained segmenter: ``anomalign segment`` (masks + overlays for new images, any size) and
``anomalign export`` (ONNX, checked against PyTorch with onnxruntime when it is installed).

A segmenter trained on crops (``--crop-size``) predicts at each image's own resolution with overlapping
sliding windows (``segmenter/sliding.py``); one trained on whole resized images sees each image resized to
its training size, and the probability is resized back (bilinear). Either way it is thresholded at the
image's own size, so masks always match their image pixel for pixel.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomalign.config import option, save_config
from anomalign.data.folders import is_image, walk_files
from anomalign.devices import pick_device
from anomalign.errors import AnomalignError, ConfigError, DataError
from anomalign.files import save_png, temp_path


@dataclass(kw_only=True)
class SegmentConfig:
    """Options of ``anomalign segment``."""

    images: list[Path] = option(help="image files and/or folders (searched recursively)", positional=True)
    segmenter: Path = option(help="segmenter run folder (from `anomalign train-segmenter`)")
    out: Path = option(help="output folder: masks/, overlays/ (and probabilities/ with --save-probabilities)")
    threshold: float = option(0.5, "anomaly probability at or above which a pixel is anomalous")
    size: int | None = option(None, "input size for the network (default: the size it was trained at)")
    batch_size: int = option(16, "images per forward pass")
    save_probabilities: bool = option(False, "also write the probability map as an 8-bit PNG")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to run")
    max_megapixels: float = option(100.0, "largest input image, in megapixels (refused from its header)")

    def validate(self) -> None:
        if not self.max_megapixels > 0:
            raise ConfigError(f"max_megapixels must be > 0, got {self.max_megapixels}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")


def list_images(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, output name relative to the output folders) for every image; names keep sub-folders."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if item.is_file():
            if not is_image(item):
                raise DataError(f"{item}: not an image file")
            found.append((item, Path(item.stem + ".png")))
        else:
            files = [f for f in walk_files(item) if is_image(f)]
            if not files:
                raise DataError(f"{item}: no image files found in this folder")
            found += [(f, f.relative_to(item).with_suffix(".png")) for f in sorted(files)]
    seen: dict[Path, Path] = {}
    for f, name in found:
        if name in seen:
            raise DataError(f"{f}: gives the same output name {name} as {seen[name]}; segment them separately")
        seen[name] = f
    return found


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 [H, W, 3]: the image, anomalous pixels tinted red, their contour solid red."""
    from anomalign.figures import mask_contour
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array([255, 0, 0], np.float32)
    out = out.round().astype(np.uint8)
    out[mask_contour(mask)] = (255, 0, 0)
    return out


@torch.no_grad()
def predict_full_size(model, images: list[np.ndarray], size: int, device) -> list[np.ndarray]:
    """Anomaly probability float32 [H_i, W_i] for uint8 images [H_i, W_i, 3] of any sizes: with sliding
    windows at native resolution for a segmenter trained on crops, else from the image resized to ``size``."""
    from anomalign.data.transforms import to_model_range
    if getattr(model, "crop_size", None):
        from anomalign.segmenter.sliding import predict_native
        return [predict_native(model.predict_proba, to_model_range(im).to(device), model.crop_size, model.scale)[0]
                .cpu().numpy() for im in images]
    x = torch.stack([to_model_range(np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)))
                     for im in images]).to(device)
    prob = model.predict_proba(x)
    return [F.interpolate(p[None].float(), size=im.shape[:2], mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            for p, im in zip(prob, images)]


def run_segment(cfg: SegmentConfig, progress: bool = True) -> Path:
    """Write masks/ and overlays/ for every input image into ``cfg.out``; returns it."""
    from tqdm.auto import tqdm

    from anomalign.data.imageio import read_image, set_max_megapixels
    from anomalign.segmenter.model import Segmenter

    cfg.validate()
    set_max_megapixels(cfg.max_megapixels)
    device = pick_device(cfg.device)
    model = Segmenter.load(cfg.segmenter, device=device)
    size = cfg.size or model.size or 64
    items = list_images(cfg.images)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AnomalignError(f"{out}: --out is a file, not a folder; nothing was changed. Choose a new --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / "segment.yaml").is_file():
        raise AnomalignError(f"{out}: folder is not empty and was not written by `anomalign segment`; refusing "
                             "to write into it (nothing was changed). Choose a new --out.")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "segment.yaml")
    rows = []
    for b in tqdm(range(0, len(items), cfg.batch_size), disable=not progress, desc="segment", unit="batch"):
        batch = items[b:b + cfg.batch_size]
        images = [read_image(f) for f, _ in batch]
        for (f, name), im, prob in zip(batch, images, predict_full_size(model, images, size, device)):
            mask = prob >= cfg.threshold
            save_png(mask.astype(np.uint8) * 255, out / "masks" / name)
            save_png(overlay(im, mask), out / "overlays" / name)
            if cfg.save_probabilities:
                save_png((prob * 255).round().astype(np.uint8), out / "probabilities" / name)
            rows.append({"image": str(f), "mask": f"masks/{name.as_posix()}", "anomalous_pixels": int(mask.sum()),
                         "anomaly_fraction": float(mask.mean()), "max_probability": float(prob.max())})
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flagged = sum(r["anomalous_pixels"] > 0 for r in rows)
    print(f"segmented {len(rows)} images into {out} ({flagged} with anomalous pixels at threshold {cfg.threshold})")
    return out


@dataclass(kw_only=True)
class ExportConfig:
    """Options of ``anomalign export``."""

    segmenter: Path = option(help="segmenter run folder")
    format: Literal["onnx"] = option("onnx", "export format")
    out: Path | None = option(None, "output file (default: <segmenter>/segmenter.onnx)")
    size: int | None = option(None, "input size baked into the graph (default: the training size)")
    opset: int = option(17, "ONNX opset")
    check: bool = option(True, "compare ONNX and PyTorch outputs with onnxruntime (when installed)")


def run_export(cfg: ExportConfig) -> dict:
    """Export images [B, 3, S, S] in [-1, 1] -> anomaly probability [B, 1, S, S] (dynamic batch)."""
    from anomalign.segmenter.model import Segmenter

    model = Segmenter.load(cfg.segmenter, device="cpu")
    size = cfg.size or model.crop_size or model.size or 64
    out = Path(cfg.out) if cfg.out else Path(cfg.segmenter) / "segmenter.onnx"
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise AnomalignError("ONNX export needs the onnx package: pip install 'anomalign[export]'") from None

    class Probability(torch.nn.Module):
        def __init__(self, seg):
            super().__init__()
            self.seg = seg

        def forward(self, images):
            return self.seg(images).softmax(1)[:, 1:2]

    wrapped = Probability(model).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    with torch.no_grad():
        torch.onnx.export(wrapped, (x,), str(tmp), input_names=["images"], output_names=["anomaly_probability"],
                          dynamic_axes={"images": {0: "batch"}, "anomaly_probability": {0: "batch"}},
                          opset_version=cfg.opset, dynamo=False)
    os.replace(tmp, out)
    result = {"file": str(out), "size": size, "opset": cfg.opset, "checked": False}
    if model.crop_size:  # the graph is the patch model; the tiling stays outside it (docs/segmenter.md)
        result["tiling"] = {"window": model.crop_size, "scale": model.scale, "overlap": 0.5, "blend": "gaussian"}
        print(f"note: this segmenter was trained on {model.crop_size}-px crops at scale {model.scale:g}: run the "
              f"graph on overlapping {model.crop_size}x{model.crop_size} windows of the image resampled by "
              f"{model.scale:g} and blend them (anomalign.segmenter.sliding, docs/segmenter.md)")
    print(f"exported {out} (input 'images' [batch, 3, {size}, {size}] in [-1, 1] -> 'anomaly_probability' "
          f"[batch, 1, {size}, {size}])")
    if not cfg.check:
        return result
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: the exported graph was NOT checked against PyTorch "
              "(pip install onnxruntime to check)", file=sys.stderr)
        return result
    x3 = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = wrapped(x3).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x3.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    result |= {"checked": True, "max_abs_diff": diff}
    if diff > 1e-4:
        raise AnomalignError(f"{out}: ONNX output differs from PyTorch by up to {diff:.2e} (> 1e-4)")
    print(f"onnxruntime check: max |ONNX - PyTorch| = {diff:.2e} on 3 random images")
    return result
