"""Alignment scores of image/mask pairs: by an oracle segmenter, and by the generator itself ("free lunch").

The free-lunch score needs no other model: a well-aligned generator denoises an image more easily
when conditioned on the mask that matches its anomaly than on a moved or empty mask (the paper's
premise of Generative Feedback).
"""
from __future__ import annotations

import torch

DEFAULT_TIMESTEPS = (100, 250, 400, 600)


def shift_masks(masks: torch.Tensor, pixels: int = 16) -> torch.Tensor:
    """Move masks [B, 1, H, W] right by ``pixels`` (wrapping): the moved-mask control."""
    return torch.roll(masks, shifts=pixels, dims=-1)


@torch.no_grad()
def denoising_losses(gen, images: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                     timesteps=DEFAULT_TIMESTEPS, seed: int = 0, batch_size: int = 32,
                     latents: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample denoising MSE [B], averaged over ``timesteps``, conditioned on ``masks`` [B, 1, H, W].

    The noise for (sample i, timestep j) depends only on (seed, i, j), so calls with different masks
    compare like with like. Pass ``latents`` = E(images) to avoid encoding twice.
    """
    out = []
    for s in range(0, len(prompts), batch_size):
        sl = slice(s, s + batch_size)
        z0 = latents[sl].to(gen.device) if latents is not None else gen.encode(images[sl])
        cond = gen.condition(masks[sl].to(gen.device))
        emb = gen.encode_prompts(prompts[sl])
        total = torch.zeros(z0.shape[0], device=gen.device)
        for j, t_val in enumerate(timesteps):
            noise = torch.stack([torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(
                (seed * 1_000_003 + s + i) * 101 + j)) for i in range(z0.shape[0])]).to(z0)
            t = torch.full((z0.shape[0],), int(t_val), device=gen.device, dtype=torch.long)
            from anomalign.generator.losses import add_noise
            eps = gen.predict_noise(add_noise(gen.scheduler, z0, noise, t), t, emb, cond)
            total += (eps.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
        out.append(total / len(timesteps))
    return torch.cat(out).cpu()


@torch.no_grad()
def free_lunch(gen, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], timesteps=DEFAULT_TIMESTEPS,
               seed: int = 0, shift: int = 16) -> dict[str, torch.Tensor | float]:
    """Denoising losses with the true, the moved and the empty mask, and how often the true one wins."""
    z0 = torch.cat([gen.encode(images[s:s + 64]) for s in range(0, len(images), 64)])
    true = denoising_losses(gen, images, masks, prompts, timesteps, seed, latents=z0)
    moved = denoising_losses(gen, images, shift_masks(masks, shift), prompts, timesteps, seed, latents=z0)
    empty = denoising_losses(gen, images, torch.zeros_like(masks), prompts, timesteps, seed, latents=z0)
    return {"true": true, "moved": moved, "empty": empty,
            "frac_true_lt_moved": float((true < moved).float().mean()),
            "frac_true_lt_empty": float((true < empty).float().mean()),
            "frac_true_lt_both": float(((true < moved) & (true < empty)).float().mean())}


@torch.no_grad()
def oracle_iou(segmenter, images: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
               batch_size: int = 64) -> torch.Tensor:
    """Per-image IoU [B] between an oracle segmenter's prediction on ``images`` and ``masks``."""
    from anomalign.evaluation.metrics import iou_dice
    out = []
    for s in range(0, len(images), batch_size):
        prob = segmenter.predict_proba(images[s:s + batch_size])
        out.append(iou_dice(prob >= threshold, masks[s:s + batch_size] > 0.5)[0])
    return torch.cat(out)
