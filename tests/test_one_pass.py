"""One-pass full-size prediction (issue 40): large tiles instead of sliding windows, and the BatchNorm U-Net."""
import pytest
import torch

from anomalign.config import build_config
from anomalign.errors import AnomalignError, ConfigError
from anomalign.segmenter.model import Segmenter, UNet
from anomalign.segmenter.sliding import predict_full_size, tiled_proba, uses_one_pass
from anomalign.segmenter.train import TrainSegmenterConfig


def small_segmenter(norm: str, crop: int = 32) -> Segmenter:
    """A two-level U-Net (receptive field radius about 10 px) with random weights and, for BatchNorm, random
    running statistics, in eval mode, as a crop-trained segmenter is loaded."""
    torch.manual_seed(0)
    model = Segmenter("unet-tiny", norm=norm)
    model.net = UNet((4, 8), stem=1, norm=norm)
    for m in model.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.crop_size, model.scale = crop, 1.0
    return model.eval()


def test_tiles_equal_one_pass_over_the_whole_image():
    model = small_segmenter("batch")
    logit = lambda x: model(x)[:, 1:2]  # noqa: E731 - the logit: softmax would flatten random weights' output
    image = torch.rand(3, 150, 230) * 2 - 1
    with torch.no_grad():
        whole = tiled_proba(logit, image, core=1024, margin=16)  # one input: the whole padded image
        tiled = tiled_proba(logit, image, core=32, margin=16)    # 5 x 8 tiles, 32 px kept of each
        thin = tiled_proba(logit, image, core=32, margin=4)      # too little context for the receptive field
    spread = float(whole.std())  # differences are measured against the output's own spread
    assert whole.shape == tiled.shape == (1, 150, 230) and spread > 0
    assert (whole - tiled).abs().max() < 1e-3 * spread  # float rounding only
    assert (thin - whole).abs().max() > 0.1 * spread   # the margin is what makes tiles exact


def test_tiles_handle_images_smaller_than_the_margin():
    model = small_segmenter("batch")
    for h, w in [(1, 1), (5, 40), (33, 2)]:
        p = tiled_proba(model.predict_proba, torch.rand(3, h, w) * 2 - 1, core=32, margin=16)
        assert p.shape == (1, h, w) and torch.isfinite(p).all()


def test_windows_by_default_one_pass_when_asked():
    seen = {}
    for norm, mode in (("group", "windows"), ("batch", "windows"), ("batch", "one-pass"), ("group", "one-pass")):
        model = small_segmenter(norm)
        shapes = []
        real = model.predict_proba
        model.predict_proba = lambda x, real=real, shapes=shapes: shapes.append(tuple(x.shape[-2:])) or real(x)
        predict_full_size(model, torch.rand(3, 100, 140) * 2 - 1, mode=mode)
        seen[norm, mode] = set(shapes)
        if mode == "windows":
            shapes.clear()
            predict_full_size(model, torch.rand(3, 100, 140) * 2 - 1)
            assert set(shapes) == seen[norm, mode]  # windows are the default
    assert seen["group", "windows"] == seen["batch", "windows"] == {(32, 32)}  # windows of the crop size
    # one input: the image (to a multiple of 32) with 64 px of context on each side
    assert seen["batch", "one-pass"] == seen["group", "one-pass"] == {(128 + 128, 160 + 128)}
    assert not uses_one_pass() and uses_one_pass("one-pass")
    with pytest.raises(ValueError, match="inference mode"):
        uses_one_pass("auto")


def test_a_batch_norm_segmenter_saves_its_statistics(tmp_path):
    model = small_segmenter("batch")
    model.save(tmp_path, {"size": 32, "crop_size": 32, "scale": 1.0})
    loaded = Segmenter.load(tmp_path)
    assert loaded.net.norm == "batch" and not loaded.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.predict_proba(x), model.predict_proba(x))
    assert Segmenter("unet-tiny").net.norm == "group"


def test_norm_batch_is_for_u_nets_only(tmp_path):
    with pytest.raises(ConfigError, match="--norm batch applies to the U-Net"):
        build_config(TrainSegmenterConfig, {"train": tmp_path, "out": tmp_path / "o", "preset": "tiny", "norm": "batch"})
    with pytest.raises(AnomalignError, match="norm 'batch' applies to the U-Net"):
        Segmenter("tiny", norm="batch")


def test_a_file_with_an_unknown_norm_is_refused(tmp_path):
    model = small_segmenter("group")
    model.net.config["norm"] = "layer"
    model.save(tmp_path, {"size": 32, "crop_size": 32, "scale": 1.0})
    with pytest.raises(AnomalignError, match="norm is 'layer'"):
        Segmenter.load(tmp_path)


def test_bf16_inference_stays_within_its_rounding():
    for norm in ("group", "batch"):
        model = small_segmenter(norm)
        image = torch.rand(3, 90, 120) * 2 - 1
        fp32, bf16 = (predict_full_size(model, image, precision=p) for p in ("fp32", "bf16"))
        assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # bf16 did run
        assert (fp32 - bf16).abs().max() < 0.02
    with pytest.raises(ValueError, match="precision"):
        predict_full_size(model, image, precision="fp16")


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from anomalign.segmenter import sliding
    model, image = small_segmenter("batch"), torch.rand(3, 40, 50) * 2 - 1
    for native in (True, False):
        monkeypatch.setattr(sliding, "native_bf16", lambda device_type, native=native: native)
        assert sliding.inference_precision("auto") == ("bf16" if native else "fp32")
        assert sliding.inference_precision("fp32") == "fp32" and sliding.inference_precision("bf16") == "bf16"
        want = predict_full_size(model, image, precision="bf16" if native else "fp32")
        assert torch.equal(predict_full_size(model, image), want)  # auto is the default
