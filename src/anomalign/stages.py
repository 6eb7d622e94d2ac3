"""The training stages of ``anomalign run`` (``pipeline.py``) in one run folder, and the records of their inputs.

``Stages`` turns the plan and the run's options into the values of the command each stage runs (train-segmenter
for the baseline and the arms, train-generator, generate), so a stage folder is exactly what that command would
make by hand. ``StageRecords`` (``RUN/stages.json``) keeps the inputs each stage was made from: a finished stage
is skipped on a rerun only when they are unchanged, else it is redone with every stage made from it.
``train_stages`` runs them in order for the run folder, for each fold of ``--choice cv`` and for its refit.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from anomalign.config import build_config
from anomalign.data.folders import DataOptions
from anomalign.errors import AnomalignError
from anomalign.files import write_text_atomic
from anomalign.plan import ARMS, GEN_MIN_GAIN, Plan


def data_values(cfg: DataOptions) -> dict:
    """The DataOptions of ``cfg`` (layout, split, policy, ...), passed to every stage so all see one split."""
    return {f.name: getattr(cfg, f.name) for f in fields(DataOptions)}


class Stages:
    """Each stage of a run as the command it runs, on the folders under RUN. ``cfg`` is the run's
    ``pipeline.RunConfig`` (named, not imported: the pipeline imports this module). ``generator``: the generator
    folder the synthesis and feedback stages read (default ``out/generator``, trained here; a fold of
    ``--choice cv --cv-generator shared`` reads the run's one generator and trains none)."""

    def __init__(self, cfg, plan: Plan, out: Path, progress: bool, generator: Path | None = None):
        self.cfg, self.plan, self.out, self.progress = cfg, plan, out, progress
        self.generator = Path(generator) if generator is not None else out / "generator"
        self.own_generator = generator is None

    def segmenter_values(self, folder: Path) -> dict:
        p, cfg = self.plan, self.cfg
        return {**data_values(cfg), "train": str(cfg.data), "out": str(folder), "preset": p.preset, "norm": p.norm, "size": p.size,
                "pretrained": p.pretrained,
                "crop_size": p.crop_size, "scale": p.scale, "max_steps": p.seg_steps, "batch_size": p.batch_size,
                "train_normals": p.train_normals, "colour": p.colour, "seed": cfg.seed, "device": cfg.device,
                # the fork checkpoint stays: the one at fork_step, the end, and one per block the patience rule adds
                "checkpoint_every": p.fork_step, "keep_checkpoints": 3 + math.ceil(p.seg_extend / p.extend_block),
                # a val point every quarter of the baseline's first half: the report's training curves (the refit of
                # --choice cv has no val split: its end only)
                "validate_every": 0 if cfg.cv_fold == "all" else max(1, p.fork_step // 4),
                # the patience rule on the val split; not in cross-fitting, whose held-out labels must not shape
                # training (and whose refit has no val split)
                "extend_steps": p.seg_extend if cfg.cv_fold is None else 0, "extend_block": p.extend_block}

    def arm_values(self, folder: Path, arm: str | None = None) -> dict:
        """``train-segmenter``'s values for the baseline (``arm`` None) or an arm, without ``resume``."""
        values = self.segmenter_values(folder)
        if arm is None:
            return values
        p = self.plan
        if arm in ("synthetic", "both"):
            values |= {"synthetic": [str(self.out / "synthetic")], "batch_size": p.batch_size + p.synthetic_per_step,
                       "synthetic_fraction": p.synthetic_per_step / (p.batch_size + p.synthetic_per_step),
                       "synthetic_weight": p.synthetic_weight}
        if arm in ("feedback", "both"):
            # forked half-way: feedback starts at the fork, as the measured warm-up (no second warm-up)
            values |= {"feedback_generator": str(self.generator), "fb_warmup_steps": 0,
                       "temperature": p.temperature, "w_fb": p.w_fb, "fb_every": p.fb_every, "fb_rows": p.fb_rows}
            if self.cfg.base and self.plan.backend == "sd":
                values["feedback_base"] = self.cfg.base
        # checkpoints every quarter of the arm's half, so a killed arm resumes near where it stopped rather
        # than from the fork (the baseline keeps checkpoint_every = fork_step: its fork checkpoint must stay)
        values["checkpoint_every"] = arm_checkpoint_every(self.plan)
        return values

    def train_segmenter(self, folder: Path, arm: str | None = None) -> None:
        """The baseline (``arm`` None), or an arm forked from the baseline's half-way checkpoint."""
        from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
        values = self.arm_values(folder, arm)
        fork = self.out / "baseline" / "checkpoints" / f"step-{self.plan.fork_step:07d}"
        own = folder / "checkpoints"
        resume = "latest" if own.is_dir() and any(own.glob("step-*[0-9]")) else None
        if arm is not None:
            resume = resume or str(fork)
        values["resume"] = resume
        run_train_segmenter(build_config(TrainSegmenterConfig, values), progress=self.progress)

    def generator_values(self) -> dict:
        """``train-generator``'s values, without ``resume``."""
        p, cfg = self.plan, self.cfg
        return {
            **data_values(cfg), "data": str(cfg.data), "out": str(self.generator), "backend": p.backend,
            "base": p.base, "resolution": p.gen_resolution, "crop_size": p.gen_crop_size, "scale": p.scale,
            "crops_per_image": p.gen_crops_per_image, "max_steps": p.gen_steps, "batch_size": p.gen_batch_size,
            "learning_rate": p.gen_learning_rate, "alpha": p.alpha, "normals": p.gen_normals,
            "checkpoint_every": max(1, p.gen_steps // 3), "validation_masks": 8,
            "validation_steps": 25, "validation_guidance": p.guidance, "seed": cfg.seed, "device": cfg.device,
            # the generator's length from its held-out loss on the val split (plan.py, GEN_MIN_GAIN); not in
            # cross-fitting, whose held-out images judge the arms. Keys only when on: older runs keep their identity
            **({"extend_steps": p.gen_extend, "extend_block": p.gen_steps, "extend_lr": 1.0,
                "extend_min_gain": GEN_MIN_GAIN} if p.gen_extend and cfg.cv_fold is None else {})}

    def train_generator(self) -> None:
        from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
        own = self.generator / "checkpoints"
        run_train_generator(build_config(TrainGeneratorConfig, {
            **self.generator_values(),
            "resume": "latest" if own.is_dir() and any(own.glob("step-*[0-9]")) else None}), progress=self.progress)

    def generate_values(self) -> dict:
        """``generate``'s values: the plan's synthesis into the run's hosts, filtered by the baseline."""
        p, cfg = self.plan, self.cfg
        normals = cfg.normals or cfg.data
        return {
            **data_values(cfg), "generator": str(self.generator), "masks": str(cfg.data),
            "out": str(self.out / "synthetic"), "split": "train", "num": p.synthetic,
            "augment": ["flip"] if p.hosts == "normal" else ["flip", "rot90"], "scheduler": p.sampler,
            "steps": p.sample_steps, "guidance": p.guidance, "batch_size": p.synthesis_batch_size, "seed": cfg.seed,
            "normals": str(normals), "hosts": "normal" if cfg.normals else p.hosts,
            "max_defect_size": p.max_defect_size, "margin": p.margin, "oracle": str(self.out / "baseline"),
            # windows at the scale the generator was fine-tuned at (native crops at plan.scale): R / scale px
            "scale": p.scale if p.gen_crop_size else None,
            "min_alignment": p.min_alignment, "device": cfg.device, "base": cfg.base if p.backend == "sd" else None}

    def generate(self) -> dict:
        from anomalign.segmenter.model import Segmenter
        from anomalign.synthesis.generate import GenerateConfig, run_generate
        gen_cfg = build_config(GenerateConfig, self.generate_values())
        try:
            return run_generate(gen_cfg, progress=self.progress, oracle=Segmenter.load(self.out / "baseline"))
        except AnomalignError as e:  # fewer pairs than asked passed the filter: go on with those that did
            summary = self.out / "synthetic" / "summary.json"
            if not summary.is_file() or not json.loads(summary.read_text()).get("kept"):
                raise
            print(f"warning: {e}", file=sys.stderr)
            return json.loads(summary.read_text())

    def inputs(self, name: str) -> dict:
        """What stage ``name``'s result depends on: its command's values (the plan's and the run's options;
        not where it runs) and the identity (output file hash) of each stage it reads. Two starts with equal
        inputs may share the stage's result; any difference redoes it (``StageRecords``)."""
        out = self.out
        if name == "baseline":
            values, parents = self.arm_values(out / "baseline"), {}
        elif name == "generator":
            values, parents = self.generator_values(), {}
        elif name == "synthetic":
            values, parents = self.generate_values(), {"generator": None, "baseline": None}
        elif name == "premise":
            values = self.segmenter_values(out / "arm_feedback") | {"feedback_generator": str(self.generator)}
            parents = {"generator": None}
        elif name.startswith("arm_"):
            arm = name[len("arm_"):]
            values, parents = self.arm_values(out / name, arm), {"baseline": None}
            if arm in ("synthetic", "both"):
                parents["synthetic"] = None
            if arm in ("feedback", "both"):
                parents["generator"] = None
        else:
            raise KeyError(name)
        values = {k: v for k, v in values.items() if k not in ("device", "resume")}
        parents = {k: file_identity(self.output(k)) for k in parents}
        return json.loads(json.dumps({"values": values, "parents": parents}, sort_keys=True, default=str))

    def output(self, name: str) -> Path:
        """The file whose presence marks stage ``name`` done (``STAGE_OUTPUT``; the generator's is in
        ``self.generator``)."""
        if name == "generator":
            return self.generator / Path(STAGE_OUTPUT["generator"]).name
        return self.out / STAGE_OUTPUT[name]

    def generation_quality(self) -> dict:
        """``generation/``: evaluate-generation of the kept synthetic pairs against the real test anomalies,
        with the baseline as oracle (and its moved-mask control), the discriminability test (AUC of telling
        generated from real defect crops, seeded by the run's seed) and the generator's t-SNE."""
        from anomalign.evaluation.generation import EvaluateGenerationConfig, run_evaluate_generation
        cfg = self.cfg
        res = run_evaluate_generation(build_config(EvaluateGenerationConfig, {
            **data_values(cfg), "generated": [str(self.out / "synthetic")], "labels": ["synthetic"],
            "real": str(cfg.data), "split": "test", "out": str(self.out / "generation"),
            "generator": str(self.generator), "oracle": str(self.out / "baseline"), "seed": cfg.seed,
            "base": cfg.base if self.plan.backend == "sd" else None}))
        return {k: res[k] for k in ("sets", "premise", "notes", "figures", "real_images")}

    def premise(self) -> dict:
        """Generative Feedback's premise on the training images, as the feedback arm would see them."""
        from anomalign.generator.model import MaskGenerator
        from anomalign.segmenter.train import (PREMISE_MIN, TrainSegmenterConfig, feedback_premise,
                                               training_sets)
        values = self.segmenter_values(self.out / "arm_feedback") | {"feedback_generator": str(self.generator)}
        seg_cfg = build_config(TrainSegmenterConfig, values)
        real = training_sets(seg_cfg)[0]
        gen = MaskGenerator.load(self.generator, **({"base": self.cfg.base} if self.plan.backend == "sd"
                                                             else {}))
        gen.requires_grad_(False).eval()
        result = feedback_premise(gen, real, seg_cfg)
        result["holds"] = bool(result.get("images") and result["frac_true_lt_both"] >= PREMISE_MIN)
        return result


# The file whose presence marks each stage done (relative to RUN); its hash is the stage's identity.
STAGE_OUTPUT = {"baseline": "baseline/segmenter.safetensors", "generator": "generator/generator.safetensors",
                "synthetic": "synthetic/summary.json", "premise": "premise.json",
                **{f"arm_{a}": f"arm_{a}/segmenter.safetensors" for a in ARMS}}


def file_identity(path: Path) -> str | None:
    """A finished stage's identity: the sha256 of its output file (None when it is not there)."""
    path = Path(path)
    if not path.is_file():
        return None
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per version (a generator's weights are read by several stages' inputs)."""
    from anomalign.files import file_sha256
    return file_sha256(Path(path))


class StageRecords:
    """``RUN/stages.json``: the inputs each stage was started with (``Stages.inputs``).

    A stage counts as done only when its output file exists **and** it was made from today's inputs. When the
    inputs changed (an edited plan, another --seed or --train-pairs, a parent stage redone, so a new identity),
    its folder is removed and the stage is redone, and so, in turn, is every stage that reads it. A run made
    before these records has none: its finished stages are taken as they are (with a note), unless a stage they
    read was redone in this start."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / "stages.json"
        self.legacy = not self.path.is_file()
        self.records: dict = {} if self.legacy else json.loads(self.path.read_text())
        self.redone: set[str] = set()

    def done(self, name: str, inputs: dict, defaults: dict | None = None) -> bool:
        """Whether stage ``name`` can be skipped; if not, clears what it left from other inputs and records
        ``inputs`` as the ones it now runs with. ``defaults``: its command's option defaults (``command_defaults``):
        a value given on one side only counts as that default, so a code change that passes a default explicitly
        (or stops passing it) redoes nothing."""
        output = self.out / STAGE_OUTPUT[name]
        target = output if name == "premise" else output.parent
        old = self.records.get(name)
        diffs = [] if old is None else changed_inputs(old, inputs, defaults or {}, limit=None)
        if old is not None and not diffs and output.is_file():
            return True
        if old is None and output.is_file() and not (set(inputs["parents"]) & self.redone):
            print(f"note: {name}: no record of the inputs it was made with (a run started before stage records): "
                  "kept as it is")
            self._record(name, inputs)
            return True
        if diffs and target.exists():
            shown = diffs[:4] + ([f"{len(diffs) - 4} more"] if len(diffs) > 4 else [])
            print(f"{name}: its inputs changed since it ran ({'; '.join(shown)}): redoing it")
            remove_stage(target)
        elif old is None and target.exists() and set(inputs["parents"]) & self.redone:
            print(f"{name}: made before a stage it reads was redone: redoing it")
            remove_stage(target)
        self.redone.add(name)
        self._record(name, inputs)
        return False

    def _record(self, name: str, inputs: dict) -> None:
        self.records[name] = inputs
        write_text_atomic(self.path, json.dumps(self.records, indent=1, sort_keys=True))


def remove_stage(target: Path) -> None:
    """Delete a stage's folder (or file) made from other inputs: it is rebuilt from today's."""
    import shutil
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def changed_inputs(old: dict, new: dict, defaults: dict | None = None, limit: int | None = 4) -> list[str]:
    """The differences between two stages' inputs, as "key: old -> new" (at most ``limit``). A value present on
    one side only is compared as ``defaults``' value for it (the command's default), if it has one."""
    defaults, missing = defaults or {}, object()
    diffs = []
    a, b = old.get("values", {}), new.get("values", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key, defaults.get(key, missing)) != b.get(key, defaults.get(key, missing)):
            diffs.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    a, b = old.get("parents", {}), new.get("parents", {})
    diffs += [f"stage {key} was redone" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    if limit is None or len(diffs) <= limit:
        return diffs
    return diffs[:limit] + [f"{len(diffs) - limit} more"]


def command_defaults(name: str) -> dict:
    """The option defaults of the command stage ``name`` runs (as ``Stages.inputs`` writes values: JSON types)."""
    if name == "generator":
        from anomalign.generator.train import TrainGeneratorConfig as command
    elif name == "synthetic":
        from anomalign.synthesis.generate import GenerateConfig as command
    else:  # the baseline, the arms and the premise: train-segmenter's options
        from anomalign.segmenter.train import TrainSegmenterConfig as command
    out = {}
    for f in fields(command):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out, default=str))


def train_stages(stages: Stages, records: StageRecords, arms: list[str], stage, *, check_premise: bool = True,
                 prefix: str = "", title: str = "") -> tuple[list[str], dict | None]:
    """The training stages of one run folder (``stages.out``): the baseline, the generator, the synthetic pairs,
    the feedback premise and the arms, each skipped when done from today's inputs (``records``). ``stage`` is
    run_pipeline's progress wrapper; ``prefix`` / ``title`` name a fold's stages. Returns (the arms that ran,
    the premise or None). ``check_premise`` False: the arms run whatever the premise (a refit of an arm the
    cross-fitted choice adopted)."""
    out, plan = stages.out, stages.plan

    def done(name: str) -> bool:  # finished, from today's inputs (else cleared and recorded, to be run)
        return records.done(name, stages.inputs(name), command_defaults(name))

    more = f", + up to {plan.seg_extend} while val rises" if plan.seg_extend and stages.cfg.cv_fold is None else ""
    stage(f"{prefix}baseline", f"{title}baseline segmenter, real pairs only ({plan.seg_steps} steps{more})",
          lambda: stages.train_segmenter(out / "baseline"), done("baseline"))
    if arms and stages.own_generator:
        gen_more = (f", + up to {plan.gen_extend} while its held-out loss falls"
                    if plan.gen_extend and stages.cfg.cv_fold is None else "")
        stage(f"{prefix}generator", f"{title}train the generator ({plan.backend}, {plan.gen_steps} steps{gen_more})",
              stages.train_generator, done("generator"))
    if "synthetic" in arms or "both" in arms:
        stage(f"{prefix}synthetic", f"{title}generate {plan.synthetic} synthetic pairs, kept where the baseline finds "
              "the defect", stages.generate, done("synthetic"))
    premise = None
    if ("feedback" in arms or "both" in arms) and check_premise:
        premise_file = out / "premise.json"
        if not done("premise"):
            write_text_atomic(premise_file, json.dumps(stages.premise(), indent=1))
        premise = json.loads(premise_file.read_text())
        from anomalign.segmenter.train import PREMISE_MIN  # the one threshold (premise.json files older than it lack it)
        if not premise["holds"]:
            print(f"{title}Generative Feedback skipped: its premise holds on "
                  f"{100 * premise.get('frac_true_lt_both', 0):.0f} % of the training images (needs "
                  f"{100 * premise.get('threshold', PREMISE_MIN):.0f} %)")
            arms = [a for a in arms if a == "synthetic"]
    for arm in ARMS:
        folder = out / f"arm_{arm}"
        if arm in arms:
            stage(f"{prefix}arm_{arm}", f"{title}arm '{arm}', forked from the baseline at step {plan.fork_step}",
                  lambda arm=arm, folder=folder: stages.train_segmenter(folder, arm), done(f"arm_{arm}"))
    return arms, premise


def run_folder(name: str) -> str:
    """The folder of run ``name`` in a run folder: ``baseline`` or ``arm_<name>``."""
    return "baseline" if name == "baseline" else f"arm_{name}"


def arm_checkpoint_every(plan: Plan) -> int:
    """Steps between an arm's checkpoints: a quarter of the steps it trains after the fork."""
    return max(1, math.ceil((plan.seg_steps - plan.fork_step) / 4))
