"""Alignment scores of image/mask pairs: by an oracle segmenter, and by the generator itself ("free lunch").

The free-lunch score needs no other model: a well-aligned generator denoises an image more easily
when conditioned on the mask that matches its anomaly than on a moved or empty mask (the paper's
premise of Generative Feedback).
"""
from __future__ import annotations

import torch

from anomalign.data.transforms import resize_images
from anomalign.generator.losses import add_noise
from anomalign.seeding import seeded_noise

DEFAULT_TIMESTEPS = (100, 250, 400, 600)


def shift_masks(masks: torch.Tensor, pixels: int = 16) -> torch.Tensor:
    """Move masks [B, 1, H, W] right by ``pixels`` (wrapping): the moved-mask control."""
    return torch.roll(masks, shifts=pixels, dims=-1)


@torch.no_grad()
def denoising_losses(gen, images: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                     timesteps=DEFAULT_TIMESTEPS, seed: int = 0, batch_size: int = 32,
                     latents: torch.Tensor | None = None, noise_seeds: list[int] | None = None) -> torch.Tensor:
    """Per-sample denoising MSE [B], averaged over ``timesteps``, conditioned on ``masks`` [B, 1, H, W].

    The noise for (sample i, timestep j) depends only on (noise_seeds[i], j) — by default
    noise_seeds[i] = f(seed, i) — so calls with different masks compare like with like, and a sample's
    score does not depend on the batch it is in. Pass ``latents`` = E(images) to avoid encoding twice.
    """
    if noise_seeds is None:
        noise_seeds = [seed * 1_000_003 + i for i in range(len(prompts))]
    out = []
    for s in range(0, len(prompts), batch_size):
        sl = slice(s, s + batch_size)
        z0 = latents[sl].to(gen.device) if latents is not None else gen.encode(images[sl])
        cond = gen.condition(masks[sl].to(gen.device))
        emb = gen.encode_prompts(prompts[sl])
        total = torch.zeros(z0.shape[0], device=gen.device)
        for j, t_val in enumerate(timesteps):
            noise = seeded_noise([(int(noise_seeds[s + i]) * 101 + j) % 2**63 for i in range(z0.shape[0])],
                                 z0.shape[1:]).to(z0)
            t = torch.full((z0.shape[0],), int(t_val), device=gen.device, dtype=torch.long)
            eps = gen.predict_noise(add_noise(gen.scheduler, z0, noise, t), t, emb, cond)
            total += (eps.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
        out.append(total / len(timesteps))
    return torch.cat(out).cpu()


@torch.no_grad()
def free_lunch(gen, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], timesteps=DEFAULT_TIMESTEPS,
               seed: int = 0, shift: int = 16, noise_seeds: list[int] | None = None) -> dict[str, torch.Tensor | float]:
    """Denoising losses with the true, the moved and the empty mask, how often the true one wins, and the
    per-sample free-lunch alignment score [B] (see ``free_lunch_score``)."""
    z0 = torch.cat([gen.encode(images[s:s + 64].to(gen.device)) for s in range(0, len(images), 64)])
    kw = dict(timesteps=timesteps, seed=seed, latents=z0, noise_seeds=noise_seeds)
    true = denoising_losses(gen, images, masks, prompts, **kw)
    moved = denoising_losses(gen, images, shift_masks(masks, shift), prompts, **kw)
    empty = denoising_losses(gen, images, torch.zeros_like(masks), prompts, **kw)
    return {"true": true, "moved": moved, "empty": empty, "score": free_lunch_score(true, moved, empty),
            "frac_true_lt_moved": float((true < moved).float().mean()),
            "frac_true_lt_empty": float((true < empty).float().mean()),
            "frac_true_lt_both": float(((true < moved) & (true < empty)).float().mean())}


def free_lunch_score(true: torch.Tensor, moved: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Alignment score [B] from denoising losses [B]: 1 - L(true mask) / min(L(moved mask), L(empty mask)).

    > 0 when the true mask explains the image better than both controls; 0.05 means 5 % lower loss.
    Scale-free, so one threshold works across timesteps, resolutions and models.
    """
    return 1 - true / torch.minimum(moved, empty).clamp_min(1e-12)


@torch.no_grad()
def oracle_iou(segmenter, images: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
               batch_size: int = 64) -> torch.Tensor:
    """Per-image IoU [B] between an oracle segmenter's prediction on ``images`` and ``masks``."""
    from anomalign.metrics import iou_dice
    out = []
    for s in range(0, len(images), batch_size):
        prob = segmenter.predict_proba(images[s:s + batch_size])
        out.append(iou_dice(prob >= threshold, masks[s:s + batch_size] > 0.5)[0])
    return torch.cat(out)


@torch.no_grad()
def premise(gen, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], seed: int = 0) -> dict:
    """Generative Feedback's premise on real anomalous images [B, 3, H, W] in [-1, 1] with masks [B, 1, H, W]:
    how often the generator denoises an image better given its true mask than a moved one (by a quarter
    width) and the empty one (``free_lunch``; images resized to the generator's resolution first).
    Returns {"images", "frac_true_lt_moved", "frac_true_lt_empty", "frac_true_lt_both", "free_lunch_mean"}."""
    res = gen.resolution
    if images.shape[-1] != res or images.shape[-2] != res:
        images = resize_images(images, res).clamp(-1, 1)
        masks = torch.nn.functional.interpolate(masks.float(), size=(res, res), mode="nearest")
    fl = free_lunch(gen, images, masks, prompts, shift=max(1, res // 4), seed=seed)
    return {"images": len(images), **{k: v for k, v in fl.items() if k.startswith("frac")},
            "free_lunch_mean": float(fl["score"].mean())}


def oracle_scores(oracle, images: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """``oracle_iou`` of images [B, 3, H, W] in [-1, 1] vs masks [B, 1, H, W], resized first to the oracle's
    training size when it has one (``size``), on the oracle's device."""
    size = getattr(oracle, "size", None)
    if size and (images.shape[-1] != size or images.shape[-2] != size):
        images = resize_images(images, size)
        masks = torch.nn.functional.interpolate(masks.float(), size=(size, size), mode="nearest")
    dev = next(oracle.parameters()).device if hasattr(oracle, "parameters") else "cpu"
    return oracle_iou(oracle, images.to(dev), masks.to(dev)).cpu().tolist()
