"""The README's "Python API" example, run as written (on a tiny dataset, with a plan that fits seconds)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import anomalign
from anomalign.errors import AnomalignError
from dummy_data import write_paired
from tiny_models import dummy_tiny_generator, write_tiny_plan

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_is_short():
    assert len(readme_api_example().strip().splitlines()) <= 20


def test_readme_api_example_runs(tmp_path, monkeypatch):
    import anomalign.pipeline as pipeline
    from anomalign.plan import read_plan
    monkeypatch.chdir(tmp_path)
    write_paired(tmp_path / "my_data", defects=("scratch", "hole"), n=8, normals=6)
    dummy_tiny_generator().save(tmp_path / "base")
    write_tiny_plan(tmp_path / "plan.yaml", tmp_path / "base", arms=["synthetic"])
    # the example's `run` plans from the data; here the plan is a seconds-long one
    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: read_plan(tmp_path / "plan.yaml"))
    scope: dict = {}
    exec(compile(readme_api_example(), "README.md", "exec"), scope)
    assert scope["result"]["chosen"] in ("baseline", "synthetic")
    assert isinstance(scope["seg"], anomalign.Segmenter) and isinstance(scope["gen"], anomalign.MaskGenerator)
    assert scope["mask"].dtype == bool and scope["mask"].shape == (24, 32)  # the test image's own size
    assert scope["prob"].dtype == np.float32 and np.array_equal(scope["mask"], scope["prob"] >= 0.5)
    assert scope["images"].dtype == np.uint8 and scope["images"].shape == (2, 128, 128, 3)


def test_segmenter_predict_is_what_segment_writes(tmp_path):
    """Segmenter.predict and `anomalign segment` give the same mask for the same file."""
    from PIL import Image

    from anomalign.cli import main
    from anomalign.segmenter.model import Segmenter
    seg = Segmenter("unet-tiny")
    seg.size = 32
    seg.save(tmp_path / "seg", {"size": 32})
    write_paired(tmp_path / "d", defects=("scratch",), n=2, normals=0)
    image = tmp_path / "d" / "images" / "scratch" / "000.jpg"
    assert main(["segment", str(image), "--segmenter", str(tmp_path / "seg"), "--out", str(tmp_path / "pred"),
                 "--threshold", "0.5"]) == 0
    written = np.asarray(Image.open(next((tmp_path / "pred" / "masks").rglob("*.png")))) > 127
    loaded = Segmenter.load(tmp_path / "seg")
    assert np.array_equal(loaded.predict(image), written)
    assert np.array_equal(loaded.predict(np.asarray(Image.open(image).convert("RGB"))), written)


def test_api_errors_are_clear():
    from anomalign.segmenter.model import Segmenter
    seg = Segmenter("unet-tiny")
    seg.size = 32
    with pytest.raises(AnomalignError, match="uint8 image"):
        seg.predict(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(AnomalignError, match=r"float pixels must lie in \[0, 1\]"):
        seg.predict(np.full((8, 8, 3), 255.0, np.float32))  # 0-255 floats: not silently clipped to white
    with pytest.raises(AnomalignError, match="channels last"):
        seg.predict(torch.zeros(3, 8, 8))
    gen = dummy_tiny_generator()
    with pytest.raises(AnomalignError, match="multiples of"):
        gen.generate(np.zeros((1, 31, 31), bool), "a photo")
    with pytest.raises(AnomalignError, match="2 prompts for 1 masks"):
        gen.generate(np.zeros((1, 32, 32), bool), ["a", "b"])
