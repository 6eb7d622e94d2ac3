"""``anomalign run --choice cv``: the cross-fitted choice, and ``--choice auto``, which picks it.

Train + val are dealt to K folds (``data.validate.assign_fold``); each fold ``RUN/cv/fold_k/`` is a run folder of
its own (the baseline, the synthetic pairs made from its training part only, the arms), its runs are scored on
its held-out images, and ``evaluation.choice.choose_cv`` decides over all of them (docs/run.md, "Pre-registered
choice rule"). ``RUN/generator`` is trained on all of train + val: every fold's with ``--cv-generator shared``,
else the refit's. ``cfg`` is the run's ``pipeline.RunConfig`` (named, not imported: the pipeline imports this
module).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from anomalign.errors import AnomalignError
from anomalign.evaluation.choice import MIN_VAL_ANOMALIES
from anomalign.files import write_text_atomic
from anomalign.plan import ARMS, Plan, read_plan
from anomalign.stages import StageRecords, Stages, command_defaults, run_folder, train_stages


MIN_FOLDS = 3  # the cross-fitted rule judges fold means: a t-test needs at least 2 degrees of freedom


def check_folds(folds: int, why: str = "") -> None:
    """Refuse fewer than ``MIN_FOLDS`` folds for a run that cross-fits (``why``: what makes it cross-fit)."""
    if folds < MIN_FOLDS:
        raise AnomalignError(f"{why}--folds must be >= {MIN_FOLDS} (the cross-fitted rule judges fold means), got "
                             f"{folds}" + ("; or set --choice val" if why else ""))


def continued_choice(cfg) -> str:
    """``--choice auto`` on a run folder that already has a ``run.yaml``: the choice that start used, so a rerun
    without the flag continues the same run (an explicit ``--choice`` is used as given)."""
    import yaml
    previous = Path(cfg.out) / "run.yaml"
    if cfg.choice != "auto" or not previous.is_file():
        return cfg.choice
    return (yaml.safe_load(previous.read_text()) or {}).get("choice", "val")  # runs before auto chose by val


def resolve_choice(cfg, fp) -> tuple[str, str]:
    """``--choice auto``: (the choice, why). The single-split rule never adopts an arm with fewer than
    ``MIN_VAL_ANOMALIES`` val anomalies, so then the run cross-fits over train + val instead, as long as those
    hold the rule's minimum (else neither rule could adopt, and the cheaper single split runs). No arms
    (``--arms none``): nothing to choose, the single split."""
    if cfg.choice != "auto":
        return cfg.choice, f"--choice {cfg.choice}"
    val, pooled = fp.pairs.get("val", 0), fp.pairs.get("train", 0) + fp.pairs.get("val", 0)
    if cfg.arms == []:
        return "val", "--choice auto: no arms to choose among"
    if val >= MIN_VAL_ANOMALIES:
        return "val", (f"--choice auto: the val split holds {val} anomalous pairs (>= {MIN_VAL_ANOMALIES}, the rule's "
                       "minimum)")
    if pooled >= max(MIN_VAL_ANOMALIES, cfg.folds):
        check_folds(cfg.folds, f"--choice auto cross-fits this folder (the val split holds {val} anomalous pair(s), "
                               f"fewer than the single-split rule's {MIN_VAL_ANOMALIES}), and ")
        return "cv", (f"--choice auto: the val split holds {val} anomalous pair(s), fewer than the single-split rule "
                      f"needs ({MIN_VAL_ANOMALIES}); train + val hold {pooled}, so the choice is cross-fitted over "
                      f"{cfg.folds} folds (about {cfg.folds + 1}x the training of a single split)")
    return "val", (f"--choice auto: train + val hold {pooled} anomalous pairs, fewer than either rule needs "
                   f"({MIN_VAL_ANOMALIES}): the single split (it will keep the baseline)")


def fold_folder(out: Path, k: int) -> Path:
    """``RUN/cv/fold_k/``: fold k's baseline, generator, synthetic pairs and arms (a run folder of its own)."""
    return out / "cv" / f"fold_{k}"


def cross_fit(cfg, plan: Plan, out: Path, arms: list[str], stage, progress: bool, why: str = ""
              ) -> tuple[dict, dict | None]:
    """``--choice cv``: for each of ``cfg.folds`` folds of train + val (``data.validate.assign_fold``), the
    baseline, a generator, synthetic pairs and the arms trained on the other folds only (synthetic pairs made
    from them only: a generator per fold, so no held-out image reaches an arm; with ``--cv-generator shared`` the
    run's one generator, trained on all of train + val, samples every fold's pairs), then every run scored on the
    fold's held-out images; the choice (``evaluation.choice.choose_cv``) over all of them. Returns (choice.json's
    content, fold 0's premise)."""
    fold_arms, premise, generator = {}, None, None
    if cfg.cv_generator == "shared" and arms:  # the run's one generator, on all of train + val (the refit's too)
        generator = run_generator(cfg, plan, out, stage, progress, "train the generator once, on train + val, for "
                                  f"every fold ({plan.backend}, {plan.gen_steps} steps)")
    for k in range(cfg.folds):
        fold_cfg = dataclasses.replace(cfg, cv_fold=f"{k}/{cfg.folds}")
        stages = Stages(fold_cfg, plan, fold_folder(out, k), progress, generator=generator)
        ran, fold_premise = train_stages(stages, StageRecords(fold_folder(out, k)), list(arms), stage,
                                         prefix=f"fold{k}/", title=f"fold {k + 1}/{cfg.folds}: ")
        fold_arms[k] = ran
        premise = premise if premise is not None else fold_premise
    # an arm is compared only where it ran in every fold (the feedback premise is checked per fold)
    common = [a for a in arms if all(a in fold_arms[k] for k in range(cfg.folds))]
    choice = stage("choice", f"choose on the {cfg.folds} folds' held-out images",
                   lambda: cv_choice_stage(cfg, out, common, why), False)
    return choice, premise


def run_generator(cfg, plan: Plan, out: Path, stage, progress: bool, title: str) -> Path:
    """``RUN/generator`` of a cross-fitted run, trained on all of train + val (skipped when done from today's
    inputs): every fold's with ``--cv-generator shared``, else the refit's, trained whatever the choice, so a
    run always leaves the generator it is for. Returns its folder."""
    refit = Stages(dataclasses.replace(cfg, cv_fold="all"), plan, out, progress)
    stage("generator", title, refit.train_generator,
          StageRecords(out).done("generator", refit.inputs("generator"), command_defaults("generator")))
    return refit.generator


def cv_choice_stage(cfg, out: Path, arms: list[str], why: str = "") -> dict:
    """Each fold's runs scored on its held-out images (IoU on the anomalies, false-positive area on the images with
    an empty mask); the cross-fitted choice (``evaluation.choice.choose_cv``), written to ``choice.json``."""
    import numpy as np
    from anomalign.data.validate import load_dataset
    from anomalign.devices import pick_device
    from anomalign.evaluation.choice import choose_cv, per_image_scores
    from anomalign.segmenter.model import Segmenter
    plan = read_plan(out / "plan.yaml")
    device = pick_device(cfg.device)
    folds = []
    for k in range(cfg.folds):
        held_out = load_dataset(cfg.data, dataclasses.replace(cfg, cv_fold=f"{k}/{cfg.folds}"),
                                announce=False).split("val")
        folds.append({name: per_image_scores(Segmenter.load(fold_folder(out, k) / run_folder(name), device=device),
                                             held_out, device, mask_threshold=cfg.mask_threshold)
                      for name in ["baseline", *arms]})
    result = choose_cv([f["baseline"]["iou"] for f in folds], {a: [f[a]["iou"] for f in folds] for a in arms},
                       min_gain=plan.min_gain, fp_baseline=np.concatenate([f["baseline"]["fp"] for f in folds]),
                       fp_arms={a: np.concatenate([f[a]["fp"] for f in folds]) for a in arms})
    result["mode"], result["mode_reason"] = "cv", why or "--choice cv"
    result["per_image"] = {name: np.concatenate([f[name]["iou"] for f in folds]).tolist() for name in ["baseline", *arms]}
    write_text_atomic(out / "choice.json", json.dumps(result, indent=1))
    print(result["reason"])
    return result


def cv_estimates(estimates: dict[str, float], folds: int, shared_generator: bool = False) -> dict[str, float]:
    """The stage estimates of ``--choice cv``: each fold's training stages (on (K-1)/K of train + val, counted as a
    whole run's: the steps do not shrink), the choice, and the refit of the baseline and one arm. A shared
    generator is trained once, before the folds (and the refit reuses it)."""
    training = [n for n in ("baseline", "generator", "synthetic", *(f"arm_{a}" for a in ARMS)) if n in estimates]
    # RUN/generator, once: the shared one before the folds, else the refit's after the choice
    generator = {"generator": estimates["generator"]} if "generator" in estimates else {}
    out = {"check": estimates.get("check", 0.0), **(generator if shared_generator else {})}
    for k in range(folds):
        out |= {f"fold{k}/{n}": estimates[n] for n in training if not (shared_generator and n == "generator")}
    out["choice"] = estimates.get("choice", 0.0) * folds
    if not shared_generator:
        out |= generator
    # every arm counted, though only the chosen one refits; the refit's generator is RUN/generator
    out |= {f"refit/{n}": estimates[n] for n in training if n != "generator"}
    return out | {n: v for n, v in estimates.items() if n not in out and n not in training}
