"""TAEF2 codec (generator/taef2.py) with random weights built in code: key layout, files, shapes, ranges,
and a tiny generator on top of it that saves, reloads and fine-tunes."""
import pytest
import torch

from anomalign.errors import AnomalignError
from anomalign.generator.model import MaskGenerator, build_generator
from anomalign.generator.taef2 import TAEF2, TAEF2Codec, latent_scaling_factor

# The layer layout of the upstream files (weights/taef2/README.md), position -> kind. conv: 3x3 with bias,
# down/up: the 3x3 convs without bias after a stride / an upsample; block / pool: Block / PoolBlock.
ENCODER = {0: "conv", 1: "block", 2: "down", 3: "block", 4: "block", 5: "block", 6: "down", 7: "block",
           8: "block", 9: "block", 10: "down", 11: "pool", 12: "pool", 13: "pool", 14: "conv"}
DECODER = {1: "conv", 3: "pool", 4: "pool", 5: "pool", 7: "up", 8: "block", 9: "block", 10: "block", 12: "up",
           13: "block", 14: "block", 15: "block", 17: "up", 18: "block", 19: "conv"}
BLOCK = [f"conv.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
POOL = BLOCK + ["pool.0.weight", "pool.1.weight", "pool.1.bias", "pool.3.weight"]


def expected_keys(layout: dict[int, str]) -> list[str]:
    keys = []
    for pos, kind in layout.items():
        keys += {"conv": [f"{pos}.weight", f"{pos}.bias"], "down": [f"{pos}.weight"], "up": [f"{pos}.weight"],
                 "block": [f"{pos}.{k}" for k in BLOCK], "pool": [f"{pos}.{k}" for k in POOL]}[kind]
    return keys


def random_taef2(seed: int = 0) -> TAEF2:
    torch.manual_seed(seed)
    return TAEF2().eval()


def test_state_dict_has_exactly_the_upstream_keys_and_shapes():
    model = random_taef2()
    enc, dec = model.encoder.state_dict(), model.decoder.state_dict()
    assert list(enc) == expected_keys(ENCODER) and len(enc) == 79
    assert list(dec) == expected_keys(DECODER) and len(dec) == 79
    assert sorted(model.state_dict()) == sorted([f"encoder.{k}" for k in enc] + [f"decoder.{k}" for k in dec])
    assert enc["0.weight"].shape == (64, 3, 3, 3) and enc["2.weight"].shape == (64, 64, 3, 3)
    assert enc["14.weight"].shape == (32, 64, 3, 3) and enc["14.bias"].shape == (32,)
    assert enc["11.pool.0.weight"].shape == (256, 64, 1, 1) and enc["11.pool.1.weight"].shape == (256,)
    assert enc["13.pool.3.weight"].shape == (64, 256, 1, 1)
    assert dec["1.weight"].shape == (64, 32, 3, 3) and dec["19.weight"].shape == (3, 64, 3, 3)
    assert dec["3.pool.1.bias"].shape == (256,) and dec["17.weight"].shape == (64, 64, 3, 3)
    assert sum(v.numel() for v in enc.values()) == 1338528
    assert sum(v.numel() for v in dec.values()) == 1338499


def test_folder_round_trip_fp16_files_load_as_fp32(tmp_path):
    from safetensors.torch import load_file, save_file

    model = random_taef2()
    model.scaling_factor = 1.25
    model.save(tmp_path)
    assert load_file(str(tmp_path / "taef2_encoder.safetensors"))["0.weight"].dtype == torch.float16
    loaded = TAEF2.from_folder(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.scaling_factor == 1.25
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    # Upstream files carry no scaling factor: 1.0 until one is computed.
    save_file({k: v.half() for k, v in model.encoder.state_dict().items()},
              str(tmp_path / "taef2_encoder.safetensors"))
    assert TAEF2.from_folder(tmp_path).scaling_factor == 1.0
    codec = TAEF2Codec.from_folder(tmp_path, scaling_factor=0.5)
    assert codec.config.scaling_factor == 0.5
    assert torch.equal(codec.taef2.decoder[19].weight, loaded.decoder[19].weight)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(AnomalignError, match="no taef2_encoder.safetensors"):
        TAEF2.from_folder(tmp_path)
    random_taef2().save(tmp_path)
    from safetensors.torch import save_file
    save_file({"0.weight": torch.zeros(1)}, str(tmp_path / "taef2_decoder.safetensors"))
    with pytest.raises(AnomalignError, match="do not fit TAEF2"):
        TAEF2.from_folder(tmp_path)


def test_encode_decode_shapes_and_range():
    model = random_taef2()
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 32, 6, 8)
        y = model.decode(z * 50)  # far outside the latent range: the soft clamp and the final clamp hold
    assert y.shape == (2, 3, 48, 64) and y.min() >= -1 and y.max() <= 1
    with pytest.raises(AnomalignError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 30, 32))


def test_masks_encode_to_the_image_latent_shape():
    model = random_taef2()
    m = (torch.rand(3, 1, 32, 32) > 0.8).float()
    with torch.no_grad():
        h = model.encode_mask(m)
        assert h.shape == (3, 32, 4, 4)
        assert torch.equal(h, model.encode(m.expand(-1, 3, -1, -1) * 2 - 1))
    assert not torch.equal(h[0], h[1])


def test_scaling_factor_gives_unit_variance_latents():
    model = random_taef2()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        f = latent_scaling_factor(model.encode, x, batch_size=4)
        assert (model.encode(x) * f).std().item() == pytest.approx(1.0, rel=1e-3)
    codec = TAEF2Codec()
    codec.taef2.load_state_dict(model.state_dict())
    assert codec.fit_scaling_factor(x, batch_size=4) == pytest.approx(f, rel=1e-6)
    assert codec.config.scaling_factor == codec.taef2.scaling_factor == pytest.approx(f, rel=1e-6)


def taef2_generator(mask_encoding: str = "unshuffle", seed: int = 0) -> MaskGenerator:
    """A 64-px tiny generator on a random TAEF2 codec (8x8x32 latents) and a small random UNet."""
    from diffusers import DDPMScheduler

    from anomalign.generator.conditioning import mask_channels
    from anomalign.generator.tiny import build_tiny

    torch.manual_seed(seed)
    codec = TAEF2Codec(scaling_factor=1.3)
    unet_cfg = dict(sample_size=8, block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, attention_head_dim=4,
                    norm_num_groups=8)
    vocab = ["a", "photo", "of", "surface", "with", "scratch", "hole", "defect", "defect-free"]
    vae, unet, prompt = build_tiny(vocab, mask_channels(mask_encoding, 8, 32), unet_config=unet_cfg,
                                   prompt_dim=16, prompt_len=8, codec=codec)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return MaskGenerator(vae, unet, prompt, sched, mask_encoding, {"backend": "tiny", "resolution": 64}).eval()


def predict(gen: MaskGenerator, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    m = (torch.rand(2, 1, 64, 64, generator=g) > 0.7).float()
    z = torch.randn(2, 32, 8, 8, generator=g)
    with torch.no_grad():
        eps = gen.predict_noise(z, torch.tensor([10, 500]), gen.encode_prompts(["a photo of a surface", ""]),
                                gen.condition(m))
        return eps, gen.encode(x), gen.decode(z)


@pytest.mark.parametrize("mask_encoding", ["unshuffle", "vae"])
def test_taef2_generator_saves_and_reloads_to_identical_predictions(tmp_path, mask_encoding):
    gen = taef2_generator(mask_encoding)
    assert gen.factor == 8 and gen.latent_channels == 32 and gen.resolution == 64
    eps, z, x = predict(gen)
    assert eps.shape == (2, 32, 8, 8) and z.shape == (2, 32, 8, 8) and x.shape == (2, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1
    gen.save(tmp_path)
    loaded = MaskGenerator.load(tmp_path).eval()
    assert loaded.spec["codec"] == "taef2" and isinstance(loaded.vae, TAEF2Codec)
    assert loaded.vae.config.scaling_factor == 1.3
    for a, b in zip(predict(gen), predict(loaded)):
        assert torch.equal(a, b)


def test_encode_applies_the_scaling_factor():
    gen = taef2_generator()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(gen.encode(x), gen.vae.taef2.encode(x) * 1.3)
        assert torch.allclose(gen.decode(gen.encode(x)), gen.vae.taef2.decode(gen.vae.taef2.encode(x)), atol=1e-6)


def test_specs_without_a_codec_field_still_build_an_autoencoder_kl(tmp_path):
    from diffusers import AutoencoderKL

    from tiny_models import dummy_tiny_generator

    gen = dummy_tiny_generator()
    gen.save(tmp_path)
    loaded = MaskGenerator.load(tmp_path)
    assert "codec" not in loaded.spec and isinstance(loaded.vae, AutoencoderKL)
    with pytest.raises(AnomalignError, match="unknown tiny codec"):
        build_generator(dict(loaded.spec, codec="vqgan"))


def test_train_generator_fine_tunes_a_taef2_base(tmp_path):
    from anomalign.config import build_config
    from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
    from dummy_data import write_paired

    write_paired(tmp_path / "data", defects=("scratch", "hole"), n=3, normals=1)
    base = taef2_generator()
    base.save(tmp_path / "base")
    cfg = build_config(TrainGeneratorConfig, dict(
        data=str(tmp_path / "data"), out=str(tmp_path / "run"), base=str(tmp_path / "base"), max_steps=2,
        batch_size=2, log_every=1, checkpoint_every=2, validation_masks=1, validation_steps=2, device="cpu",
        val_fraction=0.0, test_fraction=0.0))
    out = run_train_generator(cfg, progress=False)
    tuned = MaskGenerator.load(out)
    assert isinstance(tuned.vae, TAEF2Codec) and tuned.resolution == 64
    assert torch.equal(tuned.vae.taef2.encoder[0].weight, base.vae.taef2.encoder[0].weight)  # codec frozen
    assert not torch.equal(tuned.unet.conv_in.weight, base.unet.conv_in.weight)


def test_per_channel_latent_statistics_normalise_and_round_trip(tmp_path):
    from anomalign.generator.conditioning import mask_channels
    from anomalign.generator.tiny import build_tiny

    torch.manual_seed(0)
    codec = TAEF2Codec().eval()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    raw = codec.taef2.encode(x)
    means, stds = codec.fit_latent_stats(x, batch_size=4)
    torch.testing.assert_close(torch.tensor(means), raw.double().mean((0, 2, 3)).float(), rtol=1e-4, atol=1e-5)
    z = codec.encode(x).latent_dist.mean
    assert z.mean((0, 2, 3)).abs().max() < 1e-4 and (z.std((0, 2, 3)) - 1).abs().max() < 1e-3
    assert codec.config.scaling_factor == 1.0
    torch.testing.assert_close(codec.decode(z).sample, codec.taef2.decode(raw), rtol=1e-4, atol=1e-4)
    # the statistics travel in the generator's spec: a saved and reloaded generator encodes identically
    from diffusers import DDPMScheduler
    vae, unet, prompt = build_tiny(["a"], mask_channels("resize", 8, 32), codec=codec,
                                   unet_config=dict(sample_size=4, block_out_channels=[32, 32],
                                                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                                                    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                                                    layers_per_block=1, attention_head_dim=4, norm_num_groups=8),
                                   prompt_dim=16, prompt_len=4)
    gen = MaskGenerator(vae, unet, prompt, DDPMScheduler(), "resize", {"backend": "tiny", "resolution": 32})
    gen.save(tmp_path)
    loaded = MaskGenerator.load(tmp_path)
    torch.testing.assert_close(loaded.encode(x), gen.encode(x), rtol=1e-3, atol=1e-3)  # fp32 save: tiny diffs only
    with pytest.raises(AnomalignError, match="both or neither"):
        TAEF2Codec(latents_mean=[0.0] * 32)
