"""``anomalign report``: one static HTML page (+ markdown summary) from run folders.

It looks inside each RUN_DIR (recursively) for what the other commands write: ``demo.json`` (the demo's
headline numbers), ``eval/eval.json`` (segmentation), ``generation.json`` (generation quality, grids,
t-SNE), ``logs/train.csv`` (training curves), ``validation/*.png`` (generator validation grids),
``overlays.png`` (segmentation overlays) and the ``*.yaml`` configs. Images are copied next to the
page; nothing is loaded from the network. A small inline script records whether every image decoded
(``data-images-loaded`` on <body>), which the browser test reads.
"""
from __future__ import annotations

import csv
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from anomalign.config import option
from anomalign.errors import AnomalignError
from anomalign.files import write_text_atomic
from anomalign.runs import check_output_folder, mark_output_folder

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-size:13px;color:#555}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}.note{color:#8a5300}
table.images td{text-align:center;vertical-align:top}"""
SCRIPT = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images-loaded',ok+'/'+im.length);});"""


@dataclass(kw_only=True)
class ReportConfig:
    """Options of ``anomalign report``."""

    runs: list[Path] = option(help="run folders (a demo folder, or generator / generate / segmenter runs)",
                              positional=True)
    out: Path = option(Path("report"), "output folder for index.html, summary.md and assets/")
    title: str = option("anomalign report", "page title")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


class Page:
    """An HTML page and its markdown twin, built section by section; images are copied into ``out/assets``."""
    def __init__(self, out: Path, title: str):
        self.out, self.parts, self.md = out, [f"<h1>{html.escape(title)}</h1>"], [f"# {title}"]
        (out / "assets").mkdir(parents=True, exist_ok=True)
        self.n_images = 0

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        self.md.append(f"\n## {text}\n")

    def para(self, text: str, cls: str = "") -> None:
        self.parts.append(f"<p class='{cls}'>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.parts.append(_table(header, rows))
        self.md.append(_md_table(header, rows) + "\n")

    def markdown_table(self, md: str) -> None:
        """A markdown table (e.g. generation.md's) as a table of the page."""
        lines = [ln for ln in md.splitlines() if ln.startswith("|")]
        if len(lines) >= 2:
            split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
            self.table(split(lines[0]), [split(ln) for ln in lines[2:]])

    def image(self, src: Path, caption: str) -> None:
        self.n_images += 1
        name = f"{self.n_images:03d}_{src.name}"
        shutil.copyfile(src, self.out / "assets" / name)
        self.parts.append(f"<figure><img src='assets/{html.escape(name)}' alt='{html.escape(caption)}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}](assets/{name})")

    def image_table(self, header: list[str], rows: list[list[Path]]) -> None:
        """A table of images with a caption per column (e.g. image | baseline | chosen), one row per example."""
        cells = []
        for row in rows:
            tds = []
            for src in row:
                self.n_images += 1
                name = f"{self.n_images:03d}_{src.name}"
                shutil.copyfile(src, self.out / "assets" / name)
                tds.append(f"<td><img src='assets/{html.escape(name)}' alt=''></td>")
                self.md.append(f"![](assets/{name})")
            cells.append("<tr>" + "".join(tds) + "</tr>")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        self.parts.append(f"<table class='images'><tr>{head}</tr>{''.join(cells)}</table>")

    def pre(self, summary: str, text: str) -> None:
        self.parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")

    def write(self) -> Path:
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>anomalign report</title>"
                f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>" + "\n".join(self.parts) + "</body></html>")
        write_text_atomic(self.out / "index.html", page)
        write_text_atomic(self.out / "summary.md", "\n".join(self.md) + "\n")
        return self.out / "index.html"


def _legacy_report(out: Path) -> bool:
    """A report folder from before ``run.json``: its index.html is a page this command wrote."""
    try:
        return "<title>anomalign report</title>" in (out / "index.html").read_text(errors="replace")[:2000]
    except OSError:
        return False


def _label(path: Path, roots: list[Path]) -> str:
    for r in roots:
        try:
            rel = path.relative_to(r)
            return f"{r.name}/{rel}" if str(rel) != "." else r.name
        except ValueError:
            continue
    return str(path)


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def loss_curve(csv_path: Path, png: Path, title: str) -> Path | None:
    from anomalign.figures import line_plot
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    keys = [k for k in rows[0] if k.startswith("l") and k not in ("lr",)]
    series = {k: ([float(r["step"]) for r in rows], [float(r[k]) for r in rows]) for k in keys}
    return line_plot(series, png, title=title, log_y=True)


def run_report(cfg: ReportConfig) -> Path:
    """Write ``cfg.out/index.html`` and ``summary.md``; returns the HTML path."""
    roots = [Path(r) for r in cfg.runs]
    for r in roots:
        if not r.is_dir():
            raise AnomalignError(f"{r}: not a folder")
    out = check_output_folder(Path(cfg.out), "report", _legacy_report)
    existed = out.exists()
    try:
        return _write_report(cfg, roots, out)
    except AnomalignError:
        if not existed:  # nothing to report: leave no empty report folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_report(cfg: ReportConfig, roots: list[Path], out: Path) -> Path:
    mark_output_folder(out, "report")
    page = Page(out, cfg.title)
    found = 0
    for root in roots:
        for demo in sorted(root.rglob("demo.json")):
            d = json.loads(demo.read_text())
            found += 1
            page.h2(f"Demo: {_label(demo.parent, roots)}")
            page.para(f"Wall time {d.get('wall_s', 0) / 60:.1f} min, peak memory {d.get('peak_rss_mb', 0):.0f} MiB. "
                      + d.get("headline", ""))
            if d.get("segmentation"):
                page.table(["segmenter", "mIoU", "mDice", "IoU", "Dice", "pixel AUROC"],
                           [[name, _pct(r.get("mIoU")), _pct(r.get("mDice")), _pct(r.get("IoU")), _pct(r.get("Dice")),
                             _pct(r.get("AUROC"))] for name, r in d["segmentation"].items()])
            for note in d.get("notes", []):
                page.para(note, "note")
        evals = sorted(root.rglob("eval/eval.json"))
        if evals:
            found += 1
            page.h2("Segmentation (test split)")
            rows = []
            for e in evals:
                p = json.loads(e.read_text())
                for name, r in p["sets"].items():
                    rows.append([f"{_label(e.parent.parent, roots)} — {name}", _pct(r["mDice"]), _pct(r["mIoU"]),
                                 _pct(r["Dice"]), _pct(r["IoU"]), _pct(r["AUROC"])])
            page.table(["segmenter — test set", "mDice", "mIoU", "Dice", "IoU", "pixel AUROC"], rows)
        for g in sorted(root.rglob("generation.json")):
            found += 1
            p = json.loads(g.read_text())
            page.h2(f"Generation quality: {_label(g.parent, roots)}")
            page.markdown_table((g.parent / "generation.md").read_text())
            page.para(p.get("fid_note", ""))
            for note in p.get("notes", []):
                page.para(note, "note")
            for caption, name in p.get("figures", {}).items():
                if (g.parent / name).is_file():
                    page.image(g.parent / name, caption + (" (red: conditioning mask contour)" if "grid" in caption
                                                           else ""))
        for ov in sorted(root.rglob("overlays.png")):
            found += 1
            page.h2(f"Segmentation overlays: {_label(ov.parent, roots)}")
            page.image(ov, "test images: ground truth contour | predictions (red)")
        curves = sorted(root.rglob("logs/train.csv"))
        if curves:
            found += 1
            page.h2("Training curves")
            for c in curves:
                run = c.parent.parent
                png = loss_curve(c, out / "assets" / f"curve_{_label(run, roots).replace('/', '_')}.png",
                             f"{_label(run, roots)}: losses (log scale)")
                if png is not None:
                    page.image(png, f"{_label(run, roots)} training losses")
                    (png).unlink()  # page.image copied it under a numbered name
        grids = sorted(root.rglob("validation/step-*.png"))
        if grids:
            page.h2("Generator validation grids (real | generated, mask contour in red)")
            by_run: dict[Path, Path] = {}
            for gimg in grids:
                by_run[gimg.parent.parent] = gimg  # the last (latest step) per run
            for run, gimg in by_run.items():
                page.image(gimg, f"{_label(run, roots)} {gimg.stem}")
        configs = sorted(p for p in root.rglob("*.yaml") if ".records" not in p.parts and "checkpoints" not in p.parts)
        if configs:
            page.h2(f"Configs in {root.name}")
            for c in configs:
                page.pre(_label(c, roots), c.read_text())
    if not found:
        raise AnomalignError(f"nothing to report in {', '.join(map(str, roots))}: no demo.json, eval/eval.json, "
                             "generation.json, overlays.png or logs/train.csv found")
    path = page.write()
    print(f"report written to {path} (open it in a browser; summary in {out / 'summary.md'})")
    return path

