"""issue 47: a segmenter on a pretrained encoder — the TAEF2 encoder of the shipped tiny base under a U-Net decoder
(``--preset taef2-unet``), frozen or fine-tuned at ``--encoder-lr-scale``; and the same scale for a --pretrained
Segformer's encoder."""
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from anomalign.config import build_config
from anomalign.errors import AnomalignError, ConfigError
from anomalign.generator.model import BASE_ENCODER_PREFIX, TINY_BASE
from anomalign.segmenter import train as seg_train
from anomalign.segmenter.model import TAEF2_STAGE_ENDS, Segmenter, TAEF2UNet
from anomalign.segmenter.task import encoder_groups
from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
from dummy_data import write_paired

LR, WD = 1e-3, 1e-2  # the run's peak learning rate (step 0 of a cosine schedule runs at it) and AdamW's decay


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter("taef2-unet").eval()


def test_the_encoder_holds_the_shipped_base_weights(seg):
    """Every encoder tensor is the base's TAEF2 encoder tensor (fp16 in the file, exactly representable in fp32);
    the last layer (the 32-channel latent) is not part of the segmenter."""
    with safe_open(str(TINY_BASE), framework="pt") as fh:
        base = {k[len(BASE_ENCODER_PREFIX):]: fh.get_tensor(k) for k in fh.keys() if k.startswith(BASE_ENCODER_PREFIX)}
    mine = seg.net.encoder.state_dict()
    assert set(mine) == {k for k in base if int(k.split(".")[0]) <= TAEF2_STAGE_ENDS[-1]}
    assert base["0.weight"].dtype == torch.float16 and mine["0.weight"].dtype == torch.float32
    for k, v in mine.items():
        assert torch.equal(v, base[k].float()), k
    assert not torch.equal(mine["12.conv.2.weight"], mine["11.conv.2.weight"])  # not one tensor copied around


def test_logits_at_any_size_and_the_encoders_own_input_range(seg, monkeypatch):
    """Logits [B, 2, H, W] for sides that are not multiples of 8; the encoder sees [0, 1] (TAEF2.encode's
    range), not ImageNet-normalised values."""
    x = torch.rand(2, 3, 45, 37) * 2 - 1
    with torch.no_grad():
        assert seg(x).shape == (2, 2, 45, 37)
    seen = {}
    first = seg.net.encoder[0]
    monkeypatch.setattr(first, "forward", lambda t: (seen.setdefault("x", t), torch.nn.Conv2d.forward(first, t))[1])
    with torch.no_grad():
        seg(torch.full((1, 3, 16, 16), -1.0))
        assert float(seen["x"].abs().max()) == 0.0  # -1 (black) is 0 for TAEF2
        seen.clear()
        seg(torch.ones(1, 3, 16, 16))
        assert torch.allclose(seen["x"], torch.ones(1, 3, 16, 16))


def _train(tmp_path, monkeypatch, name: str, **options) -> tuple[dict, dict]:
    """One optimizer step of train-segmenter with a TAEF2 U-Net: (weights before, weights written after)."""
    real = tmp_path / "real"
    if not real.exists():
        write_paired(real, defects=("scratch",), n=4, normals=0)
    start = {}
    original = seg_train.start_model

    def recording(cfg):
        model = original(cfg)
        start.update({k: v.detach().clone() for k, v in model.net.state_dict().items()})
        return model
    monkeypatch.setattr(seg_train, "start_model", recording)
    cfg = build_config(TrainSegmenterConfig, dict(
        train=str(real), out=str(tmp_path / name), size=32, preset="taef2-unet", max_steps=1, batch_size=2,
        learning_rate=LR, photometric=0.0, log_every=1, device="cpu", **options))
    out = run_train_segmenter(cfg, progress=False)
    return start, load_file(str(out / "segmenter.safetensors"))


def _step_sizes(before: dict, after: dict, encoder: bool, lr: float) -> torch.Tensor:
    """|update| of each weight of the encoder (or of the rest) with AdamW's decay (lr x wd x w) taken out: the
    first Adam step moves every weight whose gradient is not 0 by its group's learning rate (m̂ / sqrt(v̂) =
    g / |g|), so the largest is that rate."""
    keys = [k for k in after if k.startswith("encoder.") == encoder and after[k].is_floating_point()]
    return torch.cat([((after[k] - before[k]) + lr * WD * before[k]).abs().flatten() for k in keys])


def test_frozen_encoder_moves_only_the_decoder(tmp_path, monkeypatch):
    """The default for taef2-unet (--encoder-lr-scale 0): after a step the encoder is bit-identical (and still
    the base's), the decoder moved at the full learning rate."""
    before, after = _train(tmp_path, monkeypatch, "frozen")
    enc = [k for k in after if k.startswith("encoder.")]
    assert enc and all(torch.equal(after[k], before[k]) for k in enc)
    dec = [k for k in after if not k.startswith("encoder.") and after[k].is_floating_point()]
    assert sum(not torch.equal(after[k], before[k]) for k in dec) == len(dec)
    assert float(_step_sizes(before, after, False, LR).max()) == pytest.approx(LR, rel=0.01)


def test_fine_tuned_encoder_moves_at_the_scaled_learning_rate(tmp_path, monkeypatch):
    """--encoder-lr-scale 0.1: both parts move, the encoder's largest step a tenth of the decoder's."""
    before, after = _train(tmp_path, monkeypatch, "finetune", encoder_lr_scale=0.1)
    enc = [k for k in after if k.startswith("encoder.")]
    assert sum(not torch.equal(after[k], before[k]) for k in enc) == len(enc)
    assert float(_step_sizes(before, after, False, LR).max()) == pytest.approx(LR, rel=0.01)
    assert float(_step_sizes(before, after, True, 0.1 * LR).max()) == pytest.approx(0.1 * LR, rel=0.01)


def test_save_load_predicts_the_same_without_the_base(seg, tmp_path, monkeypatch):
    """The file holds the encoder's weights: loading needs no base (the base reader is broken here), and the
    loaded network predicts exactly the same, through the sliding-window predictor too."""
    torch.manual_seed(1)
    with torch.no_grad():  # a decoder that is not its initialisation
        for p in seg.net.head.parameters():
            p.add_(torch.randn_like(p))
    seg.save(tmp_path, {"size": 32, "crop_size": 32, "scale": 1.0})
    import anomalign.generator.model as gm

    def no_base(*a, **k):
        raise AssertionError("Segmenter.load read the tiny base")
    monkeypatch.setattr(gm, "tiny_base_encoder", no_base)
    back = Segmenter.load(tmp_path, device="cpu")
    assert isinstance(back.net, TAEF2UNet) and back.preset == "taef2-unet" and back.crop_size == 32
    x = torch.rand(2, 3, 40, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back(x), seg(x))
    seg.crop_size, seg.scale = 32, 1.0
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = seg.predict(image, probability=True, precision="fp32")
    b = back.predict(image, probability=True, precision="fp32")
    assert a.shape == (50, 70) and np.array_equal(a, b)


def test_exports_to_onnx_with_dynamic_sides(seg, tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalign.segmenter.export import ExportConfig, run_export
    seg.save(tmp_path, {"size": 32, "crop_size": 32, "scale": 1.0})
    result = run_export(ExportConfig(segmenter=tmp_path))
    assert result["checked"] and result["max_abs_diff"] <= 1e-4 and result["dynamic_size"]


def test_encoder_lr_scale_options(tmp_path):
    """Refused for a network trained from scratch and when negative; a --pretrained Segformer's encoder
    (``segformer``) gets the scaled group, and at scale 1 (its default) it trains as before: one group."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from anomalign.segmenter.model import PRESETS
    with pytest.raises(ConfigError, match="applies to a pretrained encoder"):
        build_config(TrainSegmenterConfig, dict(train=str(tmp_path), out=str(tmp_path / "o"), encoder_lr_scale=0.1))
    with pytest.raises(ConfigError, match=">= 0"):
        build_config(TrainSegmenterConfig, dict(train=str(tmp_path), out=str(tmp_path / "o"), preset="taef2-unet",
                                                encoder_lr_scale=-1))
    with pytest.raises(ConfigError, match="norm batch"):
        build_config(TrainSegmenterConfig, dict(train=str(tmp_path), out=str(tmp_path / "o"), preset="taef2-unet",
                                                norm="batch"))
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=5, **PRESETS["tiny"])).save_pretrained(tmp_path / "mit")
    segformer = Segmenter(pretrained=str(tmp_path / "mit"))
    params, groups = encoder_groups(segformer, LR, 1.0)
    assert groups is None and len(params) == len(list(segformer.parameters()))
    params, groups = encoder_groups(segformer, LR, 0.1)
    assert [g["lr"] for g in groups] == [LR, pytest.approx(0.1 * LR)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in segformer.net.segformer.parameters()}
    assert len(params) == len(list(segformer.parameters()))
    scratch = Segmenter("unet-tiny")
    assert encoder_groups(scratch, LR, 0.0)[1] is None and all(p.requires_grad for p in scratch.parameters())
    with pytest.raises(AnomalignError, match="not TAEF2|no tiny base"):
        TAEF2UNet.from_base(tmp_path / "missing.safetensors")
