"""Mask-conditioned sampling: an explicit denoising loop, image branch only, classifier-free guidance.

Guidance pairs (mask m, prompt p) against (no mask, empty prompt): the unconditional branch drops
BOTH, so the guidance scale amplifies the mask's effect (dropping only the prompt would leave the mask
unguided). Conditional and unconditional predictions come from ONE batched UNet call.
Sample i's starting noise depends only on its own seed, so images do not depend on the batch size.

Inpainting (``background`` given) is blended latent denoising: after every step the latents outside the
region to regenerate are replaced by the background's latents noised to the same level (fixed per-sample
noise), so the model fills the region in context; optional RePaint-style resampling (DDIM only) re-noises
one step and denoises it again ``resample`` times to harmonise the seam. The decoded image is finally
composited onto the background with a feathered alpha that is zero outside the region, so pixels
outside it are kept exactly (the codec is lossy; without the composite they would drift).

x0 bound: at every step the clean-latent estimate x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t may be clamped to ±B and
ε̂ recomputed from it (``bound_x0``), for every scheduler alike. With a schedule whose last ᾱ is tiny (the
TAEF2 bases' linear schedule: ᾱ_T = 4·10⁻⁵) the first estimate multiplies ε̂'s error by 1/√ᾱ_T ≈ 160 and
unbounded sampling diverges (final latents of std ≈ 10 instead of 1). B is stored with the generator
(``spec["x0_clip"]``, written by ``pretrain-base``) and inherited by its fine-tunes; absent = no bound, as
for SD, whose scaled-linear schedule amplifies ≈ 15×. It is not switched on silently for other models.
"""
from __future__ import annotations

from typing import Literal

import torch

from anomalign.seeding import seeded_noise

SchedulerName = Literal["ddim", "dpm++", "unipc"]
# The default sampler and each sampler's default steps. UniPC-8 matched DDIM-50's oracle IoU and FID within their
# 3-seed spread at 4.0x the speed, on the built-in data and on magnetic tile (docs/benchmarks.md, issue 40).
DEFAULT_SAMPLER: SchedulerName = "unipc"
DEFAULT_STEPS = {"ddim": 50, "dpm++": 10, "unipc": 8}
# Classifier-free guidance of `generate` and `MaskGenerator.inpaint` per backend: the tiny model aligns best at 3
# (docs/generator.md), Stable Diffusion takes the paper's 7.
DEFAULT_GUIDANCE = {"tiny": 3.0, "sd": 7.0}


def make_scheduler(train_scheduler, name: SchedulerName):
    """A sampling scheduler sharing the training noise schedule (betas, prediction type)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
    # predict_noise always returns ε (v-prediction outputs are converted), so the sampler works in ε space.
    cfg = dict(train_scheduler.config, prediction_type="epsilon")
    if name == "ddim":
        # No clip_sample: a bound is the model's documented choice (bound_x0 in sample), never a silent default.
        return DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "dpm++":
        # Thresholding off + final sigma zero: no silent rescaling of outputs.
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False, final_sigmas_type="zero")
    if name == "unipc":  # UniPC (bh2), 2nd order, the same no-rescaling choices as dpm++
        return UniPCMultistepScheduler.from_config(cfg, solver_order=2, thresholding=False, final_sigmas_type="zero")
    raise ValueError(f"unknown scheduler {name!r}; choose 'ddim', 'dpm++' or 'unipc'")


def bound_x0(eps: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, bound: float) -> torch.Tensor:
    """ε̂ [B, C, h, w] whose implied x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ is clamped to [−bound, bound].

    Equivalent to diffusers' DDIM ``clip_sample`` with ``use_clipped_model_output`` (ε̂ re-derived from the
    clamped x̂0, as in GLIDE, so the direction term carries no more of the error than x̂0 does), but
    scheduler-independent: the sampler hands the corrected ε̂ to whichever scheduler steps.
    """
    a = alpha_bar.to(latents.dtype)
    x0 = ((latents - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-bound, bound)
    return (latents - a.sqrt() * x0) / (1 - a).sqrt()


def x0_bound_of(gen, x0_clip: float | None) -> float | None:
    """The bound sampling uses: ``x0_clip`` if given (0 = none), else the generator's stored one (or none)."""
    bound = gen.spec.get("x0_clip") if x0_clip is None else x0_clip
    if bound is not None and bound < 0:
        raise ValueError(f"x0_clip must be >= 0 (0 = no bound), got {bound}")
    return float(bound) if bound else None


def feather(region: torch.Tensor, width: int) -> torch.Tensor:
    """Alpha [B, 1, H, W]: 1 deep inside ``region`` {0,1}, ramping to 0 over ``width`` px at its border, 0 outside."""
    if width <= 0:
        return region
    k = 2 * width + 1
    soft = torch.nn.functional.avg_pool2d(region, k, stride=1, padding=width, count_include_pad=False)
    # Ramp = how far inside: erode-like smoothing, then keep strictly inside the region.
    return ((soft - 0.5).clamp_min(0) * 2).clamp(max=1) * region


def _renoise_one_step(sched, latents: torch.Tensor, t_prev: int, t: int, seeds: list[int], salt: int) -> torch.Tensor:
    """q(x_t | x_t_prev): the forward step from t_prev back up to t, per-sample seeded noise."""
    ac = sched.alphas_cumprod
    a_t = ac[t]
    a_prev = ac[t_prev] if t_prev >= 0 else sched.final_alpha_cumprod
    ratio = (a_t / a_prev).to(latents.dtype)
    noise = seeded_noise([(s * 7_919 + salt) % 2**63 for s in seeds], latents.shape[1:], latents.device, latents.dtype)
    return ratio.sqrt() * latents + (1 - ratio).sqrt() * noise


@torch.no_grad()
def sample(gen, masks: torch.Tensor, prompts: list[str], seeds: list[int], scheduler: SchedulerName = "ddim",
           steps: int = 50, guidance: float = 7.0, decode: bool = True, background: torch.Tensor | None = None,
           region: torch.Tensor | None = None, resample: int = 0, feather_px: int = 2,
           x0_clip: float | None = None, alpha: torch.Tensor | None = None, composite: bool = True) -> torch.Tensor:
    """Generate images for masks [B, 1, H, W] in {0,1} (or soft), prompts [B], seeds [B].

    ``x0_clip``: bound on the clean-latent estimate at every step (``bound_x0``); None = the generator's
    stored bound (``spec["x0_clip"]``, none if absent), 0 = no bound.

    Inpainting: ``background`` [B, 3, H, W] in [-1, 1] and ``region`` [B, 1, H, W] in [0, 1] (where to
    generate, e.g. the dilated mask; a soft region, ``window.seamless_masks``, blends the latents in proportion:
    a latent cell is regenerated as much as its most regenerated pixel); see the module docstring. ``alpha``
    [B, 1, H, W]: the final composite's alpha (default ``feather(region, feather_px)``); ``composite`` False
    returns the decoded images without it (a caller that pastes them itself, at another size). Returns images
    [B, 3, H, W] in [-1, 1] (or latents [B, C, h, w] if ``decode`` is False).
    """
    if resample and scheduler != "ddim":
        raise ValueError("resample (RePaint-style) needs the ddim scheduler: multistep solvers keep a history")
    sched = make_scheduler(gen.scheduler, scheduler)
    bound = x0_bound_of(gen, x0_clip)
    sched.set_timesteps(steps, device=gen.device)
    b, _, h, w = masks.shape
    f = gen.factor
    latents = seeded_noise(seeds, (gen.latent_channels, h // f, w // f), gen.device, gen.unet.dtype)
    latents = latents * sched.init_noise_sigma
    cond = gen.condition(masks.to(gen.device))
    emb = gen.encode_prompts(list(prompts))
    if guidance != 1.0:
        cond = torch.cat([cond, torch.zeros_like(cond)])
        emb = torch.cat([emb, gen.encode_prompts([""] * b)])
    if background is not None:
        from anomalign.generator.losses import add_noise
        bg = background.to(gen.device)
        z_bg = gen.encode(bg).to(latents.dtype)
        bg_noise = seeded_noise([(s * 7_919 + 1) % 2**63 for s in seeds], z_bg.shape[1:], gen.device, latents.dtype)
        # A latent cell is regenerated if any of its pixels is: the region never shrinks in latent space.
        keep_lat = 1 - torch.nn.functional.max_pool2d(region.to(gen.device, latents.dtype), f)
        timesteps = sched.timesteps.tolist()

    def denoise(latents: torch.Tensor, t) -> torch.Tensor:
        x = latents if guidance == 1.0 else torch.cat([latents, latents])
        x = sched.scale_model_input(x, t)
        tt = torch.full((x.shape[0],), int(t), device=gen.device, dtype=torch.long)
        eps = gen.predict_noise(x, tt, emb, cond)
        if guidance != 1.0:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        if bound is not None:
            eps = bound_x0(eps, latents, gen.scheduler.alphas_cumprod[int(t)].to(latents.device), bound)
        return sched.step(eps, t, latents).prev_sample

    def blend(latents: torch.Tensor, k: int) -> torch.Tensor:
        """Outside the region, put back the background noised to the level after step k."""
        t_next = timesteps[k + 1] if k + 1 < len(timesteps) else None
        known = z_bg if t_next is None else add_noise(
            gen.scheduler, z_bg, bg_noise, torch.full((z_bg.shape[0],), int(t_next), device=gen.device))
        return keep_lat * known + (1 - keep_lat) * latents

    for k, t in enumerate(sched.timesteps):
        latents = denoise(latents, t)
        if background is not None:
            latents = blend(latents, k)
            t_prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
            for r in range(resample):
                latents = _renoise_one_step(sched, latents, t_prev, int(t), seeds, 1000 * k + r + 2)
                latents = blend(denoise(latents, t), k)
    if not decode:
        return latents
    images = gen.decode(latents).clamp(-1, 1)
    if background is not None and composite:
        alpha = feather(region.to(images), feather_px) if alpha is None else alpha.to(images)
        images = alpha * images + (1 - alpha) * bg.to(images)
    return images

