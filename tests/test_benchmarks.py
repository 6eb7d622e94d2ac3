"""The benchmark scripts (docs/benchmarks.md, "The scripts") cannot rot: every one is imported in the default
run; each runs end to end at toy sizes under `-m slow` (about 30 s each, too long for the default run)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SRC = str(Path(__file__).resolve().parents[1] / "src")
# script -> its arguments at toy size (printing only: --no-doc, or a --doc in the test's folder)
SMOKE = {
    "segment_speed.py": ["--threads", "1", "--repeats", "1", "--big", "300", "--no-doc"],
    "segment_memory.py": ["--megapixels", "0.05", "--threads", "1", "--no-doc"],
    "sliding_windows.py": ["--skip-accuracy", "--repeats", "1", "--no-doc"],
    "cpu_training.py": ["--threads", "1", "--repeats", "1", "--batch-size", "2", "--size", "32", "--no-doc"],
    "segmenter_step.py": ["--size", "32", "--batch-size", "2", "--infer-sizes", "64", "--repeats", "1", "--no-doc"],
    "generator_step.py": ["--backends", "tiny", "--repeats", "1", "--batch-size", "1", "--no-doc"],
    "synthesis_speed.py": ["--random-sd", "0.05", "--size", "64", "--num", "2", "--batch-size", "2", "--repeats", "1",
                           "--no-doc"],
    "base_denoising.py": ["--base", "TINY_BASE", "--images", "2", "--doc", "{tmp}/doc.md", "--figures", "{tmp}"],
    "base_fidelity.py": ["--base", "TINY_BASE", "--per-material", "2", "--steps", "2", "--train-per-material", "4",
                         "--classifier-steps", "2", "--doc", "{tmp}/doc.md", "--figures", "{tmp}"],
    "choice_rule_simulation.py": None,  # smoke-tested in tests/test_choice_rule.py
}
HELPERS = {"common.py", "models.py"}


def test_every_benchmark_is_listed_and_imports():
    scripts = {p.name for p in BENCH.glob("*.py")} - HELPERS
    assert scripts == set(SMOKE), "a benchmark script without a smoke entry, or an entry without its script"
    sys.path.insert(0, str(BENCH))
    try:
        for name in sorted(scripts | HELPERS):
            spec = importlib.util.spec_from_file_location(f"bench_{name[:-3]}", BENCH / name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # import only: main() runs under __main__
            assert name in HELPERS or callable(getattr(module, "main", None)), name
    finally:
        sys.path.remove(str(BENCH))
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_run.sh")]).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s, a in SMOKE.items() if a is not None])
def test_benchmark_runs_at_toy_size(script, tmp_path):
    from anomalign.generator.model import TINY_BASE
    args = [str(TINY_BASE) if a == "TINY_BASE" else a.format(tmp=tmp_path) for a in SMOKE[script]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    before = docs_status()
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "a benchmark prints its numbers"
    assert docs_status() == before, "a smoke run wrote into the repo's docs"


def docs_status() -> set[Path]:
    """Every file under docs/ (a smoke run must not add figures or docs to the repo)."""
    return set((BENCH.parent / "docs").rglob("*"))
