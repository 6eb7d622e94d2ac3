"""``anomalign train-segmenter``: real + synthetic training (Eq. 6) with optional Generative Feedback (Eq. 7-11)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from anomalign.config import option, save_config
from anomalign.data.crops import CropOptions, CropPairs, auto_crop_size
from anomalign.data.dataset import PairDataset
from anomalign.data.folders import DataOptions
from anomalign.data.transforms import DIHEDRAL_AUGMENTS, dihedral_variants
from anomalign.data.validate import load_dataset, load_normal_folder, skipped_records
from anomalign.errors import AnomalignError, ConfigError
from anomalign.segmenter.validation import evaluate_native, evaluate_samples
from anomalign.segmenter.model import PRESETS, TAEF2_PRESETS, UNET_PRESETS, Segmenter, TAEF2UNet
from anomalign.segmenter.task import (CropFeedback, SegPairs, SegStepOptions, crop_windows, encoder_groups,
                                     feedback_latents, segmenter_task)
from anomalign.files import check_out_outside, releases_locks
from anomalign.recipe import SEGMENTER
from anomalign.runs import check_run_folder, start_run_folder
from anomalign.training import LoopOptions, make_accelerator, train_loop


@dataclass(kw_only=True)
class TrainSegmenterConfig(DataOptions, CropOptions, LoopOptions):
    """Options of ``anomalign train-segmenter``."""

    train: Path = option(help="real dataset (its train split trains, its val split picks the best checkpoint)")
    out: Path = option(help="run folder to create")
    synthetic: list[str] = option(default_factory=list, help="synthetic datasets (e.g. `anomalign generate` "
                                                             "outputs); all their pairs are used")
    feedback_generator: str | None = option(None, "generator run folder: enables Generative Feedback (Eq. 10)")
    feedback_base: str | None = option(None, "sd feedback generator: its Stable Diffusion base folder or hub id, "
                                             "overriding the path stored in the generator (moved or copied base)")
    recipe: Literal["measured", "paper"] = option(
        "measured", "the defaults of every option below: measured = the best settings this project measured "
                    "without pretrained weights (docs/segmenter.md, 'Recipes'); paper = the paper's literal "
                    "method (tiny Segformer, plain CE, feedback from step 0, λ 0.5) at the old CPU budget. "
                    "Options you give still win")
    preset: Literal[tuple(PRESETS) + tuple(UNET_PRESETS) + tuple(TAEF2_PRESETS)] = option(
        SEGMENTER["preset"], "network: a small convolutional U-Net (unet-tiny, unet-small; better from scratch on few "
                     "images, docs/segmenter.md), a Segformer size (tiny, b0-b5: MiT shapes, random init), or "
                     "taef2-unet (a U-Net decoder on the pretrained TAEF2 encoder of the shipped tiny base; frozen "
                     "unless --encoder-lr-scale, see --help-all)")
    encoder_lr_scale: float | None = option(
        None, "learning rate of a pretrained encoder (taef2-unet's, or a --pretrained Segformer's) as a share of "
              "--learning-rate: 0 = frozen, 0.1 = fine-tuned at a tenth. Default: 0 for taef2-unet (frozen: about half "
              "a fine-tuning step's time; not chosen on quality), 1 for a --pretrained Segformer (as before)")
    norm: Literal["group", "batch"] = option(
        SEGMENTER["norm"], "the U-Net's normalisation: group (GroupNorm, the measured recipe) or batch (BatchNorm: fixed "
                 "statistics at inference; as good with windows on magnetic tile, seed 0; 1.9x faster steps with "
                 "--mixed-precision bf16 on CPUs with native bf16, which cost 7 val points there, 3 seeds; docs/segmenter.md)")
    pretrained: str | None = option(None, "Segformer to start from instead of a preset: a local folder or a hub id "
                                          "such as nvidia/mit-b0 (downloaded once, then cached)")
    size: int = option(SEGMENTER["size"], "input size: images and masks resized to size x size, or, for images much larger "
                           "than it (or with --crop-size), the crop size the network trains on")
    synthetic_fraction: float = option(SEGMENTER["synthetic_fraction"], "share of each batch drawn from the synthetic sets (1 = synthetic "
                                            "only: a pre-training stage for --init-from; the real val split "
                                            "still picks best/)")
    synthetic_weight: float = option(SEGMENTER["synthetic_weight"], "weight w_syn of the synthetic pairs' term in Eq. 6 (1 = the paper: "
                                          "real and synthetic count the same whatever --synthetic-fraction; "
                                          "< 1 makes imperfect synthetic pairs count less)")
    normal_images: Path | None = option(None, "a folder of extra defect-free training images (used with the "
                                              "dataset's own normals; implies --train-normals)")
    train_normals: bool = option(SEGMENTER["train_normals"], "also train on the real train split's normal (defect-free) images; "
                                       "off = anomalous pairs only, as the paper's segmenters")
    anomaly_weight: float = option(SEGMENTER["anomaly_weight"], "CE weight of anomaly pixels (1 = the paper's plain CE; raise it "
                                        "for tiny defects on small data)")
    dice_weight: float = option(SEGMENTER["dice_weight"], "weight of a soft Dice term added to Eq. 6's CE (0 = the paper's plain CE; "
                                     "helps defects that cover well under 1 %% of the pixels)")
    photometric: float = option(SEGMENTER["photometric"], "strength in [0, 1] of random brightness/contrast/gamma jitter of the "
                                     "training images (0 = off)")
    colour: float = option(SEGMENTER["colour"], "strength in [0, 1] of random saturation and white-balance jitter of colour "
                                "training images (0 = off; `anomalign run` sets it for colourful photographs)")
    temperature: float = option(SEGMENTER["temperature"], "λ of Eq. 8 (softmax temperature, in (0, 1])")
    w_fb: float = option(SEGMENTER["w_fb"], "weight of L_fb in Eq. 11 (1 in the paper)")
    fb_t_min: int = option(0, "smallest diffusion timestep drawn for feedback")
    fb_t_max: int = option(500, "largest diffusion timestep drawn for feedback (exclusive)")
    fb_every: int = option(SEGMENTER["fb_every"], "apply feedback every k steps")
    fb_warmup_steps: int | None = option(None, "steps of plain L_ce before feedback starts (default: half of "
                                               "--max-steps: once L_ce has converged, as measured)")
    fb_rows: int = option(SEGMENTER["fb_rows"], "real rows of each batch (per process) that get feedback: 0 = all (the paper); fewer "
                             "make a feedback step cheaper (the generator's backward pass dominates it)")
    init_from: Path | None = option(None, "segmenter run folder (its final weights) or its best/, whose "
                                          "weights start this run instead of a fresh --preset, e.g. one "
                                          "pre-trained on synthetic pairs with --synthetic-fraction 1")
    augment: list[str] = option(default_factory=lambda: ["hflip", "vflip"],
                                help=f"exact paired augmentations: any of {', '.join(DIHEDRAL_AUGMENTS)} (or none)")

    max_steps: int = option(SEGMENTER["max_steps"], "optimizer steps")
    batch_size: int = option(SEGMENTER["batch_size"], "global batch size (split across processes)")
    learning_rate: float = option(SEGMENTER["learning_rate"], "peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate schedule")
    validate_every: int = option(250, "validate (mIoU on the val split) every N steps; the best is kept")
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps")

    # The measured recipe is the dataclass defaults above; other recipes are sets of other defaults
    # (``config.apply_recipe``). paper: what the paper specifies (Segformer, plain CE, every real row, feedback at
    # every step from step 0, λ 0.5, w_syn 1, normals in the batch), at the budget the CPU defaults had before.
    RECIPES: ClassVar[dict[str, dict]] = {
        "measured": {},
        "paper": dict(preset="tiny", size=64, max_steps=800, synthetic_fraction=0.5, synthetic_weight=1.0,
                      train_normals=True, anomaly_weight=1.0, dice_weight=0.0, photometric=0.0, temperature=0.5,
                      fb_every=1, fb_warmup_steps=0, fb_rows=0, validate_every=100, checkpoint_every=200),
    }

    def validate(self) -> None:
        DataOptions.validate(self)
        self.validate_crops()
        self.augment = [a for a in self.augment if a != "none"]
        dihedral_variants(self.augment)  # unknown names: a clear error now, not after loading the data
        if self.fb_warmup_steps is None:
            self.fb_warmup_steps = self.max_steps // 2
        if self.fb_warmup_steps < 0:
            raise ConfigError(f"fb_warmup_steps must be >= 0, got {self.fb_warmup_steps}")
        if self.size < 8:
            raise ConfigError(f"size must be >= 8 pixels, got {self.size}")
        if not 0 < self.temperature <= 1:
            raise ConfigError(f"temperature must be in (0, 1], got {self.temperature}")
        if self.fb_rows < 0:
            raise ConfigError(f"fb_rows must be >= 0 (0 = every real row), got {self.fb_rows}")
        if not 0 <= self.fb_t_min < self.fb_t_max:
            raise ConfigError("need 0 <= fb_t_min < fb_t_max")
        if not 0 <= self.photometric <= 1:
            raise ConfigError(f"photometric must be in [0, 1], got {self.photometric}")
        if not 0 <= self.colour <= 1:
            raise ConfigError(f"colour must be in [0, 1], got {self.colour}")
        if self.dice_weight < 0:
            raise ConfigError(f"dice_weight must be >= 0, got {self.dice_weight}")
        if not 0 <= self.synthetic_fraction <= 1:
            raise ConfigError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        if self.synthetic_fraction == 1 and not self.synthetic:
            raise ConfigError("synthetic_fraction 1 trains on synthetic pairs only: give them with --synthetic")
        if self.synthetic_fraction == 1 and self.feedback_generator:
            raise ConfigError("synthetic_fraction 1 leaves no real rows for Generative Feedback; use a fraction "
                              "below 1 with --feedback-generator")
        if self.norm != "group" and (self.pretrained or self.preset not in UNET_PRESETS):
            raise ConfigError(f"--norm {self.norm} applies to the U-Net presets ({', '.join(UNET_PRESETS)}), not to a "
                              "Segformer")
        if self.encoder_lr_scale is not None:
            if self.encoder_lr_scale < 0:
                raise ConfigError(f"encoder_lr_scale must be >= 0 (0 = frozen), got {self.encoder_lr_scale}")
            if not (self.pretrained or self.preset in TAEF2_PRESETS or self.init_from is not None):
                raise ConfigError(f"--encoder-lr-scale applies to a pretrained encoder (--preset "
                                  f"{', '.join(TAEF2_PRESETS)} or --pretrained); --preset {self.preset} trains from "
                                  "scratch")
        if self.init_from is not None and self.pretrained:
            raise ConfigError("give --init-from (an anomalign segmenter) or --pretrained (a Segformer), not both")
        if self.gradient_checkpointing and not self.feedback_generator:
            raise ConfigError("--gradient-checkpointing applies to the feedback generator's UNet (the segmenters are "
                              "small); without --feedback-generator there is nothing to checkpoint")
        if self.synthetic_weight < 0:
            raise ConfigError(f"synthetic_weight must be >= 0, got {self.synthetic_weight}")


@releases_locks
def run_train_segmenter(cfg: TrainSegmenterConfig, progress: bool = True) -> Path:
    """Train and write the run folder ``cfg.out`` (weights, best/ by val mIoU, logs); returns it."""
    torch.manual_seed(cfg.seed)
    acc = make_accelerator(cfg)
    check_out_outside(cfg.out, {"--train": cfg.train, "--synthetic": cfg.synthetic})
    out = check_run_folder(cfg.out, "train-segmenter", "segmenter.safetensors", cfg.resume)
    acc.wait_for_everyone()  # every process has checked before the main one writes into the folder
    real, syn, val, skipped = training_sets(cfg)
    model = start_model(cfg).to(acc.device)
    fb = None
    if cfg.feedback_generator:
        from anomalign.generator.model import MaskGenerator
        gen = MaskGenerator.load(Path(cfg.feedback_generator), base=cfg.feedback_base, device=acc.device)
        gen.requires_grad_(False).eval()  # frozen: L_fb only moves the segmenter
        if cfg.gradient_checkpointing:  # L_fb backpropagates through the UNet: its activations dominate memory
            gen.unet.enable_gradient_checkpointing()
        # crops are new at every step, so their windows are encoded when used; whole images are encoded once
        fb = CropFeedback(gen, real) if cfg.crop_size else feedback_latents(gen, real, cfg.augment, cfg.seed)

    def save_fn(folder: Path) -> None:
        model.save(folder, {"size": cfg.size, "crop_size": cfg.crop_size or None, "scale": cfg.scale})
        save_config(cfg, Path(folder) / "config.yaml")

    def validate_fn(step: int, folder: Path) -> dict[str, float]:
        if cfg.crop_size:
            return evaluate_native(model, val, cfg.crop_size, cfg.scale, acc.device, mask_threshold=cfg.mask_threshold)
        return evaluate_samples(model, val, acc.device)

    if acc.is_main_process:
        start_run_folder(out, "train-segmenter", cfg, skipped_records(skipped))
        if fb is not None:
            report_premise(feedback_premise(gen, real, cfg), out)
    step_opts = SegStepOptions(cfg.anomaly_weight, cfg.temperature, cfg.w_fb, cfg.fb_t_min, cfg.fb_t_max,
                               cfg.fb_every, cfg.fb_warmup_steps, cfg.fb_rows, cfg.dice_weight,
                               cfg.synthetic_weight)
    task = segmenter_task(model, real, syn, cfg.batch_size, cfg.synthetic_fraction, cfg.seed, step_opts, fb, save_fn,
                          validate_fn=validate_fn, photometric=cfg.photometric, colour=cfg.colour,
                          groups=encoder_groups(model, cfg.learning_rate, encoder_lr_scale(cfg, model)))
    val_samples = val.samples if isinstance(val, PairDataset) else val
    n_val = sum(not v.normal for v in val_samples)
    if acc.is_main_process and n_val < MIN_VAL_ANOMALIES:
        print(f"warning: only {n_val} anomalous validation image(s): the 'best' checkpoint chosen on them is mostly "
              f"noise; compare it with the final weights in {out}", file=sys.stderr)
    model.train()
    summary = train_loop(task, cfg, out, acc, progress=progress)
    if acc.is_main_process and summary["best"]:
        b = summary["best"]
        print(f"segmenter written to {out}; best val {b['metric']} {b['value']:.4f} at step {b['step']} -> {out / 'best'}")
        if not b["value"] > 0:
            print(f"warning: validation {b['metric']} stayed 0 at every validation: the segmenter never found a defect "
                  "of the val split, and 'best' is just the first checkpoint. Small defects usually need more steps, "
                  "--anomaly-weight 5, --no-train-normals, or native-resolution crops (--crop-size)", file=sys.stderr)
    return out


MIN_VAL_ANOMALIES = 10  # below this, picking the best checkpoint by val mIoU is mostly noise
# Generative Feedback assumes the frozen generator denoises a real image better given its true mask than a
# wrong one. Below this share of training images (true mask beats the moved AND the empty mask), the
# feedback gradient mostly carries noise: users are told before they pay for it.
PREMISE_MIN = 0.7


def start_model(cfg: TrainSegmenterConfig) -> Segmenter:
    """A fresh ``--preset`` (or ``--pretrained`` Segformer), or the weights of ``--init-from``: a two-stage recipe
    (pre-train on synthetic pairs, then fine-tune on real ones) continues the first stage's network, whose
    shape wins over --preset."""
    if cfg.init_from is None:
        return Segmenter(cfg.preset, cfg.pretrained, cfg.norm)
    model = Segmenter.load(Path(cfg.init_from)).train()
    if model.preset != cfg.preset:
        print(f"--init-from {cfg.init_from}: continuing its {model.preset} network (--preset {cfg.preset} is "
              "not used)", file=sys.stderr)
    if model.preset in (*PRESETS, *UNET_PRESETS, *TAEF2_PRESETS):  # the saved config names the network trained
        cfg.preset = model.preset
    cfg.norm = getattr(model.net, "norm", "group")
    return model


def encoder_lr_scale(cfg: TrainSegmenterConfig, model: Segmenter) -> float:
    """``--encoder-lr-scale``, or its default for ``model``: 0 (frozen) for a TAEF2 U-Net, 1 otherwise (a
    --pretrained Segformer trains whole, as it always did)."""
    if cfg.encoder_lr_scale is not None:
        return cfg.encoder_lr_scale
    return 0.0 if isinstance(model.net, TAEF2UNet) else 1.0


def feedback_premise(gen, real: SegPairs | CropPairs, cfg: TrainSegmenterConfig, n: int = 32) -> dict:
    """The feedback's premise (``synthesis.scoring.premise``) on up to ``n`` anomalous training pairs spread
    over the set, seen as the feedback sees them: whole images read at the generator's resolution, or one
    anomaly-centred window of the generator's size (at --scale) each."""
    from anomalign.synthesis.scoring import premise

    anomalous = [i for i, s in enumerate(real.samples) if not s.normal]
    picked = [anomalous[j * len(anomalous) // n] for j in range(n)] if len(anomalous) > n else anomalous
    if not picked:
        return {"images": 0}
    if cfg.crop_size:
        x, m, prompts = crop_windows(gen, [real.samples[i] for i in picked], cfg.crop_size, cfg.scale, cfg.seed,
                                     cfg.crop_jitter, cfg.mask_threshold)
    else:
        from anomalign.data.dataset import PairDataset
        x, m = PairDataset([real.samples[i] for i in picked], size=gen.resolution).tensors()
        prompts = [real.prompts[i] for i in picked]
    return premise(gen, x, m, prompts, seed=cfg.seed) | {"threshold": PREMISE_MIN}


def report_premise(premise: dict, out: Path) -> None:
    """Print the premise (a warning when weak) and keep it in ``OUT/premise.json``."""
    import json
    from anomalign.files import write_text_atomic
    write_text_atomic(out / "premise.json", json.dumps(premise, indent=1))
    if not premise["images"]:
        return
    both = premise["frac_true_lt_both"]
    line = (f"Generative Feedback premise on {premise['images']} training images: the generator denoises better "
            f"with the true mask than with the moved and the empty mask on {100 * both:.0f}%")
    if both < PREMISE_MIN:
        print(f"warning: {line} (below {100 * PREMISE_MIN:.0f}%): the feedback loss will mostly push the "
              "segmenter with noise and may lower its mIoU; train the generator longer or on more pairs, or "
              "drop --feedback-generator (docs/segmenter.md, Generative Feedback)", file=sys.stderr)
    else:
        print(line)


def training_sets(cfg: TrainSegmenterConfig) -> tuple:
    """Real train pairs, the synthetic pairs (None without --synthetic) and the validation set (a PairDataset
    at cfg.size, or the val samples themselves when training on crops: they are scored at full size); also the
    problems of the files ``--policy skip`` left out. Resolves ``cfg.crop_size`` when it is left to the data."""
    index = load_dataset(cfg.train, cfg)
    train_samples = [s for s in index.split("train") if cfg.train_normals or not s.normal]
    if not train_samples:
        raise AnomalignError(f"{cfg.train}: no training images left (train split empty"
                             + ("" if cfg.train_normals else ", or only normal images and --no-train-normals") + ")")
    skipped = list(index.skipped)
    if cfg.normal_images is not None:
        extra = load_normal_folder(cfg.normal_images, cfg)
        train_samples += extra.samples
        skipped += extra.skipped
    choose_crops(cfg, train_samples)
    val_samples = index.split("val") or index.split("train")
    syn_samples = []
    for path in cfg.synthetic:
        syn_index = load_dataset(Path(path), DataOptions(policy=cfg.policy, mask_threshold=cfg.mask_threshold,
                                                         max_megapixels=cfg.max_megapixels))
        syn_samples += syn_index.samples
        skipped += syn_index.skipped
    if cfg.crop_size:
        def pairs(samples, seed):
            return CropPairs(samples, cfg.crop_size, cfg.scale, cfg.augment, seed, cfg.anomaly_fraction,
                             cfg.crop_jitter, cfg.mask_threshold)
        return (pairs(train_samples, cfg.seed), pairs(syn_samples, cfg.seed + 1) if syn_samples else None,
                val_samples, skipped)
    real = SegPairs(train_samples, cfg.size, cfg.augment, cfg.seed)
    syn = SegPairs(syn_samples, cfg.size, cfg.augment, cfg.seed + 1) if syn_samples else None
    return real, syn, PairDataset(val_samples, size=cfg.size), skipped


def choose_crops(cfg: TrainSegmenterConfig, samples: list) -> None:
    """``--crop-size`` left unset: crops of --size px at native resolution when the images are at least twice
    that size (their defects would shrink away if the whole image were resized), else whole images resized."""
    if cfg.crop_size is not None:
        return
    cfg.crop_size, side = auto_crop_size(samples, cfg.size, cfg.scale)
    if cfg.crop_size:
        print(f"images are large (median shorter side {side} px, {side * cfg.scale:g} px at --scale {cfg.scale:g}) "
              f"for --size {cfg.size}: training on "
              f"{cfg.size}-px crops at native resolution, predicting with sliding windows "
              "(--crop-size 0 resizes whole images instead)")
