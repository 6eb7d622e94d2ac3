"""Model files: safetensors weights with a JSON spec in the file's metadata (never pickle)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from anomalign.errors import AnomalignError
from anomalign.files import atomic_target


def write_weights(file: Path, state: dict[str, torch.Tensor], key: str, spec: dict[str, Any]) -> Path:
    """Write ``state`` with ``spec`` (JSON) under metadata ``key``; atomically (temp name, then rename)."""
    with atomic_target(file) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={key: json.dumps(canonical_spec(spec), default=_json_default)})
    return Path(file)


def canonical_spec(spec: Any) -> Any:
    """``spec`` with the lists diffusers builds from sets (``_use_default_values``) sorted, so that the same
    model always gives the same file bytes (a set's order changes with Python's hash seed)."""
    if isinstance(spec, dict):
        return {k: (sorted(map(str, v)) if k == "_use_default_values" and isinstance(v, (list, tuple, set))
                    else canonical_spec(v)) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [canonical_spec(v) for v in spec]
    return spec


def weights_file(source: Path, name: str) -> Path:
    """The weights file of ``source``: ``source/name`` for a run folder, else ``source`` itself."""
    path = Path(source)
    return path / name if path.is_dir() else path


def read_weights(source: Path, name: str, key: str, hint: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(spec, state, file) from a run folder holding ``name`` or the file itself; clear errors naming the file."""
    file = weights_file(source, name)
    if not file.is_file():
        raise AnomalignError(f"{source}: no {name} here ({hint})")
    spec = read_spec(file, key)
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise AnomalignError(f"{file}: unreadable weights ({type(e).__name__}: {e})") from None
    return spec, state, file


def read_spec(file: Path, key: str) -> dict[str, Any]:
    """Only the JSON spec of a weights file (its metadata; the tensors are not read)."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            return json.loads((fh.metadata() or {})[key])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise AnomalignError(f"{file}: unreadable weights ({type(e).__name__}: {e})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)
