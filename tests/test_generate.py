"""`anomalign generate`: determinism, resume, sharding, inpainting, filtering, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalign.cli import main
from anomalign.errors import AnomalignError, ConfigError, DataError
from anomalign.synthesis.augment import augment_mask, replace
from anomalign.synthesis.generate import GenerateConfig, run_generate
from dummy_data import save, write_paired


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_data")
    write_paired(root, defects=("scratch", "hole"), n=3, normals=3)
    return root


def cfg(gen_dir, data, out, **kw):
    base = dict(generator=gen_dir, masks=data, out=out, num=6, split="all", steps=3, batch_size=4,
                augment=["flip", "affine"], device="cpu")
    return GenerateConfig(**(base | kw))


def files(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(Image.open(p)) for p in sorted(out.glob("*/*/*.png"))}


def meta(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys() and fa
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k
    ma, mb = meta(a), meta(b)
    assert [r["file_name"] for r in ma] == [r["file_name"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["scores"] == pytest.approx(rb["scores"], rel=1e-4, abs=1e-6)


def test_batch_size_does_not_change_the_images(gen_dir, data, tmp_path):
    s1 = run_generate(cfg(gen_dir, data, tmp_path / "bs1", batch_size=1, batch_invariant=True), progress=False)
    run_generate(cfg(gen_dir, data, tmp_path / "bs4", batch_size=4, batch_invariant=True), progress=False)
    assert_same_run(tmp_path / "bs1", tmp_path / "bs4")
    # batched networks (the default) differ by float rounding at most: <= 1 grey level, on very few values
    run_generate(cfg(gen_dir, data, tmp_path / "bs4b", batch_size=4), progress=False)
    fa, fb = files(tmp_path / "bs1"), files(tmp_path / "bs4b")
    diff = np.concatenate([np.abs(fa[k].astype(int) - fb[k].astype(int)).ravel() for k in fa])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert s1["kept"] == 6 and s1["attempts"] == 6
    rows = meta(tmp_path / "bs1")
    # sources cycle through the masks; each row says where it came from and how it was made
    assert {r["defect"] for r in rows} == {"scratch", "hole"}
    assert all(r["scheduler"] == "unipc" and r["steps"] == 3 and r["guidance"] == 3.0 for r in rows)  # defaults
    assert all(Path(r["source_mask"]).is_file() and "free_lunch" in r["scores"] for r in rows)
    # different seeds give different images
    assert len({files(tmp_path / "bs1")[r["file_name"]].tobytes() for r in rows}) == 6


def test_output_is_a_training_dataset(gen_dir, data, tmp_path):
    from anomalign.data.layouts import read_dataset

    run_generate(cfg(gen_dir, data, tmp_path / "o", prompt="a photo of a {category} with a {defect} defect"),
                 progress=False)
    index = read_dataset(tmp_path / "o")
    assert index.layout == "paired" and not index.errors
    assert len(index.samples) == 6 and all(s.mask is not None and not s.normal for s in index.samples)
    by_name = {s.image.name: s for s in index.samples}
    for r in meta(tmp_path / "o"):
        s = by_name[Path(r["file_name"]).name]
        assert s.defect == r["defect"] and s.prompt == f"a photo of a surface with a {r['defect']} defect"
        assert r["x0_clip"] is None  # the dummy generator stores no sampling bound
    assert (tmp_path / "o" / "config.yaml").is_file()
    run_generate(cfg(gen_dir, data, tmp_path / "b", x0_clip=1.5), progress=False)
    assert {r["x0_clip"] for r in meta(tmp_path / "b")} == {1.5}


def test_rerun_skips_finished_samples_and_extends(gen_dir, data, tmp_path):
    out = tmp_path / "o"
    run_generate(cfg(gen_dir, data, out, num=4), progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.png")}
    again = run_generate(cfg(gen_dir, data, out, num=4, batch_size=2), progress=False)
    assert again["generated_now"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.png")} == before
    more = run_generate(cfg(gen_dir, data, out, num=6), progress=False)
    assert more["generated_now"] == 2 and len(meta(out)) == 6
    run_generate(cfg(gen_dir, data, tmp_path / "ref", num=6), progress=False)
    assert_same_run(out, tmp_path / "ref")


def _cli_args(gen_dir, data, out, *extra):
    return ["generate", "--generator", str(gen_dir), "--masks", str(data), "--out", str(out), "--split", "all",
            "--augment", "flip", "affine", "--device", "cpu", *extra]


ENV = dict(os.environ, OMP_NUM_THREADS="1")  # same thread count in every run: same float summation order


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "anomalign", *args], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]


# ~30 s of CI (two CLI runs after a SIGKILL): slow; the default run keeps the in-process resume test above and
# `run`'s kill-and-resume test (tests/test_run.py)
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_files(gen_dir, data, tmp_path):
    args = ["--num", "16", "--steps", "20", "--batch-size", "1"]
    env = ENV
    proc = subprocess.Popen([sys.executable, "-m", "anomalign", *_cli_args(gen_dir, data, tmp_path / "killed"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = tmp_path / "killed" / ".records"
    deadline = time.time() + 120
    while time.time() < deadline and (not records.is_dir() or len(list(records.glob("*.json"))) < 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(records.glob("*.json")))
    assert 3 <= done < 16, "the run should have been killed mid-way"
    cli(*_cli_args(gen_dir, data, tmp_path / "killed"), *args)
    cli(*_cli_args(gen_dir, data, tmp_path / "whole"), *args)
    assert_same_run(tmp_path / "killed", tmp_path / "whole")
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def test_two_processes_equal_one(gen_dir, data, tmp_path):
    args = ["--num-samples", "7", "--steps", "3", "--batch-size", "2", "--batch-invariant"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anomalign",
                          *_cli_args(gen_dir, data, tmp_path / "two"), *args], capture_output=True, text=True, env=ENV)
    assert two.returncode == 0, two.stderr[-3000:]
    cli(*_cli_args(gen_dir, data, tmp_path / "one"), *args)
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_a_slower_process_never_sees_the_main_ones_half_written_folder(gen_dir, data, tmp_path, monkeypatch):
    """CI once failed: under `torch.distributed.run` the second process checked --out after the main one had
    created it but before run.json existed, and refused it as a stranger's folder. The main process pauses
    mid-write here; the other one must have checked already (the barrier between checking and writing)."""
    import threading

    from anomalign.synthesis import store

    mid_write, other_done, errors = threading.Event(), threading.Event(), []
    real_write = store.write_text_atomic

    def slow_write(path, text):
        if Path(path).name == "run.json":
            mid_write.set()
            other_done.wait(5)
        return real_write(path, text)

    monkeypatch.setattr(store, "write_text_atomic", slow_write)
    c = cfg(gen_dir, data, tmp_path / "out")
    barrier = threading.Barrier(2, timeout=10)

    def other():
        mid_write.wait(1)  # with the barrier the main process cannot write yet: go on after the timeout
        try:
            store.prepare_out(c, "sha", False, barrier=barrier.wait)
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            errors.append(e)
        other_done.set()

    t = threading.Thread(target=other)
    t.start()
    store.prepare_out(c, "sha", True, barrier=barrier.wait)
    t.join()
    assert not errors, errors
    assert (tmp_path / "out" / "run.json").is_file()


@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_inpainting_keeps_pixels_outside_the_dilated_mask(gen_dir, data, tmp_path, margin):
    """margin 0: the old region (the mask grown by --dilate); 0.25: that plus the context band."""
    from anomalign.generator.window import band_px
    out = tmp_path / "inp"
    run_generate(cfg(gen_dir, data, out, background=data, dilate=2, augment=[], margin=margin), progress=False)
    for r in meta(out):
        bg = np.asarray(Image.open(r["background"]).convert("RGB").resize((32, 32), Image.BICUBIC)).astype(int)
        img = np.asarray(Image.open(out / r["file_name"])).astype(int)
        mask = np.asarray(Image.open(out / r["mask_file_name"])) > 127
        m = torch.from_numpy(mask).float()[None, None]
        ys, xs = np.nonzero(mask)
        grow = 2 + band_px(max(np.ptp(ys), np.ptp(xs)) + 1, margin)
        region = torch.nn.functional.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)[0, 0].numpy() > 0
        assert (~region).any() and region.any()
        # outside the region: the background exactly (tolerance: 1 grey level of rounding)
        assert np.abs(img - bg)[~region].max() <= 1
        # inside: something was generated
        assert np.abs(img - bg)[region].mean() > 2


def test_inpainting_with_resampling_runs(gen_dir, data, tmp_path):
    s = run_generate(cfg(gen_dir, data, tmp_path / "rp", num=2, background=data, resample=1, augment=[]),
                     progress=False)
    assert s["kept"] == 2
    with pytest.raises(ConfigError, match="ddim"):
        cfg(gen_dir, data, tmp_path / "x", background=data, resample=1, scheduler="dpm++").validate()


def test_default_sampler_is_unipc_8_and_ddim_50_with_resampling(gen_dir, data, tmp_path):
    c = cfg(gen_dir, data, tmp_path / "a", steps=None)
    c.validate()
    assert (c.scheduler, c.steps) == ("unipc", 8)
    c = cfg(gen_dir, data, tmp_path / "b", steps=None, background=data, resample=1)
    c.validate()  # RePaint needs DDIM: the default follows rather than erroring
    assert (c.scheduler, c.steps) == ("ddim", 50)
    c = cfg(gen_dir, data, tmp_path / "c", steps=None, scheduler="dpm++")
    c.validate()
    assert c.steps == 10


def test_filtering_keeps_the_first_samples_above_the_threshold(gen_dir, data, tmp_path):
    ref = run_generate(cfg(gen_dir, data, tmp_path / "all", num=8, steps=2), progress=False)
    scores = [r["scores"]["free_lunch"] for r in meta(tmp_path / "all")]
    thr = float(np.median(scores))
    expected = [i for i, s in enumerate(scores) if s >= thr][:3]
    assert len(expected) == 3 and ref["kept"] == 8
    s = run_generate(cfg(gen_dir, data, tmp_path / "f", num=3, min_alignment=thr, batch_size=3, steps=2),
                     progress=False)
    rows = meta(tmp_path / "f")
    assert [r["index"] for r in rows] == expected
    assert all(r["scores"]["free_lunch"] >= thr for r in rows)
    rejected = [json.loads(x) for x in (tmp_path / "f" / "rejected.jsonl").read_text().splitlines()]
    assert rejected and all(r["scores"]["free_lunch"] < thr for r in rejected)
    assert s["kept"] == 3 and s["scores"]["free_lunch"]["min"] >= thr
    # only kept samples have files: over-shoot of the last batch is removed
    assert len(list((tmp_path / "f").glob("images/*/*.png"))) == 3


def test_filtering_with_an_oracle_object(gen_dir, data, tmp_path):
    class Oracle:  # predicts the whole image as anomalous: IoU = mask coverage
        def predict_proba(self, images):
            return torch.ones(images.shape[0], 1, *images.shape[-2:])

    s = run_generate(cfg(gen_dir, data, tmp_path / "o", num=3, scores=["none"], min_alignment=0.0),
                     progress=False, oracle=Oracle())
    for r in meta(tmp_path / "o"):
        cover = (np.asarray(Image.open(tmp_path / "o" / r["mask_file_name"])) > 127).mean()
        assert r["scores"]["oracle_iou"] == pytest.approx(cover, abs=1e-6)
    assert s["kept"] == 3


def test_too_strict_threshold_stops_at_the_cap(gen_dir, data, tmp_path):
    with pytest.raises(AnomalignError, match="only 0 of 4 attempts were kept .4 scored below --min-alignment"):
        run_generate(cfg(gen_dir, data, tmp_path / "o", num=2, min_alignment=0.999, max_attempts=2), progress=False)


def test_mask_folder_input_and_defect_names(gen_dir, data, tmp_path):
    masks = tmp_path / "masks"
    for i, d in enumerate(["dent", "dent", "crack"]):
        m = np.zeros((48, 48), bool)
        m[10 + i:30, 5:20 + i] = True
        save(masks / d / f"m{i}.png", m)
    run_generate(cfg(gen_dir, masks, tmp_path / "o", num=3, augment=[], category="tile"), progress=False)
    rows = meta(tmp_path / "o")
    assert sorted(r["defect"] for r in rows) == ["crack", "dent", "dent"]
    assert all(r["prompt"].startswith("a photo of a tile with a") for r in rows)
    assert all(np.asarray(Image.open(tmp_path / "o" / r["mask_file_name"])).shape == (32, 32) for r in rows)


def test_bad_input(gen_dir, data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mask images found"):
        run_generate(cfg(gen_dir, tmp_path / "empty", tmp_path / "o1"), progress=False)
    with pytest.raises(ConfigError, match="multiple of 8"):
        run_generate(cfg(gen_dir, data, tmp_path / "o2", resolution=36), progress=False)
    with pytest.raises(AnomalignError, match="not a generator run folder"):
        run_generate(cfg(tmp_path / "empty", data, tmp_path / "o3"), progress=False)
    with pytest.raises(DataError, match="split .val."):
        run_generate(cfg(gen_dir, data, tmp_path / "o4", split="val", val_fraction=0.0), progress=False)
    # a folder holding the user's own files is never written into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(AnomalignError, match="not written by `anomalign generate`"):
        run_generate(cfg(gen_dir, data, mine), progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # another run's folder: refused, untouched
    run_generate(cfg(gen_dir, data, tmp_path / "run", num=2), progress=False)
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(AnomalignError, match="different guidance, seed"):
        run_generate(cfg(gen_dir, data, tmp_path / "run", num=2, seed=1, guidance=7.0), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before


def test_cli_reports_errors_cleanly(gen_dir, tmp_path, capsys):
    assert main(["generate", "--generator", str(gen_dir), "--masks", str(tmp_path / "nope"), "--num", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--masks does not exist" in capsys.readouterr().err


def test_mask_augmentations_keep_an_anomaly_and_are_seeded():
    m = torch.zeros(1, 32, 32)
    m[:, 4:10, 6:20] = 1
    moved = replace(m, torch.Generator().manual_seed(1))
    assert moved.sum() == m.sum()  # re-placement moves the anomaly whole
    ops = ["flip", "rot90", "affine", "elastic", "replace"]
    a, applied_a = augment_mask(m, ops, torch.Generator().manual_seed(3))
    b, applied_b = augment_mask(m, ops, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and applied_a == applied_b and a.sum() > 0
    c, _ = augment_mask(m, ops, torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    assert set(torch.unique(a).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="unknown mask augmentation"):
        augment_mask(m, ["zoom"], torch.Generator())


def test_output_loads_with_hugging_face_imagefolder(gen_dir, data, tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets not installed (optional)")
    run_generate(cfg(gen_dir, data, tmp_path / "o", num=3), progress=False)
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "o"), split="train")
    assert ds.num_rows == 3 and {"image", "mask", "prompt", "scores"} <= set(ds.column_names)
    assert ds[0]["mask"].size == ds[0]["image"].size


def test_dpm_solver_and_half_precision_end_to_end(gen_dir, data, tmp_path):
    """DPM-Solver++, UniPC and bf16 sampling run through the whole command: pairs written and scored, images that
    differ from DDIM's (fp16 takes the same path; it needs a GPU to be fast)."""
    ddim = run_generate(cfg(gen_dir, data, tmp_path / "ddim", num=2), progress=False)
    dpm = run_generate(cfg(gen_dir, data, tmp_path / "dpm", num=2, scheduler="dpm++"), progress=False)
    bf16 = run_generate(cfg(gen_dir, data, tmp_path / "bf16", num=2, dtype="bf16"), progress=False)
    unipc = run_generate(cfg(gen_dir, data, tmp_path / "unipc", num=2, scheduler="unipc"), progress=False)
    for summary in (ddim, dpm, bf16, unipc):
        assert summary["kept"] == 2 and np.isfinite(summary["scores"]["free_lunch"]["mean"])
    a, b, c = files(tmp_path / "ddim"), files(tmp_path / "dpm"), files(tmp_path / "bf16")
    u = files(tmp_path / "unipc")
    assert a.keys() == b.keys() == c.keys() == u.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a) and any(not np.array_equal(u[k], b[k]) for k in a)
    assert all(np.abs(a[k].astype(int) - c[k].astype(int)).mean() < 40 for k in a)  # bf16: close to fp32
    assert "dtype" not in json.loads((tmp_path / "ddim" / "run.json").read_text())["identity"]  # old runs resume
    with pytest.raises(AnomalignError, match="different dtype"):
        run_generate(cfg(gen_dir, data, tmp_path / "ddim", num=2, dtype="bf16"), progress=False)


def test_a_generator_trained_on_grey_data_writes_grey_images(tmp_path, gen_dir):
    from anomalign.config import build_config
    from anomalign.generator.train import TrainGeneratorConfig, run_train_generator
    from dummy_data import pair

    for split_dir, (i, empty) in [("scratch", (0, False)), ("scratch", (1, False)), ("good", (2, True))]:
        image, mask = pair(i, size=(32, 32), empty=empty)
        save(tmp_path / "grey" / "images" / split_dir / f"{i}.png", image.mean(2).astype(np.uint8))
        save(tmp_path / "grey" / "masks" / split_dir / f"{i}.png", mask)
    train = build_config(TrainGeneratorConfig, dict(
        data=str(tmp_path / "grey"), out=str(tmp_path / "gen"), base=str(gen_dir), max_steps=1, batch_size=2,
        checkpoint_every=1, validation_masks=1, validation_steps=2, device="cpu", val_fraction=0.0,
        test_fraction=0.0))
    gen = run_train_generator(train, progress=False)
    assert json.loads((gen / "generator.json").read_text())["grayscale"] is True
    run_generate(cfg(gen, tmp_path / "grey", tmp_path / "out", num=2, steps=2), progress=False)
    images = sorted((tmp_path / "out" / "images").rglob("*.png"))
    assert len(images) == 2 and all(Image.open(p).mode == "L" for p in images)
    # the colour data of the other tests keeps RGB (their generator has no "grayscale" flag)
    run_generate(cfg(gen_dir, tmp_path / "grey", tmp_path / "out_rgb", num=1, steps=2), progress=False)
    assert Image.open(next((tmp_path / "out_rgb" / "images").rglob("*.png"))).mode == "RGB"
