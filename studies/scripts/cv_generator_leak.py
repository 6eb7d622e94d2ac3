"""Issue 45, item 1: the leak of one shared generator in cross-fitting (docs/run.md, "Shared generator: the
leak"). Two steps, each run's own code:

    # A: a `run --choice cv` folder (per-fold generators) whose folds 0, 1 have finished arms;
    # B: a copy of A holding only plan.yaml, run.yaml, check/ and cv/fold_k/{baseline, stages.json}
    #    (paths in the copied records rewritten to B's, so the baselines are kept, not retrained)
    python studies/scripts/cv_generator_leak.py train B DATA 0 1     # the shared generator, then each fold's arm
    python studies/scripts/cv_generator_leak.py score A B DATA 0 1   # held-out gains, and the memorisation proxy

Run from the folder the records' relative paths start at (where A was run). One torch thread.
"""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from anomalign.config import build_config, load_config  # noqa: E402
from anomalign.crossfit import fold_folder, run_generator  # noqa: E402
from anomalign.data.validate import load_dataset  # noqa: E402
from anomalign.evaluation.choice import per_image_scores  # noqa: E402
from anomalign.generator.model import MaskGenerator  # noqa: E402
from anomalign.generator.task import held_out_loss  # noqa: E402
from anomalign.generator.train import TrainGeneratorConfig, training_pairs  # noqa: E402
from anomalign.pipeline import RunConfig  # noqa: E402
from anomalign.plan import read_plan  # noqa: E402
from anomalign.segmenter.model import Segmenter  # noqa: E402
from anomalign.stages import StageRecords, Stages, train_stages  # noqa: E402


def train(out: Path, data: str, folds: list[int]) -> None:
    cfg = build_config(RunConfig, {"data": data, "out": str(out), "choice": "cv", "seed": 0,
                                   "cv_generator": "shared", "export": False})
    plan = read_plan(out / "plan.yaml")

    def stage(name, title, fn, done):
        print(f"[{name}] {title}: {'done, skipped' if done else 'running'}", flush=True)
        return None if done else fn()

    gen = run_generator(cfg, plan, out, stage, True, "the shared generator")
    for k in folds:
        fold_cfg = dataclasses.replace(cfg, cv_fold=f"{k}/{cfg.folds}")
        st = Stages(fold_cfg, plan, fold_folder(out, k), True, generator=gen)
        train_stages(st, StageRecords(fold_folder(out, k)), ["synthetic"], stage, prefix=f"fold{k}/")


def score(a: Path, b: Path, data: str, folds: list[int]) -> None:
    cfg = build_config(RunConfig, {"data": data, "out": str(b), "choice": "cv"})
    res = {}
    for k in folds:
        held = load_dataset(cfg.data, dataclasses.replace(cfg, cv_fold=f"{k}/{cfg.folds}"), announce=False).split("val")
        iou = lambda run: per_image_scores(Segmenter.load(run), held)["iou"]  # noqa: E731
        base = iou(b / f"cv/fold_{k}/baseline")
        ga, gb = iou(a / f"cv/fold_{k}/arm_synthetic") - base, iou(b / f"cv/fold_{k}/arm_synthetic") - base
        res[k] = {"n": len(base), "baseline": float(base.mean()),
                  "baselines_equal": bool(np.allclose(base, iou(a / f"cv/fold_{k}/baseline"))),
                  "gain_own_generator": float(ga.mean()), "gain_shared_generator": float(gb.mean()),
                  "diff": float((gb - ga).mean()), "diff_sd": float((gb - ga).std(ddof=1))}
        print(k, res[k], flush=True)
    leak = float(np.mean([r["diff"] for r in res.values()]))
    print(f"leak estimate (mean over folds of shared - own gain): {100 * leak:+.2f} points", flush=True)
    loss = {}
    for k in folds:  # the memorisation proxy: fold k's held-out defects under generators that did / did not see them
        _, _, held, _ = training_pairs(load_config(TrainGeneratorConfig, a / f"cv/fold_{k}/generator/config.yaml"), 128)
        others = [j for j in folds if j != k][:1]
        gens = {"own (unseen)": a / f"cv/fold_{k}/generator", "shared (seen)": b / "generator",
                **{f"fold {j}'s (seen)": a / f"cv/fold_{j}/generator" for j in others}}
        for name, g in gens.items():
            loss[f"{k}|{name}"] = held_out_loss(MaskGenerator.load(g), *held, seed=0)["heldout_defect_loss"]
            print(f"fold {k} held-out defects ({len(held[0])} crops), generator {name}: {loss[f'{k}|{name}']:.4f}")
    (b / "leak_score.json").write_text(json.dumps({"folds": res, "leak": leak, "loss": loss}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(Path(sys.argv[2]), sys.argv[3], [int(k) for k in sys.argv[4:]])
    elif sys.argv[1] == "score":
        score(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], [int(k) for k in sys.argv[5:]])
    else:
        raise SystemExit(__doc__)
