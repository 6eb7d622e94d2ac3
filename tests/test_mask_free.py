"""The paper's regime: a base without a mask input (mask-free tiny base, or SD) gets its mask condition at
fine-tuning through ONE function, which leaves its predictions unchanged at step 0; pretraining a tiny
mask-free base on a (random) TAEF2 codec and fine-tuning it works end to end."""
import pytest
import torch

from anomalign.config import build_config
from anomalign.errors import AnomalignError, ConfigError
from anomalign.generator.model import MaskGenerator, sd_generator
from anomalign.generator.pretrain import PretrainBaseConfig, run_pretrain_base
from anomalign.generator.taef2 import TAEF2
from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator, save_dummy_sd


def _inputs(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, r = gen.factor, gen.resolution
    z = torch.randn(2, gen.latent_channels, r // f, r // f, generator=g)
    m = (torch.rand(2, 1, r, r, generator=g) > 0.6).float()
    return z, torch.tensor([20, 700]), m


def _eps(gen, z, t, m, prompts=("a photo of a surface with a scratch defect", "")):
    with torch.no_grad():
        return gen.predict_noise(z, t, gen.encode_prompts(list(prompts)), gen.condition(m))


@pytest.mark.parametrize("encoding,channels", [("unshuffle", 4), ("resize", 1), ("vae", 4)])
def test_adding_the_mask_condition_to_a_tiny_mask_free_base_changes_nothing_at_step_0(encoding, channels):
    gen = dummy_tiny_generator("none").eval()
    assert gen.mask_free and gen.unet.conv_in.in_channels == 4
    z, t, m = _inputs(gen)
    before = _eps(gen, z, t, m)
    gen.add_mask_condition(encoding)
    assert not gen.mask_free and gen.unet.conv_in.in_channels == 4 + channels
    assert gen.unet.config.in_channels == 4 + channels and gen.spec["base_regime"] == "mask-free"
    after = _eps(gen, z, t, m)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # once trained, the new channels do matter: nudge them and the mask changes the prediction
    with torch.no_grad():
        gen.unet.conv_in.weight[:, 4:] += 0.5
    assert not torch.allclose(_eps(gen, z, t, m), _eps(gen, z, t, 1 - m))
    with pytest.raises(AnomalignError, match="already has a mask condition"):
        gen.add_mask_condition("unshuffle")


def test_sd_gets_its_mask_condition_through_the_same_function(tmp_path):
    from diffusers import UNet2DConditionModel

    folder = save_dummy_sd(tmp_path / "sd")
    gen = sd_generator(str(folder), "unshuffle", {}).eval()
    assert gen.spec["base_regime"] == "mask-free" and gen.unet.conv_in.in_channels == 4 + 4  # factor-2 codec
    raw = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    z = torch.randn(1, 4, 16, 16)
    t = torch.tensor([300])
    emb = gen.encode_prompts(["a scratch"])
    with torch.no_grad():
        expected = raw(z, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(_eps(gen, z, t, torch.ones(1, 1, 32, 32), ["a scratch"]), expected,
                               rtol=0, atol=1e-6)


def test_a_mask_free_base_is_refused_where_masks_must_be_followed(tmp_path):
    dummy_tiny_generator("none").save(tmp_path)
    with pytest.raises(AnomalignError, match="mask-free base.*train-generator"):
        MaskGenerator.load(tmp_path)
    assert MaskGenerator.load(tmp_path, mask_free_ok=True).mask_free


def _pretrain_config(out, codec, **kw):
    values = dict(out=str(out), codec=str(codec), mask_free=True, size=32, corpus_size=12, max_steps=2,
                  batch_size=4, checkpoint_every=1, log_every=1, unet_channels=[32, 32, 32], device="cpu",
                  lr_warmup_steps=0, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    values.update(kw)
    return build_config(PretrainBaseConfig, values)


def test_mask_free_pretraining_on_a_taef2_codec_then_fine_tuning_end_to_end(tmp_path):
    torch.manual_seed(0)
    codec_dir = TAEF2().save(tmp_path / "taef2")  # random weights: shapes and plumbing, not quality
    base = run_pretrain_base(_pretrain_config(tmp_path / "base", codec_dir, hold_out=["carbon"], x0_clip=2.5),
                             progress=False)
    spec = MaskGenerator.load(base, mask_free_ok=True).spec
    assert spec["codec"] == "taef2" and spec["mask_encoding"] == "none" and spec["base_regime"] == "mask-free"
    assert spec["unet_config"]["in_channels"] == 32 and spec["held_out_materials"] == ["carbon"]
    assert "carbon" not in spec["prompt"]["vocab"] and "wood" in spec["prompt"]["vocab"]
    assert 0.1 < spec["vae_config"]["scaling_factor"] < 100
    assert spec["scheduler"]["beta_schedule"] == "linear" and spec["scheduler"]["beta_end"] == 0.02
    assert spec["x0_clip"] == 2.5  # the sampling bound travels with the base...
    assert (tmp_path / "base" / "latents.safetensors").is_file()

    data = tmp_path / "data"
    write_paired(data, defects=("scratch", "hole"), n=3, normals=1)
    cfg = build_config(TrainGeneratorConfig, dict(
        data=str(data), out=str(tmp_path / "ft"), base=str(base), max_steps=2, batch_size=2, log_every=1,
        checkpoint_every=2, validation_masks=2, validation_steps=2, device="cpu", val_fraction=0.0,
        test_fraction=0.0, mask_encoding="resize"))
    out = run_train_generator(cfg, progress=False)
    gen = MaskGenerator.load(out)  # a normal, mask-following generator now
    assert gen.mask_encoding == "resize" and gen.unet.conv_in.in_channels == 32 + 1
    assert gen.spec["base_regime"] == "mask-free" and gen.spec["codec"] == "taef2"
    assert gen.spec["x0_clip"] == 2.5  # ...and into its fine-tunes
    from anomalign.generator.sampler import sample
    img = sample(gen, torch.ones(1, 1, 32, 32), ["a photo of a surface with a scratch defect"], [0], steps=2)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_a_v_prediction_base_trains_with_the_v_mse_and_its_fine_tune_samples(tmp_path, monkeypatch):
    from anomalign.generator import losses

    torch.manual_seed(0)
    codec_dir = TAEF2().save(tmp_path / "taef2")
    seen = []
    real = losses.loss_weights
    monkeypatch.setattr(losses, "loss_weights", lambda *a: seen.append(a[2:]) or real(*a))
    base = run_pretrain_base(_pretrain_config(tmp_path / "base", codec_dir, prediction_type="v_prediction",
                                              snr_gamma=None), progress=False)
    assert seen and all(a == (None, "model") for a in seen)  # pretraining: the v-MSE
    gen = MaskGenerator.load(base, mask_free_ok=True)
    assert gen.scheduler.config.prediction_type == "v_prediction"
    seen.clear()
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=1)
    cfg = build_config(TrainGeneratorConfig, dict(
        data=str(data), out=str(tmp_path / "ft"), base=str(base), max_steps=2, batch_size=2, log_every=1,
        checkpoint_every=2, validation_masks=2, validation_steps=2, device="cpu", val_fraction=0.0,
        test_fraction=0.0, mask_encoding="resize"))
    gen = MaskGenerator.load(run_train_generator(cfg, progress=False))
    assert gen.scheduler.config.prediction_type == "v_prediction"  # the fine-tune keeps the parameterisation
    assert seen and all(a == (None, "epsilon") for a in seen)  # fine-tuning: Eq. 1 as written
    from anomalign.generator.sampler import sample
    img = sample(gen, torch.ones(1, 1, 32, 32), ["a photo of a surface with a scratch defect"], [0], steps=2)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_pretraining_resume_reuses_the_encoded_latents(tmp_path, monkeypatch):
    from anomalign.generator import task

    torch.manual_seed(0)
    codec_dir = TAEF2().save(tmp_path / "taef2")
    run_pretrain_base(_pretrain_config(tmp_path / "base", codec_dir, latent_norm="channel"), progress=False)
    vae_cfg = MaskGenerator.load(tmp_path / "base", mask_free_ok=True).vae.config  # per-channel stats kept
    assert len(vae_cfg.latents_mean) == len(vae_cfg.latents_std) == 32 and vae_cfg.scaling_factor == 1.0
    monkeypatch.setattr(task.LatentPairs, "precompute", lambda *a, **k: pytest.fail("re-encoded the corpus"))
    run_pretrain_base(_pretrain_config(tmp_path / "base", codec_dir, max_steps=3, resume="latest", latent_norm="channel"),
                      progress=False)


def test_pretrain_options_are_checked():
    with pytest.raises(ConfigError, match="unknown material.*wood"):
        build_config(PretrainBaseConfig, dict(out="x", hold_out=["plastic"]))
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_config(PretrainBaseConfig, dict(out="x", codec="somewhere", size=48))
    with pytest.raises(ConfigError, match="x0-clip must be >= 0"):
        build_config(PretrainBaseConfig, dict(out="x", x0_clip=-1))
    with pytest.raises(ConfigError, match="no material"):
        build_config(PretrainBaseConfig, dict(out="x", hold_out=["brushed_metal", "wood", "fabric", "stone", "carbon"]))


def test_one_finetune_switch_for_both_backends(tmp_path):
    """--finetune lora|full means the same for sd and tiny; sd full saves the whole UNet and reloads exactly."""
    from safetensors.torch import load_file

    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=1)
    sd = save_dummy_sd(tmp_path / "sd")
    common = dict(data=str(data), max_steps=2, batch_size=2, log_every=1, checkpoint_every=2, validation_masks=1,
                  validation_steps=2, device="cpu", val_fraction=0.0, test_fraction=0.0, resolution=32)
    cfg = build_config(TrainGeneratorConfig, dict(common, out=str(tmp_path / "sd_full"), backend="sd", base=str(sd),
                                                  finetune="full"))
    out = run_train_generator(cfg, progress=False)
    state = load_file(str(out / "generator.safetensors"))
    assert not any("lora" in k for k in state) and "unet.conv_out.weight" in state
    gen = MaskGenerator.load(out).eval()
    z, t, m = _inputs(gen)
    fresh = sd_generator(str(sd), "unshuffle", dict(gen.spec)).eval()
    fresh.load_trainable_state(state)
    torch.testing.assert_close(_eps(gen, z, t, m, ["a", "b"]), _eps(fresh, z, t, m, ["a", "b"]), rtol=0, atol=0)
    assert build_config(TrainGeneratorConfig, dict(common, out="x", backend="sd", base=str(sd))).finetune == "lora"
    assert build_config(TrainGeneratorConfig, dict(common, out="x")).finetune == "full"
    lora = build_config(TrainGeneratorConfig, dict(common, out=str(tmp_path / "tiny_lora"), finetune="lora",
                                                   base=str(_tiny_base(tmp_path))))
    state = load_file(str(run_train_generator(lora, progress=False) / "generator.safetensors"))
    assert any("lora" in k for k in state)


def _tiny_base(tmp_path):
    folder = tmp_path / "tiny_base"
    dummy_tiny_generator().save(folder)
    return folder


def test_a_latent_cache_without_mask_latents_is_not_used_where_they_are_needed(tmp_path):
    from anomalign.generator.task import LatentPairs

    gen = dummy_tiny_generator().eval()
    x, m = torch.rand(3, 3, 32, 32) * 2 - 1, (torch.rand(3, 1, 32, 32) > 0.7).float()
    pairs = LatentPairs(gen, x, m, ["a"] * 3, mask_latents=False)
    pairs.precompute()
    pairs.save_cache(tmp_path / "c.safetensors")
    assert LatentPairs(gen, x, m, ["a"] * 3, mask_latents=False).load_cache(tmp_path / "c.safetensors")
    assert not LatentPairs(gen, x, m, ["a"] * 3, mask_latents=True).load_cache(tmp_path / "c.safetensors")
