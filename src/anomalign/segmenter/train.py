"""``anomalign train-segmenter``: real + synthetic training (Eq. 6) with optional Generative Feedback (Eq. 7-11)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from anomalign.config import option, save_config
from anomalign.data.dataset import PairDataset, default_prompt
from anomalign.data.folders import DataOptions
from anomalign.data.validate import load_dataset, skipped_records
from anomalign.errors import AnomalignError, ConfigError
from anomalign.evaluation.evaluate import evaluate_samples
from anomalign.generator.task import AUGMENTS, LatentPairs, dihedral_variants
from anomalign.segmenter.losses import loss_ce, loss_feedback, loss_seg, soft_mask
from anomalign.segmenter.model import PRESETS, Segmenter
from anomalign.training import (LoopOptions, TrainTask, batch_indices, check_run_folder, make_accelerator, sample_seed,
                                start_run_folder, train_loop)


@dataclass(kw_only=True)
class TrainSegmenterConfig(DataOptions, LoopOptions):
    """Options of ``anomalign train-segmenter``."""

    train: Path = option(help="real dataset (its train split trains, its val split picks the best checkpoint)")
    out: Path = option(help="run folder to create")
    synthetic: list[str] = option(default_factory=list, help="synthetic datasets (e.g. `anomalign generate` "
                                                             "outputs); all their pairs are used")
    feedback_generator: str | None = option(None, "generator run folder: enables Generative Feedback (Eq. 10)")
    preset: Literal[tuple(PRESETS)] = option("tiny", "Segformer size preset (MiT shapes, random init)")
    pretrained: str | None = option(None, "local Segformer folder to start from instead of a preset")
    size: int = option(64, "input size (images and masks resized to size x size)")
    synthetic_fraction: float = option(0.5, "share of each batch drawn from the synthetic sets")
    train_normals: bool = option(True, "also train on the real train split's normal (defect-free) images; "
                                       "off = anomalous pairs only, as the paper's segmenters")
    anomaly_weight: float = option(1.0, "CE weight of anomaly pixels (1 = the paper's plain CE; raise it "
                                        "for tiny defects on small data)")
    temperature: float = option(0.5, "λ of Eq. 8 (softmax temperature, in (0, 1])")
    w_fb: float = option(1.0, "weight of L_fb in Eq. 11 (1 in the paper)")
    fb_t_min: int = option(0, "smallest diffusion timestep drawn for feedback")
    fb_t_max: int = option(500, "largest diffusion timestep drawn for feedback (exclusive)")
    fb_every: int = option(1, "apply feedback every k steps")
    fb_warmup_steps: int = option(0, "steps of plain L_ce before feedback starts")
    augment: list[str] = option(default_factory=lambda: ["hflip", "vflip"],
                                help=f"exact paired augmentations: any of {', '.join(AUGMENTS)} (or none)")

    max_steps: int = option(800, "optimizer steps")
    learning_rate: float = option(1e-3, "peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("cosine", "learning-rate schedule")
    validate_every: int = option(100, "validate (mIoU on the val split) every N steps; the best is kept")

    def validate(self) -> None:
        DataOptions.validate(self)
        self.augment = [a for a in self.augment if a != "none"]
        dihedral_variants(self.augment)  # unknown names: a clear error now, not after loading the data
        if not 0 < self.temperature <= 1:
            raise ConfigError(f"temperature must be in (0, 1], got {self.temperature}")
        if not 0 <= self.fb_t_min < self.fb_t_max:
            raise ConfigError("need 0 <= fb_t_min < fb_t_max")
        if not 0 <= self.synthetic_fraction < 1:
            raise ConfigError("synthetic_fraction must be in [0, 1)")


class _Pairs:
    """Images/masks of one source as tensors at the segmenter size, with exact dihedral views."""

    def __init__(self, samples, size: int, augment: list[str], seed: int):
        ds = PairDataset(samples, size=size)
        self.samples = ds.samples
        self.images, self.masks = ds.tensors()
        self.prompts = [default_prompt(s) for s in self.samples]
        self.views = LatentPairs(None, self.images, self.masks, self.prompts, augment, seed, cache=False)

    def __len__(self) -> int:
        return len(self.samples)


def run_train_segmenter(cfg: TrainSegmenterConfig, progress: bool = True) -> Path:
    torch.manual_seed(cfg.seed)
    acc = make_accelerator(cfg)
    out = check_run_folder(cfg.out, "train-segmenter", "segmenter.safetensors", cfg.resume)
    index = load_dataset(cfg.train, cfg)
    train_samples = [s for s in index.split("train") if cfg.train_normals or not s.normal]
    if not train_samples:
        raise AnomalignError(f"{cfg.train}: no training images left (train split empty"
                             + ("" if cfg.train_normals else ", or only normal images and --no-train-normals") + ")")
    real = _Pairs(train_samples, cfg.size, cfg.augment, cfg.seed)
    val_samples = index.split("val") or index.split("train")
    val = PairDataset(val_samples, size=cfg.size)
    syn_samples, skipped = [], list(index.skipped)
    for path in cfg.synthetic:
        syn_index = load_dataset(Path(path), DataOptions(policy=cfg.policy, mask_threshold=cfg.mask_threshold,
                                                         max_megapixels=cfg.max_megapixels))
        syn_samples += syn_index.samples
        skipped += syn_index.skipped
    syn = _Pairs(syn_samples, cfg.size, cfg.augment, cfg.seed + 1) if syn_samples else None
    n_syn = round(cfg.batch_size * cfg.synthetic_fraction) if syn is not None else 0
    n_real = cfg.batch_size - n_syn
    model = Segmenter(cfg.preset, cfg.pretrained).to(acc.device)
    gen = None
    if cfg.feedback_generator:
        from anomalign.generator.model import MaskGenerator
        gen = MaskGenerator.load(Path(cfg.feedback_generator), device=acc.device)
        gen.requires_grad_(False).eval()  # frozen: L_fb only moves the segmenter
        fb_latents = LatentPairs(gen, _resize(real.images, gen.resolution), _resize(real.masks, gen.resolution, True),
                                 real.prompts, cfg.augment, cfg.seed)

    def get_batch(k: int, rank: int, world: int) -> dict:
        idx_r = batch_indices(len(real), n_real, cfg.seed, k)[rank::world] if n_real else []
        keys = [(i, real.views.variant_of(k, i)) for i in idx_r]
        xs, ms = zip(*(real.views.view(i, v) for i, v in keys)) if keys else ((), ())
        items = {"image": list(xs), "mask": list(ms), "synthetic": [False] * len(keys), "keys": keys}
        if n_syn:
            idx_s = batch_indices(len(syn), n_syn, cfg.seed + 1, k)[rank::world]
            for i in idx_s:
                x, m = syn.views.view(i, syn.views.variant_of(k, i))
                items["image"].append(x)
                items["mask"].append(m)
                items["synthetic"].append(True)
        items["image"], items["mask"] = torch.stack(items["image"]), torch.stack(items["mask"])
        items["synthetic"] = torch.tensor(items["synthetic"])
        items["step"], items["seeds"] = k, [sample_seed(cfg.seed, k, p) for p in range(len(keys))]
        return items

    def step_fn(batch: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
        x, m = batch["image"].to(acc.device), batch["mask"].to(acc.device)
        logits = model(x)
        l_ce = loss_ce(logits, m, batch["synthetic"].to(acc.device), cfg.anomaly_weight)
        k = batch["step"]
        use_fb = gen is not None and k >= cfg.fb_warmup_steps and k % cfg.fb_every == 0 and batch["keys"]
        if not use_fb:
            # NaN = not computed here: the log averages l_fb over the steps where feedback ran
            return {"loss": l_ce, "l_ce": l_ce, "l_fb": torch.full((), float("nan"), device=l_ce.device)}
        n = len(batch["keys"])
        z0, _ = fb_latents.latents(batch["keys"])
        m_soft = soft_mask(logits[:n], cfg.temperature)  # Eq. 8-9 on the REAL images
        m_soft = F.interpolate(m_soft, size=(gen.resolution, gen.resolution), mode="area") \
            if m_soft.shape[-1] != gen.resolution else m_soft
        noise, t = [], []
        for s in batch["seeds"]:
            gs = torch.Generator().manual_seed(s)
            t.append(torch.randint(cfg.fb_t_min, cfg.fb_t_max, (), generator=gs))
            noise.append(torch.randn(z0.shape[1:], generator=gs))
        emb = gen.encode_prompts([real.prompts[i] for i, _ in batch["keys"]])
        l_fb = loss_feedback(gen, z0.to(acc.device), m_soft, emb, torch.stack(noise).to(acc.device),
                             torch.stack(t).to(acc.device))
        return {"loss": loss_seg(l_ce, l_fb, cfg.w_fb), "l_ce": l_ce, "l_fb": l_fb}

    def save_fn(folder: Path) -> None:
        model.save(folder, {"size": cfg.size})
        save_config(cfg, Path(folder) / "config.yaml")

    def validate_fn(step: int, folder: Path) -> dict[str, float]:
        return evaluate_samples(model, val, acc.device)

    if acc.is_main_process:
        start_run_folder(out, "train-segmenter", cfg, skipped_records(skipped))
    task = TrainTask(params=list(model.parameters()), get_batch=get_batch, step_fn=step_fn,
                     state_fn=model.net.state_dict, load_state_fn=lambda sd: model.net.load_state_dict(sd),
                     save_fn=save_fn, validate_fn=validate_fn, best_metric="mIoU")
    model.train()
    summary = train_loop(task, cfg, out, acc, progress=progress)
    if acc.is_main_process and summary["best"]:
        b = summary["best"]
        print(f"segmenter written to {out}; best val {b['metric']} {b['value']:.4f} at step {b['step']} -> {out / 'best'}")
    return out


def _resize(t: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    if t.shape[-1] == size:
        return t
    if nearest:
        return F.interpolate(t, size=(size, size), mode="nearest-exact")
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
