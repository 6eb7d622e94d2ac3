"""Eq. 1-5 and the conditioning: unit tests on a tiny random generator."""
import pytest
import torch

from anomalign.generator.conditioning import encode_mask_condition, expand_conv_in
from anomalign.generator.losses import dual_branch_loss, loss_al, loss_gen, loss_sd, to_epsilon
from anomalign.generator.model import MaskGenerator
from tiny_models import dummy_tiny_generator


def batch(gen, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 32, 32, generator=g) * 2 - 1
    m = (torch.rand(b, 1, 32, 32, generator=g) > 0.8).float()
    with torch.no_grad():
        z0, h0 = gen.encode(x), gen.encode_mask_image(m)
    emb = gen.encode_prompts(["a photo of a surface with a scratch defect"] * b)
    return z0, h0, gen.condition(m), emb


def test_alpha_zero_equals_single_branch_loss():
    gen = dummy_tiny_generator()
    z0, h0, cond, emb = batch(gen)
    single = dual_branch_loss(gen, z0, h0, cond, emb, torch.Generator().manual_seed(5), alpha=0.0)
    dual = dual_branch_loss(gen, z0, h0, cond, emb, torch.Generator().manual_seed(5), alpha=0.7)
    assert torch.allclose(single["loss"], dual["l_sd"], rtol=1e-5, atol=1e-6)
    assert dual["l_al"] > 0
    assert torch.allclose(dual["loss"], dual["l_sd"] + 0.7 * dual["l_al"])


def test_both_branches_get_the_same_noise_and_timestep_in_one_unet_call(monkeypatch):
    gen = dummy_tiny_generator()
    z0, h0, cond, emb = batch(gen)
    calls = []
    real = MaskGenerator.predict_noise

    def spy(self, x_t, t, e, c):
        calls.append((x_t.detach().clone(), t.clone(), c.clone()))
        return real(self, x_t, t, e, c)

    monkeypatch.setattr(MaskGenerator, "predict_noise", spy)
    dual_branch_loss(gen, z0, h0, cond, emb, torch.Generator().manual_seed(1), alpha=0.7)
    assert len(calls) == 1  # one batched UNet call for both branches
    x_t, t, c = calls[0]
    z_t, h_t = x_t.chunk(2)
    t_z, t_h = t.chunk(2)
    assert torch.equal(t_z, t_h)
    abar = gen.scheduler.alphas_cumprod[t_z].view(-1, 1, 1, 1)
    eps_from_z = (z_t - abar.sqrt() * z0) / (1 - abar).sqrt()
    eps_from_h = (h_t - abar.sqrt() * h0) / (1 - abar).sqrt()
    assert torch.allclose(eps_from_z, eps_from_h, atol=1e-4)
    assert torch.equal(c[:4], c[4:])  # both branches conditioned on the mask m (Eq. 3)


def test_eq1_eq4_eq5_hand_computed():
    noise = torch.tensor([[[[1.0, -1.0]]]])
    eps_z = torch.tensor([[[[0.5, -1.0]]]])
    eps_h = torch.tensor([[[[0.5, 1.0]]]])
    assert torch.isclose(loss_sd(noise, eps_z), torch.tensor(0.125))  # (0.25 + 0) / 2
    assert torch.isclose(loss_al(eps_z, eps_h), torch.tensor(2.0))  # (0 + 4) / 2
    assert torch.isclose(loss_gen(torch.tensor(0.125), torch.tensor(2.0), 0.7), torch.tensor(1.525))


def test_stop_grad_side_of_eq4():
    a = torch.tensor([1.0, 2.0], requires_grad=True).view(1, 1, 1, 2)
    b = torch.tensor([0.0, 0.0], requires_grad=True).view(1, 1, 1, 2)
    for side, grad_a, grad_b in (("none", True, True), ("image", False, True), ("mask", True, False)):
        a.grad = b.grad = None
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        loss_al(aa, bb, stop_grad=side).backward()
        assert (aa.grad is not None and aa.grad.abs().sum() > 0) == grad_a
        assert (bb.grad is not None and bb.grad.abs().sum() > 0) == grad_b


def test_v_prediction_is_converted_to_epsilon():
    from diffusers import DDPMScheduler
    s = DDPMScheduler(prediction_type="v_prediction")
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 900])
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(to_epsilon(s, v, x_t, t), eps, atol=1e-5)


def test_expanded_conv_in_starts_as_the_original():
    gen = dummy_tiny_generator()
    conv = gen.unet.conv_in
    x = torch.randn(2, conv.in_channels, 16, 16)
    before = conv(x)
    expand_conv_in(gen.unet, 3)
    after = gen.unet.conv_in(torch.cat([x, torch.randn(2, 3, 16, 16)], 1))
    assert torch.allclose(before, after, atol=1e-6)
    assert gen.unet.config.in_channels == x.shape[1] + 3


def test_mask_encodings_keep_thin_lines_and_dropped_differs_from_empty():
    m = torch.zeros(1, 1, 8, 8)
    m[..., 3, :] = 1  # a 1-px line
    un = encode_mask_condition(m, "unshuffle", 4)
    assert un.shape == (1, 16, 2, 2) and (un == 1).sum() == 8  # every line pixel is still there
    rs = encode_mask_condition(m, "resize", 4)
    assert rs.shape == (1, 1, 2, 2) and torch.equal(rs[0, 0], torch.tensor([[-0.5, -0.5], [-1.0, -1.0]]))
    gen = dummy_tiny_generator()
    empty = gen.condition(torch.zeros(2, 1, 32, 32))
    dropped = gen.condition(torch.zeros(2, 1, 32, 32), keep=torch.tensor([False, True]))
    assert (empty == -1).all() and (dropped[0] == 0).all() and (dropped[1] == -1).all()


def test_gradients_reach_only_trainable_parameters():
    from anomalign.config import build_config
    from anomalign.generator.task import GenStepOptions, generator_step
    from anomalign.generator.train import TrainGeneratorConfig, trainable_parameters

    for finetune in ("full", "lora"):
        gen = dummy_tiny_generator()
        cfg = build_config(TrainGeneratorConfig, {"data": "x", "out": "y", "finetune": finetune})
        params = trainable_parameters(gen, cfg)
        z0, h0, _, _ = batch(gen)
        m = (torch.rand(4, 1, 32, 32) > 0.8).float()
        out = generator_step(gen, {"z0": z0, "h0": h0, "mask": m, "prompt": ["a photo of a surface"] * 4,
                                   "seeds": [1, 2, 3, 4]}, GenStepOptions())
        out["loss"].backward()
        trained = {id(p) for p in params}
        assert all(p.grad is None for p in gen.vae.parameters())
        assert all(p.grad is None for p in gen.parameters() if id(p) not in trained)
        assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in params) > 0
        if finetune == "lora":
            names = {n for n, p in gen.unet.named_parameters() if p.requires_grad}
            assert names and all("lora" in n or n.startswith("conv_in") for n in names)


def _identity_generator():
    """ε_θ(x_t, ...) = x_t: every loss term is a known function of z0, h0, ε and ᾱ_t."""
    import types

    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return types.SimpleNamespace(scheduler=sched, predict_noise=lambda x_t, t, emb, cond: x_t)


def test_min_snr_loss_weights_by_hand():
    from anomalign.generator.losses import loss_weights
    gen = _identity_generator()
    t = torch.tensor([10, 900])
    abar = gen.scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)
    assert snr[0] > 5 > snr[1]  # early t: SNR above γ (weight γ/SNR); late t: below (weight 1)
    w = loss_weights(gen.scheduler, t, 5.0)
    assert torch.allclose(w, torch.tensor([5.0 / float(snr[0]), 1.0]))
    assert loss_weights(gen.scheduler, t, None) is None


def test_model_space_weights_make_the_v_mse():
    """For a v model, space="model" weighs the ε-MSE by 1/ᾱ, which is exactly the MSE of v (computed here
    directly); ε models and the default space keep the plain ε-MSE; min-SNR-γ is the same for both."""
    from diffusers import DDPMScheduler

    from anomalign.generator.losses import loss_weights
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction")
    t = torch.tensor([5, 500, 999])
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0, eps, v_hat = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    eps_hat = to_epsilon(s, v_hat, x_t, t)
    w = loss_weights(s, t, None, "model")
    eps_mse = ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(w * eps_mse, ((v_hat - v) ** 2).mean(dim=(1, 2, 3)), rtol=1e-3)
    assert w[2] > 1000 * w[0]  # the noisiest step is where the ε-MSE hardly sees the image
    assert loss_weights(s, t, None) is None
    assert torch.equal(loss_weights(s, t, 5.0, "model"), loss_weights(s, t, 5.0))
    assert loss_weights(DDPMScheduler(), t, None, "model") is None  # ε model: ε-MSE is its own MSE
    with pytest.raises(ValueError, match="loss space"):
        loss_weights(DDPMScheduler(), t, None, "x0")


def test_w_mask_and_min_snr_in_the_dual_branch_loss_by_hand():
    """z0 = 0, h0 = 1, ε = 1: ε_z = z_t = s, ε_h = h_t = a + s (a = sqrt(ᾱ), s = sqrt(1-ᾱ)), so
    L_sd = (1-s)², L_al = a², and w_mask adds w·(1-a-s)²; min-SNR weighs every term per sample."""
    gen = _identity_generator()
    t = torch.tensor([300])
    abar = float(gen.scheduler.alphas_cumprod[300])
    a, s = abar ** 0.5, (1 - abar) ** 0.5
    z0, h0, noise = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    cond, emb = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1)  # ignored by this generator
    out = dual_branch_loss(gen, z0, h0, cond, emb, alpha=0.7, w_mask=0.5, noise=noise, t=t)
    assert out["l_sd"].item() == pytest.approx((1 - s) ** 2, rel=1e-5)
    assert out["l_al"].item() == pytest.approx(a ** 2, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - s) ** 2 + 0.7 * a ** 2 + 0.5 * (1 - a - s) ** 2, rel=1e-5)
    w = min(abar / (1 - abar), 2.0) / (abar / (1 - abar))
    weighted = dual_branch_loss(gen, z0, h0, cond, emb, alpha=0.7, w_mask=0.5, snr_gamma=2.0, noise=noise, t=t)
    assert weighted["loss"].item() == pytest.approx(w * out["loss"].item(), rel=1e-5)
