"""Tiny random models built in code (diffusers' get_dummy_components style): no downloads."""
from __future__ import annotations

from pathlib import Path

import torch


def dummy_tiny_generator(mask_encoding: str = "unshuffle", seed: int = 0):
    """A tiny-backend MaskGenerator with random weights, 32x32 images, factor-2 codec."""
    from diffusers import DDPMScheduler

    from anomalign.generator.conditioning import mask_channels
    from anomalign.generator.model import MaskGenerator
    from anomalign.generator.tiny import build_tiny

    torch.manual_seed(seed)
    vae_cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                   latent_channels=4, norm_num_groups=4, sample_size=32)
    unet_cfg = dict(sample_size=16, block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, attention_head_dim=4,
                    norm_num_groups=8)
    vocab = ["a", "photo", "of", "surface", "with", "scratch", "hole", "defect", "defect-free"]
    vae, unet, prompt = build_tiny(vocab, mask_channels(mask_encoding, 2, 4), vae_config=vae_cfg,
                                   unet_config=unet_cfg, prompt_dim=16, prompt_len=8)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return MaskGenerator(vae, unet, prompt, sched, mask_encoding, {"backend": "tiny", "resolution": 32})


def save_dummy_sd(folder: Path, seed: int = 0) -> Path:
    """A random Stable-Diffusion-shaped model in diffusers format (unet, vae, text_encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[16, 32],
                                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=32)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for name, obj in (("unet", unet), ("vae", vae), ("text_encoder", text), ("tokenizer", tokenizer),
                      ("scheduler", sched)):
        obj.save_pretrained(folder / name)
    return folder


def write_tiny_plan(path: Path, base: Path, arms: list[str] | None = None) -> Path:
    """A plan.yaml for `anomalign run` that fits seconds: 32-px whole images, 8 segmenter steps, 3 generator
    steps on the tiny generator base ``base``, 6 unfiltered synthetic pairs (``arms``: default the plan's)."""
    lines = ["crop_size: 0", "size: 32", "seg_steps: 8", "batch_size: 4", f"base: {base}", "gen_resolution: 32",
             "gen_crop_size: 0", "gen_steps: 3", "synthetic: 6", "sample_steps: 2", "min_alignment: 0.0",
             "synthetic_per_step: 2"] + ([f"arms: [{', '.join(arms)}]"] if arms is not None else [])
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
