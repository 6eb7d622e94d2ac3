"""Run folders of the training commands: whose they are, whether a run may write into one, how one starts.

A run folder is ours when its ``run.json`` names the command (folders from before ``run.json`` count as ours
when they hold our weights or checkpoints). Training refuses a folder with the user's own files, and a
finished or unfinished run unless it is resumed, and changes nothing when it refuses.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anomalign.errors import AnomalignError
from anomalign.training import find_checkpoint

RUN_MARKER = "run.json"


def _visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` except our own bookkeeping (``files.visible_entries``)."""
    from anomalign.files import visible_entries
    return visible_entries(folder)


def _run_owner(out: Path, weights: str) -> str | None:
    """The command that made run folder ``out`` (from its ``run.json``), or None for a foreign folder.

    Run folders from before ``run.json`` existed count as ours when they hold our weights or checkpoints.
    """
    marker = out / RUN_MARKER
    if marker.is_file():
        try:
            command = json.loads(marker.read_text()).get("command")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
            return None
        return command if isinstance(command, str) else None
    legacy = (out / weights).is_file() or any((out / "checkpoints").glob("step-*[0-9]/trainer.json"))
    return "legacy" if legacy and (out / "config.yaml").is_file() else None


def check_run_folder(out: Path, command: str, weights: str, resume: str | None) -> Path:
    """Check, before anything is written, that ``out`` may receive a training run of ``command``.

    Refused, with nothing changed: a file; a non-empty folder this command did not create (the user's own
    files); a finished run (``weights`` present) or an unfinished one (checkpoints) unless ``resume`` is given.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnomalignError(f"{out}: --out is a file, not a folder; nothing was changed")
    if not (out.is_dir() and _visible_entries(out)):
        return out
    owner = _run_owner(out, weights)
    if owner is None or owner not in (command, "legacy"):
        made_by = f"was written by `anomalign {owner}`" if owner else f"was not written by `anomalign {command}`"
        raise AnomalignError(f"{out}: folder is not empty and {made_by}; refusing to write into it (nothing "
                             "was changed). Choose a new --out.")
    if not resume:
        if (out / weights).is_file():
            raise AnomalignError(f"{out}: already holds a trained run ({weights}); choose another --out or "
                                 "pass --resume latest to continue it")
        latest = find_checkpoint(out, "latest")
        if latest is not None:
            raise AnomalignError(f"{out}: holds an unfinished run (latest checkpoint {latest.name}); pass "
                                 "--resume latest to continue it, or choose another --out (nothing was changed)")
    return out


def start_run_folder(out: Path, command: str, cfg: Any, skipped: list[dict] | None = None) -> None:
    """Create run folder ``out`` (main process only), marked as ``command``'s by ``run.json``, with its config
    and, when ``--policy skip`` left files out, ``skipped.json`` listing them (path, kind, message)."""
    from anomalign import __version__
    from anomalign.config import save_config
    from anomalign.files import lock_folder, write_text_atomic
    lock_folder(out, command)  # before the first write: a second process on this folder stops here
    if not (out / RUN_MARKER).is_file():
        write_text_atomic(out / RUN_MARKER, json.dumps({"command": command, "anomalign": __version__}) + "\n")
    save_config(cfg, out / "config.yaml")
    if skipped:
        write_text_atomic(out / "skipped.json", json.dumps(skipped, indent=1) + "\n")


def check_output_folder(out: Path, command: str, legacy=None) -> Path:
    """Check, before anything is written, that ``out`` may receive the files of ``command`` (a command whose
    output folder is rewritten on every run, such as ``evaluate`` and ``report``): a new or empty folder, or one
    this command made (its ``run.json``; for folders from before ``run.json``, ``legacy(out)`` says). Refused, with
    nothing changed: a file, or a folder holding anything else (the user's own files are never replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnomalignError(f"{out}: --out is a file, not a folder; nothing was changed. Choose a new --out.")
    if not (out.is_dir() and _visible_entries(out)):
        return out
    marker = out / RUN_MARKER
    owner = None
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("command")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
            owner = None
    elif legacy is not None and legacy(out):
        owner = command
    if owner != command:
        made_by = f"was written by `anomalign {owner}`" if isinstance(owner, str) else f"was not written by `anomalign {command}`"
        raise AnomalignError(f"{out}: folder is not empty and {made_by}; refusing to write into it (nothing was "
                             "changed). Choose a new --out.")
    return out


def mark_output_folder(out: Path, command: str) -> None:
    """Create ``out`` and mark it as ``command``'s (``run.json``), so a later run may rewrite it."""
    from anomalign import __version__
    from anomalign.files import write_text_atomic
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_MARKER).is_file():
        write_text_atomic(out / RUN_MARKER, json.dumps({"command": command, "anomalign": __version__}) + "\n")
