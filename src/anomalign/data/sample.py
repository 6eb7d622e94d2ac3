"""The one concept every reader produces: an image/mask pair with its defect type, split and flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]
SPLITS = ("train", "val", "test")
# Folder / class names that mean "defect-free" in the layouts we read (MVTec "good", Real-IAD "OK",
# magnetic-tile "MT_Free", VisA label "normal").
NORMAL_NAMES = frozenset({"good", "normal", "ok", "free", "defect_free", "defect-free", "none"})
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
LOSSLESS_EXTS = frozenset({".png", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Sample:
    """One image with its (optional) mask.

    ``mask`` is None only for normal images whose layout has no mask file (all background).
    ``split`` is "train", "val" or "test". ``subset`` names a separately evaluated test set
    (PraNet: "Kvasir", "CVC-300", ...). ``mask_ids`` marks masks that hold class ids (VisA),
    binarized as nonzero. ``prompt`` overrides the prompt built from defect and category.
    """

    image: Path
    mask: Path | None
    defect: str
    normal: bool
    split: str | None = None
    category: str = ""
    subset: str = ""
    mask_ids: bool | None = None
    prompt: str | None = None

    def replace(self, **changes) -> "Sample":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Problem:
    """A problem with one file. ``kind`` is a short stable tag (e.g. "truncated"); the message says what."""

    path: Path
    kind: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.kind}]"


@dataclass
class DatasetIndex:
    """What a reader found under ``root``: samples (with splits assigned) and every problem."""

    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # errors of the files --policy skip left out

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def split(self, name: str, subset: str | None = None) -> list[Sample]:
        """Samples of one split (and, if given, one named test subset)."""
        return [s for s in self.samples
                if s.split == name and (subset is None or s.subset == subset)]

    def subsets(self, split: str = "test") -> list[str]:
        """Names of the separately evaluated sets of ``split`` ("" when there is one unnamed set)."""
        return sorted({s.subset for s in self.samples if s.split == split})

    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.samples if not s.normal})
