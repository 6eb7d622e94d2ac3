"""The ``anomalign`` command: one entry point, one typed config per subcommand.

Each subcommand is (config dataclass, run function). Flags are generated from the dataclass fields,
``--config x.yaml`` fills the same fields, and flags typed on the command line win.
"""
from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anomalign import __version__
from anomalign.config import add_config_arguments, config_from_args, option
from anomalign.data.builtin import MakeDemoConfig
from anomalign.demo import DemoConfig
from anomalign.data.folders import DataOptions
from anomalign.errors import AnomalignError
from anomalign.evaluation.evaluate import EvaluateConfig
from anomalign.evaluation.generation import EvaluateGenerationConfig
from anomalign.evaluation.report import ReportConfig
from anomalign.generator.pretrain import PretrainBaseConfig
from anomalign.generator.train import TrainGeneratorConfig
from anomalign.pipeline import RunConfig
from anomalign.segmenter.export import ExportConfig
from anomalign.segmenter.infer import SegmentConfig
from anomalign.segmenter.train import TrainSegmenterConfig
from anomalign.study import StudyConfig
from anomalign.synthesis.generate import GenerateConfig


@dataclass(kw_only=True)
class DataCheckConfig(DataOptions):
    """Options of ``anomalign data check``."""

    path: Path = option(help="dataset folder", positional=True)
    json: Path | None = option(None, "also write the full report (every problem) as JSON to this file")
    max_per_kind: int = option(5, "problems printed per kind (the JSON report has all)")
    workers: int = option(4, "decoding threads")


def run_data_check(cfg: DataCheckConfig) -> int:
    from anomalign.data.imageio import set_max_megapixels
    from anomalign.data.layouts import read_dataset
    from anomalign.data.validate import check_dataset

    set_max_megapixels(cfg.max_megapixels)
    index = read_dataset(cfg.path, cfg)
    report = check_dataset(index, cfg.mask_threshold, workers=cfg.workers, progress=sys.stderr.isatty())
    print(report.format(cfg.max_per_kind))
    if cfg.json is not None:
        payload = {
            "root": str(index.root), "layout": index.layout,
            "samples": [{"image": str(s.image), "mask": str(s.mask) if s.mask else None, "defect": s.defect,
                         "normal": s.normal, "split": s.split, "category": s.category, "subset": s.subset,
                         "size": st.size, "coverage": st.coverage} for s, st in zip(index.samples, report.stats)],
            "problems": [{"path": str(p.path), "kind": p.kind, "severity": p.severity, "message": p.message}
                         for p in report.problems],
        }
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(payload, indent=1))
        print(f"full report written to {cfg.json}")
    errors, usable = report.errors, report.usable()
    if cfg.policy == "skip" and errors and usable:  # what commands would do with this data under --policy skip
        from anomalign.data.validate import format_skipped
        print("\n" + format_skipped(cfg.path, errors, cfg.max_per_kind * 4))
        print(f"policy skip: {len(usable)} usable pair(s) remain; commands run with --policy skip use them")
        return 0
    return 1 if errors else 0


def run_make_demo(cfg: Any) -> int:
    from anomalign.data.builtin import make_demo_dataset

    out = make_demo_dataset(cfg, progress=sys.stderr.isatty())
    print(f"built-in dataset written to {out}")
    print(f"check it with: anomalign data check {shlex.quote(str(out))}")
    return 0


def run_generate_command(cfg: GenerateConfig, progress: bool = False) -> int:
    """``generate``: the oracle that scores the samples is a segmenter, a layer above synthesis, so the
    command (which sits above both) loads it."""
    from anomalign.synthesis.generate import run_generate

    oracle = None
    if cfg.oracle is not None:
        from anomalign.segmenter.model import Segmenter
        oracle = Segmenter.load(cfg.oracle)
    run_generate(cfg, progress=progress, oracle=oracle)
    return 0


# name -> (help, config class or a function returning it, run function). A plain dict: no registry magic.
Command = tuple[str, Any, Callable[[Any], int]]
DATA_COMMANDS: dict[str, Command] = {
    "check": ("report layout, counts, sizes, mask coverage and every problem of a dataset",
              DataCheckConfig, run_data_check),
    "make-demo": ("write the built-in procedural defect dataset (deterministic by seed)",
                  MakeDemoConfig, run_make_demo),
}


def lazy(target: str, progress: bool = False) -> Callable[[Any], int]:
    """A run function that imports ``"module:function"`` only when its command runs (fast --help), passing
    ``progress`` (a progress bar when stderr is a terminal) to functions that take it."""
    def run(cfg: Any) -> int:
        import importlib
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        fn(cfg, progress=sys.stderr.isatty()) if progress else fn(cfg)
        return 0
    return run


COMMANDS: dict[str, Command] = {
    "run": ("your folder to the best segmenter this project can make: check, plan (RUN/plan.yaml), a real-only "
            "baseline, generator, filtered synthetic pairs, arms forked from the baseline, a validation-gated "
            "choice, test numbers, report and ONNX (39-66 min on one CPU core for magnetic tile's 388 pairs; "
            "resumable)",
            RunConfig, lazy("anomalign.pipeline:run_pipeline", progress=True)),
    "demo": ("`anomalign run` on the built-in dataset, with generation quality (about 8 min on 2 CPU cores), "
             "and its HTML report", DemoConfig, lazy("anomalign.demo:run_demo", progress=True)),
    "train-generator": ("fine-tune the mask-conditioned generator with dual-branch Alignment Regularization",
                        TrainGeneratorConfig, lazy("anomalign.generator.train:run_train_generator", progress=True)),
    "train-segmenter": ("train the segmenter (a U-Net by default) on real (+ synthetic) pairs, optionally with "
                        "Generative Feedback from a frozen generator", TrainSegmenterConfig,
                        lazy("anomalign.segmenter.train:run_train_segmenter", progress=True)),
    "generate": ("synthesise aligned image/mask pairs from real (or augmented) masks, scored and resumable",
                 GenerateConfig, lazy("anomalign.cli:run_generate_command", progress=True)),
    "evaluate": ("segmentation metrics (mDice, mIoU, IoU, Dice, pixel AUROC) per test set, as JSON and a table",
                 EvaluateConfig, lazy("anomalign.evaluation.evaluate:run_evaluate")),
    "evaluate-generation": ("quality of generated sets: FID (offline TF-Inception), alignment scores, IS / "
                            "IC-LPIPS when their weights exist, contour grids, t-SNE", EvaluateGenerationConfig,
                            lazy("anomalign.evaluation.generation:run_evaluate_generation")),
    "report": ("a static HTML report (+ markdown) of run folders: metrics tables, figures, configs",
               ReportConfig, lazy("anomalign.evaluation.report:run_report")),
    "segment": ("predict anomaly masks (PNG) and overlays for new images of any size", SegmentConfig,
                lazy("anomalign.segmenter.infer:run_segment", progress=True)),
    "export": ("export a trained segmenter to ONNX (checked against PyTorch with onnxruntime)",
               ExportConfig, lazy("anomalign.segmenter.export:run_export")),
    "study": ("run what is missing of a study file (studies/*.yaml: jobs, seeds, tables), resumable, "
              "--dry-run lists the jobs; then print its tables (mean ± sd over seeds)", StudyConfig,
              lambda cfg: __import__("anomalign.study", fromlist=["run_study"]).run_study(cfg)),
    "pretrain-base": ("train the tiny backend's base model from scratch on a procedural corpus",
                      PretrainBaseConfig, lazy("anomalign.generator.pretrain:run_pretrain_base", progress=True)),
}


# What `--help` shows of the long commands, grouped: the options a user changes. Every other option still works
# as a flag and as a key of the --config YAML, and `--help-all` lists them all (research knobs: loss weights,
# schedules, feedback timing, dataset-reader details).
FRONT: dict[str, dict[str, list[str]]] = {
    "run": {"data": ["data", "normals", "policy", "train_pairs", "val_fraction", "test_fraction", "split_seed"],
            "run": ["seed", "budget", "plan", "arms", "choice", "backend", "base", "quality", "export", "device"],
            "output": ["out"]},
    "train-segmenter": {"data": ["train", "synthetic", "policy", "train_pairs"],
                        "model": ["recipe", "preset", "pretrained", "crop_size", "scale"],
                        "training": ["max_steps", "batch_size", "learning_rate", "seed", "resume", "device",
                                     "feedback_generator"],
                        "output": ["out"]},
    "train-generator": {"data": ["data", "policy", "train_pairs", "normals"],
                        "model": ["backend", "base", "preset", "resolution", "alpha"],
                        "training": ["max_steps", "batch_size", "learning_rate", "seed", "resume", "device",
                                     "mixed_precision"],
                        "output": ["out"]},
    "generate": {"data": ["masks", "normals", "split", "policy"],
                 "model": ["generator", "base", "synthesizer"],
                 "sampling": ["num", "prompt", "scheduler", "steps", "guidance", "seed", "device"],
                 "filter": ["oracle", "min_alignment"],
                 "output": ["out"]},
}


def _add_commands(sub: argparse._SubParsersAction, commands: dict[str, Command], show_all: bool = False) -> None:
    for name, (help_text, cls, run) in commands.items():
        description = help_text[0].upper() + help_text[1:] + "."
        if name in FRONT and not show_all:
            description += " Shows the options most runs change; --help-all lists every option."
        p = sub.add_parser(name, help=help_text, description=description)
        add_config_arguments(p, cls, FRONT.get(name), show_all)
        p.set_defaults(_cls=cls, _run=run)


def build_parser(show_all: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalign",
        description="Mask-aligned anomaly image generation and segmentation (dual-branch Alignment "
                    "Regularization + Generative Feedback). Every command takes --config YAML; flags override it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anomalign {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    data = sub.add_parser("data", help="inspect, validate and create datasets",
                          description="Inspect, validate and create datasets.")
    data_sub = data.add_subparsers(title="data commands", metavar="DATA_COMMAND")
    _add_commands(data_sub, DATA_COMMANDS)
    data.set_defaults(_help=data)
    _add_commands(sub, COMMANDS, show_all)
    parser.set_defaults(_help=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_all = "--help-all" in argv
    if show_all:  # the same parser with every option shown, asked for its help
        argv = [a if a != "--help-all" else "--help" for a in argv]
    parser = build_parser(show_all)
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        args._help.print_help()
        return 0
    try:
        cfg = config_from_args(args._cls, args)
        return int(args._run(cfg) or 0)
    except AnomalignError as e:
        print(f"anomalign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomalign: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"anomalign: error: {where}{e.strerror or e} (nothing partial was left under the output's real "
              f"names; free space or pick a writable --out, then rerun: finished work is kept)", file=sys.stderr)
        return 1


EXIT_CODES = """exit codes:
  0    done
  2    what you gave must change: bad data, options, config or model files, an output folder that is
       not ours, inside the data, or in use by another anomalign process (one line names the file and
       the fix; nothing was written)
  1    the machine failed, not the input: disk full, read-only or permission denied (finished work is
       kept; free space and rerun the same command to continue); `data check` also exits 1 when it
       found errors in the data
  130  interrupted (Ctrl-C); rerun the same command to continue"""

# Failures of the machine, not of the input or of anomalign: one line and exit code 1, never a traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO}
