"""The paper's Table 4 on the built-in dataset: the stages of the demo before `anomalign demo` became
`anomalign run` on the built-in dataset (the numbers of docs/demo.md's ablation and docs/benchmarks.md's
"Segmentation ablation" were measured with these stages; benchmarks/segmentation_ablation.py runs them).

Stages (one folder each under OUT, so any single command can be rerun on them; a rerun of the demo
skips finished stages):

  data/          anomalign data make-demo
  generator/     anomalign train-generator   (fine-tunes the shipped tiny base or --base, α = 0.7)
  synthetic/     anomalign generate          (train masks, augmented; free-lunch scores)
  seg_real/      anomalign train-segmenter   (real only)
  seg_full/      anomalign train-segmenter   (real + synthetic + Generative Feedback)
  generation/    anomalign evaluate-generation (FID, alignment, oracle IoU with the moved-mask control, t-SNE)
  report/        anomalign report

``--ablation`` adds generator_a0/ + synthetic_a0/ (α = 0) and the segmenters of the paper's Table 4:
+ synthetic (α = 0), + synthetic (α = 0.7) without feedback, feedback only.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from anomalign.config import build_config, option, save_config
from anomalign.evaluation.overlays import segmentation_overlays

# Seconds per stage measured on a 2-core CPU machine with the shipped 128-px base (used only for the "time left"
# estimate; the α = 0 and ablation arms are estimated from them).
ESTIMATE = {"data": 2, "generator": 176, "synthetic": 100, "seg_real": 36, "seg_full": 151, "generation": 65,
            "report": 1, "generator_a0": 130, "synthetic_a0": 100, "seg_syn_a0": 45, "seg_syn": 45, "seg_fb": 140}


@dataclass(kw_only=True)
class DemoConfig:
    """Options of ``anomalign demo``."""

    out: Path = option(Path("anomalign_demo"), "output folder (one sub-folder per stage)")
    ablation: bool = option(False, "also run α = 0 and the no-feedback variants (the paper's Table 4; about twice as long)")
    fast: bool = option(False, "a seconds-long smoke run with tiny budgets (numbers meaningless)")
    seed: int = option(0, "seed of every stage")
    data_size: int | None = option(None, "image side of the built-in dataset (default: the tiny base's resolution, "
                                         "so the generator trains at its own size)")
    base: Path | None = option(None, "tiny base the generator fine-tunes (default: the shipped one); e.g. a base from "
                                     "`anomalign pretrain-base`")
    generator_steps: int = option(200, "generator fine-tuning steps (the shipped base already follows masks; "
                                       "these steps adapt it to the demo's images)")
    alpha: float = option(0.7, "α of Eq. 5 for the main generator")
    synthetic: int = option(192, "synthetic pairs to generate (from the training masks, augmented)")
    sample_steps: int = option(25, "DDIM steps per synthetic image")
    guidance: float = option(3.0, "classifier-free guidance scale (the tiny model aligns best at 3; the paper uses 7 "
                                  "with Stable Diffusion)")
    segmenter_steps: int = option(800, "segmenter training steps (each arm)")
    anomaly_weight: float = option(5.0, "CE weight of anomaly pixels in both arms (plain CE, 1, predicts nothing "
                                        "on these small defects within a CPU-minute budget)")
    fb_every: int = option(4, "Generative Feedback every k segmenter steps (each one runs the 128-px generator)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to run")


class Stages:
    """Runs named stages in order, printing which one runs and an estimate of the time left."""

    def __init__(self, names: list[str], scale: float):
        self.names, self.scale, self.t0, self.k = names, scale, time.perf_counter(), 0
        self.times: dict[str, float] = {}

    def run(self, name: str, title: str, fn, done: bool = False):
        self.k += 1
        elapsed = time.perf_counter() - self.t0
        planned_done = sum(ESTIMATE[n] for n in self.names[: self.k - 1]) * self.scale
        speed = elapsed / planned_done if planned_done > 0 and elapsed > 5 else 1.0
        left = sum(ESTIMATE[n] for n in self.names[self.k - 1:]) * self.scale * speed
        state = "already done, skipped" if done else f"elapsed {_mmss(elapsed)}, about {_mmss(left)} left"
        print(f"[{self.k}/{len(self.names)}] {title} — {state}", flush=True)
        t = time.perf_counter()
        result = None if done else fn()
        self.times[name] = time.perf_counter() - t
        return result


def _mmss(s: float) -> str:
    return f"{int(s // 60)}:{int(s % 60):02d}"


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run every stage into ``cfg.out``; returns the demo summary (also ``OUT/demo.json``)."""
    from anomalign.training import peak_rss_mb

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    run = DemoStages(cfg, out, progress)
    arms = segmenter_arms(cfg, out)
    names = ["data", "generator", "synthetic", "seg_real", "seg_full"]
    if cfg.ablation:
        names += ["generator_a0", "synthetic_a0", "seg_syn_a0", "seg_syn", "seg_fb"]
    names += ["generation", "report"]
    stages = Stages(names, scale=0.02 if cfg.fast else 1.0)
    finished = lambda p, name: (p / name).is_file()  # noqa: E731
    gen, syn, data = out / "generator", out / "synthetic", run.data
    n_steps, n_syn, n_sample = (3, 8, 2) if cfg.fast else (cfg.generator_steps, cfg.synthetic, cfg.sample_steps)
    stages.run("data", "make the built-in dataset", run.make_data, done=finished(data, "dataset_card.md"))
    stages.run("generator", f"train the generator (α = {cfg.alpha}, {n_steps} steps, tiny base)",
               lambda: run.train_generator(gen, cfg.alpha), done=finished(gen, "generator.safetensors"))
    stages.run("synthetic", f"generate {n_syn} synthetic pairs (DDIM-{n_sample}, guidance {cfg.guidance})",
               lambda: run.generate(gen, syn), done=finished(syn, "summary.json"))

    def train_arm(name: str) -> None:
        title, synthetic, feedback = arms[name]
        stages.run(name, title, lambda: run.train_segmenter(out / name, synthetic, feedback),
                   done=finished(out / name, "segmenter.safetensors"))
    train_arm("seg_real")
    train_arm("seg_full")
    if cfg.ablation:
        gen0, syn0 = out / "generator_a0", out / "synthetic_a0"
        stages.run("generator_a0", "train the generator (α = 0)", lambda: run.train_generator(gen0, 0.0),
                   done=finished(gen0, "generator.safetensors"))
        stages.run("synthetic_a0", "generate synthetic pairs (α = 0)", lambda: run.generate(gen0, syn0),
                   done=finished(syn0, "summary.json"))
        for name in ["seg_syn_a0", "seg_syn", "seg_fb"]:
            train_arm(name)
    scores = {name: run.evaluate(out / name) for name in arms}
    gen_res = stages.run("generation", "generation quality (FID, alignment, oracle IoU, t-SNE) and overlays",
                         lambda: run.evaluate_generation(list(arms)))  # always rerun: it depends on every stage
    summary = demo_summary(cfg, arms, scores, gen_res, stages.times)
    summary["wall_s"], summary["peak_rss_mb"] = time.perf_counter() - t_start, peak_rss_mb()
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    stages.run("report", "write the HTML report", run.report)
    summary["wall_s"] = time.perf_counter() - t_start
    summary["peak_rss_mb"] = peak_rss_mb()
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    print(summary["headline"])
    for n in summary["notes"]:
        print(n)
    print(f"demo finished in {_mmss(summary['wall_s'])} (peak memory {summary['peak_rss_mb']:.0f} MiB); "
          f"report: {out / 'report' / 'index.html'}")
    return summary


def segmenter_arms(cfg: DemoConfig, out: Path) -> dict[str, tuple[str, list[Path], Path | None]]:
    """Segmenter run name -> (stage title, synthetic sets, feedback generator or None), in training order."""
    arms = {"seg_real": ("segmenter: real only", [], None),
            "seg_full": ("segmenter: real + synthetic + Generative Feedback (full method)", [out / "synthetic"],
                         out / "generator")}
    if cfg.ablation:
        arms |= {"seg_syn_a0": ("segmenter: real + synthetic (α = 0)", [out / "synthetic_a0"], None),
                 "seg_syn": (f"segmenter: real + synthetic (α = {cfg.alpha})", [out / "synthetic"], None),
                 "seg_fb": ("segmenter: real + Generative Feedback only", [], out / "generator")}
    return arms


def arm_label(arms: dict, name: str) -> str:
    """The row name of a segmenter run in the summary and the report (its stage title without the prefix)."""
    return arms[name][0].removeprefix("segmenter: ")


class DemoStages:
    """Each stage of the demo as the command it runs, on the folders under ``out`` (fast: tiny budgets)."""

    def __init__(self, cfg: DemoConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress, self.data = cfg, out, progress, out / "data"
        # resume="latest": a stage killed mid-way continues from its last checkpoint when the demo is rerun
        self.loop = dict(device=cfg.device, seed=cfg.seed, resume="latest")

    def make_data(self) -> None:
        from anomalign.data.builtin import MakeDemoConfig, make_demo_dataset
        counts = dict(train_per_defect=2, val_per_defect=1, test_per_defect=2, normal_train=2, normal_val=1,
                      normal_test=2, size=32) if self.cfg.fast else {}
        if not self.cfg.fast:
            from anomalign.generator.model import TINY_BASE
            from anomalign.generator.model import SPEC_KEY, WEIGHTS_NAME
            from anomalign.weights import read_spec, weights_file
            base = weights_file(self.cfg.base or TINY_BASE, WEIGHTS_NAME)
            counts["size"] = self.cfg.data_size or int(read_spec(base, SPEC_KEY).get("resolution", 64))
        make_demo_dataset(build_config(MakeDemoConfig, dict(out=self.data, seed=self.cfg.seed, **counts)),
                          progress=False)

    def train_generator(self, folder: Path, alpha: float) -> None:
        from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
        cfg, fast = self.cfg, self.cfg.fast
        over = dict(max_steps=3, batch_size=4, validation_masks=2, validation_steps=2) if fast else {}
        run_train_generator(build_config(TrainGeneratorConfig, {
            **dict(data=self.data, out=folder, alpha=alpha, max_steps=cfg.generator_steps, checkpoint_every=100,
                   base=str(cfg.base) if cfg.base else None, **self.loop),
            **(dict(resolution=32) if fast else {}), **over}), progress=self.progress)

    def generate(self, generator: Path, folder: Path) -> None:
        from anomalign.synthesis.generate import GenerateConfig, run_generate
        cfg, fast = self.cfg, self.cfg.fast
        run_generate(build_config(GenerateConfig, dict(
            generator=generator, masks=self.data, out=folder, num=8 if fast else cfg.synthetic, split="train",
            steps=2 if fast else cfg.sample_steps, guidance=cfg.guidance, seed=cfg.seed, augment=["flip", "rot90"],
            batch_size=16, device=cfg.device)), progress=self.progress)

    def train_segmenter(self, folder: Path, synthetic: list[Path], feedback: Path | None) -> None:
        from anomalign.segmenter.train import TrainSegmenterConfig, run_train_segmenter
        cfg, fast = self.cfg, self.cfg.fast
        over = dict(max_steps=4, validate_every=2, batch_size=4) if fast else dict(max_steps=cfg.segmenter_steps)
        # recipe "paper": the settings the demo's documented numbers were measured with (docs/demo.md)
        run_train_segmenter(build_config(TrainSegmenterConfig, dict(
            recipe="paper", train=self.data, out=folder, synthetic=[str(s) for s in synthetic], size=32 if fast else 64,
            feedback_generator=str(feedback) if feedback else None, fb_every=cfg.fb_every,
            anomaly_weight=cfg.anomaly_weight, **self.loop, **over)), progress=self.progress)

    def evaluate(self, folder: Path) -> dict:
        """Test-set averages (mDice, mIoU, IoU, Dice, AUROC) of the run's best checkpoint."""
        from anomalign.evaluation.evaluate import EvaluateConfig, run_evaluate
        res = run_evaluate(build_config(EvaluateConfig, dict(segmenter=folder / "best", test=[str(self.data)],
                                                             out=folder / "eval")))
        return res["average"]

    def evaluate_generation(self, arms: list[str]) -> dict:
        """evaluate-generation of the synthetic set(s) with the real-only segmenter as oracle, and the overlays."""
        from anomalign.evaluation.generation import EvaluateGenerationConfig, run_evaluate_generation
        cfg, out = self.cfg, self.out
        sets = [out / "synthetic"] + ([out / "synthetic_a0"] if cfg.ablation else [])
        labels = [f"alpha={cfg.alpha}"] + (["alpha=0"] if cfg.ablation else [])
        res = run_evaluate_generation(build_config(EvaluateGenerationConfig, dict(
            generated=[str(s) for s in sets], labels=labels, real=self.data, split="test", out=out / "generation",
            generator=out / "generator", oracle=out / "seg_real" / "best", extra_metrics=not cfg.fast)))
        res["oracle"] = {name: {"iou": r["oracle_iou"], "iou_moved": r["oracle_iou_moved"]}
                         for name, r in res["sets"].items()}
        (out / "generation" / "oracle.json").write_text(json.dumps(res["oracle"], indent=1))
        (out / "generation" / "premise.json").write_text(json.dumps(res["premise"], indent=1))
        segmentation_overlays(out, arms, self.data)
        return res

    def report(self) -> None:
        from anomalign.evaluation.report import ReportConfig, run_report
        run_report(build_config(ReportConfig, dict(runs=[self.out], out=self.out / "report", title="anomalign demo")))


def demo_summary(cfg: DemoConfig, arms: dict, scores: dict[str, dict], gen_res: dict, times: dict) -> dict:
    """``demo.json``: segmentation rows (by display label), generation quality, headline and notes."""
    from anomalign.evaluation.generation import premise_note
    real, full = scores["seg_real"], scores["seg_full"]
    return {
        "wall_s": None, "peak_rss_mb": None, "fast": cfg.fast, "stage_s": times,
        "segmentation": {arm_label(arms, name): s for name, s in scores.items()}, "generation": gen_res["sets"],
        "oracle": gen_res["oracle"], "premise": gen_res["premise"],
        "headline": (f"Test mIoU real only {100 * real['mIoU']:.1f} → full method {100 * full['mIoU']:.1f}; "
                     f"mDice {100 * real['mDice']:.1f} → {100 * full['mDice']:.1f}."),
        "notes": [f"Oracle IoU (real-only segmenter on generated images) {o['iou']:.3f} vs moved-mask control "
                  f"{o['iou_moved']:.3f} ({name})" for name, o in gen_res["oracle"].items()]
        + [premise_note(gen_res["premise"], "test")],
    }
