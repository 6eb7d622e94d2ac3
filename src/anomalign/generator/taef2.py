"""TAEF2: a pretrained tiny image autoencoder (codec E/D) for the ``tiny`` backend.

TAEF2 ("Tiny AutoEncoder for FLUX.2", Ollin Boer Bohan, MIT license, github.com/madebyollin/taesd) was
distilled on a very large set of real photographs, so it reconstructs colours and textures the procedural
pretraining corpus never showed (the from-scratch AutoencoderKL washes them to beige). This is our own
implementation written from the layer description shipped beside the weights; its state dict matches the
upstream files, which are two ``nn.Sequential`` stacks whose keys are layer positions:

- encoder: RGB [B, 3, H, W] in [0, 1] -> latents [B, 32, H/8, W/8];
- decoder: latents [B, 32, h, w] -> RGB [B, 3, 8h, 8w], roughly in [0, 1].

Two classes:

- ``TAEF2``: the codec itself, in the project's value range (images in [-1, 1]); ``encode`` / ``decode``
  return plain tensors of *raw* (unscaled) latents. ``scaling_factor`` (1 / std of raw latents over a corpus,
  see ``latent_scaling_factor``) travels with it.
- ``TAEF2Codec``: the same weights behind the slice of diffusers' ``AutoencoderKL`` API that
  ``MaskGenerator`` uses (``config.block_out_channels`` / ``latent_channels`` / ``scaling_factor``,
  ``encode(x).latent_dist.mean``, ``decode(z).sample``, ``dtype``), so the generator code is codec-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from anomalign.errors import AnomalignError

LATENT_CHANNELS = 32
WIDTH = 64
POOL_WIDTH = 256
FACTOR = 8
ENCODER_FILE = "taef2_encoder.safetensors"
DECODER_FILE = "taef2_decoder.safetensors"
SCALE_KEY = "anomalign_scaling_factor"


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Block(nn.Module):
    """Residual block [B, 64, h, w] -> [B, 64, h, w]: relu(x + conv-relu-conv-relu-conv(x))."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + x)


class PoolBlock(Block):
    """``Block`` preceded by x + pool(x), a per-pixel 64 -> 256 -> 64 MLP with GroupNorm in between.

    GroupNorm normalises over the whole feature map, so this is the only place where a pixel sees
    global image statistics (its colour cast, overall brightness) at the bottleneck.
    """

    def __init__(self, width: int = WIDTH, hidden: int = POOL_WIDTH):
        super().__init__(width)
        self.pool = nn.Sequential(nn.Conv2d(width, hidden, 1, bias=False), nn.GroupNorm(4, hidden), nn.ReLU(),
                                  nn.Conv2d(hidden, width, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pool(x))


class SoftClamp(nn.Module):
    """3·tanh(x / 3): keeps out-of-distribution latents (e.g. a diffusion sample) in the decoder's range."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def build_encoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """[B, 3, H, W] in [0, 1] -> [B, latent_channels, H/8, W/8]; positions match the upstream key names."""
    return nn.Sequential(
        _conv(3, WIDTH), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), Block(), Block(), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), Block(), Block(), Block(),
        _conv(WIDTH, WIDTH, stride=2, bias=False), PoolBlock(), PoolBlock(), PoolBlock(),
        _conv(WIDTH, latent_channels))


def build_decoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """[B, latent_channels, h, w] -> [B, 3, 8h, 8w], roughly in [0, 1]; positions match the upstream keys."""
    return nn.Sequential(
        SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU(), PoolBlock(), PoolBlock(), PoolBlock(),
        nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False), Block(),
        _conv(WIDTH, 3))


def _check_size(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[-1] % FACTOR or x.shape[-2] % FACTOR:
        raise AnomalignError(f"TAEF2 encodes [B, C, H, W] images with H and W multiples of {FACTOR}; "
                             f"got shape {tuple(x.shape)}")


class TAEF2(nn.Module):
    """The TAEF2 codec in the project's value range. State dict: ``encoder.<pos>.*`` and ``decoder.<pos>.*``.

    Runs in whatever dtype it is moved to (the shipped files are fp16; loading casts to the module's dtype,
    fp32 by default, because fp16 convolutions are slow or unsupported on CPUs).
    """

    def __init__(self, latent_channels: int = LATENT_CHANNELS, scaling_factor: float = 1.0):
        super().__init__()
        self.latent_channels = latent_channels
        self.scaling_factor = float(scaling_factor)
        self.encoder = build_encoder(latent_channels)
        self.decoder = build_decoder(latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder[0].weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> raw latents [B, 32, H/8, W/8] (multiply by scaling_factor for diffusion)."""
        _check_size(x)
        return self.encoder((x.to(self.dtype) + 1) / 2)

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Masks [B, 1, H, W] in {0, 1} (or soft [0, 1]) -> raw latents [B, 32, H/8, W/8].

        The mask goes through the image encoder as a grey-level image (Eq. 2's E(m)): repeated to 3
        channels in the image range, so 0 is black and 1 is white.
        """
        return self.encode(mask.float().expand(-1, 3, -1, -1) * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, 32, h, w] -> images [B, 3, 8h, 8w] clamped to [-1, 1]."""
        return self.decoder(z.to(self.dtype)).clamp(0, 1) * 2 - 1

    # ---- files -------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: Path | str, device: str | torch.device = "cpu") -> "TAEF2":
        """Load ``taef2_encoder.safetensors`` + ``taef2_decoder.safetensors`` from ``folder`` (fp32 result).

        A scaling factor is read from the encoder file's metadata when ``save`` wrote one; the upstream
        files have none (1.0 until ``latent_scaling_factor`` is computed).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        folder = Path(folder)
        model = cls()
        for name, part in ((ENCODER_FILE, model.encoder), (DECODER_FILE, model.decoder)):
            file = folder / name
            if not file.is_file():
                raise AnomalignError(f"{folder}: no {name} here (a TAEF2 folder holds {ENCODER_FILE} and "
                                     f"{DECODER_FILE})")
            try:
                state = load_file(str(file))
                with safe_open(str(file), framework="pt") as fh:
                    meta = fh.metadata() or {}
            except (SafetensorError, OSError) as e:
                raise AnomalignError(f"{file}: unreadable weights ({type(e).__name__}: {e})") from None
            try:
                part.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise AnomalignError(f"{file}: weights do not fit TAEF2 ({str(e).splitlines()[0]})") from None
            if name == ENCODER_FILE and SCALE_KEY in meta:  # latents are the encoder's: its file holds the scale
                model.scaling_factor = float(meta[SCALE_KEY])
        return model.to(device)

    def save(self, folder: Path | str, dtype: torch.dtype = torch.float16) -> Path:
        """Write the two upstream-compatible files (fp16 by default) with the scaling factor as metadata."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {SCALE_KEY: repr(self.scaling_factor)}
        for name, part in ((ENCODER_FILE, self.encoder), (DECODER_FILE, self.decoder)):
            save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in part.state_dict().items()},
                      str(folder / name), metadata=meta)
        return folder


@torch.no_grad()
def latent_scaling_factor(encode, images: torch.Tensor, batch_size: int = 64) -> float:
    """1 / std of the raw latents ``encode`` gives for ``images`` [N, 3, H, W] in [-1, 1].

    The noise schedule assumes unit-variance latents; TAEF2's raw latents have std ≈ 0.74 on procedural
    images. ``encode`` is e.g. ``TAEF2.encode``; masks can be included by passing them as images.
    """
    if len(images) < 2:
        raise AnomalignError("the latent scaling factor needs at least 2 images")
    # Running sums over batches: the whole corpus' latents need not fit in memory at once.
    n, s, s2 = 0, 0.0, 0.0
    for i in range(0, len(images), batch_size):
        z = encode(images[i:i + batch_size]).double()
        n, s, s2 = n + z.numel(), s + z.sum().item(), s2 + (z * z).sum().item()
    var = (s2 - s * s / n) / (n - 1)
    return float(1.0 / max(var, 1e-12) ** 0.5)


@dataclass
class _PointPosterior:
    """What ``AutoencoderKL.encode(x).latent_dist`` offers, for a deterministic encoder (zero variance)."""

    mean: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean


@dataclass
class _EncoderOutput:
    latent_dist: _PointPosterior


@dataclass
class _DecoderOutput:
    sample: torch.Tensor


class TAEF2Codec(ModelMixin, ConfigMixin):
    """TAEF2 behind the ``AutoencoderKL`` calls ``MaskGenerator`` makes (the ``vae`` of a tiny generator).

    ``block_out_channels`` only encodes the downsampling factor (2 ** (len - 1) = 8); all widths are 64.
    ``scaling_factor`` lives in the config so it is saved in the generator's spec (``vae_config``).
    State dict: ``taef2.encoder.<pos>.*`` and ``taef2.decoder.<pos>.*``.
    """

    @register_to_config
    def __init__(self, latent_channels: int = LATENT_CHANNELS, block_out_channels: tuple[int, ...] = (WIDTH,) * 4,
                 scaling_factor: float = 1.0, latents_mean: list[float] | None = None,
                 latents_std: list[float] | None = None):
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != FACTOR:
            raise AnomalignError(f"TAEF2 downsamples by {FACTOR}: block_out_channels needs 4 entries")
        if (latents_mean is None) != (latents_std is None) or (
                latents_mean is not None and not len(latents_mean) == len(latents_std) == latent_channels):
            raise AnomalignError(f"latents_mean and latents_std: both or neither, {latent_channels} values each")
        self.taef2 = TAEF2(latent_channels, scaling_factor)
        # Per-channel statistics (``fit_latent_stats``): raw TAEF2 channels have means up to ±0.6 and stds from
        # 0.45 to 0.9 (procedural corpus); normalising each makes every channel a unit-variance, zero-mean signal for the noise schedule.
        stats = latents_mean is not None
        self.register_buffer("_mean", torch.tensor(latents_mean or [0.0] * latent_channels).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("_std", torch.tensor(latents_std or [1.0] * latent_channels).view(1, -1, 1, 1),
                             persistent=False)
        self._per_channel = stats

    @classmethod
    def from_folder(cls, folder: Path | str, scaling_factor: float | None = None) -> "TAEF2Codec":
        """The codec of a TAEF2 folder (see ``TAEF2.from_folder``); ``scaling_factor`` overrides the file's."""
        model = TAEF2.from_folder(folder)
        codec = cls(scaling_factor=scaling_factor if scaling_factor is not None else model.scaling_factor)
        codec.taef2.load_state_dict(model.state_dict())
        return codec

    def fit_scaling_factor(self, images: torch.Tensor, batch_size: int = 64) -> float:
        """Set (and return) the scaling factor that gives ``images`` [N, 3, H, W] unit-variance latents."""
        factor = latent_scaling_factor(lambda x: self.taef2.encode(x.to(self.device)), images, batch_size)
        self._set_config(scaling_factor=factor)
        self.taef2.scaling_factor = factor
        return factor

    def _set_config(self, **values) -> None:
        """``register_to_config`` that also takes the keys off diffusers' ``_use_default_values`` list: a key left
        there is dropped by ``from_config`` when a saved generator is rebuilt, silently losing the value."""
        from diffusers.configuration_utils import FrozenDict
        self.register_to_config(**values)
        internal = dict(self._internal_dict)
        internal["_use_default_values"] = [k for k in internal.get("_use_default_values", []) if k not in values]
        self._internal_dict = FrozenDict(internal)

    def fit_latent_stats(self, images: torch.Tensor, batch_size: int = 64) -> tuple[list[float], list[float]]:
        """Set per-channel mean and std of the raw latents of ``images`` [N, 3, H, W] (and scaling factor 1):
        ``encode`` then returns zero-mean, unit-variance channels. Returns (means, stds)."""
        n, s, s2 = 0, 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                z = self.taef2.encode(images[i:i + batch_size].to(self.device)).double()
                n += z.shape[0] * z.shape[2] * z.shape[3]
                s, s2 = s + z.sum((0, 2, 3)), s2 + (z * z).sum((0, 2, 3))
        if n < 2:
            raise AnomalignError("the latent statistics need at least 2 latent positions")
        mean = s / n
        std = ((s2 - n * mean * mean) / (n - 1)).clamp_min(1e-12).sqrt()
        means, stds = [float(v) for v in mean], [float(v) for v in std]
        self._set_config(latents_mean=means, latents_std=stds, scaling_factor=1.0)
        self.taef2.scaling_factor = 1.0
        self._mean.copy_(torch.tensor(means).view(1, -1, 1, 1))
        self._std.copy_(torch.tensor(stds).view(1, -1, 1, 1))
        self._per_channel = True
        return means, stds

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images [B, 3, H, W] in [-1, 1] -> ``.latent_dist.mean``: raw latents [B, 32, H/8, W/8], or per-channel
        normalised ones when the codec has latent statistics."""
        z = self.taef2.encode(x)
        if self._per_channel:
            z = (z - self._mean.to(z)) / self._std.to(z)
        post = _PointPosterior(z)
        return _EncoderOutput(post) if return_dict else (post,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latents [B, 32, h, w] (as ``encode`` gives them) -> ``.sample`` images [B, 3, 8h, 8w] in [-1, 1]."""
        if self._per_channel:
            z = z * self._std.to(z) + self._mean.to(z)
        x = self.taef2.decode(z)
        return _DecoderOutput(x) if return_dict else (x,)
