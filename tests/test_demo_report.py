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


def test_demo_is_a_run_on_the_built_in_dataset(demo):
    out, summary = demo
    for stage in ("data", "check", "baseline", "generator", "synthetic", "arm_synthetic", "generation", "report"):
        assert (out / stage).is_dir(), stage
    assert json.loads((out / "run.json").read_text())["command"] == "run"  # the same folder `anomalign run` writes
    result = json.loads((out / "result.json").read_text())
    assert result["chosen"] == summary["chosen"] and set(result["choice"]["arms"]) == {"synthetic"}
    plan = (out / "plan.yaml").read_text()
    assert "seg_steps: 4  # demo: --fast smoke run" in plan  # the demo's budgets, with their reasons
    assert "seg_extend: 0  # demo: --fast smoke run" in plan  # no patience rule: a fixed time
    assert summary["segmentation"]["real only"] == result["test"]["baseline"]
    assert summary["generation"]["synthetic"]["images"] == 4 and "oracle_iou_moved" in summary["generation"]["synthetic"]
    assert summary["peak_rss_mb"] > 0 and json.loads((out / "demo.json").read_text())["fast"] is True
    html = (out / "report" / "index.html").read_text()
    for section in ("Validation choice", "Generation quality", "FID", "Training", "Segmentations of test images"):
        assert section in html, section


def test_demo_rerun_skips_finished_stages(demo, capsys):
    out, first = demo
    again = run_demo(DemoConfig(out=out, fast=True, device="cpu"), progress=False)
    printed = capsys.readouterr().out
    assert printed.count("done, skipped") == 6  # data, check, baseline, generator, synthetic, the arm
    assert again["segmentation"] == first["segmentation"] and again["chosen"] == first["chosen"]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("user file")
    with pytest.raises(AnomalignError, match="refusing to write into it"):
        run_demo(DemoConfig(out=tmp_path, fast=True, device="cpu"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


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
    for key in ("segmentation", "val", "chosen", "generation", "premise", "headline"):
        assert second[key] == first[key], key


def test_demo_fine_tunes_the_base_it_is_given(tmp_path):
    """`anomalign demo --base DIR`: the generator stage starts from that base, not the shipped one."""
    from tiny_models import dummy_tiny_generator

    dummy_tiny_generator().save(tmp_path / "base")
    run_demo(DemoConfig(out=tmp_path / "d", fast=True, device="cpu", base=tmp_path / "base"),
             progress=False)
    spec = json.loads((tmp_path / "d" / "generator" / "generator.json").read_text())
    assert spec["unet_config"]["block_out_channels"] == [16, 32]  # the dummy base's UNet, not the shipped one's
