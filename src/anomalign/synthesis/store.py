"""The output folder of ``anomalign generate``: run identity, per-attempt records, resume bookkeeping.

Each finished attempt has a record ``.records/NNNNNNN.json``, written after its image and mask (each
written atomically), so a record means the attempt is complete. The run identity (``run.json``) holds
every option that changes which files are written, plus the generator weights' SHA-256.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from anomalign.config import save_config
from anomalign.errors import AnomalignError
from anomalign.files import lock_folder, save_png, visible_entries, write_text_atomic

RECORDS = ".records"
# Options that do not change the pairs a run writes: a rerun may change them and still resume (output_layout only
# adds normal/, and runs made before it existed resume).
RESUMABLE = ("num", "out", "batch_size", "batch_invariant", "device", "max_attempts", "output_layout")


def _identity(cfg, generator_sha: str) -> dict:
    """What determines the files: the options (paths made absolute) and the generator's weights
    (by hash, so the same weights under another path still resume)."""
    ident = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
             if k not in RESUMABLE and k != "generator"}
    if ident.get("dtype") == "fp32":  # runs made before --dtype existed were fp32: they still resume
        del ident["dtype"]
    return json.loads(json.dumps(ident | {"generator_sha256": generator_sha}, default=str))


def prepare_out(cfg, generator_sha: str, main: bool, skipped: list[dict] | None = None,
                barrier=lambda: None) -> Path:
    """Check that ``cfg.out`` is new or holds this same run; the main process records the run identity
    (and ``skipped.json``: the source files ``--policy skip`` left out).

    Every process checks, then ``barrier()`` (the accelerator's ``wait_for_everyone``) runs before the main
    process writes: a slower process must not see the main one's half-written folder as somebody else's."""
    out = Path(cfg.out)
    ident = _identity(cfg, generator_sha)
    run_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise AnomalignError(f"{out}: --out is a file")
    if out.is_dir() and visible_entries(out):
        if not run_file.is_file():
            raise AnomalignError(f"{out}: folder is not empty and was not written by `anomalign generate`; "
                                 "refusing to write into it (nothing was changed). Choose a new --out.")
        try:
            prev = json.loads(run_file.read_text())["identity"]
            if not isinstance(prev, dict):
                raise TypeError("identity is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise AnomalignError(f"{run_file}: not the record of an `anomalign generate` run ({type(e).__name__}: "
                                 f"{e}); refusing to write into {out} (nothing was changed). Choose a new --out.") from None
        diff = sorted(k for k in set(prev) | set(ident) if prev.get(k) != ident.get(k))
        # A run that stopped before its first attempt (an input error found late) holds no result: a corrected
        # rerun with other options may take the folder over instead of being refused by the stub.
        if diff and any((out / RECORDS).glob("*.json")):
            raise AnomalignError(f"{out}: holds another generation run (different {', '.join(diff)}); nothing was "
                                 "changed. Choose a new --out, or rerun with that run's options to resume it.")
    barrier()
    if main:
        lock_folder(out, "generate")  # before the first write: a second process on this folder stops here
        (out / RECORDS).mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_file, json.dumps({"identity": ident}, indent=1))
        save_config(cfg, out / "config.yaml")
        if skipped:
            write_text_atomic(out / "skipped.json", json.dumps(skipped, indent=1) + "\n")
        for stale in out.rglob(".*.tmp"):  # temp files of a killed run: never renamed, so never complete
            stale.unlink()
    return out


def record_path(out: Path, i: int) -> Path:
    return out / RECORDS / f"{i:07d}.json"


def read_record(out: Path, i: int) -> dict | None:
    """The record of attempt i if it is finished (a kept record whose files were trimmed is not)."""
    p = record_path(out, i)
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    if rec["kept"] and not ((out / rec["file_name"]).is_file() and (out / rec["mask_file_name"]).is_file()):
        return None
    return rec


def write_attempt(out: Path, rec: dict, image: np.ndarray | None, mask: np.ndarray | None) -> None:
    """Image and mask first, record last: a record means the attempt is complete."""
    if rec["kept"]:
        save_png(image, out / rec["file_name"])
        save_png(mask, out / rec["mask_file_name"])
    write_text_atomic(record_path(out, rec["index"]), json.dumps(rec))
