"""`anomalign segment` (any image size) and `anomalign export --format onnx`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomalign.cli import main
from anomalign.errors import AnomalignError, DataError
from anomalign.segmenter.export import ExportConfig, run_export
from anomalign.segmenter.infer import SegmentConfig, overlay, run_segment
from anomalign.segmenter.model import Segmenter
from dummy_data import pair, save


def test_segment_writes_full_size_masks_and_overlays(seg_dir, tmp_path):
    imgs = tmp_path / "in"
    sizes = [(40, 56), (33, 21), (64, 64)]
    for i, hw in enumerate(sizes):
        save(imgs / "sub" / f"x{i}.jpg", pair(i, hw)[0])
    out = run_segment(SegmentConfig(images=[imgs], segmenter=seg_dir, out=tmp_path / "o", threshold=0.5,
                                    save_probabilities=True, device="cpu"), progress=False)
    model = Segmenter.load(seg_dir)
    for i, (h, w) in enumerate(sizes):
        m = np.asarray(Image.open(out / "masks" / "sub" / f"x{i}.png"))
        o = np.asarray(Image.open(out / "overlays" / "sub" / f"x{i}.png"))
        p = np.asarray(Image.open(out / "probabilities" / "sub" / f"x{i}.png"))
        assert m.shape == (h, w) and o.shape == (h, w, 3) and p.shape == (h, w)
        image = np.asarray(Image.open(imgs / "sub" / f"x{i}.jpg").convert("RGB"))
        prob = model.predict(image, probability=True)  # the API's predictor is segment's
        assert np.array_equal(m > 127, prob >= 0.5)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and (out / "segment.yaml").is_file()


def test_overlay_marks_only_masked_pixels():
    image = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[2:4, 2:4] = True
    o = overlay(image, mask)
    assert (o[~mask] == 100).all() and (o[mask] == [255, 0, 0]).all()  # 2x2 mask: all contour


def test_segment_bad_input(seg_dir, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        run_segment(SegmentConfig(images=[tmp_path / "nope.png"], segmenter=seg_dir, out=tmp_path / "o"), False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not an image"):
        run_segment(SegmentConfig(images=[tmp_path / "notes.txt"], segmenter=seg_dir, out=tmp_path / "o"), False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "segmenter.safetensors").write_bytes(b"not safetensors")
    save(tmp_path / "a.png", pair(0)[0])
    with pytest.raises(AnomalignError, match="junk"):
        run_segment(SegmentConfig(images=[tmp_path / "a.png"], segmenter=tmp_path / "junk", out=tmp_path / "o"), False)
    assert main(["segment", str(tmp_path / "a.png"), "--segmenter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_export_onnx_matches_pytorch(seg_dir, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    res = run_export(ExportConfig(segmenter=seg_dir, out=tmp_path / "m.onnx"))
    assert res["checked"] and res["max_abs_diff"] < 1e-4
    x = torch.rand(5, 3, 32, 32) * 2 - 1  # another batch size than the export example
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[0]
    ref = Segmenter.load(seg_dir).predict_proba(x).numpy()
    assert got.shape == (5, 1, 32, 32) and np.abs(got - ref).max() < 1e-4


def test_export_onnx_of_a_unet_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    seg = Segmenter("unet-tiny")
    seg.size = 32
    seg.save(tmp_path / "u", {"size": 32})
    res = run_export(ExportConfig(segmenter=tmp_path / "u", out=tmp_path / "u.onnx"))
    assert res["checked"] and res["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("crop", [None, 16])
def test_segment_writes_the_masks_evaluate_scores(tmp_path, crop):
    """One predictor for both: the IoU of segment's written mask against the ground truth is evaluate's IoU."""
    from anomalign.data.imageio import load_mask
    from dummy_data import write_paired
    torch.manual_seed(3)
    seg = tmp_path / "seg"
    Segmenter("unet-tiny").save(seg, {"size": 16, "crop_size": crop, "scale": 1.0})
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=1, normals=0, splits=("train", "test"), image_ext=".png")
    image = data / "test" / "images" / "scratch" / "000.png"
    run_segment(SegmentConfig(images=[image], segmenter=seg, out=tmp_path / "o", threshold=0.45, device="cpu"),
                progress=False)
    pred = np.asarray(Image.open(tmp_path / "o" / "masks" / "000.png")) > 127
    truth = load_mask(data / "test" / "masks" / "scratch" / "000.png")
    assert pred.any() and not pred.all()  # a threshold where the random network's mask is informative
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert main(["evaluate", "--segmenter", str(seg), "--test", str(data), "--out", str(tmp_path / "ev"),
                 "--full-size", "--threshold", "0.45"]) == 0
    payload = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert payload["sets"]["data"]["IoU"] == pytest.approx(iou, abs=1e-6)


@pytest.mark.parametrize("crop,norm,runtime", [(None, "group", "onnx"), (16, "group", "onnx"), (32, "batch", "onnx"),
                                               (16, "group", "openvino"), (32, "batch", "openvino")])
def test_segment_with_onnxruntime_gives_the_pytorch_masks(tmp_path, crop, norm, runtime):
    """`segment --runtime onnx` / `openvino` run the exported graph with onnxruntime / OpenVINO: the same
    probabilities within float rounding, so the same masks except for pixels within 1e-4 of the threshold. A
    U-Net's graph takes any side (a multiple of 16), so the runtimes predict in one pass too."""
    pytest.importorskip("onnxruntime" if runtime == "onnx" else "openvino")
    torch.manual_seed(5)
    seg = tmp_path / "seg"
    Segmenter("unet-tiny", norm=norm).save(seg, {"size": 32, "crop_size": crop, "scale": 1.0})
    imgs = tmp_path / "in"
    for i, hw in enumerate([(40, 56), (33, 21), (70, 90)]):
        save(imgs / f"x{i}.png", pair(i, hw)[0])
    outs = {}
    for r in ("torch", runtime):
        outs[r] = run_segment(SegmentConfig(images=[imgs], segmenter=seg, out=tmp_path / r, device="cpu",
                                            runtime=r, threshold=0.45, save_probabilities=True,
                                            precision="fp32",  # the graph computes in fp32
                                            inference="one-pass" if norm == "batch" else "windows"),
                              progress=False)
    assert (seg / "segmenter.onnx").is_file()  # exported on first use
    for i in range(3):
        p = [np.asarray(Image.open(outs[r] / "probabilities" / f"x{i}.png")).astype(int) for r in ("torch", runtime)]
        m = [np.asarray(Image.open(outs[r] / "masks" / f"x{i}.png")) > 127 for r in ("torch", runtime)]
        assert np.abs(p[0] - p[1]).max() <= 1 and (m[0] != m[1]).mean() < 1e-3
    model = Segmenter.load(seg)
    from anomalign.segmenter.export import OnnxSegmenter
    x = torch.rand(4, 3, 32 if crop is None else crop, 32 if crop is None else crop) * 2 - 1
    graph = OnnxSegmenter.of(model, seg, runtime)
    assert torch.allclose(graph.predict_proba(x), model.predict_proba(x), atol=1e-5)
    assert graph.side is None  # U-Net graphs take any side (one pass runs through them)
