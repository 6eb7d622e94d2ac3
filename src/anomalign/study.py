"""``anomalign study FILE``: a study of docs/results.md as data — its jobs, their dependencies and its tables.

A study file (``studies/*.yaml``, described in studies/README.md) lists

- ``datasets``: where the data is, the run folder of the study on it (``work``), the data flags every command
  gets (layout and split: the recipes under ``configs/`` hold none) and variables (``vars``);
- ``jobs``: one ``anomalign`` (or ``python``) command line each, run once per seed into ``WORK/<job>_s<seed>``
  (``per_seed: false``: once, into ``WORK/<job>``). ``{data}``, ``{seed}``, ``{work}`` and the variables are
  filled in; ``{other_job}`` is that job's folder for the same seed, and makes this job wait for it;
- ``tables``: rows of jobs, columns of metrics; printed as mean ± sd over the seeds that ran.

The runner runs what is missing (a job is done when its command's output file exists; a training job
killed mid-way resumes from its last checkpoint), ``--jobs`` at a time with the CPU's threads shared among
them, and prints the tables. ``--dry-run`` lists every job, done or to run, with its command line.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from anomalign.config import option
from anomalign.errors import ConfigError

# The file a command writes last: a job whose folder holds it is done.
DONE = {"run": "result.json", "train-generator": "generator.safetensors", "train-segmenter": "segmenter.safetensors",
        "generate": "summary.json", "evaluate": "eval.json", "evaluate-generation": "generation.json",
        "pretrain-base": "generator.safetensors"}
SEEDED = {"run", "train-generator", "train-segmenter", "generate"}  # get --seed SEED
DATA_COMMANDS = {"run", "train-generator", "train-segmenter", "generate", "evaluate", "evaluate-generation"}
RESUMABLE = {"train-generator", "train-segmenter", "pretrain-base"}
PERCENT = ("mIoU", "mDice", "IoU", "Dice", "AUROC")


@dataclass(kw_only=True)
class StudyConfig:
    """Options of ``anomalign study``."""

    file: Path = option(help="study file (studies/*.yaml)", positional=True)
    dataset: str | None = option(None, "which of the file's datasets (default: its first)")
    data: Path | None = option(None, "dataset folder (default: the file's)")
    work: Path | None = option(None, "folder of the study's run folders (default: the file's)")
    seeds: list[int] | None = option(None, "seeds (default: the file's)")
    only: list[str] | None = option(None, "run only these jobs (and the jobs they need)")
    jobs: int = option(2, "jobs at once; the CPU's threads are shared among them")
    threads: int | None = option(None, "torch threads per job (default: the CPU's cores / --jobs; fewer when other "
                                       "work shares the machine)")
    dry_run: bool = option(False, "list every job (done or to run) with its command line; run nothing")
    tables: bool = option(False, "print the tables from the run folders; run nothing")

    def validate(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


@dataclass
class Job:
    """One job of one seed (``seed`` None: a job run once)."""

    name: str
    seed: int | None
    folder: Path
    commands: list[list[str]]   # argv of each command, in order (training, then evaluation)
    done_files: list[Path]
    needs: list[str] = field(default_factory=list)   # keys of the jobs it waits for

    @property
    def key(self) -> str:
        return self.name if self.seed is None else f"{self.name}_s{self.seed}"

    def done(self) -> bool:
        return all(f.is_file() for f in self.done_files)


def load_study(path: Path) -> dict:
    """The study file, checked: datasets, jobs (each with ``run``) and tables."""
    try:
        study = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the study file ({type(e).__name__}: {e})") from None
    if not isinstance(study, dict) or not isinstance(study.get("jobs"), dict) or not study.get("datasets"):
        raise ConfigError(f"{path}: a study file needs 'datasets' and 'jobs' (see studies/README.md)")
    for name, spec in study["jobs"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("run"), str):
            raise ConfigError(f"{path}: job '{name}' needs a 'run' command line")
    return study


def plan_jobs(study: dict, cfg: StudyConfig) -> tuple[dict[str, Job], dict]:
    """Every (job, seed) of the study on the chosen dataset, with its command lines and dependencies; and the
    dataset's settings (data, work, seeds)."""
    datasets = study["datasets"]
    name = cfg.dataset or next(iter(datasets))
    if name not in datasets:
        raise ConfigError(f"{cfg.file}: no dataset '{name}'; choose from {list(datasets)}")
    ds = datasets[name]
    data = str(cfg.data or ds["data"])
    work = Path(cfg.work or ds["work"])
    seeds = list(cfg.seeds if cfg.seeds is not None else ds.get("seeds", study.get("seeds", [0])))
    variables = {**study.get("vars", {}), **ds.get("vars", {})}
    data_flags = split_flags(Path(ds["split"])) if ds.get("split") else []
    if ds.get("split"):
        variables.setdefault("split", ds["split"])
    clash = sorted(set(variables) & set(study["jobs"]))
    if clash:
        raise ConfigError(f"{cfg.file}: {clash} are both variables and jobs; rename one ({{name}} must mean one thing)")
    specs = {k: v for k, v in study["jobs"].items() if name in v.get("datasets", [name])}
    jobs: dict[str, Job] = {}
    for job_name, spec in specs.items():
        job_seeds = [None] if spec.get("per_seed", True) is False else \
            [s for s in seeds if s in spec.get("seeds", seeds)]
        for seed in job_seeds:
            jobs_key = job_name if seed is None else f"{job_name}_s{seed}"
            jobs[jobs_key] = make_job(job_name, spec, seed, data, work, variables, data_flags, specs, seeds)
    return jobs, {"dataset": name, "data": data, "work": work, "seeds": seeds}


def split_flags(path: Path) -> list[str]:
    """A split file (layout, split seed and fractions: the data options every command of a study shares) as flags."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the split file ({type(e).__name__}: {e})") from None
    flags = []
    for key, value in values.items():
        flags += [f"--{key.replace('_', '-')}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return flags


def job_folder(work: Path, name: str, spec: dict, seed: int | None) -> Path:
    return work / (name if seed is None or spec.get("per_seed", True) is False else f"{name}_s{seed}")


def make_job(name: str, spec: dict, seed: int | None, data: str, work: Path, variables: dict, data_flags: list[str],
             specs: dict, seeds: list[int]) -> Job:
    folder = job_folder(work, name, spec, seed)
    needs: list[str] = []

    def fill(text: str, depth: int = 0) -> str:
        def one(m: re.Match) -> str:
            key = m.group(1)
            if key == "data":
                return data
            if key == "seed":
                if seed is None:
                    raise ConfigError(f"job '{name}' runs once (per_seed: false) but uses {{seed}}")
                return str(seed)
            if key == "work":
                return str(work)
            if key in variables:
                if depth > 5:
                    raise ConfigError(f"variable '{key}' refers to itself")
                return fill(str(variables[key]), depth + 1)
            if key in specs:
                other = specs[key]
                other_seed = None if other.get("per_seed", True) is False else seed
                if other_seed is None and other.get("per_seed", True) is not False:
                    raise ConfigError(f"job '{name}' runs once but needs the per-seed job '{key}'")
                needs.append(key if other_seed is None else f"{key}_s{other_seed}")
                return str(job_folder(work, key, other, other_seed))
            raise ConfigError(f"job '{name}': unknown name {{{key}}} (not a variable, a job, data, seed or work)")
        return re.sub(r"\{([A-Za-z0-9_.]+)\}", one, text)

    argv = shlex.split(fill(spec["run"]))
    commands, done_files = [], []
    if argv[0] == "python":
        commands.append([sys.executable, *argv[1:]])
        if "done" not in spec:
            raise ConfigError(f"job '{name}': a python command needs 'done' (the file it writes last)")
        done_files.append(folder / spec["done"])
    else:
        command = argv[0]
        if command not in DONE:
            raise ConfigError(f"job '{name}': anomalign command '{command}' is not one a study runs "
                              f"({', '.join(DONE)}; or python ...)")
        extra = ["--out", str(folder)]
        if command in SEEDED and seed is not None and "--seed" not in argv:
            extra += ["--seed", str(seed)]
        if command in DATA_COMMANDS:
            extra += data_flags
        commands.append(["anomalign", *argv, *extra])
        done_files.append(folder / DONE[command])
        if command == "train-segmenter" and spec.get("evaluate", True):
            weights = spec.get("evaluate_weights", "best")
            commands.append(["anomalign", "evaluate", "--segmenter", str(folder / weights), "--test", data,
                             "--out", str(folder / "eval"), *data_flags])
            done_files.append(folder / "eval" / "eval.json")
    return Job(name, seed, folder, commands, done_files, sorted(set(needs)))


def wanted(jobs: dict[str, Job], only: list[str] | None) -> list[str]:
    """Keys of the jobs to consider: all, or those of ``only`` (job names) and everything they need."""
    if not only:
        return list(jobs)
    unknown = sorted(set(only) - {j.name for j in jobs.values()})
    if unknown:
        raise ConfigError(f"unknown job(s) {unknown}; the study has {sorted({j.name for j in jobs.values()})}")
    keep: set[str] = set()
    stack = [k for k, j in jobs.items() if j.name in only]
    while stack:
        k = stack.pop()
        if k not in keep:
            keep.add(k)
            stack += [n for n in jobs[k].needs if n in jobs]
    return [k for k in jobs if k in keep]


def command_line(job: Job, argv: list[str]) -> str:
    """One command as a user would type it (resume added when a checkpoint is there)."""
    return " ".join(shlex.quote(a) for a in with_resume(job, argv))


def with_resume(job: Job, argv: list[str]) -> list[str]:
    if argv[0] == "anomalign" and argv[1] in RESUMABLE and (job.folder / "checkpoints").is_dir() \
            and not job.done_files[0].is_file():
        return [*argv, "--resume", "latest"]
    return argv


def run_jobs(jobs: dict[str, Job], keys: list[str], work: Path, parallel: int, threads: int | None = None) -> list[str]:
    """Run the jobs of ``keys`` that are not done, ``parallel`` at a time (``threads`` torch threads each: by
    default the cores shared among them), each after the jobs it needs; returns the keys that failed (their
    dependents are not run). Logs: WORK/logs/<key>.log."""
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    todo = [k for k in keys if not jobs[k].done()]
    failed: list[str] = []
    running: dict[str, threading.Thread] = {}
    results: dict[str, bool] = {}
    (work / "logs").mkdir(parents=True, exist_ok=True)

    def one(key: str) -> None:
        job = jobs[key]
        with (work / "logs" / f"{key}.log").open("a") as log:
            for argv, done in zip(job.commands, job.done_files):
                if done.is_file():
                    continue
                argv = with_resume(job, argv)
                log.write(f"$ {command_line(job, argv)}\n")
                log.flush()
                if argv[0] == "anomalign":  # the same interpreter's package, whatever is on PATH
                    argv = [sys.executable, "-m", "anomalign", *argv[1:]]
                if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                    results[key] = False
                    return
        results[key] = job.done()

    t0 = time.perf_counter()
    while todo or running:
        for key in [k for k, t in running.items() if not t.is_alive()]:
            running.pop(key)
            ok = results.get(key, False)
            print(f"{'done' if ok else 'FAILED'}: {key} ({(time.perf_counter() - t0) / 60:.1f} min; log "
                  f"{work / 'logs' / (key + '.log')})", flush=True)
            if not ok:
                failed.append(key)
        blocked = [k for k in todo if any(n in failed for n in jobs[k].needs)]
        for k in blocked:
            todo.remove(k)
            failed.append(k)
            print(f"skipped: {k} (a job it needs failed)", flush=True)
        ready = [k for k in todo if all(jobs[n].done() or n not in jobs for n in jobs[k].needs)]
        while ready and len(running) < parallel:
            key = ready.pop(0)
            todo.remove(key)
            print(f"start: {key} ({len(todo)} waiting)", flush=True)
            running[key] = threading.Thread(target=one, args=(key,), daemon=True)
            running[key].start()
        if todo and not running and not ready:
            for k in todo:
                failed.append(k)
                print(f"skipped: {k} (needs {[n for n in jobs[k].needs if not jobs[n].done()]})", flush=True)
            break
        time.sleep(0.2)
    return failed


def dig(value, path: str):
    """``value[a][b]...`` for ``path`` "a/b/..." (None where a level is missing; "" is ``value`` itself). A part
    "@name" stands for the value of the top-level field ``name`` (e.g. "test/@chosen" in a run's result.json)."""
    root = value
    for part in path.split("/") if path else []:
        if part.startswith("@"):
            part = str(root.get(part[1:])) if isinstance(root, dict) else ""
        value = value.get(part) if isinstance(value, dict) else None
    return value


def read_value(folder: Path, source: str, key: str) -> dict | None:
    """The dict at ``key`` ("a/b") of the JSON file ``folder/source``; for a CSV log (``logs/validation.csv``), its
    row with the largest ``key`` column (the best validation), numbers as floats. None when missing."""
    path = folder / source
    if not path.is_file():
        return None
    if path.suffix == ".csv":
        import csv
        with path.open() as f:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        rows = [r for r in rows if key in r]
        return max(rows, key=lambda r: r[key]) if rows else None
    value = dig(json.loads(path.read_text()), key)
    return value if isinstance(value, dict) else None


def format_tables(study: dict, jobs: dict[str, Job], seeds: list[int]) -> str:
    """Every table of the study as markdown: per row the seeds that ran, mean ± sd per column, the per-seed values
    of the first column and, with ``vs``, the per-seed difference to that row's job."""
    from anomalign.metrics import mean_sd
    out = []
    for table in study.get("tables", []):
        columns = [c if isinstance(c, dict) else {"name": c} for c in table.get("columns", ["mIoU", "mDice", "AUROC"])]
        for c in columns:
            c.setdefault("key", c["name"])
            c.setdefault("scale", 100 if c["name"] in PERCENT else 1)
            c.setdefault("fmt", "{:.1f}" if c["scale"] == 100 else "{:.3f}")
        source, key = table.get("source", "eval/eval.json"), table.get("key", "average")
        head = ["run", "n", *(c["name"] for c in columns), f"per seed {columns[0]['name']}"]
        lines = [f"### {table['title']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def values_of(job_name: str, row_source: str, row_key: str) -> dict[int | None, dict]:
            found = {}
            for seed in [*seeds, None]:
                k = job_name if seed is None else f"{job_name}_s{seed}"
                if k in jobs:
                    v = read_value(jobs[k].folder, row_source, row_key)
                    if v is not None:
                        found[seed] = v
            return found

        for row in table["rows"]:
            row = row if isinstance(row, dict) else {"job": row}
            if not any(j.name == row["job"] for j in jobs.values()):
                continue  # a job of another dataset of the study
            vals = values_of(row["job"], row.get("source", source), row.get("key", key))
            first = columns[0]
            cells = [row.get("label", row["job"]), str(len(vals))]
            cells += [mean_sd([dig(v, c["key"]) for v in vals.values()], c["scale"], c["fmt"], empty="not run")
                      for c in columns]
            per_seed = [f"{s}: {first['fmt'].format(first['scale'] * dig(v, first['key']))}" for s, v in vals.items()
                        if dig(v, first["key"]) is not None and s is not None]
            cells.append(", ".join(per_seed))
            lines.append("| " + " | ".join(cells) + " |")
            if row.get("vs"):
                base = values_of(row["vs"], row.get("source", source), row.get("key", key))
                gains = [f"{first['scale'] * (dig(v, first['key']) - dig(base[s], first['key'])):+.1f}"
                         for s, v in vals.items() if s in base and None not in (dig(v, first["key"]),
                                                                              dig(base[s], first["key"]))]
                if gains:
                    lines.append(f"| ↳ minus {row['vs']}, per seed | {len(gains)} |" + " |" * len(columns)
                                 + f" {', '.join(gains)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def run_study(cfg: StudyConfig) -> int:
    """Run (or list, with --dry-run) what is missing of the study, then print its tables; 1 if a job failed."""
    cfg.validate()
    study = load_study(cfg.file)
    jobs, ds = plan_jobs(study, cfg)
    keys = wanted(jobs, cfg.only)
    work = ds["work"]
    print(f"{study.get('title', cfg.file)} — dataset {ds['dataset']} ({ds['data']}), run folders in {work}, "
          f"seeds {ds['seeds']}: {len(keys)} jobs, {sum(jobs[k].done() for k in keys)} done")
    if cfg.dry_run:
        for k in keys:
            job = jobs[k]
            state = "done" if job.done() else ("to run" + (f" after {', '.join(job.needs)}" if job.needs else ""))
            print(f"\n[{state}] {k}")
            for argv in job.commands:
                print(f"  {command_line(job, argv)}")
        return 0
    failed = [] if cfg.tables else run_jobs(jobs, keys, work, cfg.jobs, cfg.threads)
    tables = format_tables(study, jobs, ds["seeds"])
    if tables:
        print("\n" + tables)
        if not cfg.tables:
            (work / "tables.md").write_text(tables + "\n")
    if failed:
        print(f"\n{len(failed)} job(s) failed or were skipped: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
