"""Eq. 6-11 against hand-computed values; feedback gradients; a short training run."""
import json
import math

import pytest
import torch

from anomalign.config import build_config
from anomalign.segmenter.losses import loss_ce, loss_feedback, soft_mask
from anomalign.segmenter.model import Segmenter
from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator


def test_eq6_each_group_is_averaged_over_its_own_samples():
    # 1x1 images: CE = -log softmax(l)[y]
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]).view(3, 2, 1, 1)
    target = torch.tensor([1, 1, 1]).view(3, 1, 1, 1)
    synthetic = torch.tensor([False, False, True])
    ce = [math.log(2), -math.log(math.exp(0) / (math.exp(2) + 1)), -math.log(math.e / (1 + math.e))]
    expected = (ce[0] + ce[1]) / 2 + ce[2]
    assert loss_ce(logits, target, synthetic).item() == pytest.approx(expected, rel=1e-6)
    # no synthetic samples: just the real mean
    assert loss_ce(logits, target, torch.zeros(3, dtype=torch.bool)).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    # w_syn scales the synthetic group's mean only
    assert loss_ce(logits, target, synthetic, synthetic_weight=0.25).item() == pytest.approx(
        (ce[0] + ce[1]) / 2 + 0.25 * ce[2], rel=1e-6)


def test_soft_mask_temperature_on_known_logits():
    logits = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert soft_mask(logits, 1.0).item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert soft_mask(logits, 0.5).item() == pytest.approx(1 / (1 + math.exp(-2)))  # sharper
    with pytest.raises(ValueError):
        soft_mask(logits, 0.0)


def test_feedback_gradients_reach_the_segmenter_only():
    gen = dummy_tiny_generator()
    gen.requires_grad_(False).eval()
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    seg = Segmenter("tiny")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    logits = seg(x)
    with torch.no_grad():
        z0 = gen.encode(x)
    l_fb = loss_feedback(gen, z0, soft_mask(logits, 0.5), gen.encode_prompts(["a photo of a surface"] * 2),
                         torch.randn_like(z0), torch.tensor([100, 300]))
    l_fb.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.parameters())
    assert all(p.grad is None for p in gen.parameters())
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in before.items())


def test_train_segmenter_with_synthetic_and_feedback(tmp_path):
    real, syn = tmp_path / "real", tmp_path / "syn"
    write_paired(real, defects=("scratch",), n=6, normals=2)
    write_paired(syn, defects=("scratch",), n=4, normals=0)
    gen_dir = tmp_path / "gen"
    dummy_tiny_generator().save(gen_dir)
    cfg = build_config(TrainSegmenterConfig, dict(
        recipe="paper", train=str(real), synthetic=[str(syn)], feedback_generator=str(gen_dir),
        out=str(tmp_path / "seg"), size=32, max_steps=4, batch_size=4, validate_every=2, checkpoint_every=2,
        log_every=1, device="cpu"))
    out = run_train_segmenter(cfg, progress=False)
    assert (out / "segmenter.safetensors").is_file() and (out / "best" / "segmenter.safetensors").is_file()
    rows = (out / "logs" / "train.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,l_ce,l_fb") and len(rows) == 5
    assert all(float(r.split(",")[3]) > 0 for r in rows[1:])  # feedback ran every step
    seg = Segmenter.load(out)
    assert seg(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    premise = json.loads((out / "premise.json").read_text())  # the feedback's premise, measured before training
    from anomalign.data import load_dataset
    n_train = sum(not s.normal for s in load_dataset(real).split("train"))
    assert premise["images"] == n_train > 0 and premise["threshold"] == 0.7
    both = premise["frac_true_lt_both"]  # a fraction of whole images, and "both" implies each of the two
    assert both * n_train == pytest.approx(round(both * n_train), abs=1e-9)
    assert both <= min(premise["frac_true_lt_moved"], premise["frac_true_lt_empty"])


def test_a_weak_feedback_premise_is_a_warning_with_the_numbers(tmp_path, capsys):
    from anomalign.segmenter.train import report_premise
    base = {"images": 20, "frac_true_lt_moved": 0.8, "frac_true_lt_empty": 0.6, "free_lunch_mean": 0.0}
    report_premise(base | {"frac_true_lt_both": 0.55}, tmp_path)
    err = capsys.readouterr().err
    assert "warning" in err and "20 training images" in err and "55%" in err and "below 70%" in err
    report_premise(base | {"frac_true_lt_both": 0.9}, tmp_path)
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "90%" in captured.out
    assert json.loads((tmp_path / "premise.json").read_text())["frac_true_lt_both"] == 0.9


def test_log_rows_average_feedback_over_the_steps_where_it_ran(tmp_path):
    """With feedback every 2nd step, each 2-step log row shows the feedback loss of the step that had it
    (not the last step's missing value); before feedback starts the column is nan, not a misleading 0."""
    real = tmp_path / "real"
    write_paired(real, defects=("scratch",), n=6, normals=0)
    gen_dir = tmp_path / "gen"
    dummy_tiny_generator().save(gen_dir)
    for warmup, expect_fb in ((0, True), (8, False)):
        out = tmp_path / f"seg{warmup}"
        cfg = build_config(TrainSegmenterConfig, dict(
            train=str(real), feedback_generator=str(gen_dir), out=str(out), size=32, max_steps=4, batch_size=2,
            fb_every=2, fb_warmup_steps=warmup, log_every=2, validate_every=0, device="cpu"))
        run_train_segmenter(cfg, progress=False)
        rows = [r.split(",") for r in (out / "logs" / "train.csv").read_text().splitlines()]
        col = rows[0].index("l_fb")
        values = [float(r[col]) for r in rows[1:]]
        assert len(values) == 2
        assert all((v > 0) if expect_fb else math.isnan(v) for v in values), values


def test_train_normals_option(tmp_path, monkeypatch):
    import anomalign.segmenter.train as train_mod
    from anomalign.errors import AnomalignError
    real = tmp_path / "real"
    write_paired(real, defects=("scratch",), n=6, normals=4)
    used = {}
    original = train_mod.SegPairs.__init__

    def spy(self, samples, *args, **kwargs):
        used.setdefault("normal", []).append(sum(s.normal for s in samples))
        used.setdefault("anomalous", []).append(sum(not s.normal for s in samples))
        original(self, samples, *args, **kwargs)

    monkeypatch.setattr(train_mod.SegPairs, "__init__", spy)
    for flag in (True, False):
        cfg = build_config(TrainSegmenterConfig, dict(
            train=str(real), out=str(tmp_path / f"seg_{flag}"), size=32, max_steps=1, batch_size=2,
            validate_every=1, device="cpu", train_normals=flag))
        run_train_segmenter(cfg, progress=False)
    assert used["normal"][0] > 0 and used["normal"][1] == 0
    assert used["anomalous"][0] == used["anomalous"][1] > 0
    normals_only = tmp_path / "normals_only"
    write_paired(normals_only, defects=(), n=0, normals=4)
    cfg = build_config(TrainSegmenterConfig, dict(train=str(normals_only), out=str(tmp_path / "seg_n"), size=32,
                                                  max_steps=1, device="cpu", train_normals=False))
    with pytest.raises(AnomalignError, match="--no-train-normals"):
        run_train_segmenter(cfg, progress=False)


def test_eq6_anomaly_weight_option():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]]).view(2, 2, 1, 1)  # CE = log 2 for either class
    target = torch.tensor([1, 0]).view(2, 1, 1, 1)
    synthetic = torch.tensor([False, False])
    assert loss_ce(logits, target, synthetic, anomaly_weight=3.0).item() == pytest.approx(2 * math.log(2))


def test_feedback_premise_with_a_trained_generator(tmp_path):
    """The paper's premise of Generative Feedback, with the shipped (trained) tiny base on fresh built-in
    images: the denoising loss with the true mask is lower than with a moved and with an empty mask on
    most real images. The fraction is printed (`pytest -s`) and must exceed 1/2."""
    from anomalign.data.builtin import MakeDemoConfig, make_demo_dataset
    from anomalign.evaluation.generation import EvaluateGenerationConfig, feedback_premise, read_real
    from anomalign.generator.model import TINY_BASE

    data = make_demo_dataset(build_config(MakeDemoConfig, dict(
        out=tmp_path / "d", seed=7, train_per_defect=1, val_per_defect=1, test_per_defect=6, normal_train=1,
        normal_val=1, normal_test=0)), progress=False)
    cfg = EvaluateGenerationConfig(generated=[], real=data, split="test")
    real_u8, real_m, prompts = read_real(cfg, 64)
    res = feedback_premise(TINY_BASE, real_u8, real_m, prompts)
    print(f"premise: true < moved {res['frac_true_lt_moved']:.2f}, true < empty {res['frac_true_lt_empty']:.2f}, "
          f"both {res['frac_true_lt_both']:.2f} on {res['images']} images")
    assert res["images"] == 24
    assert res["frac_true_lt_moved"] > 0.5 and res["frac_true_lt_empty"] > 0.5 and res["frac_true_lt_both"] > 0.5


def test_pretrained_from_a_local_folder_or_a_hub_id(tmp_path, monkeypatch):
    """--pretrained: a Segformer folder saved in code loads with a new 2-class head; a hub id reaches
    transformers as is (no local-files-only restriction); a missing folder is a clear error, not a download."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from anomalign.errors import AnomalignError
    from anomalign.segmenter.model import PRESETS

    SegformerForSemanticSegmentation(SegformerConfig(num_labels=5, **PRESETS["tiny"])).save_pretrained(tmp_path / "mit")
    seg = Segmenter(pretrained=str(tmp_path / "mit"))
    assert seg.net.config.num_labels == 2 and seg(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(AnomalignError, match="no such Segformer folder"):
        Segmenter(pretrained=str(tmp_path / "missing"))
    seen = {}

    def fake(source, **kw):
        seen.update(kw, source=source)
        return SegformerForSemanticSegmentation(SegformerConfig(num_labels=2, **PRESETS["tiny"]))
    monkeypatch.setattr(SegformerForSemanticSegmentation, "from_pretrained", fake)
    Segmenter(pretrained="nvidia/mit-b0")
    assert seen["source"] == "nvidia/mit-b0" and not seen.get("local_files_only")


def test_dice_loss_by_hand():
    from anomalign.segmenter.losses import loss_dice
    # p = softmax([0, log 3]) = 0.75 on both pixels; y = [1, 0]: 1 - (2*0.75 + 1) / (1.5 + 1 + 1)
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert loss_dice(logits, target).item() == pytest.approx(1 - 2.5 / 3.5, rel=1e-6)
    perfect = torch.tensor([[-20.0, 20.0], [20.0, -20.0]]).T.reshape(1, 2, 1, 2)
    assert loss_dice(perfect, target).item() == pytest.approx(0, abs=1e-6)
    # row weights: a second row (p = 0.75, y = 1) at weight 0.5 adds 0.5*0.75 to Σpy and Σp, 0.5 to Σy
    two_logits, two_target = torch.cat([logits, perfect]), torch.cat([target, torch.ones_like(target)])
    two_logits[1, :, 0, 1] = torch.tensor([0.0, math.log(3)])
    w = torch.tensor([1.0, 0.5])
    # row 2 pixels: p = [1, 0.75], y = [1, 1] at weight 0.5 -> Σpy = 1.75 * 0.5, Σp = 1.75 * 0.5, Σy = 1
    expected = 1 - (2 * (0.75 + 0.875) + 1) / ((1.5 + 0.875) + (1 + 1) + 1)
    assert loss_dice(two_logits, two_target, row_weight=w).item() == pytest.approx(expected, rel=1e-5)
    assert loss_dice(two_logits, two_target, row_weight=torch.ones(2)).item() == pytest.approx(
        loss_dice(two_logits, two_target).item(), rel=1e-6)


@pytest.mark.parametrize("preset", ["unet-tiny", "unet-full"])
def test_unet_preset_any_size_saves_and_predicts_per_window(tmp_path, preset):
    """The U-Net presets give full-size logits for sizes that are not multiples of its stride, reload exactly,
    and (GroupNorm, no BatchNorm) predict a window the same alone as inside a batch."""
    torch.manual_seed(0)
    seg = Segmenter(preset).eval()
    x = torch.rand(3, 3, 45, 37) * 2 - 1
    with torch.no_grad():
        out = seg(x)
        assert out.shape == (3, 2, 45, 37)
        assert torch.allclose(seg(x[1:2]), out[1:2], atol=1e-5)
    seg.save(tmp_path)
    back = Segmenter.load(tmp_path)
    assert back.preset == preset and back.net.config == seg.net.config
    with torch.no_grad():
        assert torch.equal(back(x), out)


def test_train_segmenter_unet_with_dice_and_photometric_jitter(tmp_path):
    real = tmp_path / "real"
    write_paired(real, defects=("scratch",), n=6, normals=2)
    cfg = build_config(TrainSegmenterConfig, dict(
        train=str(real), out=str(tmp_path / "seg"), size=32, preset="unet-tiny", dice_weight=1.0, photometric=0.5,
        colour=0.5, max_steps=3, batch_size=4, validate_every=3, log_every=1, device="cpu"))
    out = run_train_segmenter(cfg, progress=False)
    assert Segmenter.load(out).preset == "unet-tiny"
    with pytest.raises(Exception, match="photometric must be in"):
        build_config(TrainSegmenterConfig, dict(train=str(real), out=str(tmp_path / "x"), photometric=2.0))
    with pytest.raises(Exception, match="colour must be in"):
        build_config(TrainSegmenterConfig, dict(train=str(real), out=str(tmp_path / "x"), colour=-0.1))


def test_pretrain_on_synthetic_only_then_fine_tune_from_it(tmp_path, capsys):
    """--synthetic-fraction 1 trains on synthetic rows only (still validated on the real val split), and
    --init-from starts the next run from those weights instead of a fresh network."""
    real, syn = tmp_path / "real", tmp_path / "syn"
    write_paired(real, defects=("scratch",), n=6, normals=2)
    write_paired(syn, defects=("stain",), n=6, normals=0)
    common = dict(train=str(real), size=32, preset="unet-tiny", batch_size=4, validate_every=2, device="cpu")
    pre_cfg = build_config(TrainSegmenterConfig, dict(common, out=str(tmp_path / "pre"), synthetic=[str(syn)],
                                                      synthetic_fraction=1.0, max_steps=2))
    pre = run_train_segmenter(pre_cfg, progress=False)
    assert (pre / "best" / "segmenter.safetensors").is_file()
    # one fine-tuning step at learning rate 0 leaves the pre-trained weights exactly as they were
    ft_cfg = build_config(TrainSegmenterConfig, dict(common, out=str(tmp_path / "ft"), init_from=str(pre),
                                                     preset="tiny", learning_rate=0.0, weight_decay=0.0,
                                                     max_steps=1))
    ft = run_train_segmenter(ft_cfg, progress=False)
    assert "continuing its unet-tiny network" in capsys.readouterr().err
    a, b = Segmenter.load(pre).net.state_dict(), Segmenter.load(ft).net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = Segmenter("unet-tiny").net.state_dict()
    assert not all(torch.equal(a[k], fresh[k]) for k in a)
    with pytest.raises(Exception, match="synthetic pairs only: give them with --synthetic"):
        build_config(TrainSegmenterConfig, dict(common, out=str(tmp_path / "x"), synthetic_fraction=1.0))
    with pytest.raises(Exception, match="not both"):
        build_config(TrainSegmenterConfig, dict(common, out=str(tmp_path / "x"), init_from=str(pre),
                                                pretrained=str(pre)))
