"""``anomalign pretrain-base``: the tiny backend's pretrained base, trained from scratch on a procedural corpus.

This plays the role Stable Diffusion's pretraining plays for the ``sd`` backend: a from-scratch diffusion
model cannot learn in a CPU-minutes budget, so ``train-generator --backend tiny`` fine-tunes this base.

Codec: ``--codec DIR`` uses the pretrained TAEF2 (``generator/taef2.py``; its weights are an input, like a
dataset) with the latent scale fitted on the corpus; without it phase 1 trains an AutoencoderKL on corpus
images AND masks (the old base). Then the UNet on the frozen codec's latents, in one of two regimes:

- mask-aware (default): the mask enters ``conv_in`` from the start, with mask dropout for guidance
  (α = 0: the base knows nothing of the paper's method);
- ``--mask-free``: prompt-conditioned only, no mask input, like SD; ``train-generator`` then widens
  ``conv_in`` with zero-initialised mask channels and learns the condition from the user's pairs.

The result is one fp16 safetensors file (codec + UNet + prompt embeddings); the shipped one is reproduced
by ``configs/tiny_base_v1.yaml`` (its TAEF2 successor: ``configs/tiny_base.yaml``).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from anomalign.config import option, save_config
from anomalign.data.dataset import default_prompt
from anomalign.data.sample import Sample
from anomalign.data.transforms import mask_to_tensor, to_model_range
from anomalign.errors import ConfigError
from anomalign.generator.conditioning import mask_channels
from anomalign.generator.model import MaskGenerator
from anomalign.generator.task import GenStepOptions, LatentPairs, generator_task
from anomalign.generator.tiny import TINY_UNET_CONFIG, TINY_VAE_CONFIG, build_tiny, words
from anomalign.training import LoopOptions, TrainTask, batch_indices, train_loop

TAEF2_FACTOR = 8  # generator/taef2.py's FACTOR, restated: importing it pulls in diffusers (slow --help)


@dataclass(kw_only=True)
class PretrainBaseConfig(LoopOptions):
    """Options of ``anomalign pretrain-base``."""

    out: Path = option(help="run folder; the base is written to OUT/generator.safetensors (fp16)")
    corpus_size: int = option(6000, "procedural image/mask pairs rendered for pretraining")
    corpus_seed: int = option(12345, "seed of the procedural corpus")
    normal_fraction: float = option(0.15, "fraction of the corpus without a defect")
    size: int = option(64, "image size (a multiple of 4x the codec factor: 16 AutoencoderKL, 32 TAEF2)")
    codec: Path | None = option(None, "a TAEF2 folder (taef2_encoder/decoder.safetensors): use this pretrained "
                                      "codec instead of training an AutoencoderKL")
    mask_free: bool = option(False, "pretrain without a mask input (prompt only, like SD; the paper's regime): "
                                    "train-generator adds the mask channels")
    hold_out: list[str] = option(default_factory=list, help="materials left out of the corpus (e.g. to fine-tune "
                                                            "on a material the base never saw)")
    mask_encoding: str = option("unshuffle", "mask condition encoding: unshuffle, resize or vae (ignored with "
                                             "--mask-free)")
    unet_channels: list[int] = option(default_factory=lambda: list(TINY_UNET_CONFIG["block_out_channels"]),
                                      help="UNet block widths")
    codec_steps: int = option(2500, "codec (autoencoder) training steps")
    codec_batch_size: int = option(32, "codec batch size")
    codec_learning_rate: float = option(1e-3, "codec learning rate")
    codec_kl_weight: float = option(1e-6, "codec KL weight")
    latent_norm: Literal["global", "channel"] = option(
        "global", "TAEF2 latents: one scale for all (unit variance overall), or per-channel mean/std")
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = option(
        "scaled_linear", "noise schedule (diffusers name); scaled_linear 0.00085-0.012 is SD's. Latents with many "
                         "channels (TAEF2: 32) need more noise at the last step: use linear 0.0001-0.02")
    beta_start: float = option(0.00085, "first β of the schedule")
    beta_end: float = option(0.012, "last β of the schedule")
    x0_clip: float | None = option(None, "sampling bound on the denoised-latent estimate, stored with the base and "
                                         "inherited by its fine-tunes (sampler.bound_x0); schedules with a tiny last "
                                         "alpha-bar (linear) diverge without it. None = no bound")
    prediction_type: Literal["epsilon", "v_prediction"] = option(
        "epsilon", "what the UNet predicts: the noise ε (SD 1.x), or v (SD 2.x-768): x0 stays well conditioned "
                   "at the noisiest steps, which a schedule ending near zero signal needs")
    snr_gamma: float | None = option(5.0, "min-SNR-γ weighting of the UNet loss; None = the plain MSE of what "
                                          "the UNet predicts (ε-MSE or v-MSE)")
    mask_dropout: float = option(0.1, "mask-condition dropout (guidance)")
    prompt_dropout: float = option(0.1, "prompt dropout (guidance)")
    install: bool = option(False, "also copy the result over the package's shipped base")

    max_steps: int = option(8000, "UNet training steps")
    batch_size: int = option(32, "UNet batch size")
    learning_rate: float = option(2e-4, "UNet learning rate")
    ema_decay: float = option(0.999, "EMA decay of the UNet weights")
    lr_warmup_steps: int = option(200, "warm-up steps")
    checkpoint_every: int = option(500, "checkpoint every N steps")

    def validate(self) -> None:
        check_pretrain_config(self)


def render_corpus(cfg: PretrainBaseConfig, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """images [N, 3, S, S] in [-1, 1], masks [N, 1, S, S], prompts [N]; pair i depends on (seed, i, the
    materials kept) only."""
    from tqdm import tqdm

    from anomalign.data.procedural import DEFECTS, MATERIALS, render_sample
    materials = [m for m in MATERIALS if m not in cfg.hold_out]
    images, masks, prompts = [], [], []
    for i in tqdm(range(cfg.corpus_size), desc="rendering corpus", disable=not progress):
        rng = np.random.default_rng([cfg.corpus_seed, i])
        material = materials[int(rng.integers(len(materials)))]
        defect = None if rng.random() < cfg.normal_fraction else DEFECTS[int(rng.integers(len(DEFECTS)))]
        img, m = render_sample(rng, cfg.size, material, defect)
        images.append(to_model_range(img))
        masks.append(mask_to_tensor(m))
        prompts.append(default_prompt(Sample(Path(""), None, defect or "good", defect is None, category=material)))
    return torch.stack(images), torch.stack(masks), prompts


def codec_task(vae, images: torch.Tensor, masks: torch.Tensor, cfg: PretrainBaseConfig, save_fn) -> TrainTask:
    """Autoencoder reconstruction (L1 + L2 + tiny KL) on images and masks-as-images (E must encode both, Eq. 2)."""
    data = torch.cat([images, masks.expand(-1, 3, -1, -1) * 2 - 1])

    def get_batch(k: int, rank: int, world: int) -> torch.Tensor:
        return data[batch_indices(len(data), cfg.codec_batch_size, cfg.seed, k)[rank::world]]

    def step_fn(x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        x = x.to(vae.device)
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=g).to(x)
        rec = vae.decode(post.mean + post.std * eps).sample
        l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()
        return {"loss": l1 + l2 + cfg.codec_kl_weight * kl, "l1": l1, "l2": l2, "kl": kl}

    return TrainTask(params=list(vae.parameters()), get_batch=get_batch, step_fn=step_fn,
                     state_fn=vae.state_dict, load_state_fn=lambda sd: vae.load_state_dict(sd), save_fn=save_fn)


def check_pretrain_config(cfg: PretrainBaseConfig) -> None:
    from anomalign.data.procedural import MATERIALS
    unknown = [m for m in cfg.hold_out if m not in MATERIALS]
    if unknown:
        raise ConfigError(f"--hold-out {', '.join(unknown)}: unknown material; choose from {', '.join(MATERIALS)}")
    if cfg.x0_clip is not None and cfg.x0_clip < 0:
        raise ConfigError(f"--x0-clip must be >= 0 (0 = no bound), got {cfg.x0_clip}")
    if len(cfg.hold_out) >= len(MATERIALS):
        raise ConfigError("--hold-out leaves no material to pretrain on")
    factor = TAEF2_FACTOR if cfg.codec else 2 ** (len(TINY_VAE_CONFIG["block_out_channels"]) - 1)
    if cfg.size % (4 * factor):
        raise ConfigError(f"--size {cfg.size} must be a multiple of {4 * factor} with this codec")


def make_codec(cfg: PretrainBaseConfig, images: torch.Tensor, masks: torch.Tensor, out: Path, progress: bool):
    """The frozen codec E/D with its latent scale set from the corpus: TAEF2 from ``cfg.codec``, or an
    AutoencoderKL trained here (phase 1, resumable)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    if cfg.codec:
        from anomalign.generator.taef2 import TAEF2Codec
        codec = TAEF2Codec.from_folder(cfg.codec)
        if cfg.latent_norm == "channel":
            codec.fit_latent_stats(images[:512])
        else:
            codec.fit_scaling_factor(images[:512])  # 512 images pin the std to <1 %; encoding is the slow part
        return codec.requires_grad_(False).eval()
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    codec_dir = out / "codec"
    codec_file = codec_dir / "codec.safetensors"
    if not codec_file.exists():
        loop = LoopOptions(**{**{k: getattr(cfg, k) for k in LoopOptions.__dataclass_fields__},
                              "max_steps": cfg.codec_steps, "learning_rate": cfg.codec_learning_rate,
                              "batch_size": cfg.codec_batch_size, "ema_decay": 0.0, "lr_schedule": "cosine"})
        train_loop(codec_task(vae, images, masks, cfg, lambda d: save_file(
            {k: v.contiguous() for k, v in vae.state_dict().items()}, str(Path(d) / "codec.safetensors"))),
            loop, codec_dir, progress=progress)
    vae.load_state_dict(load_file(str(codec_file)))
    vae.requires_grad_(False).eval()
    # Latents should have unit variance for the noise schedule: set the scaling factor from the corpus.
    with torch.no_grad():
        sample_lat = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, min(2048, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / sample_lat.std()))
    return vae


def run_pretrain_base(cfg: PretrainBaseConfig, progress: bool = True) -> Path:
    from diffusers import DDPMScheduler

    from anomalign.data.procedural import DEFECTS

    check_pretrain_config(cfg)  # also when called from Python
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    images, masks, prompts = render_corpus(cfg, progress)
    vocab = sorted({w for p in prompts + [default_prompt(Sample(Path(""), None, d, False)) for d in DEFECTS]
                    for w in words(p)})
    codec = make_codec(cfg, images, masks, out, progress)
    factor = 2 ** (len(codec.config.block_out_channels) - 1)
    encoding = "none" if cfg.mask_free else cfg.mask_encoding
    unet_cfg = dict(TINY_UNET_CONFIG, block_out_channels=list(cfg.unet_channels), sample_size=cfg.size // factor)
    vae, unet, prompt = build_tiny(vocab, mask_channels(encoding, factor, codec.config.latent_channels),
                                   unet_config=unet_cfg, codec=codec)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
                              beta_end=cfg.beta_end, prediction_type=cfg.prediction_type, clip_sample=False)
    gen = MaskGenerator(vae, unet, prompt, scheduler, encoding,
                        {"backend": "tiny", "resolution": cfg.size, "base": "pretrain-base",
                         "base_regime": "mask-free" if cfg.mask_free else "mask-aware",
                         "held_out_materials": list(cfg.hold_out)}
                        | ({"x0_clip": float(cfg.x0_clip)} if cfg.x0_clip else {}))
    # Phase 2: UNet (and prompt embeddings) on latents encoded once and kept in the run folder (a resumed
    # run does not spend the encoding minutes again). α = 0, so E(m) is needed only for the vae encoding.
    pairs = LatentPairs(gen, images, masks, prompts, augment=[], seed=cfg.seed, mask_latents=encoding == "vae")
    cache = out / "latents.safetensors"
    if not pairs.load_cache(cache):
        pairs.precompute(progress)
        pairs.save_cache(cache)
    params = list(unet.parameters()) + list(prompt.parameters())
    step_opts = GenStepOptions(alpha=0.0, snr_gamma=cfg.snr_gamma, loss_space="model",
                               mask_dropout=cfg.mask_dropout,
                               prompt_dropout=cfg.prompt_dropout)
    task = generator_task(gen, pairs, params, cfg.batch_size, cfg.seed, step_opts,
                          save_fn=lambda d: gen.save(d, dtype=torch.float16))
    unet.train()
    train_loop(task, cfg, out, progress=progress)
    result = out / "generator.safetensors"
    if cfg.install:
        from anomalign.generator.model import TINY_BASE
        TINY_BASE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result, TINY_BASE)
        print(f"installed as the shipped base: {TINY_BASE}")
    print(f"tiny base written to {result} ({result.stat().st_size / 2**20:.1f} MB)")
    return result
