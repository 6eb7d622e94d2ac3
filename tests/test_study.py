"""`anomalign study`: jobs from a study file, their order, resume, failures, --dry-run and the tables."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from anomalign.cli import main
from anomalign.errors import ConfigError
from anomalign.study import StudyConfig, format_tables, load_study, plan_jobs

REPO = Path(__file__).resolve().parents[1]

STEP = """import json, os, sys, pathlib
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for need in sys.argv[3:]:
    assert (pathlib.Path(need) / "done.txt").is_file(), f"{need} not done before {out}"
if sys.argv[2] == "fail":
    sys.exit(3)
(out / "eval").mkdir(exist_ok=True)
(out / "eval" / "eval.json").write_text(json.dumps({"average": {"mIoU": float(sys.argv[2])}}))
with open(out.parent / "order.txt", "a") as f:
    f.write(out.name + "\\n")
(out / "done.txt").write_text("ok")
(out / "threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", ""))
"""


def write_study(tmp_path: Path, fail: bool = False) -> Path:
    (tmp_path / "step.py").write_text(STEP)
    study = textwrap.dedent(f"""
        title: toy
        seeds: [0, 1]
        datasets:
          toy: {{data: {tmp_path / 'data'}, work: {tmp_path / 'w'}, vars: {{step: python {tmp_path / 'step.py'}}}}}
        jobs:
          a: {{run: "{{step}} {{work}}/a_s{{seed}} 0.{{seed}}1", done: done.txt}}
          b: {{run: "{{step}} {{work}}/b_s{{seed}} {'fail' if fail else '0.5'} {{a}}", done: done.txt}}
          c: {{run: "{{step}} {{work}}/c_s{{seed}} 0.7 {{b}} {{a}}", done: done.txt}}
        tables:
          - title: toy table
            columns: [mIoU]
            rows: [a, {{job: c, vs: a}}]
    """)
    path = tmp_path / "toy.yaml"
    path.write_text(study)
    return path


def test_a_study_runs_its_jobs_after_what_they_need_then_prints_its_tables(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["study", str(path), "--jobs", "2"]) == 0
    order = (tmp_path / "w" / "order.txt").read_text().split()
    for s in (0, 1):  # each job after the ones it names
        assert order.index(f"a_s{s}") < order.index(f"b_s{s}") < order.index(f"c_s{s}")
    out = capsys.readouterr().out
    assert "| a | 2 | 6.0 ± 7.1 | 0: 1.0, 1: 11.0 |" in out  # mIoU 1 and 11: mean 6, sample sd √50 = 7.07
    assert "| ↳ minus a, per seed | 2 | | +69.0, +59.0 |" in out
    assert (tmp_path / "w" / "tables.md").read_text().startswith("### toy table")
    assert main(["study", str(path)]) == 0  # everything done: nothing reruns
    assert (tmp_path / "w" / "order.txt").read_text().split() == order
    assert {(tmp_path / "w" / f"{j}_s0" / "threads.txt").read_text() for j in "abc"} == {str(max(1, os.cpu_count() // 2))}


def test_threads_per_job_can_be_set(tmp_path):
    path = write_study(tmp_path)
    assert main(["study", str(path), "--jobs", "2", "--threads", "3", "--only", "a"]) == 0
    assert (tmp_path / "w" / "a_s1" / "threads.txt").read_text() == "3"


def test_a_failed_job_stops_its_dependents_only(tmp_path, capsys):
    path = write_study(tmp_path, fail=True)
    assert main(["study", str(path), "--jobs", "1"]) == 1
    err = capsys.readouterr()
    assert "FAILED: b_s0" in err.out and "skipped: c_s0 (a job it needs failed)" in err.out
    assert (tmp_path / "w" / "a_s1" / "done.txt").is_file() and not (tmp_path / "w" / "c_s1").exists()
    assert "$ " in (tmp_path / "w" / "logs" / "b_s0.log").read_text()  # the command is in the job's log


def test_dry_run_lists_commands_with_the_flags_the_runner_adds(tmp_path, capsys):
    study = REPO / "studies" / "native.yaml"
    assert main(["study", str(study), "--dry-run", "--work", str(tmp_path), "--only", "plus4_w30", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 jobs, 0 done" in out  # plus4_w30 needs syn, which needs gen; real is not asked
    seg = next(line for line in out.splitlines() if "train-segmenter" in line)
    assert f"--synthetic {tmp_path}/syn_s0" in seg and f"--out {tmp_path}/plus4_w30_s0 --seed 0" in seg
    assert "--layout same-folder --split-seed 0 --val-fraction 0.1 --test-fraction 0.3" in seg  # from the split file
    assert f"anomalign evaluate --segmenter {tmp_path}/plus4_w30_s0/best" in out
    (tmp_path / "gen_s0" / "checkpoints").mkdir(parents=True)  # a killed generator resumes
    main(["study", str(study), "--dry-run", "--work", str(tmp_path), "--only", "gen", "--seeds", "0"])
    assert "--resume latest" in capsys.readouterr().out
    assert not any(p.name != "gen_s0" for p in tmp_path.iterdir())  # a dry run writes nothing


def test_every_study_file_plans(tmp_path):
    for path in sorted((REPO / "studies").glob("*.yaml")):
        study = load_study(path)
        for dataset in study["datasets"]:
            jobs, _ = plan_jobs(study, StudyConfig(file=path, dataset=dataset, work=tmp_path))
            assert jobs, (path, dataset)
            format_tables(study, jobs, [0, 1, 2])  # every table reads (nothing has run: "not run")


def test_bad_study_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {d: {data: x, work: w}}\njobs: {a: {run: 'train-segmenter --x {nope}'}}\n")
    with pytest.raises(ConfigError, match="unknown name {nope}"):
        plan_jobs(load_study(bad), StudyConfig(file=bad))
    bad.write_text("datasets: {d: {data: x, work: w}}\njobs: {a: {run: 'segment x'}}\n")
    with pytest.raises(ConfigError, match="not one a study runs"):
        plan_jobs(load_study(bad), StudyConfig(file=bad))
    bad.write_text("jobs: {}\n")
    with pytest.raises(ConfigError, match="needs 'datasets' and 'jobs'"):
        load_study(bad)


def test_a_table_reads_the_best_row_of_a_validation_log(tmp_path):
    from anomalign.study import Job
    folder = tmp_path / "real_s0"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "validation.csv").write_text("step,mIoU,AUROC\n250,0.20,0.80\n500,0.31,0.85\n750,0.28,0.90\n")
    study = {"tables": [{"title": "val", "source": "logs/validation.csv", "key": "mIoU",
                         "columns": ["mIoU", {"name": "step", "key": "step", "scale": 1, "fmt": "{:.0f}"}],
                         "rows": ["real"]}]}
    jobs = {"real_s0": Job("real", 0, folder, [], [])}
    assert "| real | 1 | 31.0 | 500 | 0: 31.0 |" in format_tables(study, jobs, [0])
