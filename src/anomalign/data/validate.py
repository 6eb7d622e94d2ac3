"""Pixel-level dataset checks, the skip/fail loading policy and the ``data check`` report."""
from __future__ import annotations

import shlex
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from anomalign.data.folders import DataOptions
from anomalign.data.imageio import (DEFAULT_MASK_THRESHOLD, FileProblem, binarize, mask_values, open_image,
                                    set_max_megapixels)
from anomalign.data.layouts import read_dataset
from anomalign.data.sample import SPLITS, DatasetIndex, Problem, Sample
from anomalign.errors import DataError

@dataclass
class SampleStats:
    size: tuple[int, int] | None = None      # image (width, height)
    coverage: float | None = None            # fraction of anomaly pixels after binarization
    problems: list[Problem] = field(default_factory=list)


def check_sample(s: Sample, threshold: float = DEFAULT_MASK_THRESHOLD) -> SampleStats:
    """Decode one pair fully and list its problems (never raises for bad files)."""
    st = SampleStats()
    try:
        st.size = open_image(s.image).size
    except FileProblem as e:
        st.problems.append(e.problem)
    if s.mask is None:
        st.coverage = 0.0
        return st
    try:
        im = open_image(s.mask)
    except FileProblem as e:
        st.problems.append(Problem(s.mask, e.problem.kind, "mask " + e.problem.message))
        return st
    values, top = mask_values(im)
    mask = binarize(values, top, path=s.mask, mode=im.mode, threshold=threshold, ids=s.mask_ids)
    st.coverage = float(mask.mean())
    if st.size is not None and im.size != st.size:
        st.problems.append(Problem(s.mask, "size-mismatch", f"mask is {im.size[0]}x{im.size[1]} but its image "
                                   f"{s.image.name} is {st.size[0]}x{st.size[1]}"))
    distinct = np.unique(values)
    if len(distinct) > 2 and not (s.mask_ids or im.mode == "P"):
        st.problems.append(Problem(s.mask, "non-binary-mask", f"mask has {len(distinct)} distinct values "
                                   f"(anti-aliasing or JPEG noise); binarized at {threshold:g} of full scale",
                                   "warning"))
    if not s.normal and not mask.any():
        faint = distinct.max(initial=0) > 0
        msg = (f"mask of an anomalous image is empty after binarization (max value {distinct.max():g} of "
               f"{top:g} is below the threshold {threshold:g})" if faint else "mask of an anomalous image is empty")
        st.problems.append(Problem(s.mask, "empty-mask", msg, "warning"))
    if s.normal and mask.any():
        st.problems.append(Problem(s.mask, "normal-with-anomaly",
                                   f"image is marked normal but its mask covers {st.coverage:.1%}", "warning"))
    return st


@dataclass
class CheckReport:
    """What ``check_dataset`` found: the index, per-sample stats and every problem."""

    index: DatasetIndex
    stats: list[SampleStats]

    @property
    def problems(self) -> list[Problem]:
        empty = [] if self.index.samples else [Problem(
            self.index.root, "empty-dataset", f"no image/mask pairs found (layout {self.index.layout}); nothing "
            "to train or evaluate on")]
        return self.index.problems + [p for st in self.stats for p in st.problems] + empty

    def usable(self) -> list[Sample]:
        """The samples whose files have no error (what ``--policy skip`` keeps)."""
        return [s for s, st in zip(self.index.samples, self.stats)
                if not any(p.severity == "error" for p in st.problems)]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def format(self, max_per_kind: int = 5) -> str:
        """Human-readable report: layout, counts, sizes, mask coverage, problems grouped by kind."""
        idx = self.index
        lines = [f"dataset: {idx.root}", f"layout:  {idx.layout}", f"pairs:   {len(idx.samples)} "
                 f"({sum(not s.normal for s in idx.samples)} anomalous, {sum(s.normal for s in idx.samples)} normal)"]
        table: dict[tuple[str, str], Counter] = defaultdict(Counter)
        for s in idx.samples:
            key = (s.category, "normal" if s.normal else s.defect)
            table[key][s.split if not s.subset else f"{s.split}:{s.subset}"] += 1
        cols = [c for c in (*SPLITS, *sorted({k for c in table.values() for k in c} - set(SPLITS)))
                if any(c in t for t in table.values())]
        width = max([len(f"{c}/{d}" if c else d) for c, d in table] + [12])
        lines.append("")
        lines.append(f"{'type':<{width}}  " + "  ".join(f"{c:>8}" for c in cols) + f"  {'total':>6}")
        for (cat, d), cnt in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] == "normal", kv[0][1])):
            name = f"{cat}/{d}" if cat else d
            lines.append(f"{name:<{width}}  " + "  ".join(f"{cnt.get(c, 0):>8}" for c in cols)
                         + f"  {sum(cnt.values()):>6}")
        sizes = [st.size for st in self.stats if st.size]
        if sizes:
            w = np.array([s[0] for s in sizes])
            h = np.array([s[1] for s in sizes])
            lines += ["", f"image sizes: {len(set(sizes))} distinct; width {w.min()}-{w.max()} (median "
                      f"{int(np.median(w))}), height {h.min()}-{h.max()} (median {int(np.median(h))})"]
        cov = np.array([st.coverage for s, st in zip(idx.samples, self.stats)
                        if not s.normal and st.coverage is not None])
        if cov.size:
            lines.append(f"mask coverage (anomalous): mean {cov.mean():.2%}, median {np.median(cov):.2%}, "
                         f"min {cov.min():.2%}, max {cov.max():.2%}; under 1%: {(cov < 0.01).sum()} images")
        problems = self.problems
        lines.append("")
        if not problems:
            lines.append("problems: none")
        by_kind: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in problems:
            by_kind[(p.severity, p.kind)].append(p)
        for (sev, kind), ps in sorted(by_kind.items()):
            lines.append(f"{sev}s [{kind}]: {len(ps)}")
            lines += [f"  {p.path}: {p.message}" for p in ps[:max_per_kind]]
            if len(ps) > max_per_kind:
                lines.append(f"  ... and {len(ps) - max_per_kind} more")
        n_err = len([p for p in problems if p.severity == "error"])
        lines.append("")
        lines.append(f"result: {n_err} error(s), {len(problems) - n_err} warning(s)")
        return "\n".join(lines)


def check_dataset(index: DatasetIndex, threshold: float = DEFAULT_MASK_THRESHOLD, workers: int = 4,
                  progress: bool = False) -> CheckReport:
    """Decode every image and mask of ``index`` (threads: PIL decodes without the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(lambda s: check_sample(s, threshold), index.samples)
        stats = list(tqdm(it, total=len(index.samples), desc="checking", disable=not progress, unit="pair"))
    return CheckReport(index, stats)


def load_dataset(root: Path, options: DataOptions | None = None, *, verify: bool = True, progress: bool = False,
                 announce: bool = True) -> DatasetIndex:
    """Read and (if ``verify``) decode-check a dataset, then apply the policy.

    ``fail``: raise DataError listing ALL errors found. ``skip``: drop the pairs that have errors
    and keep going; their errors are in ``.skipped`` (and ``.problems``) and, if ``announce``, printed to
    stderr with the file names. Warnings never stop loading.
    """
    opts = options or DataOptions()
    policy, threshold = opts.policy, opts.mask_threshold
    if policy not in ("fail", "skip"):
        raise DataError(f"unknown policy {policy!r}; choose 'fail' or 'skip'")
    set_max_megapixels(opts.max_megapixels)
    index = read_dataset(root, opts)
    problems = list(index.problems)
    samples = index.samples
    if verify:
        report = check_dataset(index, threshold, progress=progress)
        problems, samples = report.problems, report.usable()
    errors = [p for p in problems if p.severity == "error"]
    if errors and policy == "fail":
        raise DataError(f"{root}: {len(errors)} problem(s) found (use policy 'skip' to drop the bad pairs, "
                        f"or run `anomalign data check {shlex.quote(str(root))}`)", errors)
    if not samples:
        raise DataError(f"{root}: no usable image/mask pairs found (layout {index.layout})", errors)
    if errors and announce:
        print(format_skipped(root, errors), file=sys.stderr)
    if getattr(opts, "train_pairs", None) is not None:
        samples = subset_train_pairs(samples, opts.train_pairs, opts.split_seed, root)
    if getattr(opts, "cv_fold", None) is not None:  # after the subset: the folds are drawn from the pairs in use
        samples = assign_fold(samples, opts.cv_fold, opts.split_seed, index.root)
    return DatasetIndex(root=index.root, layout=index.layout, samples=samples, problems=problems, skipped=errors)


def subset_train_pairs(samples: list[Sample], n: int, seed: int, root: Path) -> list[Sample]:
    """``samples`` with only ``n`` of the anomalous train pairs: a random subset seeded by ``seed`` (the split
    seed), so every command and every run of a study uses the same pairs."""
    import torch
    train = [i for i, s in enumerate(samples) if s.split == "train" and not s.normal]
    if not 0 < n <= len(train):
        raise DataError(f"{root}: --train-pairs {n}: the train split has {len(train)} anomalous pairs")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    dropped = {train[i] for i in order[n:]}
    return [s for i, s in enumerate(samples) if i not in dropped]


def assign_fold(samples: list[Sample], spec: str, seed: int, root: Path) -> list[Sample]:
    """Cross-fitting's splits (``--cv-fold``). The train and val samples (anomalous and normal) are grouped by
    (category, defect type, normal), each group put in a seeded order and dealt to the K folds in turn, the
    count running on across groups (every fold gets its share of each type, and the folds' sizes differ by at
    most one); fold k becomes val and the rest train. 'all': every train and val sample trains. Test samples are
    never touched: the test split stays out of cross-fitting."""
    from anomalign.data.folders import parse_cv_fold
    from anomalign.data.layouts import _order_key
    fold = parse_cv_fold(spec)
    pool = [i for i, s in enumerate(samples) if s.split in ("train", "val")]
    out = list(samples)
    if fold is None:
        for i in pool:
            out[i] = samples[i].replace(split="train")
        return out
    k, n_folds = fold
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in pool:
        s = samples[i]
        groups[(s.category, s.defect, s.normal)].append(i)
    dealt = 0
    for key in sorted(groups):
        for i in sorted(groups[key], key=lambda j: _order_key(samples[j], root, seed + 7919)):
            out[i] = samples[i].replace(split="val" if dealt % n_folds == k else "train")
            dealt += 1
    return out


def format_skipped(root: Path, skipped: list[Problem], limit: int = 20) -> str:
    """The lines ``--policy skip`` prints: how many files were left out, and which, with the reason."""
    lines = [f"{root}: --policy skip left out {len(skipped)} file(s) with errors (their pairs are not used):"]
    lines += [f"  - {p}" for p in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (all of them: skipped.json in the run folder, or "
                     f"`anomalign data check {shlex.quote(str(root))} --json FILE`)")
    return "\n".join(lines)


def skipped_records(skipped: list[Problem]) -> list[dict]:
    """JSON-ready rows (path, kind, message) for a run folder's ``skipped.json``."""
    return [{"path": str(p.path), "kind": p.kind, "message": p.message} for p in skipped]


def check_samples(samples: list[Sample], options: DataOptions, where: str, min_side: int = 0
                  ) -> tuple[list[Sample], list[Problem]]:
    """Decode-check images (and masks) that are read outside ``load_dataset`` (``--normal-images``, the hosts and
    backgrounds of ``generate``), under ``options.policy``: fail raises DataError listing every problem, skip
    returns the usable samples and the problems (printed). ``min_side``: images whose shorter side is below it
    are a problem too (too small for what the command does with them)."""
    report = check_dataset(DatasetIndex(Path(where), "files", samples), options.mask_threshold)
    problems = [p for st in report.stats for p in st.problems if p.severity == "error"]
    if min_side:
        problems += [Problem(s.image, "too-small", f"image is {st.size[0]}x{st.size[1]} px, smaller than {min_side} "
                             "px on a side: too small to receive a defect")
                     for s, st in zip(samples, report.stats) if st.size is not None and min(st.size) < min_side]
    bad = {p.path for p in problems}
    usable = [s for s in samples if s.image not in bad and s.mask not in bad]
    if problems and options.policy == "fail":
        raise DataError(f"{where}: {len(problems)} problem(s) (use --policy skip to leave these files out)", problems)
    if problems:
        print(format_skipped(Path(where), problems), file=sys.stderr)
    return usable, problems


def load_normal_folder(folder: Path, options: DataOptions | None = None) -> DatasetIndex:
    """Defect-free images kept in a folder of their own (``--normal-images DIR``): every image under it, as
    normal training samples without masks, decode-checked under the same policy as a dataset."""
    from anomalign.data.folders import is_image, walk_files

    opts = options or DataOptions()
    set_max_megapixels(opts.max_megapixels)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: --normal-images is not a folder")
    samples = [Sample(image=f, mask=None, defect="good", normal=True, split="train")
               for f in walk_files(folder) if is_image(f)]
    if not samples:
        raise DataError(f"{folder}: no images found for --normal-images")
    usable, errors = check_samples(samples, opts, f"{folder} (--normal-images)")
    return DatasetIndex(folder, "normal-folder", usable, errors, skipped=errors)
