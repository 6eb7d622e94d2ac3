"""The segmenter's objective, paper §3.3: Eq. 6 (real + synthetic CE) and Generative Feedback (Eq. 7-11)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_ce(logits: torch.Tensor, target: torch.Tensor, synthetic: torch.Tensor,
            anomaly_weight: float = 1.0, synthetic_weight: float = 1.0) -> torch.Tensor:
    """Eq. 6: L_ce = (1/N_real)·Σ_real H(l, y) + w_syn·(1/N_syn)·Σ_syn H(l, y), w_syn = 1 in the paper.

    logits [B, 2, H, W]; target [B, 1, H, W] or [B, H, W] in {0, 1}; synthetic [B] bool.
    H is the pixel-mean cross-entropy of one image; each group is averaged over its own samples,
    so the two groups weigh the same whatever the batch mix (the share of synthetic rows changes how many
    synthetic samples a step sees, not how much they count). An empty group contributes 0.
    ``anomaly_weight`` > 1 weighs anomaly pixels up (not in the paper, whose H is plain CE; default 1).
    ``synthetic_weight`` w_syn < 1 makes the synthetic pairs count less than the real ones (not in the paper).
    """
    y = target.reshape(target.shape[0], *target.shape[-2:]).long()
    weight = None if anomaly_weight == 1.0 else torch.tensor([1.0, anomaly_weight], device=logits.device)
    per_image = F.cross_entropy(logits.float(), y, weight=weight, reduction="none").mean(dim=(1, 2))
    total = per_image.new_zeros(())
    for group, w in ((~synthetic, 1.0), (synthetic, synthetic_weight)):
        if group.any():
            total = total + w * per_image[group].mean()
    return total


def loss_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
              row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice loss of the anomaly class over the whole batch: 1 - (2·Σ w·p·y + eps) / (Σ w·p + Σ w·y + eps).

    logits [B, 2, H, W]; target [B, 1, H, W] or [B, H, W] in {0, 1}; p = softmax(logits)[:, 1]; ``row_weight``
    [B] weighs each row's pixels in the sums (None = all 1; the trainer passes w_syn for synthetic rows). Not in the
    paper (its Eq. 6 is plain CE): an option (``--dice-weight``) for defects covering well under 1 % of the
    pixels, where CE is dominated by the background. Pooled over the batch, so a crop without anomaly pixels
    adds only its false positives (no 0/0). ``eps`` keeps an all-background batch at a finite, small loss.
    """
    y = target.reshape(target.shape[0], *target.shape[-2:]).float()
    p = logits.float().softmax(dim=1)[:, 1]
    w = 1.0 if row_weight is None else row_weight.float().to(p.device).view(-1, 1, 1)
    return 1 - (2 * (p * y * w).sum() + eps) / ((p * w).sum() + (y * w).sum() + eps)


def soft_mask(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 8-9: m̃ = softmax(l / λ)[:, 1] — the anomaly channel of a temperature-sharpened softmax.

    logits [B, 2, H, W]; temperature λ in (0, 1]. Returns m̃ [B, 1, H, W] in [0, 1], differentiable.
    """
    if not 0 < temperature <= 1:
        raise ValueError(f"temperature λ must be in (0, 1], got {temperature}")
    return (logits.float() / temperature).softmax(dim=1)[:, 1:2]


def loss_feedback(gen, z0: torch.Tensor, m_soft: torch.Tensor, prompt_emb: torch.Tensor, noise: torch.Tensor,
                  t: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 10: L_fb = ||ε - ε_θ(z_t, t, τ(p), m̃)||² with the frozen generator conditioned on m̃.

    z0 = E(x) of the real images [B, C, h, w] (no gradient needed); m_soft [B, 1, H, W] at the
    generator's resolution; noise like z0; t [B]. The gradient reaches the segmenter through m̃ only.
    ``region`` [B, 1, h, w] in [0, 1]: average the squared error over these latent cells only (a training crop
    inside a larger generator window, ``segmenter.task.CropFeedback``); None = every cell, Eq. 10 as written.
    """
    from anomalign.generator.losses import add_noise
    z_t = add_noise(gen.scheduler, z0, noise, t)
    eps = gen.predict_noise(z_t, t, prompt_emb, gen.condition(m_soft))
    if region is None:
        return F.mse_loss(eps.float(), noise.float())
    per_cell = (eps.float() - noise.float()).pow(2).mean(dim=1, keepdim=True)
    return (per_cell * region).sum() / region.sum().clamp_min(1e-8)


def loss_seg(l_ce: torch.Tensor, l_fb: torch.Tensor, w_fb: float = 1.0) -> torch.Tensor:
    """Eq. 11: L_seg = L_ce + w_fb·L_fb (w_fb = 1 in the paper)."""
    return l_ce + w_fb * l_fb
