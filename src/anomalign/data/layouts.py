"""Layout detection, the reader table and deterministic splitting: ``read_dataset`` is the entry point."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Callable

from anomalign.data.public_datasets import mvtec_categories, read_mvtec, read_realiad, read_visa
from anomalign.data.folders import (IMAGE_DIR_NAMES, LAYOUT_NAMES, MASK_DIR_NAMES, DataOptions, find_child,
                                    has_same_folder_pairs, paired_split_dirs, read_paired, read_pranet,
                                    read_same_folder)
from anomalign.data.sample import DatasetIndex, Problem, Sample
from anomalign.errors import DataError

Reader = Callable[[Path, DataOptions], tuple[list[Sample], list[Problem]]]
READERS: dict[str, Reader] = {
    "paired": read_paired,
    "same-folder": read_same_folder,
    "mvtec": read_mvtec,
    "visa": read_visa,
    "realiad": read_realiad,
    "pranet": read_pranet,
}
LAYOUTS = ("auto", *READERS)
assert LAYOUTS == LAYOUT_NAMES, "keep folders.LAYOUT_NAMES in step with READERS"


def detect_layout(root: Path) -> str:
    """Name of the layout under ``root`` (a key of ``READERS``); DataError says what was looked for."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, got a file")
    if (root / "realiad_jsons").is_dir():
        return "realiad"
    if (root / "split_csv").is_dir():
        return "visa"
    if find_child(root, ("traindataset", "testdataset")) is not None:
        return "pranet"
    if mvtec_categories(root):
        return "mvtec"
    if find_child(root, IMAGE_DIR_NAMES) is not None or paired_split_dirs(root):
        return "paired"
    if has_same_folder_pairs(root):
        return "same-folder"
    raise DataError(
        f"{root}: could not recognise the dataset layout. Looked for realiad_jsons/ (Real-IAD), split_csv/ (VisA), "
        f"TrainDataset/ or TestDataset/ (PraNet), <category>/test + ground_truth/ (MVTec AD), "
        f"{'|'.join(IMAGE_DIR_NAMES)} + {'|'.join(MASK_DIR_NAMES)} folders (paired), and images with masks "
        f"beside them (x.jpg + x.png, x.png + x_mask.png). Pass --layout one of {list(READERS)} to choose.")


def _order_key(sample: Sample, root: Path, seed: int) -> str:
    """A seed-dependent but machine-independent shuffle key (the file path relative to the root)."""
    try:
        rel = sample.image.relative_to(root).as_posix()
    except ValueError:
        rel = sample.image.as_posix()
    return hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def assign_splits(samples: list[Sample], root: Path, opts: DataOptions) -> list[Sample]:
    """Give every sample a split, deterministically by ``opts.split_seed``.

    Rule (docs/data.md): samples without a split are grouped by (category, defect type, normal); each
    group is ordered by sha256(f"{seed}:{relative path}") and its first round(n*test_fraction) go to
    test, the next round(n*val_fraction) to val, the rest to train (round half up; at least one train
    sample per non-empty group). If no sample is in val after that, val is carved the same way out
    of train, group by group. Adding files to a folder therefore moves few existing ones.
    """
    def carve(group: list[Sample], fractions: list[tuple[str, float]]) -> list[Sample]:
        group = sorted(group, key=lambda s: _order_key(s, root, opts.split_seed))
        counts = [_round_half_up(len(group) * f) for _, f in fractions]
        while counts and sum(counts) >= len(group) and sum(counts) > 0:  # keep one for training
            counts[counts.index(max(counts))] -= 1
        out, i = [], 0
        for (name, _), c in zip(fractions, counts):
            out += [s.replace(split=name) for s in group[i:i + c]]
            i += c
        return out + [s.replace(split="train") for s in group[i:]]

    def by_group(items: list[Sample]) -> dict[tuple, list[Sample]]:
        groups: dict[tuple, list[Sample]] = defaultdict(list)
        for s in items:
            groups[(s.category, s.defect, s.normal)].append(s)
        return groups

    done = [s for s in samples if s.split is not None]
    for group in by_group([s for s in samples if s.split is None]).values():
        done += carve(group, [("test", opts.test_fraction), ("val", opts.val_fraction)])
    if opts.val_fraction > 0 and not any(s.split == "val" for s in done):
        rest = [s for s in done if s.split != "train"]
        for group in by_group([s for s in done if s.split == "train"]).values():
            rest += carve(group, [("val", opts.val_fraction)])
        done = rest
    order = {s.image: i for i, s in enumerate(samples)}
    return sorted(done, key=lambda s: order[s.image])


def read_dataset(root: Path, options: DataOptions | None = None) -> DatasetIndex:
    """Find every image/mask pair under ``root`` and assign splits. Does not decode pixels.

    Problems found by name (missing or orphan masks, unsupported files, ...) are in ``.problems``;
    ``validate.check_dataset`` adds pixel-level checks and ``validate.load_dataset`` applies a policy.
    """
    root = Path(root)
    opts = options or DataOptions()
    layout = opts.layout
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist")
    try:
        reader = READERS[layout]
    except KeyError:
        raise DataError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}") from None
    samples, problems = reader(root, opts)
    return DatasetIndex(root=root, layout=layout, samples=assign_splits(samples, root, opts), problems=problems)
