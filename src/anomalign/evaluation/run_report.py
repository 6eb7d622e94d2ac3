"""The report of ``anomalign run``: what was decided and why, with the numbers and the pictures behind it.

``RUN/report/index.html`` (+ ``summary.md``): the headline, the validation choice (per arm: val mIoU, paired
gain, its lower bound and Holm-adjusted p, false-positive area on the val normals; the rule that decided), the
test metrics of the baseline and the chosen segmenter, the feedback premise and
the synthesis counts, generated pairs at full size, full-size segmentations of test images with column
captions, and the plan, fingerprint and stage times.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from anomalign.evaluation.report import Page

COLUMNS = ("mIoU", "mDice", "IoU", "Dice", "AUROC")


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * v:.1f}"


def _fp(v, signed: bool = False) -> str:
    """A false-positive area (fraction of pixels) in % with two decimals; "–" when not measured."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def gain_strip_svg(gains: dict[str, np.ndarray], bounds: dict[str, float], path: Path, width: int = 640,
                   row: int = 60) -> Path:
    """A strip plot of per-image gains (fractions) as an SVG file: one row per arm, a dot per image (spread
    vertically by a fixed pattern so equal gains stay visible), a solid bar at the mean, a dashed one at the lower
    bound, and the zero line. Written by hand: the page needs no plotting library."""
    values = np.concatenate([np.asarray(g, dtype=np.float64) for g in gains.values()] + [np.zeros(1)])
    finite = [b for b in bounds.values() if b == b]
    lo, hi = 100 * min(values.min(), *finite, 0.0), 100 * max(values.max(), *finite, 0.0)
    pad = max(1.0, 0.05 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    left, right = 110, 20
    x = lambda v: left + (100 * v - lo) / (hi - lo) * (width - left - right)  # noqa: E731 (points -> px)
    height = row * len(gains) + 40
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
             f"font-size='12'><rect width='{width}' height='{height}' fill='white'/>",
             f"<line x1='{x(0):.1f}' y1='5' x2='{x(0):.1f}' y2='{height - 30}' stroke='#999'/>"]
    for i, (name, g) in enumerate(gains.items()):
        y0 = 10 + i * row
        parts.append(f"<text x='5' y='{y0 + row / 2:.0f}'>{html.escape(name)}</text>")
        for j, v in enumerate(np.asarray(g, dtype=np.float64)):
            dy = ((j * 7) % 11) / 10 * (row - 24)
            parts.append(f"<circle cx='{x(v):.1f}' cy='{y0 + 8 + dy:.1f}' r='3' fill='#1f77b4' fill-opacity='0.6'/>")
        parts.append(f"<line x1='{x(float(np.mean(g))):.1f}' y1='{y0}' x2='{x(float(np.mean(g))):.1f}' "
                     f"y2='{y0 + row - 8}' stroke='#d62728' stroke-width='2'/>")
        if bounds.get(name) == bounds.get(name):  # NaN: no bound (fewer than 2 images)
            parts.append(f"<line x1='{x(bounds[name]):.1f}' y1='{y0}' x2='{x(bounds[name]):.1f}' y2='{y0 + row - 8}' "
                         "stroke='#d62728' stroke-dasharray='4,3'/>")
    for t in np.linspace(lo, hi, 5):
        parts.append(f"<text x='{x(t / 100):.1f}' y='{height - 12}' text-anchor='middle'>{t:+.0f}</text>")
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(step, val mIoU) rows of a segmenter run's ``logs/validation.csv`` (empty when it has none)."""
    import csv
    path = run / "logs" / "validation.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return [(int(r["step"]), float(r["mIoU"])) for r in csv.DictReader(fh) if r.get("mIoU") not in (None, "")]


def curves_svg(curves: dict[str, list[tuple[int, float]]], path: Path, width: int = 640, height: int = 300) -> Path:
    """Val mIoU against step, one polyline (with dots) per run, as an SVG file written by hand."""
    colours = ("#333333", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    steps = [s for c in curves.values() for s, _ in c]
    values = [100 * v for c in curves.values() for _, v in c]
    s0, s1 = 0, max(steps) or 1
    lo, hi = min(values), max(values)
    pad = max(1.0, 0.1 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 50, 120, 10, 30
    x = lambda s: left + (s - s0) / (s1 - s0) * (width - left - right)  # noqa: E731
    y = lambda v: top + (hi - 100 * v) / (hi - lo) * (height - top - bottom)  # noqa: E731
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
             f"font-size='12'><rect width='{width}' height='{height}' fill='white'/>",
             f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#999'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#999'/>"]
    for t in np.linspace(lo, hi, 5):
        parts.append(f"<text x='{left - 5}' y='{y(t / 100) + 4:.1f}' text-anchor='end'>{t:.0f}</text>")
    for t in np.linspace(s0, s1, 5):
        parts.append(f"<text x='{x(t):.1f}' y='{height - 10}' text-anchor='middle'>{t:.0f}</text>")
    for i, (name, c) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in c)
        parts.append(f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>")
        parts += [f"<circle cx='{x(s):.1f}' cy='{y(v):.1f}' r='3' fill='{colour}'/>" for s, v in c]
        parts.append(f"<text x='{width - right + 8}' y='{top + 14 + 16 * i}' fill='{colour}'>{html.escape(name)}</text>")
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def write_run_report(out: Path, result: dict, index, cfg, examples: int = 6) -> Path:
    """Write ``out/report/`` for the run whose ``result.json`` content is ``result``; returns the page."""
    folder = out / "report"
    shutil.rmtree(folder, ignore_errors=True)  # inside RUN: always ours, always rewritten whole
    page = Page(folder, f"anomalign run: {Path(cfg.data).name}")
    page.para(headline_text(result))
    choice = result["choice"]
    page.h2("Validation choice (final weights, paired per image)")
    if "rule" in choice:  # the rule of issue 45: paired t with Holm, a minimum of val anomalies, false alarms
        normals = choice.get("normals", 0)
        cv = choice.get("mode") == "cv"  # cross-fitted: every train/val image held out once, gains per fold
        where = f"held-out ({choice.get('folds')} folds)" if cv else "val"
        folds = (lambda r: [" / ".join(f"{100 * g:+.1f}" for g in r.get("folds", []))]) if cv else (lambda r: [])
        rows = [["baseline (real only)", _pct(choice["baseline"]), "", *folds({}), "", "",
                 _fp(choice.get("baseline_fp")), ""]]
        rows += [[name, _pct(r["mIoU"]), f"{100 * r['gain']:+.1f}", *folds(r), f"{100 * r['bound']:+.1f}",
                  f"{r['p_holm']:.3f}", _fp(r.get("fp_increase"), signed=True), "yes" if r["wins"] else "no"]
                 for name, r in choice["arms"].items()]
        page.table(["run", f"{where} mIoU ({choice['images']} anomalies)",
                    "gain (points" + (", mean of the fold means)" if cv else ")"),
                    *(["gain per fold"] if cv else []), f"lower {100 * (1 - choice['alpha']):g} % bound", "p (Holm)",
                    f"false-positive area on {normals} {where} normals (% of pixels)", "replaces baseline"], rows)
        page.para(f"Rule: {choice['rule']}.")
        per_image = choice.get("per_image") or {}
        gains = {a: np.asarray(per_image[a]) - np.asarray(per_image["baseline"]) for a in choice["arms"]
                 if a in per_image and "baseline" in per_image and len(per_image[a]) == len(per_image["baseline"])}
        if gains:
            svg = gain_strip_svg(gains, {a: choice["arms"][a]["bound"] for a in gains}, folder / "gains.svg")
            page.image(svg, f"per-image {where} IoU gain of each arm over the baseline (points): one dot per image, "
                            f"bar the mean, dashed the lower {100 * (1 - choice['alpha']):g} % bound"
                            + (" (of the fold means)" if cv else ""))
        curves_from = out / "cv" / "fold_0" if cv else out
        curves = {name: validation_curve(curves_from / ("baseline" if name == "baseline" else f"arm_{name}"))
                  for name in ["baseline", *choice["arms"]]}
        curves = {k: v for k, v in curves.items() if v}
        if curves:
            judged_on = "fold 1's held-out" if cv else "val"
            page.image(curves_svg(curves, folder / "curves.svg"), f"training curves: {judged_on} mIoU against step of "
                       "the baseline and each arm (the arms start at the fork)")
    else:  # a choice.json written by the rule before issue 45 (percentile bootstrap)
        rows = [["baseline (real only)", _pct(choice["baseline"]), "", "", ""]]
        rows += [[name, _pct(r["mIoU"]), f"{100 * r['gain']:+.1f}", f"{100 * r['bound']:+.1f}",
                  "yes" if r["wins"] else "no"] for name, r in choice["arms"].items()]
        page.table(["run", "val mIoU", "gain (points)", f"{100 * choice['quantile']:g} % bound", "replaces baseline"],
                   rows)
    page.para(f"Decision: {result['chosen']} — {result['reason']}.")
    page.h2("Test split (full size)")
    page.table(["run", "images", *COLUMNS], [[name, str(r["images"]), *(_pct(r[c]) for c in COLUMNS)]
                                            for name, r in result["test"].items()])
    premise = result.get("premise")
    if premise:
        page.para(f"Generative Feedback premise on {premise.get('images', 0)} training images: the generator denoises "
                  f"better with the true mask than with the moved and the empty one on "
                  f"{100 * premise.get('frac_true_lt_both', 0):.0f} % (threshold "
                  f"{100 * premise.get('threshold', 0.7):.0f} %): feedback {'run' if premise['holds'] else 'skipped'}.")
    summary = out / "synthetic" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        skipped = s.get("unplaceable", 0)
        page.para(f"Synthesis: {s['kept']} pairs kept of {s['attempts']} attempts ({100 * s['acceptance']:.0f} %)"
                  + (f"; {skipped} skipped because their defect fit on no host image." if skipped else "."))
        pairs = synthetic_examples(out / "synthetic", folder / "tiles", examples)
        if pairs:
            page.h2("Generated pairs at full size")
            page.image_table(["synthetic image (mask contour in red)", "its mask"], pairs)
    generation = result.get("generation")
    if generation:
        generation_section(page, out / "generation", generation, folder)
    overlays = segmentation_examples(out, result, index, folder / "tiles", examples, cfg)
    if overlays:
        page.h2("Segmentations of test images at full size")
        page.image_table(["image (ground truth in red)", "baseline", f"chosen: {result['chosen']}"
                          if result["chosen"] != "baseline" else "chosen: baseline"], overlays)
    training_section(page, out, folder / "tiles")
    page.h2("Plan, data and time")
    plan = out / "plan.yaml"
    if plan.is_file():
        page.pre("plan.yaml (each value with its reason)", plan.read_text())
    fp = out / "check" / "fingerprint.json"
    if fp.is_file():
        page.pre("fingerprint.json", fp.read_text())
    page.table(["stage", "minutes"], [[k, f"{v / 60:.1f}"] for k, v in result.get("stage_s", {}).items()])
    return page.write()


def generation_section(page: Page, folder: Path, generation: dict, report: Path) -> None:
    """Generation quality (``run --quality``): the evaluate-generation table and notes, the grids and the t-SNE."""
    from anomalign.evaluation.generation import format_generation_table
    page.h2(f"Generation quality (kept synthetic pairs vs {generation.get('real_images', '?')} real test anomalies)")
    page.markdown_table(format_generation_table(generation["sets"]))
    for note in generation.get("notes", []):
        page.para(note)
    for caption, name in generation.get("figures", {}).items():
        if (folder / name).is_file():
            page.image(folder / name, caption)


def training_section(page: Page, out: Path, tiles: Path) -> None:
    """The training losses of every segmenter run and the generator's last validation grid."""
    from anomalign.evaluation.report import loss_curve
    runs = [r for r in ["baseline", *(f"arm_{a}" for a in ("synthetic", "feedback", "both")), "generator"]
            if (out / r / "logs" / "train.csv").is_file()]
    grids = sorted((out / "generator" / "validation").glob("step-*.png"))
    if not runs and not grids:
        return
    page.h2("Training")
    for run in runs:
        png = loss_curve(out / run / "logs" / "train.csv", tiles / f"curve_{run}.png", f"{run}: losses (log scale)")
        if png is not None:
            page.image(png, f"{run} training losses")
    length = generator_length(out / "generator")
    if length is not None:
        from anomalign.figures import line_plot
        steps, losses = zip(*length["curve"])
        page.para(generator_length_text(length))
        page.image(line_plot({"held-out anomaly loss": (list(steps), list(losses))}, tiles / "generator_heldout.png",
                             title="generator: held-out loss inside the val defects against step"),
                   "the generator's held-out anomaly loss (lower: the val split's defects denoised better)")
    if grids:
        page.image(grids[-1], f"generator validation at {grids[-1].stem} (real | generated, mask contour in red)")


def generator_length(folder: Path) -> dict | None:
    """The generator's held-out anomaly loss at each validation (``logs/validation.csv``) and the step whose weights
    it shipped (the loop's best, from its last checkpoint): {"curve": [(step, loss)], "trained": last step,
    "shipped": step or None}; None when the run measured no held-out loss (no val anomalies)."""
    import csv

    from anomalign.training import find_checkpoint
    path = folder / "logs" / "validation.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        curve = [(int(r["step"]), float(r["heldout_defect_loss"])) for r in csv.DictReader(f)
                 if r.get("heldout_defect_loss") not in (None, "", "nan")]
    if not curve:
        return None
    ckpt = find_checkpoint(folder, "latest") if (folder / "checkpoints").is_dir() else None
    best = json.loads((ckpt / "trainer.json").read_text()).get("best") if ckpt is not None else None
    return {"curve": curve, "trained": curve[-1][0], "shipped": best.get("step") if best else None}


def generator_length_text(length: dict) -> str:
    """One sentence: how long the generator trained, by its held-out loss, and which weights ship."""
    steps = ", ".join(f"{s}: {v:.4f}" for s, v in length["curve"])
    shipped = length["shipped"]
    return (f"Generator: trained {length['trained']} steps; its held-out loss inside the val split's defects ({steps})"
            + (f"; the weights of step {shipped} ship (the last block that lowered it by the plan's margin)"
               if shipped is not None and shipped != length["trained"] else "; the last weights ship") + ".")


def headline_text(result: dict) -> str:
    test = result["test"]
    base = test["baseline"]
    line = f"Real pairs only: test mIoU {_pct(base['mIoU'])}, mDice {_pct(base['mDice'])}."
    if result["chosen"] == "baseline":
        return line + " Synthesis and feedback did not help on the validation split: the baseline is the result."
    c = test[result["chosen"]]
    return line + (f" '{result['chosen']}' helped on the validation split and is the result: test mIoU {_pct(c['mIoU'])}, "
                   f"mDice {_pct(c['mDice'])}.")


def enlarge(image: np.ndarray, side: int = 160) -> np.ndarray:
    """uint8 [H, W, 3] repeated (nearest) by an integer factor so its shorter side reaches about ``side`` px: a
    small image stays readable in the report, a large one keeps its own pixels."""
    k = max(1, side // max(1, min(image.shape[:2])))
    return image.repeat(k, 0).repeat(k, 1) if k > 1 else image


def synthetic_examples(folder: Path, tiles: Path, n: int) -> list[list[Path]]:
    """Up to ``n`` kept synthetic pairs spread over the set: [image with mask contour, mask] file pairs."""
    from PIL import Image

    from anomalign.evaluation.generation import spread
    from anomalign.figures import draw_contour, save_png
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return []
    rows = [json.loads(x) for x in meta.read_text().splitlines() if x.strip()]
    out = []
    for k, i in enumerate(spread(len(rows), n)):
        image = np.asarray(Image.open(folder / rows[i]["file_name"]).convert("RGB"))
        mask = np.asarray(Image.open(folder / rows[i]["mask_file_name"]).convert("L")) > 127
        a = save_png(enlarge(draw_contour(image, mask)), tiles / f"syn_{k}.png")
        b = save_png(enlarge(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2)), tiles / f"syn_{k}_mask.png")
        out.append([a, b])
    return out


@torch.no_grad()
def segmentation_examples(out: Path, result: dict, index, tiles: Path, n: int, cfg) -> list[list[Path]]:
    """Up to ``n`` anomalous test images: [ground truth contour, baseline overlay, chosen overlay] at full size,
    predicted with ``segmenter.sliding.image_probability`` (what ``segment`` writes)."""
    from anomalign.data.dataset import load_pair
    from anomalign.evaluation.generation import spread
    from anomalign.figures import draw_contour, save_png
    from anomalign.segmenter.infer import overlay
    from anomalign.segmenter.model import Segmenter
    from anomalign.segmenter.sliding import image_probability
    test = [s for s in index.split("test") if not s.normal]
    if not test:
        return []
    names = ["baseline", result["chosen"]]
    models = [Segmenter.load(Path(out) / ("baseline" if m == "baseline" else f"arm_{m}")) for m in names]
    rows = []
    for k, i in enumerate(spread(len(test), n)):
        image, mask = load_pair(test[i], None, cfg.mask_threshold)
        row = [save_png(enlarge(draw_contour(image, mask)), tiles / f"test_{k}.png")]
        for name, model in zip(names, models):
            prob = image_probability(model, image)
            row.append(save_png(enlarge(overlay(image, prob >= 0.5)), tiles / f"test_{k}_{name}.png"))
        rows.append(row)
    return rows
