"""How the mask m and the prompt p condition the UNet.

Mask: extra input channels concatenated to the noisy latent, entering through ``conv_in`` widened with
zero-initialised weights (so a pretrained UNet starts out exactly as before). Encodings of m [B, 1, H, W]:

- ``unshuffle`` (default): pixel-unshuffle of (2m-1) to the latent grid, f² channels for a codec with
  downsampling factor f. Lossless: a 1-px scratch stays visible to the UNet, which a resize or the
  codec would blur away.
- ``resize``: area average of (2m-1) to the latent grid, 1 channel.
- ``vae``: the codec's encoding E(m) (the h0 of Eq. 2), latent_channels channels.
- ``none``: no mask input at all (0 channels): a *mask-free* base, prompt-conditioned only, like Stable
  Diffusion. Fine-tuning gives it a mask condition with ``expand_conv_in`` (the paper's regime).

Present masks are mapped to [-1, 1]; a DROPPED mask (classifier-free guidance) is all zeros, a value no
real mask takes, so "no condition" differs from "empty mask". Soft masks (Generative Feedback's m̃ in
[0, 1]) use the same mapping.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

MaskEncoding = Literal["unshuffle", "resize", "vae", "none"]


def mask_channels(encoding: MaskEncoding, factor: int, latent_channels: int) -> int:
    """Number of condition channels for ``encoding`` with codec downsampling ``factor``."""
    choices = {"unshuffle": factor * factor, "resize": 1, "vae": latent_channels, "none": 0}
    if encoding not in choices:
        raise ValueError(f"unknown mask encoding {encoding!r}; choose one of {list(choices)}")
    return choices[encoding]


def encode_mask_condition(mask: torch.Tensor, encoding: MaskEncoding, factor: int,
                          vae_latent: torch.Tensor | None = None) -> torch.Tensor:
    """mask [B, 1, H, W] in [0, 1] -> condition [B, Cm, H/f, W/f] in [-1, 1].

    For ``vae`` pass ``vae_latent`` = E(m) (already computed for Eq. 2, so it is not encoded twice).
    """
    signed = mask.float() * 2 - 1
    if encoding == "none":
        b, _, h, w = mask.shape
        return signed.new_zeros(b, 0, h // factor, w // factor)
    if encoding == "unshuffle":
        return F.pixel_unshuffle(signed, factor)
    if encoding == "resize":
        return F.avg_pool2d(signed, factor)
    if encoding == "vae":
        if vae_latent is None:
            raise ValueError("mask encoding 'vae' needs the encoded mask (vae_latent)")
        return vae_latent
    raise ValueError(f"unknown mask encoding {encoding!r}; choose unshuffle, resize, vae or none")


def drop_condition(cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the condition of samples where ``keep`` [B] is False (classifier-free guidance training)."""
    return cond * keep.view(-1, 1, 1, 1).to(cond.dtype)


def expand_conv_in(unet: nn.Module, extra_channels: int) -> None:
    """Widen ``unet.conv_in`` by ``extra_channels`` zero-initialised input channels, in place.

    The original channels keep their weights, so the widened UNet computes exactly what it did before
    until training moves the new weights. Updates ``unet.config.in_channels``.
    """
    old: nn.Conv2d = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size, old.stride,
                    old.padding, bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)


class MaskConvIn(nn.Module):
    """``conv_in`` with its mask channels held as a parameter of their own (``mask_weight``), so the optimizer can
    give them their own learning rate: they start at zero and must learn the mask from a few dozen pairs, while
    the pretrained latent channels (``weight``) and the LoRA adapters should move slowly. The forward pass and the
    state dict are those of the plain Conv2d (one full-width ``weight``), so saved files do not change.
    """

    def __init__(self, conv: nn.Conv2d, latent_channels: int):
        super().__init__()
        self.latent_channels, self.stride, self.padding = latent_channels, conv.stride, conv.padding
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach()[:, :latent_channels].clone(),
                                   requires_grad=conv.weight.requires_grad)
        self.mask_weight = nn.Parameter(conv.weight.detach()[:, latent_channels:].clone(),
                                        requires_grad=conv.weight.requires_grad)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, latent + mask channels, h, w] -> [B, out_channels, h, w], exactly the widened Conv2d."""
        return F.conv2d(x, torch.cat([self.weight, self.mask_weight], dim=1), self.bias, self.stride, self.padding)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = torch.cat([self.weight, self.mask_weight], dim=1)
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        names = ["weight"] + (["bias"] if self.bias is not None else [])
        for name in names:
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
        unexpected_keys += [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in names]
        full = state_dict.get(prefix + "weight")
        if full is not None:
            want = (self.out_channels, self.in_channels, *self.weight.shape[2:])
            if tuple(full.shape) != want:
                error_msgs.append(f"size mismatch for {prefix}weight: {tuple(full.shape)} in the file, {want} here")
                return
            with torch.no_grad():
                self.weight.copy_(full[:, : self.latent_channels])
                self.mask_weight.copy_(full[:, self.latent_channels:])
        if self.bias is not None and prefix + "bias" in state_dict:
            with torch.no_grad():
                self.bias.copy_(state_dict[prefix + "bias"])


def split_mask_channels(unet: nn.Module, latent_channels: int) -> MaskConvIn:
    """Replace ``unet.conv_in`` (a Conv2d over latent + mask channels) by the equivalent ``MaskConvIn``, in place."""
    if not isinstance(unet.conv_in, MaskConvIn):
        unet.conv_in = MaskConvIn(unet.conv_in, latent_channels)
    return unet.conv_in
