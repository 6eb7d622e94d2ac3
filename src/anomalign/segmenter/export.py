"""``anomalign export`` (the segmenter's patch model as ONNX, checked against PyTorch with onnxruntime when it
is installed) and the exported graph run as a deployment would (``OnnxSegmenter``: onnxruntime or OpenVINO),
which ``segment --runtime onnx|openvino`` uses in place of the PyTorch model.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anomalign.config import option
from anomalign.errors import AnomalignError
from anomalign.files import atomic_target
from anomalign.segmenter.model import check_size


def damaged_graph(file: Path, runtime: str, error: Exception) -> AnomalignError:
    """The one-line error for an exported graph a runtime cannot load (truncated, corrupt, or not ONNX)."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return AnomalignError(f"{file}: damaged or not an ONNX graph; {runtime} cannot load it ({type(error).__name__}: "
                          f"{reason}). Delete it and rerun: segment exports the graph again when it is missing")


class OnnxSegmenter:
    """A segmenter's exported graph run by onnxruntime or OpenVINO, usable wherever a Segmenter predicts
    (``predict_proba`` on [B, 3, H, W] in [-1, 1] -> [B, 1, H, W]; ``crop_size``, ``scale``, ``size``): the
    sliding windows, tiles and resizing stay in ``segmenter.sliding``, exactly as for the PyTorch model.
    ``precision`` (OpenVINO only): bf16 lets its CPU plugin compute in bf16."""

    def __init__(self, file: Path, crop_size, scale: float, size, runtime: str = "onnx", precision: str = "fp32"):
        self.file, self.crop_size, self.scale, self.size, self.runtime = file, crop_size, scale, size, runtime
        threads = torch.get_num_threads()  # the threads torch was given (OMP_NUM_THREADS)
        if runtime == "openvino":
            try:
                import openvino as ov
            except ImportError:
                raise AnomalignError("--runtime openvino needs OpenVINO: pip install 'anomalign[openvino]'") from None
            core = ov.Core()
            try:
                graph = core.read_model(str(file))
            except Exception as e:  # OpenVINO raises RuntimeError("... Model can't be parsed ...") and others
                raise damaged_graph(file, "OpenVINO", e) from None
            self.compiled = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": str(threads),
                                                               "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
            last = graph.inputs[0].get_partial_shape()[-1]
            self.side = last.get_length() if last.is_static else None
        else:
            try:
                import onnxruntime as ort
            except ImportError:
                raise AnomalignError("--runtime onnx needs onnxruntime: pip install 'anomalign[export]'") from None
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            try:
                self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's InvalidProtobuf, InvalidGraph, Fail, ...
                raise damaged_graph(file, "onnxruntime", e) from None
            shape = self.session.get_inputs()[0].shape
            self.side = int(shape[-1]) if isinstance(shape[-1], int) else None

    @classmethod
    def of(cls, model, segmenter: Path, runtime: str = "onnx", precision: str = "fp32") -> "OnnxSegmenter":
        """The graph of ``segmenter`` (its ``segmenter.onnx``, exported now when missing) for ``model``."""
        file = segmenter / "segmenter.onnx" if segmenter.is_dir() else segmenter.with_suffix(".onnx")
        if not file.is_file():
            run_export(ExportConfig(segmenter=segmenter, out=file))
        onnx_model = cls(file, model.crop_size, model.scale, model.size, runtime, precision)
        want = model.crop_size or model.size
        if onnx_model.side is not None and want and onnx_model.side != want:
            raise AnomalignError(f"{file}: graph input is {onnx_model.side} px but the segmenter predicts at {want} px; "
                                 "export it again (anomalign export) or delete it")
        return onnx_model

    def eval(self) -> "OnnxSegmenter":
        return self

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().cpu().float().numpy()
        out = self.compiled(x)[0] if self.runtime == "openvino" else self.session.run(None, {"images": x})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


@dataclass(kw_only=True)
class ExportConfig:
    """Options of ``anomalign export``."""

    segmenter: Path = option(help="segmenter run folder")
    format: Literal["onnx"] = option("onnx", "export format")
    out: Path | None = option(None, "output file (default: <segmenter>/segmenter.onnx)")
    size: int | None = option(None, "input size baked into the graph (default: the training size)")
    opset: int = option(17, "ONNX opset")
    check: bool = option(True, "compare ONNX and PyTorch outputs with onnxruntime (when installed)")


EXPORT_MARK = "producer"


def check_export_target(out: Path) -> None:
    """``export --out``: a new file, or an ONNX file an earlier ``anomalign export`` wrote (then replaced).
    A folder or any other file (the user's) is refused before anything is written."""
    if out.is_dir():
        raise AnomalignError(f"{out}: --out is a folder; give the file to write, e.g. {out / 'segmenter.onnx'}")
    if not out.exists():
        return
    try:
        import onnx
        props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    except Exception:  # not ONNX at all (DecodeError, OSError, ...): the user's file
        props = {}
    if props.get(EXPORT_MARK) != "anomalign export":
        raise AnomalignError(f"{out}: file exists and was not written by `anomalign export`; refusing to replace "
                             "it (nothing was changed). Choose another --out.")


def unet_step(model) -> int:
    """The side multiple a U-Net segmenter's input needs no padding at (stem x 2^(levels - 1); 8 for a TAEF2
    U-Net); 0 for others."""
    from anomalign.segmenter.model import TAEF2UNet, UNet
    net = getattr(model, "net", None)
    if isinstance(net, TAEF2UNet):
        return net.side_multiple
    return net.stem_stride * 2 ** (len(net.widths) - 1) if isinstance(net, UNet) else 0


def run_export(cfg: ExportConfig) -> dict:
    """Export images [B, 3, S, S] in [-1, 1] -> anomaly probability [B, 1, S, S] (dynamic batch)."""
    from anomalign.segmenter.model import Segmenter

    check_size(cfg.size)
    model = Segmenter.load(cfg.segmenter, device="cpu")
    size = cfg.size or model.crop_size or model.size or 64
    out = Path(cfg.out) if cfg.out else Path(cfg.segmenter) / "segmenter.onnx"
    try:
        import onnx  # torch's exporter needs it
    except ImportError:
        raise AnomalignError("ONNX export needs the onnx package: pip install 'anomalign[export]'") from None
    check_export_target(out)

    class Probability(torch.nn.Module):
        def __init__(self, seg):
            super().__init__()
            self.seg = seg

        def forward(self, images):
            return self.seg(images).softmax(1)[:, 1:2]

    wrapped = Probability(model).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # A U-Net traced at a side that needs no padding takes any side that needs none: height and width stay
    # dynamic (multiples of its downsampling), so the one-pass tiles run through the same graph.
    step = unet_step(model)
    dynamic = {0: "batch"} | ({2: "height", 3: "width"} if step and size % step == 0 else {})
    with atomic_target(out) as tmp, torch.no_grad():
        torch.onnx.export(wrapped, (x,), str(tmp), input_names=["images"], output_names=["anomaly_probability"],
                          dynamic_axes={"images": dynamic, "anomaly_probability": dynamic},
                          opset_version=cfg.opset, dynamo=False)
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {EXPORT_MARK: "anomalign export", "segmenter": str(cfg.segmenter),
                                            "side_multiple": str(step if len(dynamic) > 1 else 0)})
        onnx.save(graph, str(tmp))  # marked as ours: a later export may replace it, nothing else is replaced
    result = {"file": str(out), "size": size, "opset": cfg.opset, "checked": False,
              "dynamic_size": len(dynamic) > 1}
    if model.crop_size:  # the graph is the patch model; the tiling stays outside it (docs/segmenter.md)
        result["tiling"] = {"window": model.crop_size, "scale": model.scale, "overlap": 0.5, "blend": "gaussian"}
        print(f"note: this segmenter was trained on {model.crop_size}-px crops at scale {model.scale:g}: run the "
              f"graph on overlapping {model.crop_size}x{model.crop_size} windows of the image resampled by "
              f"{model.scale:g} and blend them (anomalign.segmenter.sliding, docs/segmenter.md)")
    side = f"H, W (multiples of {step})" if len(dynamic) > 1 else f"{size}, {size}"
    print(f"exported {out} (input 'images' [batch, 3, {side}] in [-1, 1] -> 'anomaly_probability' "
          f"[batch, 1, {side}])")
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
