"""`anomalign demo --fast` end to end, and `anomalign report` rendered in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from anomalign.demo import DemoConfig, run_demo
from anomalign.errors import AnomalignError
from anomalign.evaluation.report import ReportConfig, run_report


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    summary = run_demo(DemoConfig(out=out, fast=True, device="cpu"), progress=False)
    return out, summary


def test_demo_runs_every_stage_and_keeps_their_folders(demo):
    out, summary = demo
    for stage in ("data", "generator", "synthetic", "seg_real", "seg_full", "generation", "report"):
        assert (out / stage).is_dir(), stage
    assert (out / "generator" / "generator.safetensors").is_file()
    assert (out / "synthetic" / "metadata.jsonl").is_file()
    assert set(summary["segmentation"]) == {"real only", "real + synthetic + Generative Feedback (full method)"}
    for row in summary["segmentation"].values():
        assert 0 <= row["mIoU"] <= 1 and 0 <= row["mDice"] <= 1
    o = summary["oracle"]["alpha=0.7"]
    assert 0 <= o["iou"] <= 1 and 0 <= o["iou_moved"] <= 1
    assert summary["peak_rss_mb"] > 0 and json.loads((out / "demo.json").read_text())["fast"] is True
    assert (out / "report" / "index.html").is_file() and (out / "overlays.png").is_file()


def test_demo_rerun_skips_finished_stages(demo, capsys):
    out, first = demo
    again = run_demo(DemoConfig(out=out, fast=True, device="cpu"), progress=False)
    printed = capsys.readouterr().out
    assert printed.count("already done, skipped") == 5  # data, generator, synthetic, two segmenters
    assert again["segmentation"] == first["segmentation"]


def test_report_tables_and_images(demo, tmp_path):
    out, _ = demo
    page = run_report(ReportConfig(runs=[out], out=tmp_path / "rep"))
    html = page.read_text()
    assert "<table" in html and "mIoU" in html and "FID" in html
    assert "http://" not in html and "https://" not in html  # no external resources
    srcs = re.findall(r"src='(assets/[^']+)'", html)
    assert len(srcs) >= 5 and all((tmp_path / "rep" / s).is_file() for s in srcs)
    assert (tmp_path / "rep" / "summary.md").read_text().startswith("# anomalign report")
    with pytest.raises(AnomalignError, match="nothing to report"):
        (tmp_path / "empty").mkdir()
        run_report(ReportConfig(runs=[tmp_path / "empty"], out=tmp_path / "rep2"))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium); "
                                                "CI installs it")
def test_report_renders_in_headless_chromium(demo):
    out, _ = demo
    page = out / "report" / "index.html"
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', r.stdout)
    assert m, "the page's load script did not run"
    loaded, total = map(int, m.groups())
    assert total >= 5 and loaded == total
    assert r.stdout.count("<table") >= 2


@pytest.mark.slow
def test_demo_numbers_are_identical_on_a_second_run(demo, tmp_path):
    """Same seed, same machine: every reported number of a fresh demo run equals the first run's."""
    out, first = demo
    second = run_demo(DemoConfig(out=tmp_path / "again", fast=True, device="cpu"), progress=False)
    for key in ("segmentation", "generation", "oracle", "premise", "headline", "notes"):
        assert second[key] == first[key], key


def test_demo_fine_tunes_the_base_it_is_given(tmp_path):
    """`anomalign demo --base DIR`: the generator stage starts from that base, not the shipped one."""
    from anomalign.demo import DemoStages
    from tiny_models import dummy_tiny_generator

    dummy_tiny_generator().save(tmp_path / "base")
    cfg = DemoConfig(out=tmp_path / "d", fast=True, device="cpu", base=tmp_path / "base")
    stages = DemoStages(cfg, cfg.out, progress=False)
    stages.make_data()
    stages.train_generator(cfg.out / "generator", 0.7)
    spec = json.loads((cfg.out / "generator" / "generator.json").read_text())
    assert spec["unet_config"]["block_out_channels"] == [16, 32]  # the dummy base's UNet, not the shipped one's
