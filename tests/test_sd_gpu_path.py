"""The Stable Diffusion path made right for a GPU run (issue 36), on tiny SD-shaped random components (no
downloads): strict loading, the base's path and fingerprint, --base overrides."""
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anomalign.config import build_config
from anomalign.errors import AnomalignError
from anomalign.generator.model import MaskGenerator, sd_generator
from anomalign.generator.task import GenStepOptions, LatentPairs, generator_task
from anomalign.generator.conditioning import MaskConvIn
from anomalign.generator.losses import add_noise
from anomalign.generator.train import TrainGeneratorConfig, parameter_groups, trainable_parameters
from anomalign.training import LoopOptions, train_loop
from dummy_data import write_paired
from tiny_models import save_dummy_sd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_data")
    write_paired(root, defects=("scratch", "hole"), n=4, normals=2)
    return root


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    return save_dummy_sd(tmp_path_factory.mktemp("sd") / "base")


def gen_config(data, out, **kw):
    values = dict(data=str(data), out=str(out), backend="sd", base="unused", resolution=32, lora_rank=4,
                  device="cpu", val_fraction=0.0, test_fraction=0.0)
    return build_config(TrainGeneratorConfig, values | kw)


def random_pairs(n=8, size=32, seed=0):
    """Flat grey images with a bright 10-px square defect where the mask says: the image is a function of the
    mask, so a generator that follows the mask denoises them better with the true mask than with a moved one."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
        m[i, :, r:r + 10, c:c + 10] = 1
    x = torch.where(m.bool().expand(-1, 3, -1, -1), torch.tensor(0.8), torch.tensor(-0.5))
    return x, m, ["a photo of a surface with a scratch defect"] * n


def train_in_memory(base, out, data, steps=3, lr=1e-2, step_opts=None, unit_latents=False, **cfg_kw):
    """An sd generator fine-tuned ``steps`` steps (batch 4) in this process (the in-memory model), saved to ``out``.
    ``unit_latents``: scale the random VAE's latents to unit variance, as SD's scaling factor does for SD's VAE
    (the random one's latents have std 0.04: the image would be invisible under the noise)."""
    cfg = gen_config(data, out, learning_rate=lr, **cfg_kw)
    gen = sd_generator(str(base), cfg.mask_encoding, {}, 32)
    params = trainable_parameters(gen, cfg)
    x, m, prompts = random_pairs()
    if unit_latents:
        with torch.no_grad():
            gen.vae.register_to_config(scaling_factor=float(1 / gen.vae.encode(x).latent_dist.mean.std()))
    pairs = LatentPairs(gen, x, m, prompts)
    opts = LoopOptions(max_steps=steps, batch_size=4, learning_rate=lr, checkpoint_every=1000, log_every=1000,
                       device="cpu", weight_decay=0.0)
    task = generator_task(gen, pairs, params, 4, 0, step_opts or GenStepOptions(alpha=0.0), gen.save)
    task.param_groups = parameter_groups(gen, params, cfg)
    gen.unet.train()
    train_loop(task, opts, out, progress=False)
    gen.pairs = pairs
    return gen.eval()


def predict(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 16, 16, generator=g)
    m = (torch.rand(2, 1, 32, 32, generator=g) > 0.7).float()
    with torch.no_grad():
        return gen.predict_noise(z, torch.tensor([10, 500]), gen.encode_prompts(["a surface", ""]), gen.condition(m))


def rewrite(file, change):
    """Rewrite a generator file's tensors with ``change(dict) -> dict``, keeping its metadata (the spec)."""
    with safe_open(str(file), "pt") as fh:
        meta, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(change(state), str(file), metadata=meta)


def test_trained_sd_generator_reloads_equal_to_the_in_memory_one(sd_base, data, tmp_path):
    gen = train_in_memory(sd_base, tmp_path / "run", data)
    loaded = MaskGenerator.load(tmp_path / "run").eval()
    assert torch.allclose(predict(loaded), predict(gen), atol=1e-6)
    plain = sd_generator(str(sd_base), "unshuffle", {}, 32).eval()  # the base with the mask channels, no LoRA
    plain.unet.conv_in.load_state_dict(gen.unet.conv_in.state_dict())
    assert not torch.allclose(predict(plain), predict(gen), atol=1e-4)  # the LoRA matters on this input


def test_lora_keys_that_do_not_match_raise_with_their_names(sd_base, data, tmp_path):
    train_in_memory(sd_base, tmp_path / "run", data, steps=1)
    for name, change, message in [
        ("renamed", lambda s: {k.replace("to_q.", "to_query."): v for k, v in s.items()}, r"unexpected: .*to_query"),
        ("dropped", lambda s: {k: v for k, v in s.items() if "to_k." not in k}, r"missing: .*to_k\.lora_A"),
        ("no_lora", lambda s: {k: v for k, v in s.items() if "lora" not in k}, "holds no LoRA weights"),
        ("stray", lambda s: dict(s, **{"unet.mid_block.extra": torch.zeros(1)}), "unexpected weights.*mid_block"),
    ]:
        shutil.copytree(tmp_path / "run", tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))
        rewrite(tmp_path / name / "generator.safetensors", change)
        with pytest.raises(AnomalignError, match=message):
            MaskGenerator.load(tmp_path / name)


def test_base_is_stored_resolved_with_a_fingerprint_and_base_overrides_it(sd_base, data, tmp_path, monkeypatch):
    copy = tmp_path / "models" / "sd"
    shutil.copytree(sd_base, copy)
    monkeypatch.chdir(tmp_path)
    gen = train_in_memory("models/sd", tmp_path / "run", data, steps=1)  # typed as a relative path
    assert gen.spec["base"] == str(copy.resolve()) and len(gen.spec["base_fingerprint"]) == 16
    monkeypatch.chdir(tmp_path / "models")  # elsewhere: the stored absolute path still finds it
    assert torch.allclose(predict(MaskGenerator.load(tmp_path / "run")), predict(gen), atol=1e-6)
    moved = tmp_path / "moved"
    copy.rename(moved)
    with pytest.raises(AnomalignError, match="give its current location with --base"):
        MaskGenerator.load(tmp_path / "run")
    again = MaskGenerator.load(tmp_path / "run", base=str(moved))  # --base overrides the stored path
    assert again.spec["base"] == str(moved) and torch.allclose(predict(again), predict(gen), atol=1e-6)
    other = save_dummy_sd(tmp_path / "other", seed=1)
    with pytest.raises(AnomalignError, match="not the base this generator was trained on"):
        MaskGenerator.load(tmp_path / "run", base=str(other))


@torch.no_grad()
def moved_mask_gap(gen, pairs):
    """Denoising loss with the masks moved by half the width minus the loss with the true masks, on the training
    pairs, at t = 100, 350, 600, 850 (the same ε for both): > 0 when the generator follows its mask."""
    z0, _ = pairs.latents([(i, 0) for i in range(len(pairs))])
    emb, g, gap = gen.encode_prompts(pairs.prompts), torch.Generator().manual_seed(1), 0.0
    for t0 in (100, 350, 600, 850):
        t = torch.full((len(z0),), t0)
        noise = torch.randn(z0.shape, generator=g)
        z_t = add_noise(gen.scheduler, z0, noise, t)
        for sign, m in ((-1, pairs.masks), (1, torch.roll(pairs.masks, 16, -1))):
            gap += sign * float(((gen.predict_noise(z_t, t, emb, gen.condition(m)) - noise) ** 2).mean()) / 4
    return gap


def test_mask_channels_train_at_their_own_rate_and_the_mask_is_followed(sd_base, data, tmp_path):
    """The README's SD settings (LoRA at lr 1e-5, batch 4) for 60 steps: with the mask channels at the default
    --mask-learning-rate (1e-4) the generator follows the mask several times more than at the LoRA's rate."""
    cfg = gen_config(data, tmp_path / "x", learning_rate=1e-5)
    assert cfg.mask_learning_rate == 1e-4  # the sd default
    shared = train_in_memory(sd_base, tmp_path / "shared", data, steps=60, lr=1e-5, mask_learning_rate=1e-5,
                             unit_latents=True)
    own = train_in_memory(sd_base, tmp_path / "own", data, steps=60, lr=1e-5, unit_latents=True)
    assert isinstance(own.unet.conv_in, MaskConvIn) and not isinstance(shared.unet.conv_in, MaskConvIn)
    gap_shared, gap_own = moved_mask_gap(shared, shared.pairs), moved_mask_gap(own, own.pairs)
    assert gap_own > 0 and gap_own > 3 * gap_shared, (gap_own, gap_shared)  # measured: 0.0026 vs 0.0003


def test_mask_parameter_group_has_its_own_learning_rate(sd_base, data):
    cfg = gen_config(data, "out", learning_rate=1e-5, mask_learning_rate=3e-4)
    gen = sd_generator(str(sd_base), cfg.mask_encoding, {}, 32)
    params = trainable_parameters(gen, cfg)
    groups = parameter_groups(gen, params, cfg)
    conv = gen.unet.conv_in
    assert [g["lr"] for g in groups] == [1e-5, 3e-4] and groups[1]["params"] == [conv.mask_weight]
    assert conv.weight.requires_grad and all(p is not conv.mask_weight for p in groups[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert conv.mask_weight.shape[1] == 4 and (conv.mask_weight == 0).all()  # the zero-initialised mask channels
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 3e-4]
    tiny = gen_config(data, "out", backend="tiny", base=None)
    assert tiny.mask_learning_rate is None  # tiny: one group at --learning-rate, as its results were measured
    widened = torch.nn.Conv2d(8, 16, 3, padding=1)  # MaskConvIn computes and saves exactly the widened conv
    split = MaskConvIn(widened, 4)
    x = torch.randn(2, 8, 8, 8)
    assert torch.allclose(split(x), widened(x), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(split.state_dict().values(), widened.state_dict().values()))
    fresh = MaskConvIn(torch.nn.Conv2d(8, 16, 3, padding=1), 4)
    fresh.load_state_dict(widened.state_dict())
    assert torch.allclose(fresh(x), widened(x), atol=1e-6)


def test_v_prediction_fine_tunes_with_the_v_mse_by_hand(sd_base, data):
    """SD 2.x-768 predicts v: with --loss-space model (the sd default) L_sd is the plain MSE between the UNet's
    raw output and v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·z0, computed here by hand; the ε-MSE is ᾱ times it."""
    from diffusers import DDPMScheduler

    from anomalign.generator.losses import dual_branch_loss

    assert gen_config(data, "o").loss_space == "model"
    assert gen_config(data, "o", backend="tiny", base=None).loss_space == "epsilon"  # tiny: as its results were made
    gen = sd_generator(str(sd_base), "unshuffle", {}, 32).eval()
    gen.scheduler = DDPMScheduler.from_config(gen.scheduler.config, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([5, 500, 990])
    cond = gen.condition((torch.rand(3, 1, 32, 32, generator=g) > 0.7).float())
    with torch.no_grad():  # the mask channels start at zero: give them weights so the condition matters
        gen.unet.conv_in.weight[:, 4:] = 0.1 * torch.randn(gen.unet.conv_in.weight[:, 4:].shape, generator=g)
        emb = gen.encode_prompts(["a surface", "b", ""])
        out = dual_branch_loss(gen, z0, z0, cond, emb, alpha=0.0, noise=noise, t=t, loss_space="model")
        eps_mse = dual_branch_loss(gen, z0, z0, cond, emb, alpha=0.0, noise=noise, t=t, loss_space="epsilon")
        abar = gen.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        v_hat = gen.unet(torch.cat([z_t, cond], 1), t, encoder_hidden_states=emb).sample
        v = abar.sqrt() * noise - (1 - abar).sqrt() * z0
        per_sample = ((v_hat - v) ** 2).mean(dim=(1, 2, 3))
    assert out["l_sd"].item() == pytest.approx(per_sample.mean().item(), rel=1e-4)
    assert eps_mse["l_sd"].item() == pytest.approx((abar.view(-1) * per_sample).mean().item(), rel=1e-4)


def test_bf16_autocast_training_step_on_cpu_is_finite_and_moves_the_weights(sd_base, data, tmp_path):
    from anomalign.generator.train import run_train_generator
    from anomalign.generator.model import sd_generator as fresh_base

    out = run_train_generator(gen_config(data, tmp_path / "bf16", base=str(sd_base), mixed_precision="bf16",
                                         max_steps=2, batch_size=2, learning_rate=1e-2, log_every=1,
                                         validation_masks=2, validation_steps=2), progress=False)
    rows = (out / "logs" / "train.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r.split(",")[1]))) for r in rows)
    trained, base = MaskGenerator.load(out), fresh_base(str(sd_base), "unshuffle", {}, 32)
    assert not torch.equal(trained.unet.conv_in.weight, base.unet.conv_in.weight)  # the mask channels moved
    assert (trained.unet.conv_in.weight[:, 4:] != 0).any()
    from anomalign.devices import make_accelerator
    assert make_accelerator("no", "cpu").mixed_precision == "no"  # a later run in the process gets its own precision


def test_feedback_gradient_checkpointing_is_real_and_refused_without_feedback(sd_base, data, tmp_path, monkeypatch):
    from anomalign.config import build_config as build
    from anomalign.errors import ConfigError
    from anomalign.segmenter.losses import loss_feedback
    from anomalign.segmenter.train import TrainSegmenterConfig

    with pytest.raises(ConfigError, match="nothing to checkpoint"):
        build(TrainSegmenterConfig, dict(train=str(data), out=str(tmp_path / "s"), gradient_checkpointing=True))
    gen = sd_generator(str(sd_base), "unshuffle", {}, 32).requires_grad_(False).eval()
    with torch.no_grad():
        gen.unet.conv_in.weight[:, 4:] = 0.1
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    logits = torch.randn(2, 1, 32, 32, generator=g)

    def grad():
        m = logits.clone().requires_grad_(True)
        loss_feedback(gen, z0, m.sigmoid(), gen.encode_prompts(["a", "b"]), noise, torch.tensor([100, 400])).backward()
        return m.grad

    plain = grad()
    calls = []
    gen.unet.enable_gradient_checkpointing()
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), checkpoint(*a, **k))[1])
    assert torch.allclose(grad(), plain, atol=1e-6) and calls  # the same gradient, through checkpointed blocks


def test_generate_and_evaluate_generation_take_base(sd_base, data, tmp_path):
    """`generate --base` loads an sd generator whose base moved; `--dtype fp16` keeps the codec in fp32."""
    from anomalign.cli import build_parser
    from anomalign.synthesis.generate import GenerateConfig, run_generate

    copy = tmp_path / "sd"
    shutil.copytree(sd_base, copy)
    train_in_memory(copy, tmp_path / "gen", data, steps=1)
    moved = tmp_path / "moved"
    copy.rename(moved)
    cfg = dict(generator=tmp_path / "gen", masks=data, out=tmp_path / "syn", num=2, split="all", steps=2,
               device="cpu", scores=["none"])
    with pytest.raises(AnomalignError, match="--base"):
        run_generate(GenerateConfig(**cfg), progress=False)
    summary = run_generate(GenerateConfig(**cfg, base=str(moved)), progress=False)
    assert len(list((tmp_path / "syn" / "images").rglob("*.png"))) == 2, summary
    half = MaskGenerator.load(tmp_path / "gen", base=str(moved)).cast(torch.float16)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    for command in (["evaluate-generation", "--generated", "g", "--real", "r"], ["train-segmenter", "--train", "t"]):
        args = build_parser().parse_args(command + ["--out", "o", "--base" if command[0] != "train-segmenter"
                                                    else "--feedback-base", "somewhere"])
        assert "somewhere" in vars(args).values()


def test_sd_resume_with_the_mask_group_continues_with_the_same_losses(sd_base, data, tmp_path):
    import csv

    from anomalign.generator.train import run_train_generator

    def run(out, steps, **kw):
        return run_train_generator(gen_config(data, out, base=str(sd_base), max_steps=steps, batch_size=2,
                                              learning_rate=1e-3, log_every=1, checkpoint_every=2,
                                              validation_masks=2, validation_steps=2, **kw), progress=False)

    def losses(out):
        return [float(r["loss"]) for r in csv.DictReader(open(out / "logs" / "train.csv"))]

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume="latest")
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    assert torch.allclose(predict(MaskGenerator.load(resumed)), predict(MaskGenerator.load(straight)), atol=1e-6)
