"""``MaskGenerator``: one interface over both backends (codec E/D, prompt encoder τ, UNet ε_θ, scheduler).

A trained generator is one self-describing folder: ``generator.safetensors`` (weights; the spec is in
the file's metadata) + ``generator.json`` (the same spec, readable) + the ``config.yaml`` of the run.
``MaskGenerator.load(folder)`` is the single call later commands use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from anomalign.errors import AnomalignError
from anomalign.generator.conditioning import (MaskEncoding, drop_condition, encode_mask_condition,
                                              expand_conv_in, mask_channels)
from anomalign.generator.losses import to_epsilon
from anomalign.generator.sampler import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, sample
from anomalign.weights import canonical_spec, read_spec, read_weights, write_weights

WEIGHTS_NAME = "generator.safetensors"
SPEC_KEY = "anomalign_spec"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# The shipped tiny base (TAEF2 codec + a UNet pretrained with masks; `anomalign pretrain-base --install` makes it).
TINY_BASE = Path(__file__).resolve().parent.parent / "assets" / "tiny_base.safetensors"
CODECS = ("autoencoder_kl", "taef2")  # the tiny backend's E/D; spec["codec"], absent = autoencoder_kl


# Where the tiny base keeps TAEF2's encoder: the codec's state dict under the generator's "vae." prefix
# (``MaskGenerator.trainable_state`` of a TAEF2Codec: ``vae.taef2.encoder.<pos>.*``).
BASE_ENCODER_PREFIX = "vae.taef2.encoder."


def tiny_base_encoder(base: Path | str = TINY_BASE) -> nn.Module:
    """TAEF2's image encoder (``generator.taef2.build_encoder``: [B, 3, H, W] in [0, 1] -> [B, 32, H/8, W/8]) with
    the weights a tiny base file holds (default: the shipped one), in fp32. Only the encoder's tensors are read
    (safetensors, by key; never the UNet's), so the segmenter can start from the codec without the generator."""
    from safetensors import SafetensorError, safe_open

    from anomalign.generator.taef2 import build_encoder
    file = Path(base)
    if not file.is_file():
        raise AnomalignError(f"{file}: no tiny base here (the shipped one is {TINY_BASE}; "
                             "`anomalign pretrain-base --install` writes it)")
    spec = read_spec(file, SPEC_KEY)
    if spec.get("codec") != "taef2":
        raise AnomalignError(f"{file}: this base's codec is {spec.get('codec', 'autoencoder_kl')!r}, not TAEF2: it "
                             "holds no pretrained TAEF2 encoder")
    encoder = build_encoder()
    try:
        with safe_open(str(file), framework="pt") as fh:
            state = {k[len(BASE_ENCODER_PREFIX):]: fh.get_tensor(k).float() for k in fh.keys()
                     if k.startswith(BASE_ENCODER_PREFIX)}
    except (SafetensorError, OSError) as e:
        raise AnomalignError(f"{file}: unreadable weights ({type(e).__name__}: {e})") from None
    _load_strict(encoder, state, f"{file} (TAEF2 encoder)")
    return encoder


class MaskGenerator(nn.Module):
    """Mask- and prompt-conditioned latent diffusion model.

    Shapes: images x [B, 3, H, W] in [-1, 1]; masks m [B, 1, H, W] in [0, 1]; latents [B, C, H/f, W/f].
    """

    def __init__(self, vae, unet, prompt_encoder: nn.Module, scheduler, mask_encoding: MaskEncoding,
                 spec: dict[str, Any]):
        super().__init__()
        self.vae, self.unet, self.prompt_encoder = vae, unet, prompt_encoder
        self.scheduler = scheduler
        self.mask_encoding = mask_encoding
        self.spec = dict(spec, mask_encoding=mask_encoding)

    @property
    def factor(self) -> int:
        """Codec downsampling factor f (8 for SD and TAEF2, 4 for the AutoencoderKL tiny codec)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def resolution(self) -> int:
        return int(self.spec.get("resolution", self.unet.config.sample_size * self.factor))

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): [B, 3, H, W] in [-1, 1] -> scaled latent mean [B, C, H/f, W/f] (deterministic, cacheable)."""
        x = x.to(device=self.device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def encode_mask_image(self, mask: torch.Tensor) -> torch.Tensor:
        """h0 = E(m) of Eq. 2: the mask as a 3-channel image in the image value range [-1, 1]."""
        return self.encode(mask.float().expand(-1, 3, -1, -1) * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z): scaled latents [B, C, h, w] -> images [B, 3, H, W] (roughly in [-1, 1])."""
        return self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """τ(p): [B] prompts -> [B, L, D]."""
        return self.prompt_encoder(list(prompts)).to(self.unet.dtype)

    def condition(self, mask: torch.Tensor, keep: torch.Tensor | None = None,
                  mask_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Mask condition [B, Cm, h, w]; rows with ``keep`` False are dropped (zeros, for CFG)."""
        if self.mask_encoding == "vae" and mask_latent is None:
            mask_latent = self.encode_mask_image(mask)
        cond = encode_mask_condition(mask.to(self.device), self.mask_encoding, self.factor, mask_latent)
        cond = cond.to(self.unet.dtype)
        return cond if keep is None else drop_condition(cond, keep.to(cond.device))

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, prompt_emb: torch.Tensor,
                      cond: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t, τ(p), m) [B, C, h, w], converted to ε whatever the UNet's parameterisation."""
        out = self.unet(torch.cat([x_t.to(self.unet.dtype), cond], dim=1), t, encoder_hidden_states=prompt_emb).sample
        return to_epsilon(self.scheduler, out, x_t, t)

    def cast(self, dtype: torch.dtype) -> "MaskGenerator":
        """The UNet and prompt encoder in ``dtype`` for sampling; the codec stays float32: SD's VAE overflows in
        fp16 at 512 px (NaN or black images), and it is a small part of the memory. Returns self."""
        # torch's own .to(): diffusers' ModelMixin.to() logs a warning about modules kept in float32 (there are
        # none in these models) on every call, i.e. on every `generate`
        nn.Module.to(self.unet, dtype)
        nn.Module.to(self.prompt_encoder, dtype)
        nn.Module.to(self.vae, torch.float32)
        return self

    @property
    def mask_free(self) -> bool:
        """True for a base without a mask input (pretrained like SD, prompt only)."""
        return self.mask_encoding == "none"

    def add_mask_condition(self, encoding: MaskEncoding) -> None:
        """Give a mask-free UNet (SD, or a ``--mask-free`` tiny base) its mask input: ``conv_in`` widened by
        the encoding's channels, zero-initialised, so predictions are unchanged until fine-tuning moves them.
        The one path by which both backends enter the paper's regime."""
        if not self.mask_free:
            raise AnomalignError(f"this generator already has a mask condition ({self.mask_encoding!r})")
        if encoding == "none":
            raise AnomalignError("choose a mask encoding (unshuffle, resize or vae) to add a mask condition")
        expand_conv_in(self.unet, mask_channels(encoding, self.factor, self.latent_channels))
        self.mask_encoding = encoding
        self.spec["mask_encoding"] = encoding
        self.spec["base_regime"] = "mask-free"  # the mask condition was learnt in fine-tuning (the paper's regime)

    # ---- trainable state -------------------------------------------------------------------------
    def add_lora(self, rank: int = 8, alpha: float | None = None, targets: list[str] | None = None) -> None:
        """Add peft LoRA adapters to the UNet (default: the attention projections)."""
        from peft import LoraConfig
        cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets or LORA_TARGETS,
                         init_lora_weights="gaussian")
        self.unet.add_adapter(cfg)
        self.spec["lora"] = {"rank": rank, "alpha": alpha or rank, "targets": targets or LORA_TARGETS}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Weights that training changes and that ``save`` writes: everything for tiny (the file is the whole
        model); for sd the LoRA adapters + conv_in, or the whole UNet after ``--finetune full`` (the frozen
        codec and text encoder stay referenced by the base path)."""
        if self.spec["backend"] == "tiny":
            state = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
            state |= {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
            state |= {f"prompt.{k}": v for k, v in self.prompt_encoder.state_dict().items()}
            return state
        if self.spec.get("finetune") == "full":  # the whole UNet trained: all of it is saved (the base stays referenced)
            return {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        from peft.utils import get_peft_model_state_dict
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.unet).items()} if "lora" in self.spec else {}
        state |= {f"unet.conv_in.{k}": v for k, v in self.unet.conv_in.state_dict().items()}
        return state

    @torch.no_grad()
    def generate(self, masks, prompts: str | list[str], steps: int | None = None, guidance: float = 3.0,
                 seed: int = 0, scheduler: str = DEFAULT_SAMPLER):
        """Images whose anomalies lie inside ``masks``: uint8 array [B, H, W, 3].

        ``masks``: bool/0-1 array or tensor [B, H, W] (or [B, 1, H, W]), H and W multiples of the codec's factor
        (the generator's resolution is what it was trained at); ``prompts``: one per mask, or one for all, e.g.
        "a photo of a wood with a scratch defect". Image i uses seed ``seed + i`` (the sampler of ``generate``).
        ``steps``: default 8 for unipc, 10 for dpm++, 50 for ddim (``sampler.DEFAULT_STEPS``).
        """
        import numpy as np

        from anomalign.data.transforms import from_model_range
        m = torch.as_tensor(np.asarray(masks, dtype=np.float32) if not torch.is_tensor(masks) else masks).float()
        m = m[:, None] if m.ndim == 3 else m
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-1] % self.factor or m.shape[-2] % self.factor:
            raise AnomalignError(f"masks must be [B, H, W] with H and W multiples of {self.factor}, got {list(m.shape)}")
        prompts = [prompts] * m.shape[0] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != m.shape[0]:
            raise AnomalignError(f"{len(prompts)} prompts for {m.shape[0]} masks")
        images = sample(self.eval(), (m > 0.5).float(), prompts, [seed + i for i in range(m.shape[0])], scheduler,
                        DEFAULT_STEPS.get(scheduler, 50) if steps is None else steps,  # unknown: sample says so
                        guidance)
        return from_model_range(images)

    @torch.no_grad()
    def inpaint(self, image, mask, prompt: str, seed: int = 0, steps: int | None = None,
                guidance: float | None = None, scheduler: str = DEFAULT_SAMPLER, window: tuple[int, int, int] | None = None,
                margin: float | None = None, keep=None):
        """A defect generated inside ``image`` where ``mask`` says, at the image's own size: (image, mask).

        ``image``: a file path, a PIL image or an array [H, W, 3] / [H, W] (grey), uint8 or float in [0, 1]
        (``data.transforms.image_u8``); ``mask``: bool / 0-1 array [H, W] of the same size, where the anomaly must
        be. ``prompt``: e.g. "a photo of a surface with a scratch defect".

        As ``generate --normals`` does it, with the same functions (``generator.window``): a square window of
        R / scale native px around the mask's anomaly pixels (R the generator's resolution, scale the one it was
        fine-tuned at, ``spec["scale"]``, else 1; larger when the anomaly and its context need it, then resized to R
        and back), the defect generated there by the inpainting sampler inside the mask with a soft context band of
        ``margin`` x its longer side (default ``window.MARGIN``; 0 = the mask grown by ``DILATE_PX``), and pasted
        back through that region only: every other pixel keeps its exact value, the window's border ring included,
        and grey images stay grey. The window is centred on the anomaly (``window_around`` puts it at a random place
        for ``generate``); ``window`` = (top, left, side) chooses it, e.g. the ``window`` of a ``generate`` record
        (then give that run's ``margin`` too, if it was not the default). ``keep``: optional bool [H, W], pixels
        the context band must leave alone (``generate --normals`` passes those off the host's foreground: a frame,
        an anomalous host's own defects; give the same to reproduce its image there). ``seed``: the
        sample's seed (a ``generate`` record's ``seed``); ``steps``, ``scheduler``: as ``generate``; ``guidance``:
        default 3 for the tiny backend, 7 for Stable Diffusion (``sampler.DEFAULT_GUIDANCE``), as ``generate``.

        Returns the image, uint8 [H, W, 3], and the mask, bool [H, W].
        """
        import numpy as np

        from anomalign.data.transforms import from_model_range, image_u8
        from anomalign.generator.window import (MARGIN, centred_window, keep_tensor, open_edges, paste_window,
                                                seamless_masks, window_side, window_tensors)
        margin = MARGIN if margin is None else margin
        full = image_u8(image)
        m = np.asarray(mask.detach().cpu() if torch.is_tensor(mask) else mask)
        m = m[..., 0] if m.ndim == 3 and m.shape[-1] == 1 else m
        if m.shape != full.shape[:2]:
            raise AnomalignError(f"mask must be [H, W] = {list(full.shape[:2])}, the image's size, got {list(m.shape)}")
        m = m > 0.5
        if not m.any():
            raise AnomalignError("mask has no anomaly pixel: nothing to generate")
        H, W = m.shape
        ys, xs = np.nonzero(m)
        y, x, h, w = int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        size = self.resolution
        if window is None:
            if max(h, w) > min(H, W):
                raise AnomalignError(f"the mask's anomaly spans {h} x {w} px: it does not fit a square window inside "
                                     f"the {H} x {W} image (generate --normals scales such a defect down)")
            side = window_side(h, w, size, H, W, float(self.spec.get("scale") or 1.0), margin)
            window = centred_window(y, x, h, w, side, H, W)
        top, left, side = (int(v) for v in window)
        if not (0 <= top and 0 <= left and top + side <= H and left + side <= W
                and top <= y and left <= x and y + h <= top + side and x + w <= left + side):
            raise AnomalignError(f"window {[top, left, side]} (top, left, side) must lie inside the {H} x {W} image and "
                                 f"hold every anomaly pixel (box y {y}, x {x}, {h} x {w} px)")
        bg, cond = window_tensors(full, top, left, side, m[top:top + side, left:left + side], size)
        off = None if keep is None else keep_tensor(np.asarray(keep, bool)[top:top + side, left:left + side], size)[None]
        region, alpha = seamless_masks(cond[None], margin, [open_edges(top, left, side, H, W)], keep=off)
        out = sample(self.eval(), cond[None], [prompt], [seed], scheduler,
                     DEFAULT_STEPS.get(scheduler, 50) if steps is None else steps,
                     DEFAULT_GUIDANCE[self.spec.get("backend", "tiny")] if guidance is None else guidance,
                     background=bg[None], region=region, alpha=alpha, composite=margin <= 0).float().cpu()
        # margin 0: the window's composite through the binary region (the old path); else the raw decoded window
        # blended at full size by the soft region, as generate does
        return paste_window(full, from_model_range(out)[0], region[0] if margin <= 0 else alpha[0], top, left, side), m

    def save(self, folder: Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``generator.safetensors`` (+ ``generator.json``) into ``folder`` atomically."""
        folder = Path(folder)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                 for k, v in self.trainable_state().items()}
        spec = dict(self.spec, scheduler=dict(self.scheduler.config))
        if self.spec["backend"] == "tiny":
            spec["prompt"] = {"vocab": self.prompt_encoder.vocab, "dim": self.prompt_encoder.dim,
                              "max_len": self.prompt_encoder.max_len}
            spec["vae_config"] = dict(self.vae.config)
            from anomalign.generator.taef2 import TAEF2Codec  # imports diffusers: not at the top (fast --help)
            if isinstance(self.vae, TAEF2Codec):
                spec["codec"] = "taef2"  # files without the field hold an AutoencoderKL
            spec["unet_config"] = dict(self.unet.config)
        file = write_weights(folder / WEIGHTS_NAME, state, SPEC_KEY, spec)
        (folder / "generator.json").write_text(json.dumps(json.loads(json.dumps(canonical_spec(spec), default=str)),
                                                          indent=1))
        return file

    @classmethod
    def load(cls, source: Path, base: str | None = None, device: str | torch.device = "cpu",
             mask_free_ok: bool = False) -> "MaskGenerator":
        """Load a generator folder (or a ``generator.safetensors`` file). ``base`` overrides the SD base path.

        A mask-free base (``pretrain-base --mask-free``) cannot place anomalies in masks, so it is refused
        unless ``mask_free_ok`` (fine-tuning it, or sampling the base itself in benchmarks)."""
        spec, state, file = read_weights(source, WEIGHTS_NAME, SPEC_KEY,
                                         "not a generator folder; train one with `anomalign train-generator`")
        if spec.get("mask_encoding") == "none" and not mask_free_ok:
            raise AnomalignError(f"{file}: a mask-free base (no mask input): it cannot follow masks until it is "
                                 f"fine-tuned — run `anomalign train-generator --base {source}` first")
        gen = build_generator(spec, base=base)
        gen.load_trainable_state(state, str(file))
        return gen.to(device)

    def load_trainable_state(self, state: dict[str, torch.Tensor], where: str = "weights") -> None:
        if self.spec["backend"] == "tiny":
            for prefix, module in (("vae.", self.vae), ("unet.", self.unet), ("prompt.", self.prompt_encoder)):
                sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                _load_strict(module, sub, f"{where} ({prefix[:-1]})")
            return
        if self.spec.get("finetune") == "full":
            _load_strict(self.unet, {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")},
                         f"{where} (unet)")
            return
        conv = {k[len("unet.conv_in."):]: v for k, v in state.items() if k.startswith("unet.conv_in.")}
        _load_strict(self.unet.conv_in, conv, f"{where} (conv_in)")
        lora = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.") and "lora" in k}
        stray = [k for k in state if not k.startswith("unet.conv_in.") and not (k.startswith("unet.") and "lora" in k)]
        _load_lora_strict(self.unet, lora, "lora" in self.spec, stray, where)


def _names(keys: list[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _load_lora_strict(unet: nn.Module, lora: dict[str, torch.Tensor], expected: bool, stray: list[str],
                      where: str) -> None:
    """Load LoRA adapter weights, raising on any key that does not fit. peft's loader ignores missing and
    unexpected keys, so a file whose adapters were renamed (another peft version, other --lora-targets) would
    load as the plain base: the generator would sample without its fine-tuning and nobody would know."""
    if stray:
        raise AnomalignError(f"{where}: unexpected weights for an sd generator (only LoRA and conv_in are saved): "
                             f"{_names(stray)}")
    if expected and not lora:
        raise AnomalignError(f"{where}: the spec says this generator has LoRA adapters but the file holds no LoRA "
                             "weights: it would load as the plain base")
    if lora and not expected:
        raise AnomalignError(f"{where}: LoRA weights found ({_names(list(lora))}) but the spec has no 'lora' entry")
    if not lora:
        return
    from peft.utils import set_peft_model_state_dict
    result = set_peft_model_state_dict(unet, lora)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise AnomalignError(f"{where}: LoRA weights do not fit the model's adapters" +
                             (f"; missing: {_names(missing)}" if missing else "") +
                             (f"; unexpected: {_names(result.unexpected_keys)}" if result.unexpected_keys else "") +
                             " (saved by another peft version, or with other --lora-targets?)")


def _load_strict(module: nn.Module, state: dict, where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AnomalignError(f"{where}: weights do not fit the model ({str(e).splitlines()[0]})") from None


def build_generator(spec: dict[str, Any], base: str | None = None) -> MaskGenerator:
    """Construct the (untrained-adapter) generator a spec describes; weights are loaded separately."""
    from diffusers import DDPMScheduler

    backend = spec.get("backend")
    encoding = spec.get("mask_encoding", "unshuffle")
    if backend == "tiny":
        from anomalign.generator.tiny import TinyPromptEncoder
        from diffusers import AutoencoderKL, UNet2DConditionModel
        codec = spec.get("codec", "autoencoder_kl")
        if codec not in CODECS:
            raise AnomalignError(f"unknown tiny codec {codec!r}; choose one of {list(CODECS)}")
        from anomalign.generator.taef2 import TAEF2Codec
        vae = (TAEF2Codec if codec == "taef2" else AutoencoderKL).from_config(spec["vae_config"])
        unet = UNet2DConditionModel.from_config(spec["unet_config"])
        p = spec["prompt"]
        prompt = TinyPromptEncoder(p["vocab"][2:], p["dim"], p["max_len"])
        scheduler = DDPMScheduler.from_config(spec["scheduler"])
        gen = MaskGenerator(vae, unet, prompt, scheduler, encoding, spec)
        if "lora" in spec:
            gen.add_lora(**spec["lora"])
        return gen
    if backend == "sd":
        try:
            gen = sd_generator(base or spec["base"], encoding, spec)
        except AnomalignError as e:
            if base:
                raise
            raise AnomalignError(f"{e} — this generator's stored base; give its current location with --base"
                                 ) from None
        if "lora" in spec:
            gen.add_lora(**spec["lora"])
        return gen
    raise AnomalignError(f"unknown generator backend {backend!r}; choose 'tiny' or 'sd'")


def sd_generator(base: str, encoding: MaskEncoding, spec: dict[str, Any], resolution: int | None = None
                 ) -> MaskGenerator:
    """A Stable Diffusion base (folder or hub id) with conv_in widened for the mask and the codec and text
    encoder frozen; ``spec`` is completed with the base and the resolution (default: the UNet's).

    The spec stores the base as an absolute path (a relative one would name another folder, or be taken for
    a hub id, when the generator is used from elsewhere) and a fingerprint of its weights; a spec that already
    has a fingerprint (a saved generator, perhaps loaded with ``--base`` elsewhere) must match it."""
    from anomalign.generator.sd import base_fingerprint, load_sd_components, resolve_base
    source = resolve_base(base)
    vae, unet, prompt, scheduler = load_sd_components(source)
    fingerprint = base_fingerprint(vae, unet, prompt.text_encoder)
    if spec.get("base_fingerprint") not in (None, fingerprint):
        raise AnomalignError(f"{source}: not the base this generator was trained on (fingerprint {fingerprint}, "
                             f"expected {spec['base_fingerprint']} of {spec.get('base')}); its LoRA and conv_in "
                             "weights only mean something on that base — point --base to a copy of it")
    for m in (vae, prompt):
        m.requires_grad_(False)
    spec = dict(spec, backend="sd", base=source, base_fingerprint=fingerprint)
    gen = MaskGenerator(vae, unet, prompt, scheduler, "none", spec)
    gen.add_mask_condition(encoding)
    if resolution is not None or "resolution" not in spec:
        gen.spec["resolution"] = resolution or unet.config.sample_size * gen.factor
    return gen
