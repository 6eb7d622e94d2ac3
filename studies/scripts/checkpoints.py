"""A training run's checkpoint as a loadable artifact folder (the studies that compare training lengths)."""
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def artifact_at(trained: Path, step: int, folder: Path, weights: str, files: tuple[str, ...]) -> Path:
    """``trained``'s checkpoint at ``step`` as an artifact folder like ``trained`` itself: its ``files`` (config,
    spec) copied, its ``weights`` file holding the checkpoint's model weights with the final file's metadata.
    Right for runs without EMA (a checkpoint keeps the raw weights, which is then what a run ending there saves)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(trained / name, folder / name)
    meta = safe_open(str(trained / weights), "pt").metadata()
    save_file(load_file(str(trained / "checkpoints" / f"step-{step:07d}" / "model.safetensors")),
              str(folder / weights), metadata=meta)
    return folder
