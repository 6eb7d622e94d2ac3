"""Models for the speed benchmarks, built in code (random weights; speed is weight-independent).

``sd_generator(width)``: Stable-Diffusion-1.5-shaped UNet and VAE (channel widths multiplied by
``width``; 1.0 = SD-1.5 itself: UNet 320/640/1280/1280, cross-attention 768, VAE 128/256/512/512),
mask-conditioned exactly like the ``sd`` backend (widened conv_in, unshuffled mask, LoRA rank 8).
FLOPs scale with width², so reduced widths keep the ratios between code paths while fitting a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class FixedPrompts(nn.Module):
    """Stands in for CLIP: every prompt maps to the same seeded [L, D] embedding (its cost is paid once per
    batch outside the denoising loop, so it does not matter for speed)."""

    def __init__(self, dim: int, length: int = 77):
        super().__init__()
        self.register_buffer("emb", torch.randn(length, dim, generator=torch.Generator().manual_seed(0)))

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.emb.expand(len(prompts), -1, -1)


def _w(c: int, width: float, groups: int = 32) -> int:
    return max(groups, int(round(c * width / groups)) * groups)


def sd_generator(width: float = 1.0, lora: bool = True, seed: int = 0):
    """(MaskGenerator, prompt embedding dim)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from anomalign.generator.conditioning import expand_conv_in, mask_channels
    from anomalign.generator.model import MaskGenerator

    torch.manual_seed(seed)
    groups = 32 if width >= 0.25 else 8
    ctx = _w(768, width, 64)
    heads = max(1, int(round(8 * width)))
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=[_w(c, width, groups) for c in (320, 640, 1280, 1280)],
        cross_attention_dim=ctx, attention_head_dim=heads, norm_num_groups=groups)
    vae = AutoencoderKL(block_out_channels=[_w(c, width, groups) for c in (128, 256, 512, 512)],
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, layers_per_block=2, norm_num_groups=groups)
    vae.config.scaling_factor = 0.18215
    expand_conv_in(unet, mask_channels("unshuffle", 8, 4))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    vae.requires_grad_(False)
    gen = MaskGenerator(vae, unet, FixedPrompts(ctx), sched, "unshuffle", {"backend": "sd", "base": "random",
                                                                            "resolution": 512})
    if lora:
        gen.unet.requires_grad_(False)
        gen.add_lora(rank=8)
        gen.unet.conv_in.requires_grad_(True)
    return gen, ctx


def tiny_generator():
    """The shipped tiny base (64 px) and its prompt embedding dim."""
    from anomalign.generator.model import MaskGenerator
    from anomalign.generator.model import TINY_BASE
    gen = MaskGenerator.load(TINY_BASE)
    return gen, gen.prompt_encoder.dim
