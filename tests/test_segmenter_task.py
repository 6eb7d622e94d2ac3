"""The segmenter's task unit: Eq. 10 against hand-computed values, batch assembly, and the per-sample (ε, t)
of Generative Feedback seeded by the sample's place in the GLOBAL batch (1 process == 2 processes)."""
import types

import pytest
import torch
from diffusers import DDPMScheduler

from anomalign.data.sample import Sample
from anomalign.generator.task import seeded_draws
from anomalign.segmenter.losses import loss_feedback
from anomalign.segmenter.model import Segmenter
from anomalign.segmenter.task import SegPairs, SegStepOptions, feedback_latents, segmenter_batch, segmenter_step
from anomalign.training import sample_seed
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator


def test_loss_feedback_by_hand():
    """A generator whose ε-prediction is c·m̃ (broadcast over channels): L_fb = mean((ε - c·m̃)²), with
    z_t = sqrt(ᾱ_t)·z0 + sqrt(1-ᾱ_t)·ε never entering the prediction."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = types.SimpleNamespace(scheduler=sched, condition=lambda m: m,
                                predict_noise=lambda x_t, t, emb, cond: 2.0 * cond.expand_as(x_t))
    z0 = torch.zeros(1, 2, 1, 2)
    noise = torch.tensor([[[[1.0, -1.0]], [[0.5, 0.0]]]])  # [1, 2, 1, 2]
    m_soft = torch.tensor([[[[0.25, 1.0]]]])  # [1, 1, 1, 2] -> prediction 0.5, 2.0 in both channels
    expected = ((1 - 0.5) ** 2 + (-1 - 2) ** 2 + (0.5 - 0.5) ** 2 + (0 - 2) ** 2) / 4
    got = loss_feedback(gen, z0, m_soft, None, noise, torch.tensor([10]))
    assert got.item() == pytest.approx(expected)


def test_loss_feedback_uses_the_noised_latent_at_t():
    """A generator predicting x_t itself: L_fb = mean((ε - (sqrt(ᾱ)·z0 + sqrt(1-ᾱ)·ε))²)."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = types.SimpleNamespace(scheduler=sched, condition=lambda m: m, predict_noise=lambda x_t, t, emb, c: x_t)
    z0, noise, t = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 1.0), torch.tensor([500])
    abar = float(sched.alphas_cumprod[500])
    expected = (1 - (abar ** 0.5 * 2 + (1 - abar) ** 0.5)) ** 2
    assert loss_feedback(gen, z0, torch.zeros(1, 1, 1, 1), None, noise, t).item() == pytest.approx(expected, rel=1e-5)


def test_seeded_draws_depend_on_the_seed_only():
    u, t, noise = seeded_draws([5, 6, 5], (2, 3), 10, 20, uniforms=2)
    assert u.shape == (3, 2) and t.shape == (3,) and noise.shape == (3, 2, 3)
    assert torch.equal(noise[0], noise[2]) and t[0] == t[2] and not torch.equal(noise[0], noise[1])
    assert ((10 <= t) & (t < 20)).all()
    _, t1, n1 = seeded_draws([6], (2, 3), 10, 20, uniforms=2)
    assert torch.equal(n1[0], noise[1]) and t1[0] == t[1]
    assert [x.shape for x in seeded_draws([], (2, 3), 0, 5)] == [(0, 0), (0,), (0, 2, 3)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_task")
    write_paired(root, defects=("scratch",), n=6, normals=0)
    samples = [Sample(p, root / "masks" / "scratch" / (p.stem + ".png"), "scratch", False)
               for p in sorted((root / "images" / "scratch").glob("*.jpg"))]
    return SegPairs(samples[:4], 32, ["hflip"], seed=0), SegPairs(samples[4:], 32, ["hflip"], seed=1)


def test_two_ranks_share_the_global_batch_and_its_feedback_seeds(pairs):
    real, syn = pairs
    for k in range(3):
        one = segmenter_batch(real, syn, 2, 2, 0, k, 0, 1)
        ranks = [segmenter_batch(real, syn, 2, 2, 0, k, r, 2) for r in range(2)]
        assert one["seeds"] == [sample_seed(0, k, p) for p in range(2)]
        assert [s for r in ranks for s in r["seeds"]] == one["seeds"]  # rank r: global position r
        assert [key for r in ranks for key in r["keys"]] == one["keys"]
        assert one["synthetic"].tolist() == [False, False, True, True]
        real_rows = torch.cat([r["image"][:1] for r in ranks])
        assert torch.equal(real_rows, one["image"][:2])


def test_feedback_step_with_two_ranks_equals_one_process(pairs):
    """The Eq. 11 loss of a global batch, computed by one process or as the mean of two ranks' halves, is the
    same (segmenter in eval mode: Segformer's BatchNorm would otherwise use each process's own batch)."""
    real, syn = pairs
    gen = dummy_tiny_generator()
    gen.requires_grad_(False).eval()
    fb = feedback_latents(gen, real, ["hflip"], 0)
    torch.manual_seed(0)
    model = Segmenter("tiny").eval()
    o = SegStepOptions(anomaly_weight=2.0)
    one = segmenter_step(model, segmenter_batch(real, syn, 2, 2, 0, 1, 0, 1), o, fb)
    two = [segmenter_step(model, segmenter_batch(real, syn, 2, 2, 0, 1, r, 2), o, fb) for r in range(2)]
    for name in ("loss", "l_ce", "l_fb"):
        assert one[name].item() == pytest.approx(sum(t[name].item() for t in two) / 2, rel=1e-5), name
    assert two[0]["l_fb"].item() != pytest.approx(two[1]["l_fb"].item())


def test_no_feedback_before_warmup_and_between_feedback_steps(pairs):
    real, syn = pairs
    gen = dummy_tiny_generator()
    gen.requires_grad_(False).eval()
    fb = feedback_latents(gen, real, ["hflip"], 0)
    model = Segmenter("tiny").eval()
    o = SegStepOptions(fb_every=2, fb_warmup_steps=2)
    l_fb = [segmenter_step(model, segmenter_batch(real, None, 2, 0, 0, k, 0, 1), o, fb)["l_fb"].item()
            for k in range(5)]
    assert [v == v for v in l_fb] == [False, False, True, False, True]  # NaN = not computed


def test_synthetic_weight_zero_leaves_the_real_rows_loss(pairs):
    """w_syn = 0 (CE and Dice): the step's loss is that of the real rows alone; w_syn = 1 is not."""
    real, syn = pairs
    torch.manual_seed(0)
    model = Segmenter("tiny").eval()
    mixed = segmenter_batch(real, syn, 2, 2, 0, 1, 0, 1)
    alone = segmenter_batch(real, None, 2, 0, 0, 1, 0, 1)
    o0 = SegStepOptions(dice_weight=1.0, synthetic_weight=0.0)
    got = segmenter_step(model, mixed, o0)["loss"].item()
    assert got == pytest.approx(segmenter_step(model, alone, o0)["loss"].item(), rel=1e-5)
    assert segmenter_step(model, mixed, SegStepOptions(dice_weight=1.0))["loss"].item() != pytest.approx(got, rel=1e-3)


def test_adding_synthetic_rows_keeps_the_real_rows(pairs):
    """A batch of n real + k synthetic rows starts with exactly the rows (crops, jitter) of the real-only batch
    of n: adding synthetic pairs on top changes nothing the real-only run sees (docs/results.md)."""
    real, syn = pairs
    for k in range(3):
        alone = segmenter_batch(real, None, 2, 0, 0, k, 0, 1, photometric=0.5)
        mixed = segmenter_batch(real, syn, 2, 2, 0, k, 0, 1, photometric=0.5)
        assert torch.equal(mixed["image"][:2], alone["image"]) and torch.equal(mixed["mask"][:2], alone["mask"])
        assert mixed["synthetic"].tolist() == [False, False, True, True]


def test_fb_rows_feeds_back_the_first_real_rows_only(pairs):
    real, syn = pairs
    gen = dummy_tiny_generator()
    gen.requires_grad_(False).eval()
    fb = feedback_latents(gen, real, ["hflip"], 0)
    torch.manual_seed(0)
    model = Segmenter("tiny").eval()
    two = segmenter_batch(real, syn, 2, 2, 0, 1, 0, 1)
    first = {key: (v[:1] if key in ("keys", "prompts", "seeds") else v) for key, v in two.items()}
    first |= {"image": two["image"][:1], "mask": two["mask"][:1], "synthetic": two["synthetic"][:1]}
    one_row = segmenter_step(model, two, SegStepOptions(fb_rows=1), fb)["l_fb"].item()
    assert one_row == pytest.approx(segmenter_step(model, first, SegStepOptions(), fb)["l_fb"].item(), rel=1e-5)
    assert one_row != pytest.approx(segmenter_step(model, two, SegStepOptions(), fb)["l_fb"].item(), rel=1e-3)


def test_synthetic_only_batches_have_no_real_rows(pairs):
    """--synthetic-fraction 1 (a pre-training stage): every row synthetic, no feedback keys."""
    real, syn = pairs
    b = segmenter_batch(real, syn, 0, 4, 0, 0, 0, 1)
    assert b["synthetic"].all() and b["keys"] == [] and b["image"].shape[0] == 4
    assert torch.equal(b["image"], segmenter_batch(real, syn, 2, 4, 0, 0, 0, 1)["image"][2:])
