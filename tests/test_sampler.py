"""The sampler's x0 bound: by hand, against diffusers' own DDIM clip_sample, and stored with the model."""
import pytest
import torch

from anomalign.generator.sampler import bound_x0, make_scheduler, sample, x0_bound_of
from tiny_models import dummy_tiny_generator

PROMPTS = ["a photo of a surface with a scratch defect", "a photo of a surface with a hole defect"]


def _masks():
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 8:20, 10:24] = 1
    return m


def test_bound_x0_by_hand():
    a = torch.tensor(0.25)  # √ᾱ = 0.5, √(1−ᾱ) = √0.75
    x_t = torch.tensor([[[[1.0, 0.2]]]])
    eps = torch.tensor([[[[-2.0, 0.0]]]])
    # x0 = (x_t − √0.75·ε)/0.5: 2 + 4√0.75 ≈ 5.46 (clamped to 3) and 0.4 (kept)
    out = bound_x0(eps, x_t, a, 3.0)
    x0 = (x_t - 0.75 ** 0.5 * out) / 0.5
    assert torch.allclose(x0, torch.tensor([[[[3.0, 0.4]]]]), atol=1e-6)
    assert out[0, 0, 0, 1] == pytest.approx(0.0, abs=1e-6)  # inside the bound: ε untouched
    assert out[0, 0, 0, 0] == pytest.approx((1.0 - 0.5 * 3.0) / 0.75 ** 0.5, rel=1e-6)


def test_ddim_with_the_bound_equals_diffusers_clip_sample():
    """The bound is applied outside the scheduler, so it must agree with DDIM's built-in clip_sample."""
    from diffusers import DDIMScheduler

    gen = dummy_tiny_generator()
    ref = DDIMScheduler.from_config(make_scheduler(gen.scheduler, "ddim").config, clip_sample=True,
                                    clip_sample_range=0.5)
    ours = make_scheduler(gen.scheduler, "ddim")
    for s in (ref, ours):
        s.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    a = b = torch.randn(2, 4, 16, 16, generator=g) * 2
    for t in ours.timesteps:
        eps = torch.randn(2, 4, 16, 16, generator=g) * 3  # a bad model: x0 estimates far outside ±0.5
        a = ref.step(eps, t, a, use_clipped_model_output=True).prev_sample
        b = ours.step(bound_x0(eps, b, gen.scheduler.alphas_cumprod[int(t)], 0.5), t, b).prev_sample
    assert torch.allclose(a, b, atol=1e-5)


def test_sampling_uses_the_generators_stored_bound_and_zero_turns_it_off():
    gen = dummy_tiny_generator().eval()
    run = lambda **kw: sample(gen, _masks(), PROMPTS, [0, 1], steps=3, guidance=2.0, decode=False, **kw)
    free = run()  # no bound stored: none applied
    assert torch.equal(free, run(x0_clip=0))
    assert torch.allclose(free, run(x0_clip=1e9), atol=1e-4)  # a bound never reached changes nothing (ε recomputed: rounding)
    bounded = run(x0_clip=0.05)
    # DDIM's last step keeps √(1−ᾱ_0) ≈ 0.03 of ε̂: the result is near the bound, far inside the free run's range
    assert bounded.abs().max() < 0.3 < free.abs().max()
    gen.spec["x0_clip"] = 0.05
    assert torch.equal(run(), bounded)
    assert torch.equal(run(x0_clip=0), free)  # an explicit 0 overrides the stored bound
    assert x0_bound_of(gen, None) == 0.05 and x0_bound_of(gen, 0) is None
    with pytest.raises(ValueError, match="x0_clip must be >= 0"):
        x0_bound_of(gen, -1.0)


def test_dpm_solver_respects_the_bound_too():
    gen = dummy_tiny_generator().eval()
    out = sample(gen, _masks(), PROMPTS, [0, 1], "dpm++", steps=3, guidance=2.0, decode=False, x0_clip=0.05)
    assert out.abs().max() <= 0.05 + 1e-4  # final sigma zero: the result is the (bounded) x0 estimate


def test_generate_checks_the_bound(tmp_path):
    from anomalign.config import build_config
    from anomalign.errors import ConfigError
    from anomalign.synthesis.generate import GenerateConfig

    values = dict(generator=str(tmp_path), masks=str(tmp_path), num=1, out=str(tmp_path / "o"))
    assert build_config(GenerateConfig, values).x0_clip is None  # default: the generator's own bound
    with pytest.raises(ConfigError, match="x0_clip must be >= 0"):
        build_config(GenerateConfig, dict(values, x0_clip=-2))
