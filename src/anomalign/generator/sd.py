"""The ``sd`` backend: any Stable Diffusion 1.x/2.x model in diffusers format, from a folder or a hub id.

The VAE and the CLIP text encoder stay frozen; the UNet gets LoRA adapters (peft) and a widened
``conv_in`` for the mask. Only those trainable weights are saved; the base is referenced by path/id.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from anomalign.errors import AnomalignError
from anomalign.files import is_hub_id

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ClipPromptEncoder(nn.Module):
    """τ(p) for SD: [B] prompts -> CLIP last hidden states [B, 77, D]."""

    def __init__(self, tokenizer, text_encoder):
        super().__init__()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


def check_sd_folder(base: str) -> None:
    """Clear error for a local path that is not a diffusers SD folder (hub ids are left to diffusers)."""
    if is_hub_id(base):
        return
    path = Path(base)
    if not path.is_dir():
        raise AnomalignError(f"{base}: base model folder does not exist (expected a diffusers Stable Diffusion "
                             f"folder with {', '.join(SD_SUBFOLDERS)}/, or a hub id like org/name)")
    missing = [s for s in SD_SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise AnomalignError(f"{base}: not a diffusers Stable Diffusion folder: missing sub-folder(s) {', '.join(missing)} "
                             "(convert single-file checkpoints with diffusers' convert scripts first)")


def resolve_base(base: str) -> str:
    """A local base folder as an absolute path (what a generator stores, so it can be used from any folder);
    a hub id unchanged."""
    return base if is_hub_id(base) else str(Path(base).expanduser().resolve())


@torch.no_grad()
def base_fingerprint(vae: nn.Module, unet: nn.Module, text_encoder: nn.Module) -> str:
    """A short hash of a base's weights (before conv_in is widened): UNet conv_in/conv_out, the VAE's outer
    convolutions and the first rows of CLIP's token embedding, rounded to fp16 so that an fp16 copy of the
    same base matches. It tells "the same base at another path" from "another base"."""
    import hashlib
    h = hashlib.sha256()
    parts = [unet.conv_in.weight, unet.conv_out.weight, vae.encoder.conv_in.weight, vae.decoder.conv_out.weight,
             text_encoder.get_input_embeddings().weight[:4096]]
    for p in parts:
        h.update(p.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_sd_components(base: str, local_files_only: bool = False):
    """(vae, unet, prompt encoder, scheduler) of an SD 1.x/2.x model; errors name the base and the problem."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_sd_folder(base)
    kw = dict(local_files_only=local_files_only)
    try:
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kw)
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        raise AnomalignError(f"{base}: cannot load Stable Diffusion components ({str(e).splitlines()[0]})") from None
    if unet.config.in_channels != vae.config.latent_channels:
        raise AnomalignError(f"{base}: UNet takes {unet.config.in_channels} input channels but the VAE makes "
                             f"{vae.config.latent_channels}-channel latents; inpainting/depth UNets are not supported")
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise AnomalignError(f"{base}: UNet cross-attention dim {unet.config.cross_attention_dim} does not match "
                             f"the text encoder's hidden size {text_encoder.config.hidden_size}")
    return vae, unet, ClipPromptEncoder(tokenizer, text_encoder), scheduler
