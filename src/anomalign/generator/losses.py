"""The generator's training objective, paper §3.2, one function per equation.

Notation (paper): x image, m binary mask, p prompt, E the frozen codec encoder, τ the prompt encoder,
ε ~ N(0, I) the noise, t the timestep, ε_θ the UNet. Both branches use the SAME ε and t.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

StopGrad = Literal["none", "image", "mask"]


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε. x0, noise [B, C, h, w]; t [B] (long)."""
    abar = scheduler.alphas_cumprod.to(device=x0.device, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    return (abar.sqrt() * x0.float() + (1 - abar).sqrt() * noise.float()).to(x0.dtype)


def noise_image_and_mask(scheduler, z0: torch.Tensor, h0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: z_t and h_t = sqrt(ᾱ_t)·h0 + sqrt(1-ᾱ_t)·ε, with the same ε and t for image and mask latents.

    z0 = E(x), h0 = E(m): [B, C, h, w]; noise [B, C, h, w]; t [B]. Returns (z_t, h_t).
    """
    return add_noise(scheduler, z0, noise, t), add_noise(scheduler, h0, noise, t)


def to_epsilon(scheduler, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Convert a UNet output to an ε prediction (v-prediction models such as SD 2.x-768 predict v).

    Eq. 4 compares noise predictions, so both branches must be in ε space whatever the parameterisation.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    abar = scheduler.alphas_cumprod.to(device=x_t.device, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    if kind == "v_prediction":  # ε = sqrt(ᾱ)·v + sqrt(1-ᾱ)·x_t
        return (abar.sqrt() * model_output.float() + (1 - abar).sqrt() * x_t.float()).to(model_output.dtype)
    if kind == "sample":  # ε = (x_t - sqrt(ᾱ)·x0) / sqrt(1-ᾱ)
        return ((x_t.float() - abar.sqrt() * model_output.float()) / (1 - abar).sqrt().clamp_min(1e-8)
                ).to(model_output.dtype)
    raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon, v_prediction or sample")


def _mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    per_sample = F.mse_loss(a.float(), b.float(), reduction="none").mean(dim=(1, 2, 3))
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


def loss_sd(noise: torch.Tensor, eps_z: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1: L_sd = ||ε - ε_θ(z_t, t, τ(p), m)||². noise, eps_z [B, C, h, w]; weights [B] or None."""
    return _mse(eps_z, noise, weights)


def loss_al(eps_z: torch.Tensor, eps_h: torch.Tensor, stop_grad: StopGrad = "none",
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4: L_al = ||ε_z - ε_h||², the Alignment Regularization between the image and mask branches.

    ``stop_grad``: "none" (the paper's Eq. 4 as written: gradients flow through both branches),
    "image" (detach ε_z: only the mask branch is pulled toward the image branch, as Siamese-Diffusion
    does), or "mask" (detach ε_h: only the image branch moves).
    """
    if stop_grad == "image":
        eps_z = eps_z.detach()
    elif stop_grad == "mask":
        eps_h = eps_h.detach()
    elif stop_grad != "none":
        raise ValueError(f"stop_grad must be 'none', 'image' or 'mask', got {stop_grad!r}")
    return _mse(eps_z, eps_h, weights)


def loss_gen(l_sd: torch.Tensor, l_al: torch.Tensor, alpha: float = 0.7) -> torch.Tensor:
    """Eq. 5: L_gen = L_sd + α·L_al (α = 0.7 in the paper; α = 0 is its baseline)."""
    return l_sd + alpha * l_al


LossSpace = Literal["epsilon", "model"]


def loss_weights(scheduler, t: torch.Tensor, gamma: float | None, space: LossSpace = "epsilon"
                 ) -> torch.Tensor | None:
    """Per-sample weights [B] of the ε-space MSE, or None (plain ε-MSE, Eq. 1 as written).

    ``gamma``: min-SNR-γ (Hang et al. 2023), min(SNR, γ)/SNR; it weights the clean-latent error by
    min(SNR, γ) whatever the parameterisation, so it is the same for ε and v models.
    ``space="model"`` without gamma: the MSE of the model's own output. For a v-prediction model that is
    the v-MSE = ε-MSE·(SNR + 1)/SNR = ε-MSE/ᾱ (SD 2.x, Lin et al. 2024), which weights the clean-latent
    error by SNR + 1 ≥ 1, so the model learns the image at the noisiest steps, where the ε-MSE weights it
    by SNR ≈ 0. For ε models both spaces are the same.
    """
    if space not in ("epsilon", "model"):
        raise ValueError(f"loss space must be 'epsilon' or 'model', got {space!r}")
    abar = scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]
    snr = abar / (1 - abar)
    if gamma is not None:
        return torch.clamp(snr, max=gamma) / snr  # losses are computed in ε space for every parameterisation
    if space == "model" and scheduler.config.prediction_type == "v_prediction":
        return 1 / abar
    return None


def dual_branch_loss(gen, z0: torch.Tensor, h0: torch.Tensor, cond: torch.Tensor, prompt_emb: torch.Tensor,
                     generator: torch.Generator | None = None, alpha: float = 0.7, stop_grad: StopGrad = "none",
                     w_mask: float = 0.0, snr_gamma: float | None = None, noise: torch.Tensor | None = None,
                     t: torch.Tensor | None = None, loss_space: LossSpace = "epsilon") -> dict[str, torch.Tensor]:
    """L_gen for one batch (Eq. 1-5). z0 = E(x), h0 = E(m): [B, C, h, w]; cond [B, Cm, h, w]; prompt_emb [B, L, D].

    One ε and one t per sample (given, or drawn from ``generator``) serve BOTH branches (Eq. 2). The two
    predictions ε_z = ε_θ(z_t, t, τ(p), m) and ε_h = ε_θ(h_t, t, τ(p), m) (Eq. 3) come from ONE batched
    UNet call. With α = 0 and w_mask = 0 only the image branch runs (the paper's baseline). ``w_mask``
    adds w_mask·||ε - ε_h||² (not in the paper; default 0). ``snr_gamma`` and ``loss_space`` weight the
    samples (``loss_weights``; default: none, the paper's ε-MSE). Returns {"loss", "l_sd", "l_al"}.
    """
    b = z0.shape[0]
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator)
    if t is None:
        t = torch.randint(0, gen.scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise, t = noise.to(device=z0.device, dtype=z0.dtype), t.to(z0.device)
    weights = loss_weights(gen.scheduler, t, snr_gamma, loss_space)
    if alpha == 0 and w_mask == 0:
        eps_z = gen.predict_noise(add_noise(gen.scheduler, z0, noise, t), t, prompt_emb, cond)
        l_sd = loss_sd(noise, eps_z, weights)
        return {"loss": l_sd, "l_sd": l_sd, "l_al": torch.zeros((), device=l_sd.device)}
    z_t, h_t = noise_image_and_mask(gen.scheduler, z0, h0, noise, t)
    eps = gen.predict_noise(torch.cat([z_t, h_t]), torch.cat([t, t]), torch.cat([prompt_emb, prompt_emb]),
                            torch.cat([cond, cond]))
    eps_z, eps_h = eps.chunk(2)
    l_sd = loss_sd(noise, eps_z, weights)
    l_al = loss_al(eps_z, eps_h, stop_grad, weights)
    loss = loss_gen(l_sd, l_al, alpha)
    if w_mask:
        loss = loss + w_mask * loss_sd(noise, eps_h, weights)
    return {"loss": loss, "l_sd": l_sd, "l_al": l_al}
