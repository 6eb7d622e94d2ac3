"""train-generator end to end on tiny random models: outputs, save/reload, resume, NaN stop, sd backend."""
import csv
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from anomalign.config import build_config
from anomalign.errors import AnomalignError
from anomalign.generator.model import MaskGenerator, build_generator
from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
from anomalign.training import LoopOptions, TrainingDiverged, TrainTask, train_loop
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator, save_dummy_sd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_data")
    write_paired(root, defects=("scratch", "hole"), n=4, normals=2)
    return root


def config(data, out, **kw):
    values = dict(data=str(data), out=str(out), max_steps=4, batch_size=4, log_every=1, checkpoint_every=2,
                  validation_masks=2, validation_steps=2, device="cpu", val_fraction=0.0, test_fraction=0.0)
    values.update(kw)
    return build_config(TrainGeneratorConfig, values)


def losses(run_dir):
    with open(run_dir / "logs" / "train.csv") as fh:
        return [(int(r["step"]), float(r["loss"]), float(r["l_sd"]), float(r["l_al"])) for r in csv.DictReader(fh)]


def predict(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 16, 16, generator=g)
    m = (torch.rand(2, 1, 32, 32, generator=g) > 0.7).float()
    with torch.no_grad():
        return gen.predict_noise(z, torch.tensor([10, 500]), gen.encode_prompts(["a photo of a surface", ""]),
                                 gen.condition(m))


def test_tiny_run_folder_reloads_to_identical_predictions(data, gen_dir, tmp_path):
    out = run_train_generator(config(data, tmp_path / "run", base=str(gen_dir)), progress=False)
    for name in ("generator.safetensors", "generator.json", "config.yaml", "logs/train.csv"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000004.png"]
    rows = losses(out)
    assert [r[0] for r in rows] == [1, 2, 3, 4] and all(r[3] > 0 for r in rows)  # α = 0.7: L_al logged
    loaded = MaskGenerator.load(out)
    fresh = build_generator(loaded.spec)
    fresh.load_trainable_state(load_file(str(out / "checkpoints" / "step-0000004" / "model.safetensors")))
    assert torch.equal(predict(loaded), predict(fresh))
    base = MaskGenerator.load(gen_dir)
    assert not torch.equal(base.unet.conv_in.weight, loaded.unet.conv_in.weight)  # it trained
    assert torch.equal(base.vae.encoder.conv_in.weight, loaded.vae.encoder.conv_in.weight)  # codec frozen
    assert "defect" in loaded.prompt_encoder.index and "scratch" in loaded.prompt_encoder.index
    with pytest.raises(AnomalignError, match="already holds a trained run"):
        run_train_generator(config(data, out, base=str(gen_dir)), progress=False)


def test_resume_continues_with_the_same_losses(data, gen_dir, tmp_path, capsys):
    straight = run_train_generator(config(data, tmp_path / "a", base=str(gen_dir), max_steps=6), progress=False)
    part = run_train_generator(config(data, tmp_path / "b", base=str(gen_dir), max_steps=3), progress=False)
    shutil.rmtree(part / "checkpoints" / "step-0000003")  # as if killed after step 3 was logged, before its save
    run_train_generator(config(data, part, base=str(gen_dir), max_steps=6, resume="latest"), progress=False)
    a, b = losses(straight), losses(part)
    assert [r[0] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra[1:] == pytest.approx(rb[1:], rel=1e-5, abs=1e-7)
    capsys.readouterr()
    run_train_generator(config(data, part, base=str(gen_dir), max_steps=6, resume="latest"), progress=False)
    printed = capsys.readouterr().out  # resumed at the last step: it only finalises
    assert f"generator written to {part}" in printed and "last losses" not in printed


def test_alpha_zero_preset_logs_no_alignment_loss(data, gen_dir, tmp_path):
    out = run_train_generator(config(data, tmp_path / "r", base=str(gen_dir), preset="baseline", max_steps=2),
                              progress=False)
    assert all(r[3] == 0 for r in losses(out))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))

    def step_fn(batch, g):
        return {"loss": (w * batch).sum()}

    def get_batch(k, rank, world):
        return torch.full((3,), float("nan")) if k == 3 else torch.ones(3)

    task = TrainTask(params=[w], get_batch=get_batch, step_fn=step_fn, state_fn=lambda: {"w": w.data},
                     load_state_fn=lambda sd: w.data.copy_(sd["w"]), save_fn=lambda d: (d / "final").touch())
    with pytest.raises(TrainingDiverged, match="in step 4; .*not saved.*Latest checkpoint, from before that step: "
                                               ".*step-0000002 .its weights are finite"):
        train_loop(task, LoopOptions(max_steps=6, checkpoint_every=2, device="cpu", log_every=1), tmp_path,
                   progress=False)
    assert (tmp_path / "checkpoints" / "step-0000002" / "model.safetensors").is_file()
    assert not (tmp_path / "final").exists()


def test_sd_backend_trains_saves_and_reloads(data, tmp_path):
    sd = save_dummy_sd(tmp_path / "sd")
    out = run_train_generator(config(data, tmp_path / "run", backend="sd", base=str(sd), resolution=32,
                                     max_steps=3, batch_size=2, lora_rank=4), progress=False)
    state = load_file(str(out / "generator.safetensors"))
    assert any("lora" in k for k in state) and "unet.conv_in.weight" in state
    assert not any(k.startswith(("vae.", "text")) for k in state)  # frozen parts are not copied
    loaded = MaskGenerator.load(out)
    assert loaded.unet.conv_in.in_channels == 4 + 4  # unshuffle mask with factor 2: 4 channels
    fresh = build_generator(loaded.spec)
    fresh.load_trainable_state(load_file(str(out / "checkpoints" / "step-0000003" / "model.safetensors")))
    assert torch.equal(predict(loaded), predict(fresh))


def test_bad_base_models_give_clear_errors(data, tmp_path):
    with pytest.raises(AnomalignError, match="base model folder does not exist"):
        run_train_generator(config(data, tmp_path / "r1", backend="sd", base=str(tmp_path / "nope")), progress=False)
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(AnomalignError, match=r"missing sub-folder\(s\) vae, text_encoder"):
        run_train_generator(config(data, tmp_path / "r2", backend="sd", base=str(tmp_path / "half")), progress=False)
    with pytest.raises(AnomalignError, match="tiny base weights not found"):
        run_train_generator(config(data, tmp_path / "r3", base=str(tmp_path / "none.safetensors")), progress=False)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AnomalignError, match="unreadable weights"):
        run_train_generator(config(data, tmp_path / "r4", base=str(tmp_path / "junk.safetensors")), progress=False)


def test_two_process_run_equals_one_process_run(data, gen_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): same losses and weights as one process with the same global batch."""
    import os
    import subprocess
    import sys

    args = ["train-generator", "--data", str(data), "--base", str(gen_dir), "--max-steps", "3", "--batch-size", "4",
            "--log-every", "1", "--checkpoint-every", "10", "--validation-masks", "2", "--validation-steps", "2",
            "--device", "cpu", "--val-fraction", "0", "--test-fraction", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "anomalign", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anomalign",
                          *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    for ra, rb in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert ra[1:] == pytest.approx(rb[1:], rel=1e-4, abs=1e-6)
    a = load_file(str(tmp_path / "one" / "generator.safetensors"))
    b = load_file(str(tmp_path / "two" / "generator.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_vae_mask_encoding_in_training_and_in_feedback(data, tmp_path):
    """mask_encoding="vae" (the mask enters conv_in as E(m)): the generator trains with the dual-branch loss,
    reloads with that encoding, and gives the segmenter a feedback gradient through E(m̃)."""
    from anomalign.segmenter.losses import loss_feedback
    from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter

    base = tmp_path / "vae_base"
    dummy_tiny_generator("vae").save(base)
    out = run_train_generator(config(data, tmp_path / "gen", base=str(base), max_steps=2), progress=False)
    rows = losses(out)
    assert len(rows) == 2 and all(r[3] > 0 and r[1] == r[1] for r in rows)
    gen = MaskGenerator.load(out).requires_grad_(False).eval()
    assert gen.mask_encoding == "vae"
    m_soft = torch.rand(2, 1, 32, 32, requires_grad=True)
    l_fb = loss_feedback(gen, torch.randn(2, 4, 16, 16), m_soft, gen.encode_prompts(["a", "b"]), torch.randn(2, 4, 16, 16),
                         torch.tensor([100, 300]))
    l_fb.backward()
    assert m_soft.grad is not None and m_soft.grad.abs().sum() > 0
    seg = run_train_segmenter(build_config(TrainSegmenterConfig, dict(
        recipe="paper",  # feedback from step 0 on every row: both steps must feed back
        train=str(data), feedback_generator=str(out), out=str(tmp_path / "seg"), size=32, max_steps=2, batch_size=2,
        validate_every=0, log_every=1, device="cpu", val_fraction=0.0, test_fraction=0.0)), progress=False)
    with open(seg / "logs" / "train.csv") as fh:
        assert all(float(r["l_fb"]) > 0 for r in csv.DictReader(fh))


def held_out_pairs(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.6).float()
    return images, masks, ["a photo of a scratch"] * n


def test_held_out_loss_is_a_function_of_the_weights_only():
    from anomalign.generator.task import held_out_loss
    gen = dummy_tiny_generator()
    images, masks, prompts = held_out_pairs()
    a = held_out_loss(gen, images, masks, prompts, seed=0)
    assert a == held_out_loss(gen, images, masks, prompts, seed=0)
    b = held_out_loss(gen, images, masks, prompts, seed=0, batch_size=5)  # batching does not change the draws
    assert b["heldout_loss"] == pytest.approx(a["heldout_loss"], rel=1e-5)
    assert b["heldout_defect_loss"] == pytest.approx(a["heldout_defect_loss"], rel=1e-5)
    assert held_out_loss(gen, images, masks, prompts, seed=1) != a  # other noise, other value
    # a mask over the whole image weights every cell alike: the defect loss is the whole loss
    full = held_out_loss(gen, images, torch.ones_like(masks), prompts, seed=0)
    assert full["heldout_defect_loss"] == pytest.approx(full["heldout_loss"], rel=1e-5)
    assert math.isnan(held_out_loss(gen, images, torch.zeros_like(masks), prompts)["heldout_defect_loss"])
    with torch.no_grad():
        gen.unet.conv_in.weight.mul_(1.5)
    assert held_out_loss(gen, images, masks, prompts, seed=0)["heldout_loss"] != a["heldout_loss"]
    assert gen.unet.training  # left as it was found


def validation_rows(run_dir):
    with open(run_dir / "logs" / "validation.csv") as fh:
        return list(csv.DictReader(fh))


def test_train_generator_trains_on_while_the_held_out_loss_falls(data, gen_dir, tmp_path):
    """--extend-steps on train-generator follows the held-out anomaly loss on the val split (lower is better,
    --extend-min-gain its noise floor): training went on exactly while each block's end beat the best by the gain,
    and the shipped weights are the best block's."""
    gain = 0.06  # this tiny run's loss falls ~11 %, then ~5 % per block: it trains on once, then stops
    cfg = config(data, tmp_path / "run", base=str(gen_dir), val_fraction=0.5, max_steps=2, checkpoint_every=2,
                 extend_steps=6, extend_block=2, extend_lr=1.0, extend_min_gain=gain, learning_rate=1e-3)
    out = run_train_generator(cfg, progress=False)
    rows = validation_rows(out)
    steps, loss = [int(r["step"]) for r in rows], [float(r["heldout_defect_loss"]) for r in rows]
    assert steps == list(range(2, 2 + 2 * len(steps), 2)) and all(math.isfinite(v) for v in loss)
    best = loss[0]
    for k in range(1, len(loss)):  # each block that ran was asked for by a new best at the previous one
        assert loss[k - 1] == best, f"trained on after a block that was not a new best: {loss}"
        best = loss[k] if loss[k] < best * (1 - gain) else best
    assert 2 < steps[-1] < 8 and loss[-1] > best * (1 - gain)  # stopped by the rule, before the cap
    shipped = load_file(str(out / "generator.safetensors"))
    assert all(torch.equal(v, load_file(str(out / "best" / "generator.safetensors"))[k]) for k, v in shipped.items())
    last = load_file(str(out / "checkpoints" / f"step-{steps[-1]:07d}" / "model.safetensors"))
    assert not torch.equal(shipped["unet.conv_in.weight"], last["unet.conv_in.weight"])  # not the last block's
    # what run's report says about it
    from anomalign.evaluation.run_report import generator_length, generator_length_text
    length = generator_length(out)
    assert length == {"curve": list(zip(steps, loss)), "trained": steps[-1], "shipped": steps[loss.index(best)]}
    assert f"the weights of step {steps[loss.index(best)]} ship" in generator_length_text(length)


def test_no_val_anomalies_means_no_held_out_loss_and_no_extension(data, gen_dir, tmp_path, capsys):
    out = run_train_generator(config(data, tmp_path / "run", base=str(gen_dir), extend_steps=4, extend_block=2),
                              progress=False)
    assert "no anomalous val pairs" in capsys.readouterr().out
    rows = validation_rows(out)
    assert [int(r["step"]) for r in rows] == [4] and "heldout_defect_loss" not in rows[0]
    from anomalign.evaluation.run_report import generator_length
    assert generator_length(out) is None  # the report then says nothing about it
