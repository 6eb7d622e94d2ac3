"""The options of ``anomalign generate`` (one typed config) and the checks of how they go together.

Its own module so that the readers of the inputs (``sources``), the synthesizers (``diffusion``, ``cutpaste``)
and the run loop (``generate``) all read one config without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from anomalign.config import option
from anomalign.data.folders import DataOptions
from anomalign.errors import ConfigError
from anomalign.generator.sampler import DEFAULT_SAMPLER, DEFAULT_STEPS
from anomalign.generator.window import DILATE_PX, FEATHER_PX, MARGIN
from anomalign.synthesis.augment import MASK_AUGMENTS

SCORES = ("free-lunch", "oracle")


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
    feather: int = option(FEATHER_PX, "inpainting: width in pixels of the blend ramp (inside the region with "
                                      "--margin 0; else the least width of the context band)")
    margin: float = option(MARGIN, "inpainting: context band around the defect, as a fraction of its longer side, "
                                   "across which the generated pixels blend into the host (soft in the latents and "
                                   "in the paste; the window's border ring always keeps the host; the mask stays "
                                   "the label); 0 = the old region: the mask grown by --dilate, feathered by --feather")
    scale: float | None = option(None, "with --normals: the scale the generator was fine-tuned at (its windows "
                                       "cover resolution / scale native px; widened for a defect that would not "
                                       "fit with its context); default: the generator's own (train-generator "
                                       "--scale), else 1")
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
        """Fill the defaults that depend on other options (sampler steps, scores) and refuse options that do
        not go together, before anything is read or written. Idempotent."""
        DataOptions.validate(self)
        self._check_numbers()
        self._check_sampler()
        self._check_synthesizer()
        self.augment = [a for a in self.augment if a != "none"]
        bad = [a for a in self.augment if a not in MASK_AUGMENTS]
        if bad:
            raise ConfigError(f"unknown mask augmentation(s) {bad}; choose from {list(MASK_AUGMENTS)}")
        self.check_scores(self.oracle is not None)
        self._check_placement()

    def _check_numbers(self) -> None:
        for name, least in (("num", 1), ("batch_size", 1), ("host_gap", 0), ("max_attempts", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.x0_clip is not None and self.x0_clip < 0:
            raise ConfigError(f"x0_clip must be >= 0 (0 = no bound), got {self.x0_clip}")
        for name in ("dilate", "feather", "margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if self.guidance is not None and self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0 (1 = off), got {self.guidance}")

    def _check_sampler(self) -> None:
        if self.scheduler is None:
            self.scheduler = "ddim" if self.resample else DEFAULT_SAMPLER
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.scheduler]
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.resample and self.scheduler != "ddim":
            raise ConfigError("--resample (RePaint-style) works with --scheduler ddim only")

    def _check_synthesizer(self) -> None:
        """diffusion needs a generator; cutpaste needs images to paste into and cannot use the free-lunch score
        (it has no generator)."""
        if self.synthesizer == "diffusion" and self.generator is None:
            raise ConfigError("--generator is required (or --synthesizer cutpaste)")
        if self.synthesizer != "cutpaste":
            return
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

    def _check_placement(self) -> None:
        """Where defects go: the generator's window (default), --background images (inpainting) or --normals
        (full size); the options of one placement need it."""
        if self.normals is not None and self.background is not None:
            raise ConfigError("--normals and --background both give normal images: use one (--normals writes "
                              "full-size images, --background images at the generator's resolution)")
        if self.hosts != "normal" and self.normals is None:
            raise ConfigError(f"--hosts {self.hosts} needs --normals (a dataset whose images receive the defects)")
        if self.max_defect_size is not None and (self.max_defect_size < 1 or self.normals is None):
            raise ConfigError(f"max_defect_size must be >= 1 and needs --normals, got {self.max_defect_size}")
        if self.foreground is not None and self.normals is None:
            raise ConfigError("--foreground needs --normals")
        if self.output_layout == "anomalib" and (self.normals is None or self.hosts != "normal"):
            raise ConfigError("--output-layout anomalib writes the normal images that received the defects as "
                              "anomalib's normal/ folder: give them with --normals (and --hosts normal)")

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
