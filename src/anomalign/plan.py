"""``anomalign run``'s plan: a dataset fingerprint -> every setting of the run, each with the reason for it.

The rules below are the project's measured recipe (docs/results.md, docs/run.md) written as functions of the
fingerprint, never of a dataset's name: a plan for data this project has never seen is decided the same way.
The plan is written to ``RUN/plan.yaml`` with a comment giving each value's reason; a user edits it and reruns
(the file, when present, is read instead of planning again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from anomalign.config import config_to_dict, option
from anomalign.data.fingerprint import Fingerprint
from anomalign.errors import ConfigError
from anomalign.generator.sampler import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from anomalign.generator.window import MARGIN
from anomalign.recipe import GENERATOR, RUN, SEGMENTER, synthetic_per_step

CROP = SEGMENTER["size"]           # px: the crop of the measured recipe (magnetic tile, CrackForest)
SEG_STEPS = SEGMENTER["max_steps"]
ARMS = ("synthetic", "feedback", "both")
# Fields that were literals in the run's code before they became plan fields (their defaults are those literals,
# so a plan.yaml written before them runs as it did).
ADDED_WITH_RECIPE = {"gen_batch_size", "gen_learning_rate", "gen_crops_per_image", "gen_normals", "alpha",
                     "synthesis_batch_size", "synthetic_weight", "temperature", "w_fb", "fb_every", "fb_rows", "colour",
                     "pretrained", "seg_extend", "gen_extend"}
# The arms a run compares by default: + synthetic pairs only. Generative Feedback added nothing measurable wherever
# measured (docs/run.md, "The plan's rules": feedback alone -0.9 to +0.4 test points, the full method level with
# + synthetic) and its two arms cost 26 of a 66-minute run; they are opt-in: `--arms all` or `--preset paper`.
DEFAULT_ARMS = ("synthetic",)
# Seconds per unit for the time estimate and --budget, measured in `anomalign run` on magnetic tile with one CPU
# core per run (docs/run.md): a 128-px-crop segmenter step at batch 16 (0.27-0.34 s), a 128-px tiny generator
# step at batch 16 with its crop bank (3.0-3.6 s), one synthesis attempt (DDIM-25 with guidance, placement,
# free-lunch and oracle scores: 0.9-1.0 s, split into a fixed part and a part per sampler step so that
# UniPC-8 costs 1/4 of DDIM-50, as measured), and the arms' steps relative to a baseline step (+ 4 synthetic
# crops 1.25x, feedback on 4 rows every 2nd step 1.6x).
SEC_SEG_STEP, SEC_GEN_STEP, SEC_ATTEMPT, SEC_SAMPLE_STEP = 0.3, 3.3, 0.18, 0.031
SYN_FACTOR, FB_FACTOR = 1.25, 1.6
# Object-like anomalies (issue 47): blob-shaped defects (median elongation <= THIN, the thin-defect rule's bound)
# whose median covers >= OBJECT_SHARE of its image — a polyp in a frame, not a scratch on a tile. A crop must then
# hold the whole object with context: the images are resampled so the median defect spans 1 / OBJECT_CONTEXT of
# the crop's side (a ring of ~3/4 of its size on each side), where the surface rule only makes it fit.
# Thresholds chosen from the fingerprints' spread, not tuned on any score: defect shares of magnetic tile 0.5 %,
# CrackForest 1.4 % (thin), polyp frames 4.4 %. OBJECT_CONTEXT 2.5: a choice (the paper gives no crop rule).
THIN, OBJECT_SHARE, OBJECT_CONTEXT = 8.0, 0.02, 2.5
# Colour photographs (median HSV saturation of the checked images >= COLOURFUL; asphalt 0.04, tissue 0.47) train
# with saturation / white-balance jitter of strength COLOUR_JITTER: frames from other cameras and lights differ
# in colour cast more than surfaces under one line camera. A choice, measured on polyp-dev (docs/run.md).
COLOURFUL, COLOUR_JITTER = 0.2, 0.5
# The patience rule (issue 47): after seg_steps, the baseline and each arm train on in blocks of seg_steps / 4 (each a
# warm restart of the cosine at half the peak rate) while the val score at a block's end is the run's best so far,
# up to EXTEND x seg_steps more steps (training.train_on). A choice: the paper trains for a fixed length.
EXTEND = 0.5
# The generator's length from the data (issue 46 item 4): after gen_steps, train on in blocks of gen_steps (the
# constant learning rate continuing, so a block is exactly a longer run) while each block lowers the held-out loss
# of the anomalies (``generator.task.held_out_loss`` on the val split's defects) by at least GEN_MIN_GAIN of it, up
# to GEN_MAX_STEPS in all; the lowest-loss weights ship. Fixed before any downstream run: on polyp-dev (split seed 0)
# that loss fell 1.6, 0.8 and 1.1 % per 150-step block up to 600 steps, then 0.2 % per block to 1 200 steps, while
# the kept pairs rose 27 -> 75 -> 92 % (docs/synthesis.md). GEN_MAX_STEPS: 1 200 steps cost about as much CPU time as
# the baseline segmenter. OFF by default (GEN_RULE_DEFAULT): on polyp-dev, 3 split seeds, it chose 600 steps each
# time, aligned better (oracle IoU 0.51 -> 0.63) and made the synthetic arm worse (val mIoU 54.1 -> 53.1, test
# 67.0 -> 60.7); the criterion, written before the third seed: on by default only if the arm's mean val is not lower.
# A user turns it on with `gen_extend: 1050` in plan.yaml.
GEN_MIN_GAIN, GEN_MAX_STEPS, GEN_RULE_DEFAULT = 0.005, 1200, False
# Colour photographs (the COLOURFUL test) with the tiny backend: the length rule ON and synthesis at guidance
# COLOUR_GUIDANCE. On polyp-dev the rule's 600-step generators drew redder, more contrasted defects at guidance 3 (the
# C2ST's most telling statistics: classifier-free guidance's overshoot); at 2 the synthetic arm's val mIoU was
# 55.6 ± 1.6 over 3 split seeds, against 54.1 (150 steps, guidance 3: the default before) and 53.1 (600 steps,
# guidance 3) — the criterion written before the downstream runs, so adopted, for the colour photographs it was
# measured on; test (reported only) 64.5 against 67.0 and 60.7, each ± 5-9 (docs/synthesis.md, "What the gap is
# not"). Grey and little-coloured data keep 150 steps and guidance 3 (where a short fine-tune aligns best).
COLOUR_GUIDANCE = 2.0


@dataclass(kw_only=True)
class Plan:
    """Every setting of ``anomalign run`` (see ``make_plan`` for the rules)."""

    preset: str = option(SEGMENTER["preset"], "segmenter network")
    norm: Literal["group", "batch"] = option(SEGMENTER["norm"], "the U-Net's normalisation (group or batch)")
    pretrained: str | None = option(None, "a pretrained Segformer (folder or hub id) the segmenter starts from "
                                          "instead of the preset (run --pretrained)")
    crop_size: int = option(CROP, "segmenter crop at native resolution (0: whole images resized to size)")
    size: int = option(CROP, "segmenter input size (the crop, or the size whole images are resized to)")
    scale: float = option(1.0, "resampling of the images before cropping")
    seg_steps: int = option(SEG_STEPS, "segmenter steps of the baseline (arms fork from it half-way)")
    seg_extend: int = option(0, "steps the baseline and each arm may train on after seg_steps while their val score "
                                "still rises (blocks of seg_steps / 4; 0: off)")
    batch_size: int = option(SEGMENTER["batch_size"], "real crops per segmenter step")
    train_normals: bool = option(SEGMENTER["train_normals"], "normal images in the segmenter's batches")
    colour: float = option(SEGMENTER["colour"], "saturation / white-balance jitter of the segmenter's training images")
    backend: Literal["tiny", "sd"] = option("tiny", "generator backend")
    base: str | None = option(None, "generator base (tiny: the shipped one; sd: a folder or hub id)")
    gen_resolution: int = option(128, "generator resolution")
    gen_crop_size: int = option(CROP, "generator crops at native resolution (0: whole images)")
    gen_steps: int = option(RUN["gen_steps_crops"], "generator fine-tuning steps")
    gen_extend: int = option(0, "steps the generator may train on after gen_steps while its held-out anomaly loss "
                                "still falls (blocks of gen_steps; 0: off)")
    gen_batch_size: int = option(GENERATOR["batch_size"], "generator fine-tuning batch")
    gen_learning_rate: float = option(GENERATOR["learning_rate"], "generator fine-tuning learning rate")
    gen_crops_per_image: int = option(RUN["gen_crops_per_image"], "anomaly-centred crops per training image")
    gen_normals: int = option(GENERATOR["normals"], "defect-free images in the generator's training set")
    alpha: float = option(GENERATOR["alpha"], "α of the Alignment Regularization (Eq. 5)")
    synthetic: int = option(RUN["synthetic"], "synthetic pairs kept")
    hosts: Literal["normal", "anomalous"] = option("normal", "images that receive the synthetic defects")
    max_defect_size: int | None = option(None, "long defects are cut to pieces of this size")
    margin: float = option(MARGIN, "context band of synthesis around each new defect, a fraction of its longer side "
                                   "(generate --margin; 0: the mask grown by 3 px, the region before issue 46)")
    sampler: Literal["unipc", "dpm++", "ddim"] = option(DEFAULT_SAMPLER, "the synthesis sampler")
    sample_steps: int = option(DEFAULT_STEPS[DEFAULT_SAMPLER], "sampler steps per synthetic pair")
    guidance: float = option(DEFAULT_GUIDANCE["tiny"], "classifier-free guidance of synthesis")
    synthesis_batch_size: int = option(RUN["synthesis_batch_size"], "synthetic pairs per sampler batch")
    min_alignment: float = option(RUN["min_alignment"], "oracle IoU below which a synthetic pair is dropped")
    synthetic_per_step: int = option(synthetic_per_step(), "synthetic crops added to each step's real ones")
    synthetic_weight: float = option(SEGMENTER["synthetic_weight"], "w_syn of Eq. 6: the synthetic crops' weight")
    temperature: float = option(SEGMENTER["temperature"], "feedback arms: λ of Eq. 8")
    w_fb: float = option(SEGMENTER["w_fb"], "feedback arms: weight of L_fb (Eq. 11)")
    fb_every: int = option(SEGMENTER["fb_every"], "feedback arms: feedback every k steps")
    fb_rows: int = option(SEGMENTER["fb_rows"], "feedback arms: real rows per batch that get feedback")
    arms: list[str] = option(default_factory=lambda: list(DEFAULT_ARMS), help="arms compared with the baseline")
    min_gain: float = option(0.01, "val mIoU an arm must gain over the baseline (and pass the choice's test: "
                                   "evaluation/choice.py)")
    reasons: dict[str, str] = field(default_factory=dict, metadata={"help": "why each value", "positional": False,
                                                                    "aliases": ()})

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ConfigError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
        for name in ("seg_steps", "gen_steps", "synthetic", "batch_size", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seg_extend < 0 or self.gen_extend < 0:
            raise ConfigError(f"seg_extend and gen_extend must be >= 0 (0: no patience rule), got {self.seg_extend} "
                              f"and {self.gen_extend}")
        if self.seg_steps < 4:
            raise ConfigError(f"seg_steps must be >= 4 (arms fork from the baseline half-way), got {self.seg_steps}")
        if self.crop_size and self.crop_size < 16 or self.size < 16:
            raise ConfigError(f"crop_size / size must be >= 16 px, got {self.crop_size} / {self.size}")

    @property
    def extend_block(self) -> int:
        """Steps per block of the patience rule (``seg_extend``): a quarter of the baseline's, for the baseline and
        every arm alike."""
        return max(1, self.seg_steps // 4)

    @property
    def fork_step(self) -> int:
        """The baseline step the arms start from (its checkpoint): half-way, where L_ce has converged."""
        return self.seg_steps // 2


def make_plan(fp: Fingerprint, *, backend: str = "tiny", base: str | None = None, has_normals: bool | None = None,
              budget_minutes: float | None = None, pretrained: str | None = None) -> Plan:
    """The plan of a dataset from its fingerprint (``has_normals``: normal images given with ``--normals``;
    ``pretrained``: the user's pretrained Segformer, ``run --pretrained``)."""
    why: dict[str, str] = {}
    short, extent = fp.short_side["median"], fp.defect_extent["median"]
    if short >= 2 * CROP:
        crop, size = CROP, CROP
        why["crop_size"] = (f"images are large (median shorter side {short:.0f} px >= 2 x {CROP}): native-resolution "
                            f"{CROP}-px crops, predicted with sliding windows (small defects would vanish if "
                            "whole images were shrunk)")
    else:
        crop, size = 0, max(32, min(CROP, int(short) // 16 * 16))
        why["crop_size"] = (f"images are small (median shorter side {short:.0f} px < 2 x {CROP}): whole images "
                            f"resized to {size} px")
    why["size"] = why["crop_size"]
    scale = 1.0
    object_like = fp.defect_share["median"] >= OBJECT_SHARE and 0 < fp.defect_elongation <= THIN
    if crop and object_like and extent * OBJECT_CONTEXT > crop:
        floor = crop / max(fp.short_side["min"], 1.0)  # every image still holds one crop
        scale = round(max(floor, crop / (OBJECT_CONTEXT * extent)), 3)
        why["scale"] = (f"object-like defects (median {extent:.0f} px, {100 * fp.defect_share['median']:.1f} % of the "
                        f"image, elongation {fp.defect_elongation:.1f}): images resampled by {scale:g} so a "
                        f"{crop}-px crop holds the whole typical defect with context (it spans 1/{OBJECT_CONTEXT:g} of "
                        "the crop)" + (" — as far as the smallest image allows" if scale == round(floor, 3) else ""))
    elif crop and extent > crop:
        scale = max(0.25, round(crop / extent, 3))
        why["scale"] = (f"the median defect ({extent:.0f} px) is longer than the crop: images resampled by {scale:g} "
                        "so a typical defect fits in a crop")
    else:
        why["scale"] = f"the median defect ({extent:.0f} px) fits in a crop: native pixels"
    why["preset"] = ("a small U-Net: without pretrained weights it generalises from a few hundred crops where a "
                     "random Segformer memorises them (magnetic tile 41-49 vs 7.9 test mIoU)")
    why["norm"] = ("GroupNorm, the measured recipe; the BatchNorm U-Net trained in bf16 (1.9x faster steps) lost "
                   "7.0 val mIoU on magnetic tile over 3 seeds (studies/one_pass.yaml, docs/segmenter.md)")
    why["seg_steps"] = f"{SEG_STEPS}: real only gained 8 mIoU from 2 400 to 3 200 steps on magnetic tile"
    seg_extend = int(SEG_STEPS * EXTEND)
    why["seg_extend"] = (f"the patience rule: while the val score at the end of training is the best so far, train on "
                         f"in blocks of {SEG_STEPS // 4} steps (a warm restart at half the learning rate), up to "
                         f"{seg_extend} more; a block that does not beat it ends training and the best weights ship "
                         f"(magnetic tile: +4.6 and +5.2 test mIoU on the 2 of 3 seeds it acted on)")
    why["train_normals"] = ("anomalous pairs only: with the normals in the batch the anomaly class drowned on "
                            "magnetic tile (val mIoU 0 for a whole run)")
    train_normals = fp.normals.get("train", 0)
    hosts = "normal" if (has_normals or train_normals >= 10) else "anomalous"
    why["hosts"] = (f"{train_normals} normal training images{' (+ --normals)' if has_normals else ''}: defects go into "
                    + ("normal images" if hosts == "normal" else "the anomalous images' free area (too few normals)"))
    thin = fp.defect_elongation > THIN and fp.defect_extent["p90"] > CROP
    max_defect = CROP if thin else None
    why["max_defect_size"] = (f"long thin defects (median elongation {fp.defect_elongation:.0f}, p90 extent "
                              f"{fp.defect_extent['p90']:.0f} px): pasted as {CROP}-px pieces at their native width"
                              if thin else "defects are pasted whole (scaled down only when they do not fit)")
    why["margin"] = (f"{MARGIN:g}: a soft context band (docs/synthesis.md, \"Seamless placement\")" + (
        "; measured on thin cracks (CrackForest, one run): it kept 8 % of the synthesis attempts where margin 0 kept "
        "94 % (the band grows with the crack's length); an arm on margin-0 pairs is not measured yet: set 0 here to "
        "try it" if thin else ""))
    colour = COLOUR_JITTER if not fp.grey and fp.saturation >= COLOURFUL else 0.0
    why["colour"] = (f"colourful photographs (median saturation {fp.saturation:.2f} >= {COLOURFUL:g}): saturation and "
                     f"white-balance jitter {colour:g}, for frames from other cameras and lights" if colour else
                     f"{'grey images' if fp.grey else f'little colour (median saturation {fp.saturation:.2f})'}: no "
                     "colour jitter (brightness/contrast/gamma only)")
    gen_crop = CROP if crop else 0
    why["gen_crop_size"] = ("the generator fine-tunes on native crops of its resolution, so defects keep their real "
                            "size" if gen_crop else "whole images resized to the generator's resolution")
    gen_steps = RUN["gen_steps_crops"] if gen_crop else RUN["gen_steps_whole"]
    why["gen_steps"] = "the tiny base already follows masks; these steps adapt it to the data"
    rule = generator_length_rule(gen_steps)
    colour_generator = backend == "tiny" and colour > 0  # colour photographs: the rule on, guidance COLOUR_GUIDANCE
    gen_extend = rule if GEN_RULE_DEFAULT or colour_generator else 0
    how = (f"train the generator on in blocks of {gen_steps} steps while each lowers the held-out loss of the val "
           f"split's anomalies by >= {100 * GEN_MIN_GAIN:g} % (up to {gen_steps + rule} steps; the lowest-loss weights "
           "ship)")
    why["gen_extend"] = (
        f"{gen_extend}: colour photographs: {how}; with guidance {COLOUR_GUIDANCE:g} the synthetic arm's val mIoU on "
        "polyp-dev was 55.6 against 54.1 without the rule (3 split seeds; docs/synthesis.md)" if gen_extend else
        f"0: set {rule} to {how}. Off for grey or little-coloured data: on polyp-dev (3 split seeds) at guidance 3 it "
        "aligned better (oracle IoU 0.51 -> 0.63) but the synthetic arm scored lower (val mIoU 54.1 -> 53.1); it is "
        "on for colour photographs, with guidance 2 (docs/synthesis.md)")
    guidance = COLOUR_GUIDANCE if colour_generator else DEFAULT_GUIDANCE["tiny"]
    if colour_generator:
        why["guidance"] = (f"{COLOUR_GUIDANCE:g} for colour photographs: guidance 3 overdoes the colour and contrast of "
                           "the defects a longer-trained generator draws; on polyp-dev the synthetic arm's val mIoU was "
                           "55.6 at 2 against 53.1 at 3 (3 split seeds; docs/synthesis.md)")
    why["synthetic"] = (f"{RUN['synthetic']} pairs, kept only where the baseline finds the defect (oracle IoU >= "
                        f"{RUN['min_alignment']:g}): 47.9 ± 1.8 vs 40.2 ± 9.2 unfiltered on magnetic tile")
    why["min_alignment"] = why["synthetic"]
    why["gen_crops_per_image"] = ("4 anomaly-centred crops per image (train-generator's default is 8): the run's "
                                  "150 steps see every defect in several crops")
    why["alpha"] = ("the paper's α = 0.7 (dual branch); α = 0 aligned no better on a mask-aware base and worse on a "
                    "mask-free one (docs/generator.md)")
    why["synthetic_per_step"] = (f"{synthetic_per_step()} synthetic crops beside {SEGMENTER['batch_size']} real ones "
                                 f"(a fifth of the batch) at w_syn {SEGMENTER['synthetic_weight']:g}: the measured "
                                 "recipe (docs/results.md)")
    why["synthetic_weight"] = why["synthetic_per_step"]
    for key in ("temperature", "w_fb", "fb_every", "fb_rows"):
        why[key] = ("train-segmenter's measured feedback settings (docs/segmenter.md); used only by the feedback "
                    "arms (--arms all)")
    why["sampler"] = ("UniPC, 8 steps: as good as DDIM-50 in oracle IoU and FID on magnetic tile and the built-in "
                      "data (3 seeds), 4x faster")
    why["sample_steps"] = why["sampler"]
    why["arms"] = ("+ synthetic pairs, forked from the baseline's half-way checkpoint, so the comparison is paired; "
                   "Generative Feedback added nothing measurable wherever measured: its arms (feedback, both) with "
                   "--arms all (they run only when the feedback premise holds on the training images)")
    why["min_gain"] = ("an arm replaces the baseline only if it gains >= 1 val mIoU point, its paired per-image gain "
                       "passes a one-sided t-test (Holm over the arms, 5 %) on >= 10 val anomalies, and it adds at "
                       "most 0.1 % false-positive area on the val normals (evaluation/choice.py)")
    if pretrained:
        why["pretrained"] = (f"your pretrained encoder ({pretrained}): the segmenter starts from it instead of the "
                             "from-scratch U-Net (the preset is then unused), fine-tuned whole at the recipe's "
                             "learning rate, as `train-segmenter --pretrained`; the paper's segmenters start from "
                             "pretrained encoders, and none is shipped")
        why["preset"] = why["pretrained"]
    plan = Plan(crop_size=crop, size=size, scale=scale, colour=colour, seg_extend=seg_extend, pretrained=pretrained or None, backend=backend, base=base, gen_crop_size=gen_crop,
                gen_steps=gen_steps, gen_extend=gen_extend, guidance=guidance, hosts=hosts, max_defect_size=max_defect,
                reasons=why)
    if backend == "sd":
        plan.gen_resolution = 512
        why["gen_resolution"] = "Stable Diffusion's resolution"
    if budget_minutes is not None:
        fit_budget(plan, budget_minutes)
    return plan


def generator_length_rule(gen_steps: int) -> int:
    """``gen_extend`` of the held-out-loss rule: whole blocks of ``gen_steps`` up to GEN_MAX_STEPS in all."""
    return max(0, GEN_MAX_STEPS - gen_steps) // gen_steps * gen_steps


def parse_arms(names: list[str]) -> list[str]:
    """The arms named on a command line: ``none`` (baseline only), ``all`` (every arm) or arm names."""
    if "all" in names:
        return list(ARMS)
    arms = [a for a in names if a != "none"]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"unknown arm(s) {bad}; choose from {list(ARMS)}, all or none")
    return list(dict.fromkeys(arms))


def estimate_seconds(plan: Plan) -> dict[str, float]:
    """Seconds per stage on one CPU core (the constants above); an estimate for progress and --budget."""
    pixels = (plan.crop_size or plan.size) ** 2 / CROP ** 2
    seg = SEC_SEG_STEP * pixels * plan.batch_size / 16
    half = plan.seg_steps - plan.fork_step
    arms = {"synthetic": half * seg * SYN_FACTOR, "feedback": half * seg * FB_FACTOR,
            "both": half * seg * SYN_FACTOR * FB_FACTOR}
    out = {"check": 10.0, "baseline": plan.seg_steps * seg + 30, "generator": plan.gen_steps * SEC_GEN_STEP + 20,
           "synthetic": 1.3 * plan.synthetic * (SEC_ATTEMPT + plan.sample_steps * SEC_SAMPLE_STEP)}
    out |= {f"arm_{a}": arms[a] + 30 for a in plan.arms}
    out |= {"choice": 10.0 * (1 + len(plan.arms)), "test": 60.0, "report": 20.0}
    return out


def fit_budget(plan: Plan, minutes: float) -> None:
    """Scale the plan's steps and pairs so its estimate fits ``minutes`` (never up: the defaults are the
    measured recipe); the reason says by how much."""
    total = sum(estimate_seconds(plan).values())
    factor = min(1.0, 60 * minutes / total)
    if factor >= 1:
        plan.reasons["budget"] = f"estimated {total / 60:.0f} min fits --budget {minutes:g} min: nothing scaled"
        # the patience rule trains on only in the time left: the baseline's step and each arm's, per extra step
        seconds = estimate_seconds(plan)
        per_step = ((seconds["baseline"] - 30) / plan.seg_steps
                    + sum(seconds[f"arm_{a}"] - 30 for a in plan.arms) / (plan.seg_steps - plan.fork_step))
        spare = 60 * minutes - total
        # the segmenter's blocks first (measured: +4.6 and +5.2 test mIoU where they acted), then the generator's
        fits = int(spare / max(per_step, 1e-9)) // plan.extend_block * plan.extend_block
        if fits < plan.seg_extend:
            plan.seg_extend = fits
            plan.reasons["seg_extend"] += f" (--budget {minutes:g} min leaves time for {fits})"
        spare -= plan.seg_extend * per_step
        gen_fits = max(0, int(spare / SEC_GEN_STEP)) // plan.gen_steps * plan.gen_steps
        if gen_fits < plan.gen_extend:
            plan.gen_extend = gen_fits
            plan.reasons["gen_extend"] = plan.reasons.get("gen_extend", "") + (
                f" (--budget {minutes:g} min leaves time for {gen_fits})")
        return
    plan.seg_steps = max(8, int(plan.seg_steps * factor) // 2 * 2)
    plan.gen_steps = max(4, int(plan.gen_steps * factor))
    plan.synthetic = max(8, int(plan.synthetic * factor))
    plan.seg_extend = plan.gen_extend = 0
    plan.reasons["seg_extend"] = f"--budget {minutes:g} min leaves no time to train on: no patience rule"
    plan.reasons["gen_extend"] = f"--budget {minutes:g} min leaves no time to train the generator on"
    plan.reasons["budget"] = (f"estimated {total / 60:.0f} min for --budget {minutes:g} min: steps and pairs scaled by "
                              f"{factor:.2f} (fewer steps than measured: expect lower scores)")


def write_plan(plan: Plan, path: Path, fp: Fingerprint | None = None) -> None:
    """``plan.yaml``: one ``key: value  # reason`` line per setting (comments are for people; edit values)."""
    from anomalign.files import write_text_atomic
    values = config_to_dict(plan)
    reasons = values.pop("reasons")
    lines = ["# anomalign run: the plan of this dataset. Edit a value and rerun `anomalign run` to use it;",
             "# stages whose settings changed are redone, with the stages made from them (RUN/stages.json)."]
    for f in fields(Plan):
        if f.name == "reasons":
            continue
        text = yaml.safe_dump({f.name: values[f.name]}, default_flow_style=True, width=1000).strip()
        text = text[1:-1] if text.startswith("{") else text
        lines.append(f"{text}" + (f"  # {reasons[f.name]}" if f.name in reasons else ""))
    if "budget" in reasons:
        lines.append(f"# budget: {reasons['budget']}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_plan(path: Path) -> Plan:
    """A ``plan.yaml`` (possibly edited by hand) as a checked Plan.

    A plan that ``anomalign run`` wrote (every field) before the ``sampler`` field existed sampled with DDIM:
    it keeps DDIM, so a resumed run goes on as it started. A hand-written partial plan gets the default."""
    from anomalign.config import load_config
    plan = load_config(Plan, path)
    written = yaml.safe_load(Path(path).read_text()) or {}
    missing = {f.name for f in fields(Plan)} - {"reasons"} - set(written)
    if "sampler" in missing and missing <= {"sampler", "norm"} | ADDED_WITH_RECIPE:  # fields added since then
        plan.sampler = "ddim"
    return plan


def steps_note(plan: Plan) -> str:
    """One line: the plan's main numbers and the time estimate."""
    total = sum(estimate_seconds(plan).values())
    where = f"{plan.crop_size}-px crops" if plan.crop_size else f"whole images at {plan.size} px"
    more = f" (+ up to {plan.seg_extend} while val rises)" if plan.seg_extend else ""
    gen_more = f" (+ up to {plan.gen_extend} while its held-out loss falls)" if plan.gen_extend else ""
    return (f"plan: {plan.preset} on {where} (scale {plan.scale:g}), {plan.seg_steps} steps{more}; {plan.backend} "
            f"generator {plan.gen_steps} steps{gen_more}; {plan.synthetic} synthetic pairs into {plan.hosts} images; arms "
            f"{', '.join(plan.arms) or 'none'}; about {math.ceil(total / 60)} min (estimated for one CPU core)")
