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
from anomalign.generator.train import TrainGeneratorConfig, trainable_parameters
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


def random_pairs(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    m = torch.zeros(n, 1, size, size)
    for i in range(n):  # a square defect per image, brighter inside
        r, c = 4 + 4 * i, 20 - 4 * i
        m[i, :, r:r + 8, c:c + 8] = 1
    return x.clamp(-1, 1), m, ["a photo of a surface with a scratch defect"] * n


def train_in_memory(base, out, data, steps=3, lr=1e-2, step_opts=None, **cfg_kw):
    """An sd generator fine-tuned ``steps`` steps in this process (the in-memory model), saved to ``out``."""
    cfg = gen_config(data, out, **cfg_kw)
    gen = sd_generator(str(base), cfg.mask_encoding, {}, 32)
    groups = trainable_parameters(gen, cfg)
    params = [p for g in groups for p in g["params"]] if isinstance(groups[0], dict) else groups
    x, m, prompts = random_pairs()
    pairs = LatentPairs(gen, x, m, prompts)
    opts = LoopOptions(max_steps=steps, batch_size=2, learning_rate=lr, checkpoint_every=100, log_every=1,
                       device="cpu", weight_decay=0.0)
    task = generator_task(gen, pairs, params, 2, 0, step_opts or GenStepOptions(alpha=0.0), gen.save)
    if isinstance(groups[0], dict):
        task.param_groups = groups
    gen.unet.train()
    train_loop(task, opts, out, progress=False)
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
