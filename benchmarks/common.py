"""Shared bits of the benchmark scripts: machine description, timing, and appending results to a doc."""
from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from anomalign.training import peak_rss_mb  # noqa: F401  (re-exported for the scripts)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def base_tag(gen) -> str:
    """<codec>_<regime>_<px>[_v]: names a tiny base's figures (v-prediction bases get their own)."""
    return (f"{gen.spec.get('codec', 'autoencoder_kl')}_{gen.spec.get('base_regime', 'mask-aware')}_{gen.resolution}"
            + ("_v" if gen.scheduler.config.prediction_type == "v_prediction" else ""))


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {dev}, Python {platform.python_version()}")


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, device="cpu", warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured round-robin (A B A B ...) after ``warmup`` calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_gflops(dtype, repeats: int = 5, n: int = 2048) -> float:
    """The CPU's arithmetic limit as benchmarks quote it: GFLOP/s of an n x n matmul in ``dtype`` (median)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = median(interleaved({"mm": lambda: a @ b}, repeats)["mm"])
    return 2 * n ** 3 / t / 1e9


def publish(title: str, body: str, to_doc: bool = True) -> None:
    """Print a result and (unless told not to) append it to docs/benchmarks.md with the command line."""
    import sys
    print(body)
    if to_doc:
        append_doc(title, " ".join(["python", *sys.argv]), body)


def print_and_append(doc: Path, text: str) -> None:
    """Print ``text`` and append it to ``doc`` (scripts that write their own heading and command line)."""
    print(text)
    doc.parent.mkdir(parents=True, exist_ok=True)
    with doc.open("a") as fh:
        fh.write(text)


def append_doc(title: str, command: str, body: str) -> None:
    """Append a dated section (machine + command + body) to docs/benchmarks.md."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    if not DOCS.exists():
        DOCS.write_text("# Benchmarks\n\nEvery section is appended by a script under `benchmarks/`; newest last. "
                        "Medians of interleaved repeats after a warm-up; ratios come from the same run.\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with DOCS.open("a") as f:
        f.write(f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\nCommand: `{command}`\n\n{body.rstrip()}\n")
