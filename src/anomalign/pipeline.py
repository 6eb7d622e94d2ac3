"""``anomalign run DATA --out RUN``: the whole method on a user's own folder, planned from the data and gated by
its validation split. Every stage is a folder under RUN (the command a user could run by hand, with its
config), finished stages are skipped on a rerun, and a killed stage resumes from its last checkpoint:

  check/          data check, fingerprint.json               -> plan.yaml (edit it and rerun)
  baseline/       train-segmenter, real pairs only (the measured recipe)
  generator/      train-generator (tiny on CPU; --backend sd --base ... on a GPU)
  synthetic/      generate: defects into the normals (or the anomalous images' free area), kept only where the
                  baseline finds them (oracle IoU >= min_alignment)
  arm_synthetic/  + synthetic pairs      } each forked from the baseline's half-way checkpoint, so every
  arm_feedback/   + Generative Feedback  } comparison is paired (same real crops, same steps); feedback only
  arm_both/       both                   } when its premise holds on the training images (premise.json)
  choice.json     the val choice (evaluation/choice.py): an arm replaces the baseline only if it wins by more
                  than the noise
  cv/fold_k/      --choice cv (crossfit.py; auto picks it when val is too small): each fold's runs, judged on its
                  held-out images; the top-level runs are then the refit on train + val
  test.json       test metrics of the baseline and the chosen segmenter (full size)
  report/         index.html: the decision and why, numbers, generated pairs, full-size overlays
  generation/     with --quality: evaluate-generation of the kept pairs (FID, oracle IoU vs moved masks, t-SNE)
  segmenter.onnx  the chosen segmenter's patch model (when onnx is installed)
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from anomalign.config import build_config, option, save_config
from anomalign.data.folders import DataOptions
from anomalign.errors import AnomalignError, DataError
from anomalign.evaluation.choice import MIN_VAL_ANOMALIES
from anomalign.files import check_out_outside, lock_folder, releases_locks, write_text_atomic
from anomalign.plan import (ARMS, DEFAULT_ARMS, Plan, estimate_seconds, make_plan, parse_arms,
                            read_plan, steps_note, write_plan)
from anomalign.crossfit import (MIN_FOLDS, check_folds, continued_choice, cross_fit, cv_estimates, resolve_choice,
                                run_generator)
from anomalign.stages import StageRecords, Stages, run_folder, train_stages


@dataclass(kw_only=True)
class RunConfig(DataOptions):
    """Options of ``anomalign run``."""

    data: Path = option(help="your dataset: any layout `anomalign data check` reads", positional=True)
    out: Path = option(help="run folder (created; rerun the same command to continue it)")
    normals: Path | None = option(None, "defect-free images kept elsewhere (a folder): they receive the synthetic "
                                        "defects")
    seed: int = option(0, "seed of every training stage (the data split has --split-seed)")
    budget: float | None = option(None, "minutes the run may take (estimated for one CPU core): steps and pairs "
                                        "are scaled down to fit (never up; default: the measured recipe, no scaling)")
    backend: Literal["tiny", "sd"] = option("tiny", "generator: tiny (CPU, shipped base) or sd (Stable Diffusion "
                                                    "1.x/2.x, with --base, on a GPU)")
    base: str | None = option(None, "generator base: sd folder or hub id (required for sd); tiny: another base")
    pretrained: str | None = option(None, "a pretrained Segformer for the segmenter: a local folder (safetensors) or "
                                          "a hub id such as nvidia/mit-b0 when online; the plan uses it instead of "
                                          "the from-scratch U-Net (default: none, the measured U-Net)")
    plan: Path | None = option(None, "a plan file to use instead of planning from the data (e.g. another run's "
                                     "plan.yaml, edited); RUN/plan.yaml is used when it exists")
    arms: list[str] | None = option(None, f"arms to compare with the baseline (default: the plan's, "
                                          f"{' '.join(DEFAULT_ARMS)}; all: {' '.join(ARMS)}; none: baseline only)")
    preset: Literal["measured", "paper"] = option("measured", "measured: the arms the measurements support (+ synthetic "
                                                              "pairs); paper: the paper's full comparison, arms "
                                                              f"{' '.join(ARMS)}")
    choice: Literal["auto", "val", "cv"] = option(
        "auto", "how an arm is chosen over the baseline: val, the single-split rule on the validation split; cv, "
                "cross-fitted: --folds folds over train + val, each training the baseline and the arms on the rest "
                "and judging them on its held-out images, then the chosen run refit on all of train + val (about "
                "--folds + 1 times the training); auto: val when the val split holds enough anomalies for its rule "
                f"(>= {MIN_VAL_ANOMALIES}), else cv (docs/run.md, 'Pre-registered choice rule')")
    folds: int = option(5, "folds of --choice cv (nnU-Net's 5)")
    cv_generator: Literal["fold", "shared"] = option(
        "fold", "--choice cv: fold, a generator per fold trained on its training part only (no held-out image "
                "reaches an arm); shared, one generator trained on all of train + val for every fold and the refit "
                "(cheaper; it has seen the held-out images: docs/run.md)")
    export: bool = option(True, "export the chosen segmenter to ONNX (needs the onnx package)")
    quality: bool = option(False, "also measure the kept synthetic pairs (generation/): FID against the real test "
                                  "anomalies, oracle IoU with the moved-mask control, t-SNE; about a minute more")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to run")

    def validate(self) -> None:
        DataOptions.validate(self)
        if self.budget is not None and not self.budget > 0:
            raise AnomalignError(f"budget must be > 0 minutes, got {self.budget}")
        if self.arms is not None:
            self.arms = parse_arms(self.arms)
        if self.preset == "paper":  # the paper's comparison: every arm
            if self.arms is not None and self.arms != list(ARMS):
                raise AnomalignError(f"--preset paper compares every arm ({' '.join(ARMS)}); drop --arms, or drop "
                                     "--preset to choose the arms")
            self.arms = list(ARMS)
        if self.cv_fold is not None:
            raise AnomalignError("--cv-fold is set by `run --choice cv` for its folds; use --choice cv --folds K")
        if self.choice == "cv":  # auto: refused only if it cross-fits (crossfit.resolve_choice)
            check_folds(self.folds)
        if self.backend == "sd" and not self.base:
            raise AnomalignError("--backend sd needs --base (a Stable Diffusion folder or hub id)")


MIN_PAIRS = {"train": 2, "val": 1, "test": 1}


class Progress:
    """Prints each stage with the elapsed time and an estimate of the time left (from the plan's estimate,
    corrected by how fast the finished stages really ran)."""

    def __init__(self, estimates: dict[str, float]):
        self.estimates, self.t0, self.spent, self.planned = dict(estimates), time.perf_counter(), 0.0, 0.0

    def start(self, name: str, title: str, done: bool) -> None:
        names = list(self.estimates)
        k = names.index(name) + 1 if name in names else 0
        elapsed = time.perf_counter() - self.t0
        speed = self.spent / self.planned if self.planned > 30 else 1.0
        left = sum(self.estimates[n] for n in names[max(0, k - 1):]) * speed
        state = "done, skipped" if done else f"elapsed {_mmss(elapsed)}, about {_mmss(left)} left"
        print(f"[{k}/{len(names)}] {title} — {state}", flush=True)

    def finish(self, name: str, seconds: float) -> None:
        if seconds > 1:  # a skipped stage says nothing about speed
            self.spent += seconds
            self.planned += self.estimates.get(name, 0.0)
        self.estimates[name] = 0.0


def _mmss(s: float) -> str:
    return f"{int(s // 60)}:{int(s % 60):02d}"


def check_stage(cfg: RunConfig):
    """Load and check the data and apply the run's minimums (nothing is written); returns (index, fingerprint)."""
    from anomalign.data.fingerprint import fingerprint
    from anomalign.data.validate import load_dataset
    index = load_dataset(cfg.data, cfg)
    fp = fingerprint(index, cfg.mask_threshold)
    short = []
    choice = resolve_choice(cfg, fp)[0]
    needs = dict(MIN_PAIRS, val=0) if choice == "cv" else MIN_PAIRS  # cv: the folds come from train + val
    for split, need in needs.items():
        if fp.pairs.get(split, 0) < need:
            short.append(f"{split}: {fp.pairs.get(split, 0)} (needs {need})")
    pooled = fp.pairs.get("train", 0) + fp.pairs.get("val", 0)
    if choice == "cv" and pooled < max(MIN_FOLDS, cfg.folds):
        short.append(f"train + val: {pooled} (needs {max(MIN_FOLDS, cfg.folds)} for {cfg.folds} folds)")
    if short:
        raise DataError(f"{cfg.data}: too few anomalous image/mask pairs with a non-empty mask ({'; '.join(short)}; "
                        f"{fp.empty_masks} anomalous image(s) have an empty mask). A run trains on train, chooses on "
                        "val and reports test: add pairs, or set --val-fraction / --test-fraction")
    if fp.smallest_side < 16:
        raise DataError(f"{cfg.data}: the smallest image is {fp.smallest_side:.0f} px on a side; images under 16 px "
                        "are too small to segment (run `anomalign data check` to find them)")
    return index, fp


def write_check(out: Path, index, fp) -> None:
    """``check/``: the fingerprint and the files ``--policy skip`` left out."""
    from anomalign.data.validate import skipped_records
    write_text_atomic(out / "check" / "fingerprint.json", json.dumps(fp.to_dict(), indent=1))
    if index.skipped:
        write_text_atomic(out / "check" / "skipped.json", json.dumps(skipped_records(index.skipped), indent=1))


@releases_locks
def run_pipeline(cfg: RunConfig, progress: bool = True) -> dict:
    """Run (or continue) every stage into ``cfg.out``; returns the result (also ``RUN/result.json``)."""
    from anomalign.runs import check_output_folder, mark_output_folder
    from anomalign.training import peak_rss_mb
    cfg.validate()
    cfg = dataclasses.replace(cfg, choice=continued_choice(cfg))
    asked = cfg.choice
    check_out_outside(cfg.out, {"the data folder": cfg.data, "--normals": cfg.normals})
    out = check_output_folder(Path(cfg.out), "run")
    t_start = time.perf_counter()
    index, fp = check_stage(cfg)  # every input problem surfaces here, before anything is written
    choice_mode, choice_why = resolve_choice(cfg, fp)
    cfg = dataclasses.replace(cfg, choice=choice_mode)  # run.yaml keeps what the user asked (auto)
    plan_file = out / "plan.yaml"
    plan, write = decide_plan(cfg, fp, plan_file)
    check_plan(plan, fp, Path(cfg.plan) if cfg.plan else plan_file)
    mark_output_folder(out, "run")
    lock_folder(out, "run")  # before anything else is written: a second `run` on this folder stops here
    save_config(dataclasses.replace(cfg, choice=asked), out / "run.yaml")
    write_check(out, index, fp)
    if write:
        write_plan(plan, plan_file, fp)
    print(steps_note(plan))
    arms = list(plan.arms)
    if asked == "auto" and arms:
        print(f"choice: {choice_why}")
    print_choice_note(fp, arms, cfg)
    estimates = estimate_seconds(plan)
    if cfg.choice == "cv":
        estimates = cv_estimates(estimates, cfg.folds, shared_generator=cfg.cv_generator == "shared")
    if cfg.quality:
        estimates = {**{k: v for k, v in estimates.items() if k != "report"}, "generation": 90.0, "report": 20.0}
    prog = Progress(estimates)
    stages = Stages(cfg, plan, out, progress)
    times: dict[str, float] = {}

    def stage(name: str, title: str, fn, done: bool):
        prog.start(name, title, done)
        t = time.perf_counter()
        result = None if done else fn()
        times[name] = time.perf_counter() - t
        prog.finish(name, times[name])
        return result

    stage("check", f"check the data ({sum(fp.pairs.values())} anomalous pairs)", lambda: None, True)
    if cfg.choice == "cv":
        choice, premise = cross_fit(cfg, plan, out, arms, stage, progress, why=choice_why)
        if arms and cfg.cv_generator == "fold":
            run_generator(cfg, plan, out, stage, progress, f"refit on train + val: train the generator ({plan.backend}, "
                          f"{plan.gen_steps} steps)")
        # the refit: the baseline (the test's reference) and the chosen arm, on all of train + val
        # (its generator is RUN/generator, trained above: the refit's stages read it and train none)
        refit = Stages(dataclasses.replace(cfg, cv_fold="all"), plan, out, progress, generator=out / "generator")
        train_stages(refit, StageRecords(out), [] if choice["chosen"] == "baseline" else [choice["chosen"]], stage,
                     check_premise=False, prefix="refit/", title="refit on train + val: ")
    else:
        arms, premise = train_stages(stages, StageRecords(out), arms, stage)
        choice = stage("choice", "choose on the validation split", lambda: choice_stage(cfg, out, arms, choice_why),
                       False)
    test = stage("test", "evaluate the baseline and the choice on the test split",
                 lambda: test_stage(cfg, out, choice["chosen"]), False)
    result = {"chosen": choice["chosen"], "segmenter": str(out / run_folder(choice["chosen"])),
              "reason": choice["reason"], "choice": choice, "test": test, "premise": premise,
              "plan": str(plan_file), "stage_s": times, "wall_s": time.perf_counter() - t_start}
    if cfg.quality and (out / "synthetic" / "summary.json").is_file():
        result["generation"] = stage("generation", "generation quality of the kept pairs (FID, oracle IoU, t-SNE)",
                                     stages.generation_quality, False)
        result["wall_s"] = time.perf_counter() - t_start
    if cfg.export:
        result["onnx"] = export_stage(out, choice["chosen"])
    result["peak_rss_mb"] = peak_rss_mb()
    write_text_atomic(out / "result.json", json.dumps(result, indent=1))
    from anomalign.evaluation.run_report import write_run_report
    stage("report", "write the report", lambda: write_run_report(out, result, index, cfg), False)
    print(headline(result))
    print(usage_line(result["segmenter"], out / "report" / "index.html"))
    return result


def usage_line(segmenter: str, report: Path) -> str:
    """The last line of a run: how to use the chosen segmenter, and where the report is. Paths are quoted for
    the shell, so one with spaces pastes back as one argument."""
    from shlex import quote
    return (f"use it: anomalign segment IMAGES --segmenter {quote(str(segmenter))} --out PREDICTIONS; "
            f"report: {quote(str(report))}")


@dataclass(frozen=True, repr=False)
class RunResult:
    """What ``anomalign.run`` returns: ``RUN/result.json`` as typed fields (``RunResult.read(RUN)`` reads the one a
    command-line run wrote).

    - ``chosen``: the run the validation choice kept, ``"baseline"`` (real pairs only) or an arm (``"synthetic"``,
      ``"feedback"``, ``"both"``); ``reason``: why, in words; ``choice``: ``choice.json`` (each run's val IoU and
      the rule's numbers);
    - ``test``: test metrics of the baseline and the chosen run at full size, ``{run: {"mIoU": ..., "mDice": ...,
      ...}}`` as fractions in [0, 1]; ``metrics``: the chosen run's;
    - ``segmenter``: the chosen segmenter's folder (``Segmenter.load(result.segmenter)``); ``out``: the run folder;
      ``plan``: its ``plan.yaml``; ``report``: ``report/index.html``; ``onnx``: ``segmenter.onnx`` (None when not
      exported);
    - ``premise``: Generative Feedback's premise on the training images (None without a feedback arm);
      ``generation``: generation quality with ``quality=True`` (else None);
    - ``stage_s``: seconds per stage; ``wall_s``: the run's seconds; ``peak_rss_mb``: its peak memory.

    ``result["chosen"]`` (the dict form ``run`` returned before) still works for one release, with a
    DeprecationWarning: it gives ``result.json``'s value (paths as strings).
    """

    chosen: str
    reason: str
    test: dict
    choice: dict
    segmenter: Path
    out: Path
    plan: Path
    report: Path
    onnx: Path | None
    premise: dict | None
    generation: dict | None
    stage_s: dict
    wall_s: float
    peak_rss_mb: float | None
    raw: dict  # result.json itself, for the deprecated dict access

    @classmethod
    def from_dict(cls, result: dict, out: Path) -> "RunResult":
        """The typed form of ``result.json``'s content ``result`` for the run folder ``out``."""
        return cls(chosen=result["chosen"], reason=result["reason"], test=result["test"], choice=result["choice"],
                   segmenter=Path(result["segmenter"]), out=Path(out), plan=Path(result["plan"]),
                   report=Path(out) / "report" / "index.html",
                   onnx=Path(result["onnx"]) if result.get("onnx") else None, premise=result.get("premise"),
                   generation=result.get("generation"), stage_s=result.get("stage_s", {}),
                   wall_s=result.get("wall_s", 0.0), peak_rss_mb=result.get("peak_rss_mb"), raw=result)

    @classmethod
    def read(cls, out) -> "RunResult":
        """The result of the finished run in folder ``out`` (``anomalign run`` or ``anomalign.run`` made it)."""
        file = Path(out) / "result.json"
        try:
            return cls.from_dict(json.loads(file.read_text()), Path(out))
        except FileNotFoundError:
            raise AnomalignError(f"{file}: no such file; the run in {out} has not finished (rerun `anomalign run` "
                                 "with the same --out to continue it)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise AnomalignError(f"{file}: not the result of an `anomalign run` ({type(e).__name__}: {e})") from None

    @property
    def metrics(self) -> dict:
        """Test metrics of the chosen run (``test[chosen]``)."""
        return self.test[self.chosen]

    def __getitem__(self, key: str):
        import warnings
        warnings.warn(f"result[{key!r}]: anomalign.run returns a RunResult; dict access goes away in the next "
                      f"release (use its fields, e.g. result.chosen, result.test, result.segmenter)",
                      DeprecationWarning, stacklevel=2)
        return self.raw[key]

    def __repr__(self) -> str:
        return (f"RunResult(chosen={self.chosen!r}, test mIoU {100 * self.metrics.get('mIoU', float('nan')):.1f}, "
                f"segmenter={str(self.segmenter)!r})")


def run(data, out, progress: bool = True, **options) -> RunResult:
    """``anomalign run DATA --out OUT`` from Python (the same ``run_pipeline``): ``options`` are its flags
    (``seed=1``, ``budget=30``, ``arms=["synthetic"]``, ``normals="good/"``, ...). Returns a ``RunResult``: the
    choice, the test numbers and the paths (``RUN/result.json``, typed)."""
    result = run_pipeline(build_config(RunConfig, {"data": str(data), "out": str(out), **options}), progress=progress)
    return RunResult.from_dict(result, Path(out))


def decide_plan(cfg: RunConfig, fp, plan_file: Path) -> tuple[Plan, bool]:
    """(the run's plan, whether RUN/plan.yaml must be written): ``--plan FILE``, else the run's own plan.yaml
    (kept from an earlier start, maybe edited), else one planned from the fingerprint."""
    if cfg.plan is not None:
        plan = read_plan(Path(cfg.plan))
        if cfg.pretrained and cfg.pretrained != plan.pretrained:
            raise AnomalignError(f"--pretrained {cfg.pretrained}: the plan {cfg.plan} has pretrained: "
                                 f"{plan.pretrained or 'null'}; set its pretrained line instead (a plan file is used "
                                 "as it is)")
        if cfg.arms is not None and list(cfg.arms) != list(plan.arms):
            raise AnomalignError(f"--arms {' '.join(cfg.arms) or 'none'}: the plan {cfg.plan} has arms "
                                 f"{' '.join(plan.arms) or 'none'}; set its arms line instead (a plan file is used as "
                                 "it is)")
        if plan_file.is_file() and read_plan(plan_file) != plan:
            raise AnomalignError(f"{plan_file}: this run already has another plan; continue it without --plan, or "
                                 "choose a new --out")
        return plan, True
    if plan_file.is_file():
        print(f"{plan_file}: using this plan (delete it to plan again)")
        plan = read_plan(plan_file)
        check_run_options(cfg, plan, plan_file)
        return plan, False
    plan = make_plan(fp, backend=cfg.backend, base=cfg.base, has_normals=cfg.normals is not None,
                     budget_minutes=cfg.budget, pretrained=cfg.pretrained)
    if cfg.arms is not None:
        plan.arms = list(cfg.arms)
    return plan, True


def check_run_options(cfg: RunConfig, plan: Plan, plan_file: Path) -> None:
    """A run continued with options its plan cannot follow: stop with a message instead of ignoring them.

    ``--arms`` must be the plan's arms (given); ``--budget``, ``--backend``, ``--base`` and ``--pretrained`` those of the start that
    made the plan (``RUN/run.yaml``): a plan is made once, so a new budget or backend needs a new plan."""
    import yaml
    if cfg.arms is not None and list(cfg.arms) != list(plan.arms):
        raise AnomalignError(f"--arms {' '.join(cfg.arms) or 'none'}: this run's plan ({plan_file}) has arms "
                             f"{' '.join(plan.arms) or 'none'}; edit its arms line (stages follow it) or drop --arms "
                             "to continue this run, or choose a new --out")
    previous = plan_file.parent / "run.yaml"
    if not previous.is_file():
        return
    before = yaml.safe_load(previous.read_text()) or {}
    for name, flag in (("budget", "--budget"), ("backend", "--backend"), ("base", "--base"),
                       ("pretrained", "--pretrained")):
        was, now = before.get(name), getattr(cfg, name)
        if name == "budget" and now is None:
            continue  # the budget only shapes a new plan; continuing without it is the same run
        if (str(was) if was is not None else None) != (str(now) if now is not None else None):
            raise AnomalignError(f"{flag} {now}: this run was planned with {flag} {was} ({plan_file}); a plan is "
                                 f"made once, so it would be ignored. Continue with {flag} {was}, or delete "
                                 f"{plan_file} to plan again (stages whose settings change are then redone), or "
                                 "choose a new --out")


def check_plan(plan: Plan, fp, plan_file: Path) -> None:
    """A plan (maybe edited) that cannot work on this data: stop before training, naming the setting."""
    if plan.crop_size and plan.crop_size > fp.short_side["max"] * plan.scale:
        raise DataError(f"{plan_file}: crop_size {plan.crop_size} is larger than every image at scale {plan.scale:g} "
                        f"(the largest shorter side is {fp.short_side['max']:.0f} px); lower crop_size or set it to 0")


def print_choice_note(fp, arms: list[str], cfg: RunConfig) -> None:
    """Say at the start, not after an hour of training, when there are too few anomalies for the choice to adopt
    an arm (the arms still run: their numbers are in the report)."""
    cv = cfg.choice == "cv"
    n = fp.pairs.get("val", 0) + (fp.pairs.get("train", 0) if cv else 0)
    if arms and n < MIN_VAL_ANOMALIES:
        print(f"note: {'train + val hold' if cv else 'the val split has'} {n} anomalous pair(s); the choice adopts an "
              f"arm only with >= {MIN_VAL_ANOMALIES} (docs/run.md, 'Pre-registered choice rule'), so this run will keep "
              "the baseline whatever the arms score." + ("" if cv else " More val pairs: --val-fraction, or --choice cv"))


def choice_stage(cfg: RunConfig, out: Path, arms: list[str], why: str = "") -> dict:
    """Per-image val scores of every run's final weights (IoU on the val anomalies, false-positive area on the val
    images with an empty mask); the choice (``evaluation.choice.choose``)."""
    from anomalign.data.validate import load_dataset
    from anomalign.devices import pick_device
    from anomalign.evaluation.choice import choose, per_image_scores
    from anomalign.segmenter.model import Segmenter
    plan = read_plan(out / "plan.yaml")
    device = pick_device(cfg.device)
    val = load_dataset(cfg.data, cfg, announce=False).split("val")
    scores = {name: per_image_scores(Segmenter.load(out / run_folder(name), device=device), val, device,
                                     mask_threshold=cfg.mask_threshold)
              for name in ["baseline", *arms]}
    base = scores.pop("baseline")
    result = choose(base["iou"], {k: v["iou"] for k, v in scores.items()}, min_gain=plan.min_gain,
                    fp_baseline=base["fp"], fp_arms={k: v["fp"] for k, v in scores.items()})
    result["mode"] = cfg.choice  # which choice decided (with "rule": what it is, and "reason": why)
    result["mode_reason"] = why or f"--choice {cfg.choice}"
    result["per_image"] = {"baseline": base["iou"].tolist()} | {k: v["iou"].tolist() for k, v in scores.items()}
    write_text_atomic(out / "choice.json", json.dumps(result, indent=1))
    print(result["reason"])
    return result


def test_stage(cfg: RunConfig, out: Path, chosen: str) -> dict:
    """Test metrics (full size) of the baseline and the chosen run."""
    from anomalign.data.validate import load_dataset
    from anomalign.devices import pick_device
    from anomalign.segmenter.validation import evaluate_run_style
    from anomalign.segmenter.model import Segmenter
    device = pick_device(cfg.device)
    test = load_dataset(cfg.data, cfg, announce=False).split("test")
    result = {}
    for name in dict.fromkeys(["baseline", chosen]):
        model = Segmenter.load(out / run_folder(name), device=device)
        result[name] = evaluate_run_style(model, test, model.size or 64, device, mask_threshold=cfg.mask_threshold,
                                          full_size=True)
    write_text_atomic(out / "test.json", json.dumps(result, indent=1))
    return result


def export_stage(out: Path, chosen: str) -> str | None:
    """ONNX of the chosen segmenter as ``RUN/segmenter.onnx`` (a note instead when onnx is missing)."""
    from anomalign.segmenter.export import ExportConfig, run_export
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("note: ONNX export skipped (pip install 'anomalign[export]')", file=sys.stderr)
        return None
    target = out / "segmenter.onnx"
    run_export(ExportConfig(segmenter=out / run_folder(chosen), out=target))
    return str(target)


def headline(result: dict) -> str:
    test = result["test"]
    base = test["baseline"]
    line = f"baseline (real only): test mIoU {100 * base['mIoU']:.1f}, mDice {100 * base['mDice']:.1f}"
    if result["chosen"] == "baseline":
        return f"{line}. Kept the baseline: {result['reason']}"
    chosen = test[result["chosen"]]
    return (f"{line}; chosen '{result['chosen']}': test mIoU {100 * chosen['mIoU']:.1f}, mDice "
            f"{100 * chosen['mDice']:.1f}. {result['reason']}")
