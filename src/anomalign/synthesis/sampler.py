"""Mask-conditioned sampling: an explicit denoising loop, image branch only, classifier-free guidance.

Guidance pairs (mask m, prompt p) against (no mask, empty prompt): the unconditional branch drops
BOTH, so the guidance scale amplifies the mask's effect (dropping only the prompt would leave the mask
unguided). Conditional and unconditional predictions come from ONE batched UNet call.
Sample i's starting noise depends only on its own seed, so images do not depend on the batch size.
"""
from __future__ import annotations

from typing import Literal

import torch

SchedulerName = Literal["ddim", "dpm++"]


def make_scheduler(train_scheduler, name: SchedulerName):
    """A sampling scheduler sharing the training noise schedule (betas, prediction type)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    # predict_noise always returns ε (v-prediction outputs are converted), so the sampler works in ε space.
    cfg = dict(train_scheduler.config, prediction_type="epsilon")
    if name == "ddim":
        # clip_sample would hide a diverging model (values silently clamped); keep the raw trajectory.
        return DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "dpm++":
        # Thresholding off + final sigma zero: no silent rescaling of outputs.
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False, final_sigmas_type="zero")
    raise ValueError(f"unknown scheduler {name!r}; choose 'ddim' or 'dpm++'")


def initial_noise(seeds: list[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """[B, *shape] standard normal noise, row i drawn from its own generator seeded with seeds[i]."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


@torch.no_grad()
def sample(gen, masks: torch.Tensor, prompts: list[str], seeds: list[int], scheduler: SchedulerName = "ddim",
           steps: int = 50, guidance: float = 7.0, decode: bool = True) -> torch.Tensor:
    """Generate images for masks [B, 1, H, W] in {0,1} (or soft), prompts [B], seeds [B].

    Returns images [B, 3, H, W] in [-1, 1] (or latents [B, C, h, w] if ``decode`` is False).
    """
    sched = make_scheduler(gen.scheduler, scheduler)
    sched.set_timesteps(steps, device=gen.device)
    b, _, h, w = masks.shape
    f = gen.factor
    latents = initial_noise(seeds, (gen.latent_channels, h // f, w // f), gen.device, gen.unet.dtype)
    latents = latents * sched.init_noise_sigma
    cond = gen.condition(masks.to(gen.device))
    emb = gen.encode_prompts(list(prompts))
    if guidance != 1.0:
        cond = torch.cat([cond, torch.zeros_like(cond)])
        emb = torch.cat([emb, gen.encode_prompts([""] * b)])
    for t in sched.timesteps:
        x = latents if guidance == 1.0 else torch.cat([latents, latents])
        x = sched.scale_model_input(x, t)
        tt = torch.full((x.shape[0],), int(t), device=gen.device, dtype=torch.long)
        eps = gen.predict_noise(x, tt, emb, cond)
        if guidance != 1.0:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        latents = sched.step(eps, t, latents).prev_sample
    if not decode:
        return latents
    return gen.decode(latents).clamp(-1, 1)

