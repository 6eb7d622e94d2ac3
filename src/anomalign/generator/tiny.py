"""The ``tiny`` backend: SD's architecture at CPU scale, with no downloaded weights or tokenizer.

- codec: a diffusers ``AutoencoderKL`` (64x64x3 -> 16x16x4), the E/D of the paper, which also encodes masks;
  or the pretrained TAEF2 (``generator/taef2.py``: HxWx3 -> H/8xW/8x32), chosen by the spec's ``codec`` field;
- UNet: a diffusers ``UNet2DConditionModel`` on the 16x16 latent grid, conv_in widened for the mask;
- prompt encoder: ``TinyPromptEncoder``, learned word embeddings with positions (new words from a
  user's prompts are added at fine-tuning time and learned, like textual inversion).
"""
from __future__ import annotations

import re

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:  # diffusers is imported where models are built, so `--help` stays fast
    from diffusers import UNet2DConditionModel

PAD, UNK = "<pad>", "<unk>"

TINY_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                       up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 128],
                       layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64,
                       scaling_factor=1.0)
TINY_UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[64, 128, 192],
                        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                        layers_per_block=1, cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32)


def words(prompt: str) -> list[str]:
    """Lower-cased word tokens of a prompt (letters, digits, hyphens)."""
    return re.findall(r"[a-z0-9\-]+", prompt.lower())


class TinyPromptEncoder(nn.Module):
    """τ(p) for the tiny backend: [B] prompts -> [B, max_len, dim] token embeddings + positions.

    The empty prompt "" (classifier-free guidance) is all padding, so it has its own embedding.
    """

    def __init__(self, vocab: list[str], dim: int = 128, max_len: int = 12):
        super().__init__()
        self.vocab = [PAD, UNK] + [w for w in vocab if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim, self.max_len = dim, max_len
        self.token = nn.Embedding(len(self.vocab), dim)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """[B] prompts -> LongTensor [B, max_len] (truncated / padded)."""
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [self.index.get(w, 1) for w in words(p)][: self.max_len]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenize(prompts).to(self.token.weight.device)
        return self.norm(self.token(ids) + self.position)

    def add_words(self, new_words: list[str]) -> list[str]:
        """Add unknown words; their embeddings start at the mean of the known ones. Returns what was added."""
        added = [w for w in dict.fromkeys(new_words) if w not in self.index]
        if not added:
            return []
        old = self.token.weight.data
        table = nn.Embedding(len(self.vocab) + len(added), self.dim).to(old.device, old.dtype)
        with torch.no_grad():
            table.weight[: len(self.vocab)] = old
            table.weight[len(self.vocab):] = old[2:].mean(0, keepdim=True) if len(self.vocab) > 2 else 0.0
        self.token = table
        for w in added:
            self.index[w] = len(self.vocab)
            self.vocab.append(w)
        return added


def build_tiny(vocab: list[str], mask_extra_channels: int, vae_config: dict | None = None,
               unet_config: dict | None = None, prompt_dim: int = 128, prompt_len: int = 12,
               codec: nn.Module | None = None) -> tuple[nn.Module, "UNet2DConditionModel", TinyPromptEncoder]:
    """Fresh (random) tiny components; the UNet takes the codec's latent + ``mask_extra_channels`` channels.

    ``codec`` replaces the fresh AutoencoderKL with a given (e.g. pretrained ``TAEF2Codec``) one.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel  # here, not at the top: `--help` stays fast

    vae = codec if codec is not None else AutoencoderKL(**(vae_config or TINY_VAE_CONFIG))
    ucfg = dict(unet_config or TINY_UNET_CONFIG)
    ucfg["in_channels"] = vae.config.latent_channels + mask_extra_channels
    ucfg["out_channels"] = vae.config.latent_channels
    ucfg["cross_attention_dim"] = prompt_dim
    unet = UNet2DConditionModel(**ucfg)
    return vae, unet, TinyPromptEncoder(vocab, prompt_dim, prompt_len)
