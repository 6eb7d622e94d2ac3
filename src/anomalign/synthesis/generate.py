"""``anomalign generate``: real masks -> synthetic aligned image/mask pairs (paper Fig. 2b), at scale.

Sample ("attempt") i is a pure function of (options, generator weights, i): its source mask is
``i mod #masks``, and its augmentation, starting noise, background noise and scoring noise come from
seeds derived from (seed, i). Hence the same image whatever the batch size or number of processes.

Sharding: attempts are processed in rounds of ``batch_size x processes``; process r takes the attempts
of a round with (i - round start) mod processes == r. Every finished attempt writes its image and mask
(temp name, then rename) and then a small record ``.records/NNNNNNN.json``; a restarted run skips
attempts whose record exists, so a killed run resumes where it stopped and never leaves partial files.
Processes must share the output folder (one machine, or a shared file system).

Filtering (``min_alignment``): rejected attempts are recorded but not written; attempts continue until
``num`` are kept (cap: ``max_attempts x num`` attempts). The kept set is the first ``num`` accepted
attempts by index — again independent of batch size and process count.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anomalign.config import option
from anomalign.data.folders import DataOptions
from anomalign.devices import DTYPES, use_cpu
from anomalign.errors import AnomalignError, ConfigError, DataError
from anomalign.files import check_out_outside, file_sha256, releases_locks, write_text_atomic
from anomalign.generator.sampler import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from anomalign.generator.window import DILATE_PX, FEATHER_PX, dilate
from anomalign.synthesis.sources import (MaskSource, host_files, load_masks, read_backgrounds,
                                        read_mask_sources, usable_hosts)
from anomalign.synthesis.store import prepare_out, read_record, write_attempt
from anomalign.synthesis.augment import MASK_AUGMENTS, augment_mask
from anomalign.training import sample_seed

SCORES = ("free-lunch", "oracle")
TINY_GUIDANCE, SD_GUIDANCE = DEFAULT_GUIDANCE["tiny"], DEFAULT_GUIDANCE["sd"]


@dataclass(kw_only=True)
class GenerateConfig(DataOptions):
    """Options of ``anomalign generate``."""

    generator: Path | None = option(None, "generator run folder (from `anomalign train-generator`); not used by "
                                          "--synthesizer cutpaste")
    base: str | None = option(None, "sd generator: its Stable Diffusion base folder or hub id, overriding the path "
                                    "stored in the generator (a moved or copied base; its fingerprint must match)")
    synthesizer: Literal["diffusion", "cutpaste"] = option(
        "diffusion", "diffusion: the generator draws each defect; cutpaste: the baseline, real defect pixels "
                     "pasted with their (augmented) masks into --normals or --background images")
    masks: Path = option(help="where the masks come from: a dataset (any layout `data check` reads) or a "
                              "folder of mask images (a first-level sub-folder names the defect type)")
    num: int = option(help="number of image/mask pairs to write (under torchrun spell it --num-samples: "
                           "torchrun reads --num as its own --numa-binding)",
                      aliases=("--num-samples",))
    out: Path = option(help="output folder (paired layout: images/, masks/, metadata.jsonl)")
    split: str = option("train", "dataset split whose masks are used (train, val, test or all)")
    masks_layout: Literal["auto", "dataset", "mask-folder"] = option(
        "auto", "how to read --masks: auto = a dataset if its layout is recognised, else a mask folder")
    prompt: str | None = option(None, "prompt template, e.g. 'a photo of a {category} with a {defect} defect' "
                                      "(default: the dataset's prompt per sample)")
    category: str = option("", "category name for prompts when --masks is a mask folder")
    resolution: int | None = option(None, "generation size in pixels (default: the generator's)")
    scheduler: Literal["ddim", "dpm++", "unipc"] | None = option(
        None, "sampler: UniPC (2nd order, the default: as good as DDIM-50 at 8 steps, 4x faster), DPM-Solver++ (2M) "
              "or DDIM (the default with --resample, which needs it)")
    steps: int | None = option(None, "denoising steps (default 8 for unipc, 10 for dpm++, 50 for ddim)")
    guidance: float | None = option(None, "classifier-free guidance scale (1 = off; default: 3 for the tiny backend, "
                                          "where it aligns best, the paper's 7 for Stable Diffusion)")
    x0_clip: float | None = option(None, "bound on the denoised-latent estimate at every step (0 = none; default: "
                                         "the generator's own, set by pretrain-base; see docs/generator.md)")
    batch_size: int = option(8, "images per UNet batch per process (changes images by float rounding at most; "
                                "see --batch-invariant)")
    batch_invariant: bool = option(False, "run the networks one sample at a time: images bit-identical whatever "
                                          "--batch-size (slower, mostly on GPUs)")
    seed: int = option(0, "global seed: sample i depends only on (seed, i)")
    augment: list[str] = option(default_factory=list, help=f"mask augmentations for new layouts: any of "
                                                           f"{', '.join(MASK_AUGMENTS)}")
    background: Path | None = option(None, "inpainting: normal images (a dataset's normal samples or a folder); "
                                           "the anomaly is generated inside the dilated mask, the rest is kept")
    normals: Path | None = option(None, "native resolution: full-size normal images (a dataset's normal samples or "
                                        "a folder); each defect is generated in a window around a location on the "
                                        "image and pasted back, and images and masks are written at full size")
    hosts: Literal["normal", "anomalous", "all"] = option(
        "normal", "with a dataset as --normals: which of its images receive the defects: normal ones, anomalous "
                  "ones (their own masks are kept and united with the new defect, placed --host-gap px away from "
                  "them: for data without normal images), or all")
    host_gap: int = option(8, "with --hosts anomalous/all: least distance in pixels between a new defect and the "
                              "host's own defects")
    max_defect_size: int | None = option(None, "with --normals: a source defect longer than this many pixels is "
                                                 "cut to a piece of at most this size (long thin defects such as "
                                                 "cracks keep their width; default: whole defects, scaled down only "
                                                 "when they do not fit)")
    foreground: Path | None = option(None, "with --normals: foreground masks named like the normal images (defects "
                                           "are placed on them); default: estimated from the image border")
    dilate: int = option(DILATE_PX, "inpainting: grow the mask by this many pixels to get the region regenerated")
    feather: int = option(FEATHER_PX, "inpainting: width in pixels of the blend ramp inside the region")
    resample: int = option(0, "inpainting: RePaint-style re-noise/denoise repeats per step (ddim only)")
    scores: list[str] = option(default_factory=lambda: ["free-lunch"],
                               help="alignment scores per sample: free-lunch (the generator's own), oracle "
                                    "(needs --oracle; added automatically), or none")
    oracle: Path | None = option(None, "segmenter run folder whose IoU with the mask scores each sample")
    min_alignment: float | None = option(None, "drop samples scoring below this (replaced until --num are kept)")
    filter_by: Literal["auto", "free-lunch", "oracle"] = option(
        "auto", "score --min-alignment applies to (auto: oracle if given, else free-lunch)")
    max_attempts: float = option(4.0, "with --min-alignment: stop after this many x --num attempts")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to run")
    dtype: Literal["fp32", "fp16", "bf16"] = option("fp32", "precision of the UNet and prompt encoder and of sampling "
                                                             "(fp16/bf16: half the memory, faster on GPUs; bf16 is "
                                                             "the safer one where the GPU has it); the codec stays fp32")
    output_layout: Literal["paired", "anomalib"] = option(
        "paired", "paired: images/, masks/ and metadata.jsonl (what anomalign reads); anomalib: also normal/ with the "
                  "--normals images that received the defects, so anomalib's Folder datamodule reads OUT as it is: "
                  "Folder(root=OUT, normal_dir='normal', abnormal_dir='images', mask_dir='masks') (docs/ecosystem.md)")

    def validate(self) -> None:
        DataOptions.validate(self)
        if self.num < 1:
            raise ConfigError(f"num must be >= 1, got {self.num}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.x0_clip is not None and self.x0_clip < 0:
            raise ConfigError(f"x0_clip must be >= 0 (0 = no bound), got {self.x0_clip}")
        if self.scheduler is None:
            self.scheduler = "ddim" if self.resample else DEFAULT_SAMPLER
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.scheduler]
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0 (1 = off), got {self.guidance}")
        if self.synthesizer == "diffusion" and self.generator is None:
            raise ConfigError("--generator is required (or --synthesizer cutpaste)")
        if self.synthesizer == "cutpaste":
            if self.normals is None and self.background is None:
                raise ConfigError("--synthesizer cutpaste pastes into normal images: give --normals (full size) or "
                                  "--background with --resolution")
            if self.background is not None and self.resolution is None:
                raise ConfigError("--synthesizer cutpaste with --background needs --resolution (no generator to "
                                  "take it from)")
            if self.min_alignment is not None and self.oracle is None:
                raise ConfigError("--min-alignment with --synthesizer cutpaste needs --oracle (the free-lunch score "
                                  "needs a generator)")
            if "free-lunch" in self.scores or self.filter_by == "free-lunch":
                if self.scores != ["free-lunch"] or self.filter_by == "free-lunch":  # asked for, not the default
                    raise ConfigError("the free-lunch score needs a generator; cutpaste can be scored by --oracle only")
                self.scores = []
        self.augment = [a for a in self.augment if a != "none"]
        bad = [a for a in self.augment if a not in MASK_AUGMENTS]
        if bad:
            raise ConfigError(f"unknown mask augmentation(s) {bad}; choose from {list(MASK_AUGMENTS)}")
        self.check_scores(self.oracle is not None)
        if self.normals is not None and self.background is not None:
            raise ConfigError("--normals and --background both give normal images: use one (--normals writes "
                              "full-size images, --background images at the generator's resolution)")
        if self.hosts != "normal" and self.normals is None:
            raise ConfigError(f"--hosts {self.hosts} needs --normals (a dataset whose images receive the defects)")
        if self.max_defect_size is not None and (self.max_defect_size < 1 or self.normals is None):
            raise ConfigError(f"max_defect_size must be >= 1 and needs --normals, got {self.max_defect_size}")
        if self.host_gap < 0:
            raise ConfigError(f"host_gap must be >= 0, got {self.host_gap}")
        if self.foreground is not None and self.normals is None:
            raise ConfigError("--foreground needs --normals")
        if self.output_layout == "anomalib" and (self.normals is None or self.hosts != "normal"):
            raise ConfigError("--output-layout anomalib writes the normal images that received the defects as "
                              "anomalib's normal/ folder: give them with --normals (and --hosts normal)")
        if self.resample and self.scheduler != "ddim":
            raise ConfigError("--resample (RePaint-style) works with --scheduler ddim only")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be >= 1")

    def check_scores(self, has_oracle: bool) -> None:
        """Normalise ``scores``; an available oracle is always scored; the filter's score is computed."""
        self.scores = [s for s in self.scores if s != "none"]
        bad = [s for s in self.scores if s not in SCORES]
        if bad:
            raise ConfigError(f"unknown score(s) {bad}; choose from {list(SCORES)} or none")
        if has_oracle and "oracle" not in self.scores:
            self.scores.append("oracle")
        if "oracle" in self.scores and not has_oracle:
            raise ConfigError("score 'oracle' needs --oracle SEGMENTER_RUN")
        if self.min_alignment is not None and self.filter_score(has_oracle) not in self.scores:
            self.scores.append(self.filter_score(has_oracle))
        if self.min_alignment is not None:  # a threshold no sample can reach would run every attempt, then fail
            score = self.filter_score(has_oracle)
            if score == "oracle" and not 0 <= self.min_alignment <= 1:
                raise ConfigError(f"min_alignment {self.min_alignment:g} is outside the oracle IoU's range [0, 1]")
            if score == "free-lunch" and not self.min_alignment < 1:
                raise ConfigError(f"min_alignment {self.min_alignment:g} cannot be reached: the free-lunch score "
                                  "is below 1 (0.05 = the true mask's loss 5 % lower)")

    def filter_score(self, has_oracle: bool) -> str:
        """The score --min-alignment applies to."""
        if self.filter_by == "auto":
            return "oracle" if has_oracle else "free-lunch"
        return self.filter_by


class Synthesizer:
    """Everything needed to produce attempt i (loaded once per process)."""

    def __init__(self, cfg: GenerateConfig, gen, sources: list[MaskSource], masks, backgrounds, oracle,
                 generator_sha: str, normals=None):
        """``masks``: [N, 1, R, R] at the generator's resolution, or (with ``normals``, a ``NormalImages``) a
        list of full-size masks [1, H_k, W_k]; ``backgrounds``: (files, images [M, 3, R, R]) or None."""
        self.cfg, self.gen, self.sources, self.masks = cfg, gen, sources, masks
        self.backgrounds, self.oracle, self.generator_sha = backgrounds, oracle, generator_sha
        self.normals = normals
        from anomalign.generator.sampler import x0_bound_of
        self.x0_bound = x0_bound_of(gen, cfg.x0_clip)  # the bound actually used, recorded per sample
        self.usable = [k for k in range(len(sources)) if masks[k].any()]

    def conditioning(self, i: int) -> tuple[int, torch.Tensor, list[str]]:
        """(source index, mask [1, H, W], augmentations applied) of attempt i."""
        k = self.usable[i % len(self.usable)]
        g = torch.Generator().manual_seed(sample_seed(self.cfg.seed, i, 1))
        mask, ops = augment_mask(self.masks[k], self.cfg.augment, g)
        return k, mask, ops

    def run(self, attempts: list[int]) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
        """Generate and score ``attempts``; returns (record, image uint8 [H, W, 3], mask uint8 [H, W]) each.

        Batched network calls can differ from unbatched ones by float rounding (kernels sum in another
        order); ``batch_invariant`` trades speed for bit-identical results.
        """
        plans, skipped = {}, []
        if self.normals is not None:  # full size: where each defect goes, and which fit nowhere
            plans = self.placements(attempts)
            skipped = [i for i in attempts if plans[i][0] is None]
            attempts = [i for i in attempts if plans[i][0] is not None]
        if self.cfg.batch_invariant:
            made = [r for i in attempts for r in self._run([i], plans)]
        else:
            made = self._run(attempts, plans) if attempts else []
        if skipped:
            from anomalign.synthesis.fullsize import unplaceable_record
            made += [(unplaceable_record(i, self.sources[self.conditioning(i)[0]], plans[i][1].shape), None, None)
                     for i in skipped]
        return sorted(made, key=lambda r: r[0]["index"])

    def placements(self, attempts: list[int]) -> dict[int, tuple]:
        """{attempt: (Placement or None when the defect fits on no host, the defect bool [h, w] as placed)}."""
        from anomalign.synthesis.fullsize import defect_shape, piece_rng, plan
        cfg = self.cfg
        size = self.gen.resolution if cfg.resolution is None else cfg.resolution
        out = {}
        for i in attempts:
            defect = defect_shape(self.conditioning(i)[1], cfg.max_defect_size, piece_rng(cfg.seed, i))
            out[i] = plan(i, cfg.seed, defect, self.normals, size) or (None, defect)
        return out

    @torch.no_grad()
    def _run(self, attempts: list[int], plans: dict) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
        from anomalign.data.transforms import from_model_range, grey_u8
        from anomalign.generator.sampler import sample
        from anomalign.synthesis.scoring import free_lunch, oracle_scores

        cfg, gen = self.cfg, self.gen
        cond = [self.conditioning(i) for i in attempts]
        prompts = [self.sources[k].prompt for k, _, _ in cond]
        seeds = [sample_seed(cfg.seed, i, 0) for i in attempts]
        bg = region = placed = None
        if self.normals is not None:  # full size: a window of each normal image around the defect's location
            from anomalign.synthesis.fullsize import window_inputs
            size = gen.resolution if cfg.resolution is None else cfg.resolution
            placed, defects = [plans[i][0] for i in attempts], [plans[i][1] for i in attempts]
            bg, masks = map(torch.stack, zip(*(window_inputs(p, d, self.normals, size)
                                               for p, d in zip(placed, defects))))
            region = dilate(masks, cfg.dilate)
        else:
            masks = torch.stack([m for _, m, _ in cond])
        if self.backgrounds is not None:
            files, images = self.backgrounds
            bg_idx = [i % len(files) for i in attempts]
            bg, region = images[bg_idx], dilate(masks, cfg.dilate)
        fake = sample(gen, masks, prompts, seeds, cfg.scheduler, cfg.steps, cfg.guidance, background=bg,
                      region=region, resample=cfg.resample, feather_px=cfg.feather, x0_clip=cfg.x0_clip).float().cpu()
        scores: dict[str, list[float]] = {}
        if "free-lunch" in cfg.scores:
            fl = free_lunch(gen, fake, masks, prompts, shift=masks.shape[-1] // 4,
                            noise_seeds=[sample_seed(cfg.seed, i, 3) for i in attempts])
            scores["free_lunch"] = fl["score"].tolist()
            scores["loss_true_mask"] = fl["true"].tolist()
            scores["loss_moved_mask"] = fl["moved"].tolist()
            scores["loss_empty_mask"] = fl["empty"].tolist()
        if "oracle" in cfg.scores:
            scores["oracle_iou"] = oracle_scores(self.oracle, fake, masks)
        key = {"free-lunch": "free_lunch", "oracle": "oracle_iou"}[cfg.filter_score(self.oracle is not None)]
        images_u8 = from_model_range(fake)
        out = []
        for j, (i, (k, mask, ops)) in enumerate(zip(attempts, cond)):
            src = self.sources[k]
            row_scores = {name: float(v[j]) for name, v in scores.items()}
            kept = cfg.min_alignment is None or row_scores[key] >= cfg.min_alignment
            name = f"{src.defect}/{i:07d}.png"
            rec = {"file_name": f"images/{name}", "mask_file_name": f"masks/{name}", "index": i, "kept": kept,
                   "defect": src.defect, "category": src.category, "prompt": src.prompt, "normal": False,
                   "seed": seeds[j], "source_mask": str(Path(src.mask).resolve()),
                   "source_image": str(Path(src.image).resolve()) if src.image else None, "mask_augment": ops,
                   "background": (str(Path(self.backgrounds[0][i % len(self.backgrounds[0])]).resolve())
                                  if self.backgrounds is not None else None),
                   "generator": str(Path(cfg.generator).resolve()), "generator_sha256": self.generator_sha,
                   "scheduler": cfg.scheduler, "steps": cfg.steps, "guidance": cfg.guidance,
                   "x0_clip": self.x0_bound, "resolution": int(masks.shape[-1]), "scores": row_scores}
            image_u8, m_u8 = images_u8[j], (masks[j, 0].numpy() > 0.5).astype(np.uint8) * 255
            if gen.spec.get("grayscale"):  # a generator trained on grey data writes grey images
                image_u8 = grey_u8(image_u8)
            if placed is not None:
                from anomalign.synthesis.fullsize import compose
                p = placed[j]
                image_u8, m_u8 = compose(p, defects[j], images_u8[j], region[j], self.normals)
                rec |= self.normals.record(p) | {"window": [p.top, p.left, p.side],
                                                 "resolution": [int(m_u8.shape[0]), int(m_u8.shape[1])]}
            out.append((rec, image_u8 if kept else None, m_u8 if kept else None))
        return out


def summarize(records: list[dict], attempts: int) -> dict:
    """Counts and per-score mean/median/min over the kept samples."""
    summary: dict = {"kept": len(records), "attempts": attempts,
                     "acceptance": len(records) / attempts if attempts else float("nan"), "scores": {}}
    names = sorted({k for r in records for k in r["scores"]})
    for name in names:
        v = np.array([r["scores"][name] for r in records if name in r["scores"]], dtype=np.float64)
        summary["scores"][name] = {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                                   "max": float(v.max())}
    if "free_lunch" in names:
        summary["scores"]["free_lunch"]["frac_positive"] = float(np.mean(
            [r["scores"]["free_lunch"] > 0 for r in records]))
    return summary


@releases_locks
def run_generate(cfg: GenerateConfig, progress: bool = True, oracle=None) -> dict:
    """Write ``cfg.num`` pairs to ``cfg.out`` (resuming a previous identical run); returns the summary.

    ``oracle``: any object with ``predict_proba(images [B, 3, H, W] in [-1, 1]) -> [B, 1, H, W]``, e.g. the
    segmenter ``cfg.oracle`` names (the ``generate`` command loads it; a module is moved to the device).
    """
    from accelerate import Accelerator

    from anomalign.generator.model import WEIGHTS_NAME, MaskGenerator
    from anomalign.weights import weights_file

    cfg.validate()  # idempotent; fills defaults that depend on other options (steps, scores)
    check_out_outside(cfg.out, {"--masks": cfg.masks, "--background": cfg.background, "--normals": cfg.normals})
    cfg.check_scores(oracle is not None or cfg.oracle is not None)
    acc = Accelerator(cpu=use_cpu(cfg.device))
    main = acc.is_main_process
    if cfg.synthesizer == "cutpaste":  # no generator: the identity is the method's name
        gen, sha, size = None, "cutpaste", cfg.resolution
    else:
        gen_dir = Path(cfg.generator)
        weights = weights_file(gen_dir, WEIGHTS_NAME)
        if not weights.is_file():
            raise AnomalignError(f"{gen_dir}: not a generator run folder (no {WEIGHTS_NAME}); train one with "
                                 "`anomalign train-generator`")
        gen = MaskGenerator.load(gen_dir, base=cfg.base, device=acc.device).cast(DTYPES[cfg.dtype]).eval()
        size = cfg.resolution or gen.resolution
        step = gen.factor * 4
        if size % step:
            raise ConfigError(f"resolution {size} does not fit this generator: it must be a multiple of {step} "
                              f"(the generator was trained at {gen.resolution})")
        sha = file_sha256(weights)
        if cfg.guidance is None:  # measured: the tiny model aligns best at 3 (docs/generator.md); SD: the paper's 7
            cfg.guidance = TINY_GUIDANCE if gen.spec["backend"] == "tiny" else SD_GUIDANCE
    from anomalign.data.imageio import set_max_megapixels
    from anomalign.data.validate import skipped_records
    set_max_megapixels(cfg.max_megapixels)  # mask folders and backgrounds are read without load_dataset
    sources, skipped = read_mask_sources(cfg)
    skipped = list(skipped)
    normals = None
    if cfg.normals is not None:  # full size: masks stay at their own resolution, defects go into the normals
        from anomalign.data.imageio import load_mask
        from anomalign.synthesis.fullsize import NormalImages
        files, host_masks = host_files(cfg, Path(cfg.normals), cfg.split, cfg.hosts)
        files, host_masks, problems = usable_hosts(cfg, files, host_masks)
        skipped += problems
        normals = NormalImages(files, cfg.foreground, host_masks=host_masks, host_gap=cfg.host_gap,
                               mask_threshold=cfg.mask_threshold)
        masks = [torch.from_numpy(load_mask(s.mask, cfg.mask_threshold, s.mask_ids).astype(np.float32))[None]
                 for s in sources]
        vanished = [str(s.mask) for s, m in zip(sources, masks) if not m.any()]
    else:
        masks, vanished = load_masks(sources, size, cfg.mask_threshold)
    if len(vanished) == len(sources):
        raise DataError(f"{cfg.masks}: every mask is empty at {size}x{size} px (e.g. {vanished[0]}); "
                        "use a larger --resolution")
    if vanished and main:
        where = "" if normals is not None else f" left at {size}x{size}"  # full size: the masks were empty
        print(f"warning: {len(vanished)} mask(s) have no anomaly pixel{where} and are skipped "
              f"(e.g. {vanished[0]})", file=sys.stderr)
    backgrounds = None
    if cfg.background is not None:
        backgrounds, problems = read_backgrounds(cfg, size)
        skipped += problems
    if oracle is None and cfg.oracle is not None:
        raise ConfigError("--oracle: pass the loaded segmenter as run_generate(..., oracle=...); the `generate` "
                          "command loads it (synthesis sits below the segmenter and does not import it)")
    if isinstance(oracle, torch.nn.Module):
        oracle = oracle.to(acc.device)
    out = prepare_out(cfg, sha, main, skipped_records(skipped), barrier=acc.wait_for_everyone)
    acc.wait_for_everyone()
    if cfg.synthesizer == "cutpaste":
        from anomalign.synthesis.cutpaste import CutPaste, source_images
        synth = CutPaste(cfg, sources, masks, source_images(sources, masks, cfg.mask_threshold), backgrounds,
                         normals, oracle)
    else:
        synth = Synthesizer(cfg, gen, sources, masks, backgrounds, oracle, sha, normals)

    t0 = time.perf_counter()
    attempts, made = generate_rounds(synth, out, acc, progress)
    if cfg.output_layout == "anomalib" and main:  # the hosts beside the pairs: anomalib's normal_dir
        from anomalign.synthesis.anomalib_bridge import write_normal_dir
        write_normal_dir(out, normals.files)
        print(f"anomalib: Folder(name='synthetic', root='{out}', normal_dir='normal', abnormal_dir='images', "
              "mask_dir='masks') reads this folder (docs/ecosystem.md)")
    return finish_run(cfg, out, acc, attempts, made, time.perf_counter() - t0)


def generate_rounds(synth: Synthesizer, out: Path, acc, progress: bool) -> tuple[int, int]:
    """Attempts in rounds of batch_size x processes (each process its share, skipping recorded ones) until
    ``num`` are kept or the attempt cap is reached; returns (attempts made so far in all, made by this call)."""
    from tqdm.auto import tqdm

    cfg, main = synth.cfg, acc.is_main_process
    rank, world = acc.process_index, acc.num_processes
    # Attempts can be rejected by the filter or, at full size, skipped when their defect fits on no host: then
    # more than --num attempts are needed, up to --max-attempts x --num.
    may_reject = cfg.min_alignment is not None or cfg.normals is not None
    cap = math.ceil(cfg.num * cfg.max_attempts) if may_reject else cfg.num
    round_size = cfg.batch_size * world
    kept_so_far, start, made = 0, 0, 0
    bar = tqdm(total=cfg.num, unit="img", disable=not (progress and main), desc="generate", dynamic_ncols=True)
    while start < cap and kept_so_far < cfg.num:
        end = min(start + round_size, cap)
        if cfg.min_alignment is None:  # every placed attempt is kept: a round asks only for what is missing
            end = min(end, start + cfg.num - kept_so_far)
        todo = [i for i in range(start + rank, end, world) if read_record(out, i) is None]
        for b in range(0, len(todo), cfg.batch_size):
            for rec, image, mask in synth.run(todo[b:b + cfg.batch_size]):
                write_attempt(out, rec, image, mask)
                made += 1
        acc.wait_for_everyone()
        done = [read_record(out, i) for i in range(start, end)]
        if any(r is None for r in done):
            raise AnomalignError(f"{out}: records missing after a round; do all processes share this folder?")
        new_kept = sum(r["kept"] for r in done)
        bar.update(min(new_kept, cfg.num - kept_so_far))
        kept_so_far += new_kept
        start = end
        if made and main:
            bar.set_postfix(kept=f"{kept_so_far}/{start}")
    bar.close()
    return start, made


def finish_run(cfg: GenerateConfig, out: Path, acc, attempts: int, made: int, seconds: float) -> dict:
    """The result files (metadata.jsonl of the first ``num`` kept, rejected.jsonl, summary.json; the main
    process writes them) and the summary; an error when filtering kept fewer than ``num``."""
    acc.wait_for_everyone()
    records = [read_record(out, i) for i in range(attempts)]
    kept = [r for r in records if r is not None and r["kept"]]
    # The result is the first --num kept attempts; attempts after the last of them (the over-shoot of the last
    # round) are not part of it, so they count neither as tried nor as rejected.
    used = kept[cfg.num - 1]["index"] + 1 if len(kept) >= cfg.num else attempts
    counted = [r for r in records[:used] if r is not None]
    summary = summarize(kept[: cfg.num], used)
    summary["unplaceable"] = sum(r.get("reason") == "unplaceable" for r in counted)
    summary["images_per_s"] = made / seconds if made else None
    summary["generated_now"] = made
    if acc.is_main_process:
        for r in kept[cfg.num:]:  # over-shoot of the last round: not part of the result
            for key in ("file_name", "mask_file_name"):
                (out / r[key]).unlink(missing_ok=True)
        write_text_atomic(out / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in kept[: cfg.num]))
        write_text_atomic(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in counted if not r["kept"]))
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
        print(format_summary(summary, out, cfg.num))
    acc.wait_for_everyone()
    if len(kept) < cfg.num:
        why = []
        if summary["unplaceable"]:
            why.append(f"{summary['unplaceable']} had a defect that fits on no host image (larger or more "
                       "normal images, or --foreground masks, help)")
        low = sum(not r["kept"] and r.get("reason") != "unplaceable" for r in counted)
        if low:
            why.append(f"{low} scored below --min-alignment {cfg.min_alignment} (lower the threshold)")
        raise AnomalignError(f"{out}: only {len(kept)} of {attempts} attempts were kept ({'; '.join(why)}; cap "
                             f"{cfg.max_attempts} x --num, raise --max-attempts); the kept ones are written")
    return summary


def format_summary(summary: dict, out: Path, num: int) -> str:
    lines = [f"wrote {min(summary['kept'], num)} pairs to {out} ({summary['attempts']} attempts, "
             f"{100 * summary['acceptance']:.0f}% kept)"]
    if summary.get("unplaceable"):
        lines.append(f"{summary['unplaceable']} attempt(s) skipped: their defect fits on no host image "
                     "(listed in rejected.jsonl with reason 'unplaceable')")
    if summary.get("images_per_s"):
        lines.append(f"speed: {summary['images_per_s']:.2f} images/s ({summary['generated_now']} generated now)")
    for name, s in summary["scores"].items():
        extra = f", {100 * s['frac_positive']:.0f}% > 0" if "frac_positive" in s else ""
        lines.append(f"{name}: mean {s['mean']:.4f}, median {s['median']:.4f}, min {s['min']:.4f}{extra}")
    return "\n".join(lines)
