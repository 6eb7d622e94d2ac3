"""``anomalign train-generator``: fine-tune a mask-conditioned generator with the dual-branch loss."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anomalign.config import option, save_config
from anomalign.data.crops import CropOptions, auto_crop_size, crop_bank
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.folders import DataOptions
from anomalign.data.transforms import DIHEDRAL_AUGMENTS, dihedral_variants, is_grey
from anomalign.data.validate import load_dataset, load_normal_folder, skipped_records
from anomalign.errors import AnomalignError, ConfigError
from anomalign.generator.conditioning import MaskConvIn, split_mask_channels
from anomalign.generator.model import LORA_TARGETS, TINY_BASE, MaskGenerator, sd_generator
from anomalign.generator.task import GenStepOptions, LatentPairs, generator_task, held_out_latents, held_out_loss
from anomalign.generator.tiny import words
from anomalign.files import check_out_outside, releases_locks
from anomalign.generator.sampler import DEFAULT_GUIDANCE
from anomalign.recipe import GENERATOR
from anomalign.runs import check_run_folder, start_run_folder
from anomalign.training import LoopOptions, make_accelerator, train_loop

# The mask channels of conv_in start at zero and must learn the mask from a few dozen pairs: at the LoRA's 1e-5
# they barely move in a GPU budget (tests/test_sd_gpu_path.py measures the mask-loss gap on an SD-shaped model).
SD_MASK_LEARNING_RATE = 1e-4
# the held-out loss: up to 64 val anomalies, as many crops each as training cuts but 128 in all (8 timesteps each:
# about half a minute per validation on one CPU thread)
HELD_OUT_IMAGES, HELD_OUT_CROPS = 64, 128

PRESETS = {
    # The paper's recipe: Eq. 5 with α = 0.7, gradients through both branches of Eq. 4.
    "paper": {"alpha": 0.7, "al_stop_grad": "none"},
    # The paper's baseline (Table 4, row 1): plain mask-conditioned fine-tuning.
    "baseline": {"alpha": 0.0},
}


@dataclass(kw_only=True)
class TrainGeneratorConfig(DataOptions, CropOptions, LoopOptions):
    """Options of ``anomalign train-generator``."""

    data: Path = option(help="training dataset folder (any layout anomalign reads)")
    out: Path = option(help="run folder to create (config, weights, checkpoints, logs, validation grids)")
    backend: Literal["tiny", "sd"] = option("tiny", "tiny (CPU, shipped base) or sd (Stable Diffusion 1.x/2.x)")
    base: str | None = option(None, "sd: diffusers folder or hub id; tiny: a generator folder/file "
                                    "(default: the shipped tiny base)")
    preset: Literal["paper", "baseline", "custom"] = option("custom", "paper: α=0.7; baseline: α=0 "
                                                                      "(overrides alpha/al_stop_grad)")
    alpha: float = option(GENERATOR["alpha"], "weight α of the Alignment Regularization L_al (Eq. 5); 0 = baseline")
    al_stop_grad: Literal["none", "image", "mask"] = option("none", "Eq. 4 gradient side: none (both "
                                                            "branches, as the paper), image or mask (detach that branch)")
    w_mask: float = option(0.0, "extra weight on ||ε - ε_h||² of the mask branch (not in the paper)")
    snr_gamma: float | None = option(None, "min-SNR-γ loss weighting (off by default, as in the paper)")
    loss_space: Literal["epsilon", "model"] | None = option(
        None, "space of the MSE of Eq. 1/4: epsilon (the paper's ε-MSE) or model (the UNet's own parameterisation: "
              "the v-MSE for v-prediction bases such as SD 2.x-768, the same as epsilon for ε bases); default: model "
              "for sd, epsilon for tiny (docs/generator.md)")
    mask_learning_rate: float | None = option(
        None, "peak learning rate of the zero-initialised mask channels of conv_in (their own AdamW group, same "
              "schedule); default: 1e-4 for sd, --learning-rate for tiny")
    encode_batch_size: int | None = option(None, "images per batch when encoding the training pairs with the frozen "
                                                 "codec (default: 8 for sd, 64 for tiny; lower it on small GPUs)")
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] | None = option(
        None, "autocast precision (accelerate); fp16 scales the loss and skips overflow steps; auto: bf16 on a GPU "
              "that has it, else fp16 on a GPU, no on the CPU; default: auto for sd, no for tiny")
    mask_dropout: float = option(0.1, "probability of dropping the mask condition (needed for guidance)")
    prompt_dropout: float = option(0.1, "probability of dropping the prompt")
    finetune: Literal["full", "lora"] | None = option(None, "train the whole UNet (full) or LoRA adapters + conv_in "
                                                          "(lora); default: full for tiny, lora for sd")
    lora_rank: int = option(8, "LoRA rank")
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank)")
    lora_targets: list[str] = option(default_factory=lambda: list(LORA_TARGETS),
                                     help="UNet modules that get LoRA adapters")
    mask_encoding: Literal["unshuffle", "resize", "vae"] = option(
        "unshuffle", "how the mask enters conv_in (sd and mask-free tiny bases; a mask-aware tiny base keeps "
        "its own): unshuffle, resize or vae")
    resolution: int | None = option(None, "training resolution (default: the base's, 64 tiny / 512 sd)")
    augment: list[str] = option(default_factory=lambda: ["hflip", "vflip"],
                                help=f"exact paired augmentations: any of {', '.join(DIHEDRAL_AUGMENTS)} (or none)")
    normal_images: Path | None = option(None, "a folder of extra defect-free images to draw the --normals from "
                                              "(besides the dataset's own)")
    normals: int = option(GENERATOR["normals"], "defect-free training images mixed in with empty masks (0: none)")
    cache_latents: bool = option(True, "encode each training pair once per augmentation variant")
    crops_per_image: int = option(GENERATOR["crops_per_image"], "with crops: anomaly-centred crops cut from each anomalous training image "
                                     "(normals give one uniform crop each)")
    validation_masks: int = option(8, "validation masks sampled into a grid at each validation")
    validation_steps: int = option(25, "DDIM steps for validation grids")
    validation_guidance: float = option(DEFAULT_GUIDANCE["tiny"], "guidance scale for validation grids")

    max_steps: int = option(GENERATOR["max_steps"], "optimizer steps")
    learning_rate: float = option(GENERATOR["learning_rate"], "peak learning rate (AdamW)")
    batch_size: int = option(GENERATOR["batch_size"], "global batch size (split across processes)")

    def validate(self) -> None:
        DataOptions.validate(self)
        self.validate_crops()
        if self.preset != "custom":
            for k, v in PRESETS[self.preset].items():
                setattr(self, k, v)
        if self.finetune is None:
            self.finetune = "lora" if self.backend == "sd" else "full"
        sd = self.backend == "sd"  # SD defaults for a GPU run; the tiny backend's stay what its results used
        if self.loss_space is None:
            self.loss_space = "model" if sd else "epsilon"
        if self.mask_learning_rate is None and sd:  # tiny: None, the mask channels follow --learning-rate
            self.mask_learning_rate = SD_MASK_LEARNING_RATE
        if self.encode_batch_size is None:
            self.encode_batch_size = 8 if sd else 64
        if self.mixed_precision is None:
            self.mixed_precision = "auto" if sd else "no"
        if (self.mask_learning_rate is not None and self.mask_learning_rate <= 0) or self.encode_batch_size < 1:
            raise ConfigError("mask_learning_rate must be > 0 and encode_batch_size >= 1, got "
                              f"{self.mask_learning_rate} and {self.encode_batch_size}")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.backend == "sd" and not self.base:
            raise ConfigError("--backend sd needs --base (a diffusers Stable Diffusion folder or hub id)")
        self.augment = [a for a in self.augment if a != "none"]
        dihedral_variants(self.augment)  # unknown names: a clear error now, not after loading the data


def load_base(cfg: TrainGeneratorConfig) -> MaskGenerator:
    """The generator to fine-tune: the tiny base (shipped or given) or SD components with a widened conv_in."""
    if cfg.backend == "tiny":
        base = Path(cfg.base) if cfg.base else TINY_BASE
        if not base.exists():
            raise AnomalignError(f"{base}: tiny base weights not found" + (
                "; the package ships them at this path — reinstall, or train one with `anomalign pretrain-base`"
                if not cfg.base else ""))
        gen = MaskGenerator.load(base, mask_free_ok=True)
        if gen.mask_free:
            gen.add_mask_condition(cfg.mask_encoding)
            print(f"{base}: a mask-free base; the mask enters through {cfg.mask_encoding!r} channels added to "
                  "conv_in (zero-initialised) and learnt in this fine-tuning, as with Stable Diffusion")
        return gen
    return sd_generator(cfg.base, cfg.mask_encoding, {}, cfg.resolution)


def trainable_parameters(gen: MaskGenerator, cfg: TrainGeneratorConfig) -> list[torch.nn.Parameter]:
    """Freeze what the paper freezes (codec, text encoder) and return what trains. With a mask learning rate
    of its own, conv_in's mask channels become a parameter of their own first (``MaskConvIn``)."""
    gen.vae.requires_grad_(False)
    if cfg.mask_learning_rate not in (None, cfg.learning_rate):
        split_mask_channels(gen.unet, gen.latent_channels)
    if cfg.finetune == "lora":
        gen.unet.requires_grad_(False)
        gen.add_lora(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        gen.unet.conv_in.requires_grad_(True)
    else:
        gen.unet.requires_grad_(True)
        gen.spec["finetune"] = "full"
    # tiny: the prompt encoder learns the user's new words; SD's CLIP stays frozen
    gen.prompt_encoder.requires_grad_(cfg.backend == "tiny")
    return [p for p in gen.parameters() if p.requires_grad]


def parameter_groups(gen: MaskGenerator, params: list[torch.nn.Parameter], cfg: TrainGeneratorConfig
                     ) -> list[dict] | None:
    """AdamW groups: conv_in's mask channels at ``--mask-learning-rate``, the rest at ``--learning-rate``; None
    (one group, the loop's default) when both rates are the same, as for the tiny backend by default."""
    conv = gen.unet.conv_in
    if not isinstance(conv, MaskConvIn) or not conv.mask_weight.requires_grad:
        return None
    rest = [p for p in params if p is not conv.mask_weight]
    return [{"params": rest, "lr": cfg.learning_rate}, {"params": [conv.mask_weight], "lr": cfg.mask_learning_rate}]


def training_pairs(cfg: TrainGeneratorConfig, resolution: int):
    """Train-split anomalies (+ up to ``cfg.normals`` normals), validation masks for the grid and the held-out
    pairs at ``resolution``, each as (images [N, 3, R, R], masks [N, 1, R, R], prompts); also the problems of the
    files ``--policy skip`` left out.

    The held-out pairs are the val split's anomalies (at most ``HELD_OUT_IMAGES``; with crops, as many per image as
    training cuts, at most ``HELD_OUT_CROPS`` in all), empty without any: the held-out loss is then not measured
    (never on training pairs).
    With crops (``--crop-size``, or images at least twice ``resolution``): a fixed bank of R-px crops at
    native resolution (``data.crops.crop_bank``), so the defects are learnt at the size they really have."""
    index = load_dataset(cfg.data, cfg)
    train = [s for s in index.split("train") if not s.normal]
    if not train:
        raise AnomalignError(f"{cfg.data}: no anomalous training pairs (split 'train'); "
                             f"run `anomalign data check {shlex.quote(str(cfg.data))}`")
    normals = [s for s in index.split("train") if s.normal]
    skipped = list(index.skipped)
    if cfg.normal_images is not None:
        extra = load_normal_folder(cfg.normal_images, cfg)
        normals += extra.samples
        skipped += extra.skipped
    normals = normals[: cfg.normals]
    held_out = [s for s in index.split("val") if not s.normal][:HELD_OUT_IMAGES]
    val = (held_out or train)[: cfg.validation_masks]
    if cfg.crop_size is None:
        cfg.crop_size, side = auto_crop_size(train, resolution, cfg.scale)
        if cfg.crop_size:
            print(f"images are large (median shorter side {side} px) for resolution {resolution}: fine-tuning on "
                  f"{resolution}-px crops at native resolution (--crop-size 0 resizes whole images instead)")
    if cfg.crop_size and cfg.crop_size != resolution:
        raise ConfigError(f"--crop-size {cfg.crop_size} must equal the generator resolution {resolution} (or 0)")
    if cfg.crop_size:
        def bank(samples, per_image):
            x, m, src = crop_bank(samples, resolution, cfg.scale, per_image, cfg.crop_jitter, cfg.seed,
                                  cfg.mask_threshold)
            return x, m, [default_prompt(s) for s in src]
        return (bank(train + normals, cfg.crops_per_image), bank(val, 1),
                bank(held_out, max(1, min(cfg.crops_per_image, HELD_OUT_CROPS // max(len(held_out), 1))))
                if held_out else _no_pairs(resolution), skipped)

    def whole(samples):
        ds = PairDataset(samples, size=resolution)
        return *ds.tensors(), [default_prompt(s) for s in ds.samples]
    return whole(train + normals), whole(val), whole(held_out) if held_out else _no_pairs(resolution), skipped


def _no_pairs(resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return torch.zeros(0, 3, resolution, resolution), torch.zeros(0, 1, resolution, resolution), []


@releases_locks
def run_train_generator(cfg: TrainGeneratorConfig, progress: bool = True) -> Path:
    """Fine-tune and write the run folder ``cfg.out``; returns it."""
    torch.manual_seed(cfg.seed)  # identical initialisation (LoRA, new words) in every process
    acc = make_accelerator(cfg)
    check_out_outside(cfg.out, {"--data": cfg.data})
    out = check_run_folder(cfg.out, "train-generator", "generator.safetensors", cfg.resume)
    acc.wait_for_everyone()  # every process has checked before the main one writes into the folder
    gen = load_base(cfg)
    resolution = cfg.resolution or gen.resolution
    if resolution % (gen.factor * 4):
        raise ConfigError(f"resolution {resolution} must be a multiple of {gen.factor * 4} for this model")
    gen.spec["resolution"] = resolution
    (images, masks, prompts), (val_images, val_masks, val_prompts), held_out, skipped = training_pairs(cfg, resolution)
    if cfg.crop_size:  # crops of images resampled by --scale: `generate --normals` windows then cover R / scale px
        gen.spec["scale"] = float(cfg.scale)
    gen.spec["grayscale"] = is_grey(images)  # `generate` then writes single-channel images, like the data
    if gen.spec["grayscale"] and acc.is_main_process:
        print("grayscale training images: generated images will be written as grayscale")
    if gen.spec["backend"] == "tiny":
        added = gen.prompt_encoder.add_words([w for p in prompts for w in words(p)])
        if added and acc.is_main_process:
            print(f"new prompt words learned from this dataset: {', '.join(added)}")
    params = trainable_parameters(gen, cfg)
    if cfg.gradient_checkpointing:
        gen.unet.enable_gradient_checkpointing()
    gen.to(acc.device)
    pairs = LatentPairs(gen, images, masks, prompts, cfg.augment, cfg.seed, cfg.cache_latents,
                        encode_batch=cfg.encode_batch_size)
    if acc.is_main_process:
        start_run_folder(out, "train-generator", cfg, skipped_records(skipped))

    def save_fn(folder: Path) -> None:
        gen.save(folder)
        save_config(cfg, Path(folder) / "config.yaml")

    held_out_z: list[torch.Tensor] = []

    def validate_fn(step: int, folder: Path) -> dict[str, float]:
        stats = validation_grid(gen, val_images, val_masks, val_prompts, folder / f"step-{step:07d}.png",
                                cfg.validation_steps, cfg.validation_guidance, cfg.seed)
        if len(held_out[0]):
            if not held_out_z:  # encoded at the first validation, after the frozen codec's move to the device
                held_out_z.append(held_out_latents(gen, held_out[0]))
            stats.update(held_out_loss(gen, *held_out, seed=cfg.seed, latents=held_out_z[0]))
        return stats

    step_opts = GenStepOptions(alpha=cfg.alpha, al_stop_grad=cfg.al_stop_grad, w_mask=cfg.w_mask,
                               snr_gamma=cfg.snr_gamma, mask_dropout=cfg.mask_dropout,
                               prompt_dropout=cfg.prompt_dropout, loss_space=cfg.loss_space)
    task = generator_task(gen, pairs, params, cfg.batch_size, cfg.seed, step_opts, save_fn, validate_fn)
    # the patience rule (--extend-steps) follows the anomaly's held-out loss: lower is better
    task.best_metric, task.best_higher = ("heldout_defect_loss", False) if len(held_out[0]) else (None, True)
    if cfg.extend_steps and not len(held_out[0]) and acc.is_main_process:
        print(f"{cfg.data}: no anomalous val pairs, so no held-out loss: --extend-steps is not used (training stops "
              f"at --max-steps {cfg.max_steps})")
    task.param_groups = parameter_groups(gen, params, cfg)
    gen.unet.train()
    summary = train_loop(task, cfg, out, acc, progress=progress)
    if acc.is_main_process:
        last = ", ".join(f"{k} {v:.4f}" for k, v in summary["last"].items() if k != "it_per_s")
        # a resume from the final checkpoint runs no step: nothing to show
        print(f"generator written to {out}" + (f" (last losses: {last})" if last else ""))
    return out


@torch.no_grad()
def validation_grid(gen: MaskGenerator, images: torch.Tensor, masks: torch.Tensor, prompts: list[str],
                    path: Path, steps: int, guidance: float, seed: int) -> dict[str, float]:
    """Sample the validation masks; save [real | generated] with the mask contour in red. Returns stats."""
    from anomalign.data.transforms import from_model_range
    from anomalign.figures import draw_contour, grid, save_png
    from anomalign.generator.sampler import sample

    was_training = gen.unet.training
    gen.unet.eval()
    try:
        fake = sample(gen, masks, prompts, [seed * 100_003 + i for i in range(len(prompts))], "ddim", steps, guidance)
    finally:
        gen.unet.train(was_training)
    real_u8, fake_u8 = from_model_range(images), from_model_range(fake.cpu())
    m = masks[:, 0].numpy() > 0.5
    scale = max(1, 128 // images.shape[-1])
    tiles = []
    for i in range(len(prompts)):
        tiles += [draw_contour(real_u8[i], m[i], scale=scale), draw_contour(fake_u8[i], m[i], scale=scale)]
    save_png(grid(tiles, columns=min(8, 2 * len(prompts))), path)
    out_of_range = float(((fake.abs() >= 0.999).float().mean()).item())
    return {"saturated_fraction": out_of_range, "mean_abs_color_diff": float(
        np.abs(real_u8.astype(np.float32).mean((0, 1, 2)) - fake_u8.astype(np.float32).mean((0, 1, 2))).mean() / 255)}
