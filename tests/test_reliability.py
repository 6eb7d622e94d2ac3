"""Bad input, foreign folders, damaged checkpoints and kill -9: no traceback, no lost file, no silent drop.

One test (or more) per case of docs/reliability.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anomalign.cli import main
from anomalign.data import DataOptions, load_dataset
from anomalign.data.imageio import DEFAULT_MAX_MEGAPIXELS, open_image, set_max_megapixels
from anomalign.errors import AnomalignError, DataError
from anomalign.segmenter.model import Segmenter
from anomalign.training import LoopOptions, TrainingDiverged, TrainTask, train_loop
from dummy_data import noisy_png_bytes, pair, save, write_paired
from tiny_models import dummy_tiny_generator

SRC = str(Path(__file__).resolve().parents[1] / "src")


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` px, followed by a few bytes of (garbage) image data:
    decoding it would fail as truncated, so a 'too large' verdict proves the header alone decided."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def default_image_limit():
    yield
    set_max_megapixels(DEFAULT_MAX_MEGAPIXELS)  # tests below change the process-wide limit


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


# 1. decompression bomb ------------------------------------------------------------------------------------


def test_huge_image_is_refused_from_its_header(tmp_path, capsys):
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=3, normals=0)
    bomb = png_header_only(root / "images" / "scratch" / "bomb.png", 100_000, 100_000)
    save(root / "masks" / "scratch" / "bomb.png", pair(0)[1])
    for policy in ("fail", "skip"):
        code, out = run_cli(capsys, "data", "check", root, "--policy", policy)
        assert "Traceback" not in out and "bomb.png" in out and "image too large" in out
        assert "10,000 MP" in out and "--max-megapixels" in out
        assert code == (1 if policy == "fail" else 0)
    with pytest.raises(DataError, match="bomb.png.*image too large"):
        load_dataset(root)
    index = load_dataset(root, DataOptions(policy="skip"))
    assert [p.path for p in index.skipped] == [bomb] and len(index.samples) == 3
    # a real image over a lowered limit: refused with its size, the limit and the option that raises it
    set_max_megapixels(0.0005)
    with pytest.raises(DataError, match=r"32 x 24 px .* limit of 0.0005 MP; nothing was decoded .*--max-megapixels"):
        open_image(root / "images" / "scratch" / "000.jpg")


def test_limit_above_pils_own_still_decodes(tmp_path):
    """Raising --max-megapixels past PIL's bomb limit must really admit the image (PIL's check moves up)."""
    from PIL import Image
    path = tmp_path / "a.png"
    save(path, pair(0)[0])
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 100  # as if PIL's limit were below this 768-px image
        set_max_megapixels(1.0)
        assert open_image(path).size == (32, 24)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# 2. --policy skip says what it skipped ----------------------------------------------------------------------


def truncated_dataset(root: Path) -> Path:
    write_paired(root, defects=("scratch",), n=4, normals=0)
    cut = root / "images" / "scratch" / "cut.png"
    data = noisy_png_bytes()
    cut.write_bytes(data[: len(data) // 2])
    save(root / "masks" / "scratch" / "cut.png", pair(9)[1])
    return cut


def test_data_check_skip_differs_from_fail(tmp_path, capsys):
    root = tmp_path / "data"
    cut = truncated_dataset(root)
    code_fail, out_fail = run_cli(capsys, "data", "check", root)
    code_skip, out_skip = run_cli(capsys, "data", "check", root, "--policy", "skip")
    assert code_fail == 1 and code_skip == 0
    assert "left out 1 file(s)" in out_skip and str(cut) in out_skip.split("left out")[1]
    assert "4 usable pair(s) remain" in out_skip and "left out" not in out_fail


def test_training_with_skip_lists_the_dropped_pair(tmp_path, capsys):
    root = tmp_path / "data"
    cut = truncated_dataset(root)
    out = tmp_path / "seg"
    code, text = run_cli(capsys, "train-segmenter", "--train", root, "--out", out, "--policy", "skip",
                         "--size", 32, "--max-steps", 1, "--batch-size", 2, "--validate-every", 0, "--device", "cpu",
                         "--val-fraction", 0, "--test-fraction", 0)
    assert code == 0, text
    assert "--policy skip left out 1 file(s)" in text and str(cut) in text
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(r["path"], r["kind"]) for r in skipped] == [(str(cut), "truncated")]
    code, text = run_cli(capsys, "train-segmenter", "--train", root, "--out", tmp_path / "seg2", "--size", 32,
                         "--max-steps", 1, "--device", "cpu")
    assert code == 2 and "cut.png" in text and not (tmp_path / "seg2").exists()  # fail: stops, writes nothing


# 3. empty dataset, 4. a folder named like an image ------------------------------------------------------------


def test_empty_dataset_is_an_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code, out = run_cli(capsys, "data", "check", tmp_path)
    assert code == 1 and "empty-dataset" in out and "no image/mask pairs" in out
    code, _ = run_cli(capsys, "data", "check", tmp_path, "--policy", "skip")
    assert code == 1


def test_folder_named_like_an_image_is_reported(tmp_path, capsys):
    write_paired(tmp_path, defects=("scratch",), n=2, normals=0)
    (tmp_path / "images" / "scratch" / "bad.png").mkdir()
    save(tmp_path / "images" / "scratch" / "bad.png" / "inner.png", pair(3)[0])
    save(tmp_path / "masks" / "scratch" / "bad.png", pair(3)[1])
    code, out = run_cli(capsys, "data", "check", tmp_path)
    assert code == 1 and "not-a-file" in out and "bad.png: is a folder, not an image file" in out
    assert "inner.png" not in out.split("problems")[0]  # its contents are not read as images


def test_symlinked_normals_folder_is_read(tmp_path):
    elsewhere = tmp_path / "normals"
    for i in range(2):
        save(elsewhere / f"n{i}.jpg", pair(50 + i, empty=True)[0])
    root = tmp_path / "data"
    write_paired(root, defects=("scratch",), n=2, normals=0)
    (root / "images" / "good").symlink_to(elsewhere, target_is_directory=True)
    index = load_dataset(root, DataOptions(val_fraction=0.0, test_fraction=0.0))
    assert sum(s.normal for s in index.samples) == 2


# 5. damaged checkpoints, pickled pretrained weights ------------------------------------------------------------


def tiny_task(w: torch.nn.Parameter, nan_at: int | None = None) -> TrainTask:
    def get_batch(k, rank, world):
        return torch.full((3,), float("nan")) if k == nan_at else torch.ones(3)
    return TrainTask(params=[w], get_batch=get_batch, step_fn=lambda b, g: {"loss": ((w * b) ** 2).sum()},
                     state_fn=lambda: {"w": w.data}, load_state_fn=lambda sd: w.data.copy_(sd["w"]),
                     save_fn=lambda d: None)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer.json"])
def test_damaged_checkpoint_file_is_named(tmp_path, name):
    opts = LoopOptions(max_steps=2, checkpoint_every=1, device="cpu", log_every=1)
    train_loop(tiny_task(torch.nn.Parameter(torch.ones(3))), opts, tmp_path, progress=False)
    (tmp_path / "checkpoints" / "step-0000002" / name).write_bytes(b"\x80\x04not a checkpoint")
    opts = LoopOptions(max_steps=4, checkpoint_every=1, device="cpu", log_every=1, resume="latest")
    with pytest.raises(AnomalignError, match=f"step-0000002/{name}: damaged checkpoint file"):
        train_loop(tiny_task(torch.nn.Parameter(torch.ones(3))), opts, tmp_path, progress=False)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_pretrained_folder_is_refused_without_running_it(tmp_path):
    from transformers import SegformerConfig
    folder = tmp_path / "pretrained"
    folder.mkdir()
    SegformerConfig(num_labels=2, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                    num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8).save_pretrained(folder)
    marker = tmp_path / "payload_ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    with pytest.raises(AnomalignError, match="pretrained: cannot load a Segformer"):
        Segmenter("tiny", pretrained=str(folder))
    assert not marker.exists()


# 6. foreign folders are never written into ------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["train-generator", "train-segmenter"])
def test_training_refuses_a_foreign_folder(tmp_path, capsys, command):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "config.yaml").write_text("my: own config\n")
    (out / "logs" / "train.csv").write_text("step,loss\n1,0.5\n")
    before = snapshot(out)
    data_flag = "--data" if command == "train-generator" else "--train"
    code, text = run_cli(capsys, command, data_flag, data, "--out", out, "--max-steps", 1, "--device", "cpu")
    assert code == 2 and "not written by `anomalign " + command in text and "nothing was changed" in text
    assert snapshot(out) == before


def test_unfinished_run_needs_resume_and_marks_its_folder(tmp_path, capsys):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    out = tmp_path / "seg"
    args = ["train-segmenter", "--train", data, "--out", out, "--size", 32, "--batch-size", 2, "--validate-every", 0,
            "--device", "cpu", "--checkpoint-every", 1, "--val-fraction", 0, "--test-fraction", 0]
    assert run_cli(capsys, *args, "--max-steps", 1)[0] == 0
    assert json.loads((out / "run.json").read_text())["command"] == "train-segmenter"
    (out / "segmenter.safetensors").unlink()  # as if killed after its checkpoint, before the end
    code, text = run_cli(capsys, *args, "--max-steps", 2)
    assert code == 2 and "unfinished run" in text and "--resume latest" in text
    assert run_cli(capsys, *args, "--max-steps", 2, "--resume", "latest")[0] == 0
    code, text = run_cli(capsys, "train-generator", "--data", data, "--out", out, "--device", "cpu")
    assert code == 2 and "was written by `anomalign train-segmenter`" in text


# 7. messages instead of tracebacks ---------------------------------------------------------------------------


def test_generate_into_a_folder_with_a_foreign_run_json(tmp_path, capsys):
    gen = tmp_path / "gen"
    dummy_tiny_generator().save(gen)
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"something": "else"}')
    code, text = run_cli(capsys, "generate", "--generator", gen, "--masks", data, "--out", out, "--num", 1,
                         "--steps", 2, "--device", "cpu")
    assert code == 2 and "run.json: not the record of an `anomalign generate` run" in text
    assert "Traceback" not in text and (out / "run.json").read_text() == '{"something": "else"}'


def test_segment_into_a_file_and_misspelt_augmentation(tmp_path, capsys):
    seg = Segmenter("tiny")
    seg.save(tmp_path / "seg", {"size": 32})
    img = save(tmp_path / "a.png", pair(0)[0])
    target = tmp_path / "afile.txt"
    target.write_text("mine")
    code, text = run_cli(capsys, "segment", img, "--segmenter", tmp_path / "seg", "--out", target)
    assert code == 2 and "--out is a file" in text and target.read_text() == "mine"
    code, text = run_cli(capsys, "train-segmenter", "--train", tmp_path, "--out", tmp_path / "s", "--augment", "hfilp")
    assert code == 2 and "unknown augmentation(s) ['hfilp']" in text and "Traceback" not in text


# 8. the same weights give the same bytes -------------------------------------------------------------------


def test_saved_generator_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{SRC!r}, {str(Path(__file__).parent)!r}]
        from tiny_models import dummy_tiny_generator
        dummy_tiny_generator().save(sys.argv[1])
    """)
    digests = set()
    for seed in ("1", "2", "3"):
        folder = tmp_path / f"g{seed}"
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
        digests.add(tuple(hashlib.sha256((folder / n).read_bytes()).hexdigest()
                          for n in ("generator.safetensors", "generator.json")))
    assert len(digests) == 1


# 10. the NaN stop promises only what it checked ------------------------------------------------------------


def test_nan_stop_flags_a_checkpoint_whose_weights_exploded(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    opts = LoopOptions(max_steps=6, checkpoint_every=1, device="cpu", log_every=1, learning_rate=1e6,
                       max_grad_norm=0)
    with pytest.raises(TrainingDiverged, match=r"in step 4; .*Latest checkpoint, from before that step: .*step-0000003 \(its weights are "
                                               r"finite, largest \|weight\| [0-9.]+e\+\d+; 1 when this run started\)"
                                               r".*grew more than 10x"):
        train_loop(tiny_task(w, nan_at=3), opts, tmp_path, progress=False)
    opts = LoopOptions(max_steps=6, checkpoint_every=1, device="cpu", log_every=1, learning_rate=1e-3)
    with pytest.raises(TrainingDiverged) as e:
        train_loop(tiny_task(torch.nn.Parameter(torch.ones(3)), nan_at=3), opts, tmp_path / "b", progress=False)
    assert "grew" not in str(e.value) and "step-0000003" in str(e.value)


# 11. kill -9 during train-segmenter, with and without feedback, and inside the checkpoint write -------------


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    import anomalign.training as training
    mode, at = sys.argv[1], int(sys.argv[2])
    real_save, calls = training.save_file, []

    def save_file(tensors, path, *a, **k):  # kill -9 inside the write of checkpoint `at`
        real_save(tensors, path, *a, **k)
        if mode == "during" and f"step-{{at:07d}}.tmp" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    training.save_file = save_file
    real_ckpt = training._save_checkpoint

    def save_checkpoint(out_dir, step, *a, **k):  # kill -9 right after checkpoint `at`, mid-run
        res = real_ckpt(out_dir, step, *a, **k)
        if mode == "after" and step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return res
    training._save_checkpoint = save_checkpoint
    from anomalign.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("feedback,mode", [(False, "after"), (True, "during")])
def test_killed_segmenter_resumes_to_the_same_weights(tmp_path, feedback, mode):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=5, normals=1)
    args = ["train-segmenter", "--train", str(data), "--size", "32", "--max-steps", "6", "--batch-size", "2",
            "--validate-every", "3", "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu"]
    if feedback:
        dummy_tiny_generator().save(tmp_path / "gen")
        args += ["--feedback-generator", str(tmp_path / "gen")]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER.format(src=SRC), mode, "4", *args, "--out", str(killed)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert ckpts == (["step-0000002", "step-0000004"] if mode == "after" else ["step-0000002", "step-0000004.tmp"])
    assert main(args + ["--out", str(killed)]) == 2  # an unfinished run is not restarted by accident
    assert main(args + ["--out", str(killed), "--resume", "latest"]) == 0
    a, b = load_file(str(tmp_path / "whole" / "segmenter.safetensors")), load_file(str(killed / "segmenter.safetensors"))
    # Exact without feedback. With it, the frozen generator's latent cache is filled in another batch order
    # after a resume, which moves its floats in the last digit (not a different draw); Adam turns that into
    # differences of up to ~1e-4 on weights whose gradient is ~0 (lr 1e-3): well under one step.
    tol = dict(rtol=1e-4, atol=1e-6) if feedback else dict(rtol=0, atol=0)
    wtol = dict(rtol=0, atol=3e-4) if feedback else tol
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], **wtol) for k in a)
    logs = [(f / "logs" / "train.csv").read_text() for f in (tmp_path / "whole", killed)]
    assert logs[0].splitlines()[0] == logs[1].splitlines()[0]
    rows = [np.array([[float(v) for v in r.split(",")[:-2]] for r in log.splitlines()[1:]]) for log in logs]
    assert rows[0].shape == (6, 4) and np.allclose(rows[0], rows[1], equal_nan=True, **tol)  # without lr, it/s
    assert not list(killed.rglob("*.tmp"))


# ============================================================================================================
# Second sweep (issue 39): the native-resolution features. One test per item; each fails on the code before it.
# ============================================================================================================


def unet_segmenter(folder: Path, **spec) -> Path:
    """A random unet-tiny segmenter file with a chosen spec (crop_size, scale, ...), as training writes one."""
    torch.manual_seed(0)
    Segmenter("unet-tiny").save(folder, {"size": 32, "crop_size": None, "scale": 1.0} | spec)
    return folder


# 1. the automatic crop rule compares the scaled image with twice the crop ----------------------------------


@pytest.mark.parametrize("scale,crop", [(3.0, 32), (0.2, 0)])
def test_automatic_crop_rule_uses_the_scaled_side(tmp_path, capsys, scale, crop):
    import yaml
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)  # 24 x 32 images
    if scale < 1:  # large images that --scale shrinks below twice the crop: whole images, not crops
        for f in sorted((data / "images").rglob("*.jpg")):
            save(f, np.asarray(Image.open(f).resize((320, 240))))
            save(data / "masks" / f.relative_to(data / "images").with_suffix(".png"),
                 np.asarray(Image.open(data / "masks" / f.relative_to(data / "images").with_suffix(".png"))
                            .resize((320, 240), Image.NEAREST)))
    code, text = run_cli(capsys, "train-segmenter", "--train", data, "--out", tmp_path / "s", "--size", 32,
                         "--scale", scale, "--max-steps", 1, "--batch-size", 2, "--validate-every", 0,
                         "--device", "cpu", "--val-fraction", 0, "--test-fraction", 0)
    assert code == 0, text
    assert yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())["crop_size"] == crop


# 2. --scale cannot bypass the memory limit ---------------------------------------------------------------


def test_scale_is_held_to_the_megapixel_limit(tmp_path, capsys):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    code, text = run_cli(capsys, "train-segmenter", "--train", data, "--out", tmp_path / "s", "--crop-size", 64,
                         "--scale", 100, "--max-megapixels", 1, "--max-steps", 1, "--device", "cpu")
    assert code == 2 and "Traceback" not in text and "at --scale 100 is 3200 x 2400 px" in text
    assert "over the limit of 1 MP" in text and not (tmp_path / "s" / "checkpoints").exists()
    # prediction: a segmenter whose scale makes the image too large is refused from the header, before decoding
    seg = unet_segmenter(tmp_path / "seg", crop_size=16, scale=50.0)
    img = save(tmp_path / "a.png", pair(0)[0])
    code, text = run_cli(capsys, "segment", img, "--segmenter", seg, "--out", tmp_path / "p", "--max-megapixels", 1)
    assert code == 2 and "the segmenter's scale 50" in text and "Traceback" not in text


# 3. user files are never replaced --------------------------------------------------------------------------


def test_export_evaluate_and_report_never_replace_user_files(tmp_path, capsys):
    seg = unet_segmenter(tmp_path / "seg")
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    code, text = run_cli(capsys, "export", "--segmenter", seg, "--out", precious)
    assert code == 2 and "not written by `anomalign export`" in text and precious.read_text() == "mine"
    assert run_cli(capsys, "export", "--segmenter", seg, "--out", tmp_path / "m.onnx")[0] == 0
    assert run_cli(capsys, "export", "--segmenter", seg, "--out", tmp_path / "m.onnx")[0] == 0  # ours: replaced
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=4, normals=0, splits=("train", "test"))
    assert run_cli(capsys, "evaluate", "--segmenter", seg, "--test", data)[0] == 0  # seg/eval: something to report
    for command, name, args in (("evaluate", "eval.json", ["--segmenter", seg, "--test", data]),
                                ("report", "index.html", [tmp_path / "seg"])):
        mine = tmp_path / f"mine_{command}"
        mine.mkdir()
        (mine / name).write_text("the user's own")
        code, text = run_cli(capsys, command, *args, "--out", mine)
        assert code == 2 and f"not written by `anomalign {command}`" in text, text
        assert snapshot(mine) == {name: b"the user's own"}
        ours = tmp_path / f"ours_{command}"
        assert run_cli(capsys, command, *args, "--out", ours)[0] == 0
        assert run_cli(capsys, command, *args, "--out", ours)[0] == 0  # its own folder: rewritten


# 4./6. generate checks its inputs before writing anything; --policy skip covers hosts and backgrounds -------


def test_generate_input_errors_write_nothing_and_skip_covers_hosts(tmp_path, capsys, gen_dir):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    normals = tmp_path / "normals"
    for i in range(3):
        save(normals / f"n{i}.png", pair(60 + i, (40, 40), empty=True)[0])
    (normals / "bad.png").write_bytes(noisy_png_bytes()[:200])  # truncated
    base = ["generate", "--generator", gen_dir, "--masks", data, "--num", 2, "--steps", 2, "--device", "cpu"]
    out = tmp_path / "out"
    for extra, why in ((["--normals", normals], "bad.png"), (["--steps", 0], "steps must be >= 1"),
                       (["--normals", normals, "--policy", "skip", "--foreground", tmp_path / "nofg"], "n0.png")):
        code, text = run_cli(capsys, *base, "--out", out, *extra)
        assert code == 2 and why in text and "Traceback" not in text, text
        assert not out.exists()  # no stub that would refuse the corrected rerun
    code, text = run_cli(capsys, *base, "--out", out, "--normals", normals, "--policy", "skip")
    assert code == 0, text
    assert [r["path"] for r in json.loads((out / "skipped.json").read_text())] == [str(normals / "bad.png")]
    bg = tmp_path / "bg"
    bg.mkdir()
    for f in normals.iterdir():
        (bg / f.name).write_bytes(f.read_bytes())
    code, text = run_cli(capsys, *base, "--out", tmp_path / "out_bg", "--background", bg, "--policy", "skip")
    assert code == 0 and "bad.png" in text, text
    # a folder left by a run that failed before its first attempt is taken over by the corrected run
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "run.json").write_text(json.dumps({"identity": {"steps": 99}}))
    (stub / "config.yaml").write_text("steps: 99\n")
    assert run_cli(capsys, *base, "--out", stub)[0] == 0


# 5./7. textures are all foreground; a defect that fits nowhere is skipped and counted; tiny hosts refused ------


def test_builtin_textures_are_all_foreground():
    from anomalign.data.procedural import MATERIALS, render_sample
    from anomalign.synthesis.placement import estimate_foreground
    for material in MATERIALS:  # the built-in normals: lighting gradients once passed for 5-17 % "objects"
        for seed in range(4):
            image, _ = render_sample(np.random.default_rng(seed), 64, material, None)
            assert estimate_foreground(image).all(), (material, seed)


def test_unplaceable_defects_are_skipped_and_counted(tmp_path, capsys, gen_dir):
    data = tmp_path / "data"
    image, _ = pair(1, (64, 64))
    for name, box in (("small", (2, 2, 5, 5)), ("large", (4, 4, 60, 60))):
        mask = np.zeros((64, 64), bool)
        mask[box[0]:box[2], box[1]:box[3]] = True
        save(data / "images" / "scratch" / f"{name}.png", image)
        save(data / "masks" / "scratch" / f"{name}.png", mask)
    hosts, fg = tmp_path / "hosts", tmp_path / "fg"
    for i in range(2):
        save(hosts / f"h{i}.png", pair(70 + i, (64, 64), empty=True)[0])
        m = np.zeros((64, 64), bool)
        m[20:30, 20:30] = True  # only a 10 x 10 patch may receive a defect
        save(fg / f"h{i}.png", m)
    code, text = run_cli(capsys, "generate", "--generator", gen_dir, "--masks", data, "--split", "all", "--num", 3,
                         "--steps", 2, "--device", "cpu", "--normals", hosts, "--foreground", fg, "--out",
                         tmp_path / "out", "--batch-size", 2)
    assert code == 0 and "fits on no host image" in text, text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rejected = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert summary["kept"] == 3 and summary["unplaceable"] == len(rejected) >= 2
    assert {r["reason"] for r in rejected} == {"unplaceable"} and summary["attempts"] == 3 + len(rejected)
    for r in map(json.loads, (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()):
        assert (np.asarray(Image.open(tmp_path / "out" / r["mask_file_name"])) > 127).any()  # never an empty mask
    # a 1 x 1 host cannot receive a defect: refused by name (skip: left out)
    save(hosts / "dot.png", np.full((1, 1, 3), 90, np.uint8))
    save(fg / "dot.png", np.ones((1, 1), bool))
    code, text = run_cli(capsys, "generate", "--generator", gen_dir, "--masks", data, "--split", "all", "--num", 1,
                         "--steps", 2, "--device", "cpu", "--normals", hosts, "--out", tmp_path / "out2")
    assert code == 2 and "dot.png: image is 1x1 px, smaller than 16 px" in text


# 7. silent wrong output ------------------------------------------------------------------------------------


def test_values_that_gave_silent_wrong_output_are_refused(tmp_path, capsys, gen_dir):
    from anomalign.data.crops import pad_to
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    code, text = run_cli(capsys, "generate", "--generator", gen_dir, "--masks", data, "--num", 1, "--out",
                         tmp_path / "g", "--guidance", "nan", "--device", "cpu")
    assert code == 2 and "option 'guidance': expected a finite number, got 'nan'" in text and not (tmp_path / "g").exists()
    crop_seg = unet_segmenter(tmp_path / "crop", crop_size=16)
    img = save(tmp_path / "a.png", pair(0)[0])
    code, text = run_cli(capsys, "segment", img, "--segmenter", crop_seg, "--out", tmp_path / "p", "--size", 64)
    assert code == 2 and "--size 64 does not apply" in text and not (tmp_path / "p").exists()
    # one defect pixel of a tiny training image is padded by one reflection, then zeros: not a whole crop of label
    assert pad_to(np.ones((1, 1), bool), 16).sum() == 4 and pad_to(np.ones((16, 16), bool), 64).sum() == 32 * 32


@pytest.mark.parametrize("key,value", [("scale", 0.0), ("scale", 1000.0), ("crop_size", -4), ("size", 10 ** 6),
                                       ("widths", [100_000, 8])])
def test_tampered_segmenter_files_are_refused_by_name(tmp_path, key, value):
    from anomalign.segmenter.model import SPEC_KEY, WEIGHTS_NAME
    from anomalign.weights import read_weights, write_weights
    folder = unet_segmenter(tmp_path / "seg", crop_size=16)
    spec, state, file = read_weights(folder, WEIGHTS_NAME, SPEC_KEY, "")
    if key == "widths":
        spec["config"]["widths"] = value
    else:
        spec[key] = value
    write_weights(file, state, SPEC_KEY, spec)
    with pytest.raises(AnomalignError, match=rf"segmenter.safetensors: invalid segmenter file: {key} is"):
        Segmenter.load(folder)


# 8. tracebacks: bad sizes, a folder as export target, read-only and full disks -----------------------------


def test_bad_sizes_and_a_folder_as_export_target_are_one_line_errors(tmp_path, capsys, gen_dir):
    seg = unet_segmenter(tmp_path / "seg")
    img = save(tmp_path / "a.png", pair(0)[0])
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=4, normals=0, splits=("train", "test"))
    for argv in (["segment", img, "--segmenter", seg, "--out", tmp_path / "p"],
                 ["evaluate", "--segmenter", seg, "--test", data], ["export", "--segmenter", seg]):
        code, text = run_cli(capsys, *argv, "--size", -4)
        assert code == 2 and "size must be between 8 and" in text and "Traceback" not in text
    folder = tmp_path / "exports"
    folder.mkdir()
    code, text = run_cli(capsys, "export", "--segmenter", seg, "--out", folder)
    assert code == 2 and "--out is a folder" in text and not list(folder.iterdir())
    assert not list(Path.cwd().glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_full_and_read_only_disks_give_one_line_and_exit_1(tmp_path, capsys, monkeypatch, gen_dir):
    import errno
    from PIL import Image as PILImage
    seg = unet_segmenter(tmp_path / "seg")
    images = tmp_path / "in"
    for i in range(3):
        save(images / f"x{i}.png", pair(i)[0])
    real_save = PILImage.Image.save
    calls = []

    def full_disk(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) > 3:  # the first image's files fit, then the disk is full
            real_save(self, fp, *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(PILImage.Image, "save", full_disk)
    code, text = run_cli(capsys, "segment", images, "--segmenter", seg, "--out", tmp_path / "p")
    assert code == 1 and "No space left on device" in text and "Traceback" not in text
    assert not list((tmp_path / "p").rglob(".*.tmp"))  # the half-written temp file is removed
    monkeypatch.setattr(PILImage.Image, "save", real_save)
    assert run_cli(capsys, "segment", images, "--segmenter", seg, "--out", tmp_path / "p")[0] == 0  # continues
    real_mkdir = Path.mkdir
    ro = tmp_path / "ro"

    def read_only(self, *a, **k):
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", read_only)
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    for argv in (["segment", images, "--segmenter", seg, "--out", ro / "p"],
                 ["export", "--segmenter", seg, "--out", ro / "m.onnx"],
                 ["train-segmenter", "--train", data, "--out", ro / "s", "--max-steps", 1, "--device", "cpu"],
                 ["generate", "--generator", gen_dir, "--masks", data, "--num", 1, "--steps", 2, "--out", ro / "g",
                  "--device", "cpu"]):
        code, text = run_cli(capsys, *argv)
        assert code == 1 and "Read-only file system" in text and "Traceback" not in text, (argv[0], text)


# 9. segment: an index written as it goes, resume, --policy skip, progress over windows ----------------------


SEGMENT_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    import anomalign.files as files
    real, n = files.save_png, [0]

    def save_png(array, path):  # kill -9 after the 10th mask
        out = real(array, path)
        if "/masks/" in str(path):
            n[0] += 1
            if n[0] == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    files.save_png = save_png
    import anomalign.segmenter.infer as infer
    infer.save_png = save_png
    from anomalign.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_segment_killed_halfway_continues_to_identical_masks(tmp_path, capsys):
    seg = unet_segmenter(tmp_path / "seg")
    images = tmp_path / "in"
    for i in range(20):
        save(images / f"x{i:02d}.png", pair(i)[0])
    args = ["segment", str(images), "--segmenter", str(seg)]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", SEGMENT_KILLER.format(src=SRC), *args, "--out", str(killed)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert 9 <= len((killed / "predictions.jsonl").read_text().splitlines()) <= 10  # the index was written as it went
    assert main(args + ["--out", str(killed)]) == 0
    assert "continuing: 9 of 20 images are already segmented" in capsys.readouterr().out
    assert snapshot(killed / "masks") == snapshot(tmp_path / "whole" / "masks")
    assert (killed / "predictions.jsonl").read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()
    code, text = run_cli(capsys, *args, "--out", killed, "--threshold", 0.3)
    assert code == 2 and "holds the masks of another segment run (different threshold)" in text
    # --policy skip leaves an undecodable image out and says so; fail names it and keeps the finished images
    (images / "x05.png").write_bytes(noisy_png_bytes()[:300])
    code, text = run_cli(capsys, *args, "--out", tmp_path / "skip", "--policy", "skip")
    assert code == 0 and "x05.png" in text
    assert len((tmp_path / "skip" / "predictions.jsonl").read_text().splitlines()) == 19
    assert json.loads((tmp_path / "skip" / "skipped.json").read_text())[0]["path"] == str(images / "x05.png")
    code, text = run_cli(capsys, *args, "--out", tmp_path / "fail")
    assert code == 2 and "x05.png" in text


def test_large_images_report_progress_over_their_windows():
    from anomalign.segmenter.sliding import predict_native
    seen = []
    predict_native(lambda x: torch.full((x.shape[0], 1, *x.shape[-2:]), 0.5), torch.zeros(3, 200, 300), 32,
                   batch_size=16, on_windows=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == 12 * 18 and len(seen) == 14


# 10. filter accounting ------------------------------------------------------------------------------------


def test_filter_threshold_range_and_acceptance_over_the_attempts_used(tmp_path, capsys, gen_dir):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=2, normals=0)
    seg = unet_segmenter(tmp_path / "seg")
    base = ["generate", "--generator", gen_dir, "--masks", data, "--steps", 2, "--device", "cpu"]
    code, text = run_cli(capsys, *base, "--num", 1, "--out", tmp_path / "o", "--oracle", seg, "--min-alignment", 1.5)
    assert code == 2 and "outside the oracle IoU's range [0, 1]" in text and not (tmp_path / "o").exists()
    assert run_cli(capsys, *base, "--num", 2, "--batch-size", 8, "--min-alignment", -100, "--out", tmp_path / "f")[0] == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["attempts"] == 2 and summary["acceptance"] == 1.0  # not "25 % kept" of a round of 8
    assert (tmp_path / "f" / "rejected.jsonl").read_text() == ""


# 11. a resumed log row averages the same steps as an uninterrupted run's ------------------------------------


def test_resumed_log_rows_equal_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=5, normals=1)
    args = ["train-segmenter", "--train", str(data), "--size", "32", "--max-steps", "6", "--batch-size", "2",
            "--validate-every", "0", "--checkpoint-every", "2", "--log-every", "3", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER.format(src=SRC), "after", "4", *args, "--out", str(killed)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert main(args + ["--out", str(killed), "--resume", "latest"]) == 0
    logs = [(f / "logs" / "train.csv").read_text().splitlines() for f in (tmp_path / "whole", killed)]
    rows = [[r.split(",")[:-2] for r in log[1:]] for log in logs]  # without lr, it/s
    assert len(rows[0]) == 2 and rows[0] == rows[1]


# Third sweep (issue 48 items 5, 8b, 8e): the Python API's segmenter -------------------------------------------


def test_predict_on_an_empty_image_is_a_clear_error():
    seg = Segmenter("unet-tiny")
    seg.size = 32
    with pytest.raises(AnomalignError, match=r"image is empty \(0 x 0 px, shape \[0, 0, 3\]\)"):
        seg.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(AnomalignError, match=r"images are empty \(0 x 5 px"):
        seg.predict(np.zeros((2, 0, 5, 3), np.uint8))
    assert seg.predict(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1)  # the smallest image still predicts


def test_loading_a_file_that_is_no_segmenter_says_what_a_segmenter_folder_is(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes about the line\n" * 40)
    with pytest.raises(AnomalignError) as e:
        Segmenter.load(notes)
    text = str(e.value)
    assert str(notes) in text and "not a segmenter folder" in text and "segmenter.safetensors" in text
    assert "header too large" not in text and "unreadable weights" not in text


def test_a_python_tag_in_a_segmenter_config_is_refused_on_load(tmp_path):
    seg = Segmenter("unet-tiny")
    seg.save(tmp_path / "seg", {"size": 32})
    marker = tmp_path / "pwned"
    config = tmp_path / "seg" / "config.yaml"
    config.write_text(f"preset: !!python/object/apply:os.system ['touch {marker}']\nsize: 32\n")
    for source in (tmp_path / "seg", tmp_path / "seg" / "segmenter.safetensors"):
        with pytest.raises(AnomalignError, match="python/object/apply") as e:
            Segmenter.load(source)
        assert str(config) in str(e.value) and "refusing to load" in str(e.value)
    assert not marker.exists()
    config.write_text("preset: unet-tiny\nsize: 32\n")  # a plain config loads
    assert Segmenter.load(tmp_path / "seg", device="cpu").size == 32


# Third sweep (issue 48 items 1, 3, 4, 6, 7, 8a, 8c, 8d): run, segment and the runtimes ---------------------------


def test_an_output_folder_inside_the_data_is_refused_before_anything_is_written(tmp_path, capsys, gen_dir):
    data = tmp_path / "small"
    write_paired(data, defects=("scratch",), n=4, normals=2)
    before = sorted(p for p in data.rglob("*"))
    seg = unet_segmenter(tmp_path / "seg")
    for argv in (["run", data, "--out", data / "images" / "run", "--device", "cpu"],
                 ["run", data, "--out", data, "--device", "cpu"],
                 ["run", tmp_path / "elsewhere_missing_is_fine_here", "--out", data / "x", "--normals", data],
                 ["train-segmenter", "--train", data, "--out", data / "masks" / "seg", "--max-steps", 1],
                 ["train-generator", "--data", data, "--out", data / "gen", "--max-steps", 1],
                 ["generate", "--generator", gen_dir, "--masks", data, "--num", 1, "--out", data / "images" / "syn"],
                 ["segment", data / "images", "--segmenter", seg, "--out", data / "images" / "pred"]):
        code, text = run_cli(capsys, *argv)
        assert code == 2 and "Traceback" not in text, (argv[0], text)
        if argv[1] != tmp_path / "elsewhere_missing_is_fine_here":
            assert "--out is inside" in text and "nothing was written" in text, (argv[0], text)
    assert sorted(p for p in data.rglob("*")) == before  # not one file or folder added to the user's data


def _full_disk_on(call: int):
    from safetensors import SafetensorError
    calls = []

    def save_file(*a, **k):
        calls.append(a[1])
        if len(calls) == call:  # the message safetensors gives for a full disk (seen on a 64-kB tmpfs)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        from safetensors.torch import save_file as real
        return real(*a, **k)
    return save_file


def test_a_full_disk_during_a_checkpoint_is_one_line_and_resumes(tmp_path, capsys, monkeypatch):
    import anomalign.training as training
    data = tmp_path / "data"
    write_paired(data, defects=("scratch",), n=3, normals=0)
    args = ["train-segmenter", "--train", data, "--out", tmp_path / "s", "--size", 32, "--max-steps", 4,
            "--batch-size", 2, "--validate-every", 0, "--checkpoint-every", 2, "--device", "cpu"]
    monkeypatch.setattr(training, "save_file", _full_disk_on(5))  # the second checkpoint's model file
    code, text = run_cli(capsys, *args)
    assert code == 1 and "No space left on device" in text and "Traceback" not in text, text
    assert "SafetensorError" not in text and "checkpoints" in text  # names where it was writing
    assert not list((tmp_path / "s" / "checkpoints").glob("*.tmp"))  # no half-written checkpoint left
    monkeypatch.undo()
    assert run_cli(capsys, *args, "--resume", "latest")[0] == 0
    # the final weights go through the same translation (weights.write_weights -> files.atomic_target)
    import anomalign.weights as weights
    monkeypatch.setattr(weights, "save_file", _full_disk_on(1))
    code, text = run_cli(capsys, *args[:4], tmp_path / "s2", *args[5:])
    assert code == 1 and "No space left on device" in text and "Traceback" not in text, text


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_a_damaged_onnx_graph_is_named_with_the_fix(tmp_path, capsys, runtime):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime" if runtime == "onnx" else "openvino")
    seg = unet_segmenter(tmp_path / "seg", size=32)
    assert run_cli(capsys, "export", "--segmenter", seg)[0] == 0
    graph = seg / "segmenter.onnx"
    graph.write_bytes(graph.read_bytes()[:200])  # truncated
    save(tmp_path / "in" / "a.png", pair(0)[0])
    code, text = run_cli(capsys, "segment", tmp_path / "in", "--segmenter", seg, "--out", tmp_path / "p",
                         "--runtime", runtime)
    assert code == 2 and "Traceback" not in text, text
    assert f"{graph}: damaged or not an ONNX graph" in text and "Delete it and rerun" in text
    graph.unlink()  # the fix the message gives works
    assert run_cli(capsys, "segment", tmp_path / "in", "--segmenter", seg, "--out", tmp_path / "p",
                   "--runtime", runtime)[0] == 0


LOCK_HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from anomalign.files import lock_folder
    lock_folder(sys.argv[1], sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin
""")


def test_a_second_process_on_the_same_output_folder_is_refused(tmp_path, capsys, gen_dir):
    data = tmp_path / "data"
    write_paired(data, defects=("scratch", "hole"), n=10, normals=2)
    cases = [("run", ["run", data, "--device", "cpu", "--arms", "none"]),
             ("train-segmenter", ["train-segmenter", "--train", data, "--size", 32, "--max-steps", 1,
                                  "--device", "cpu"]),
             ("generate", ["generate", "--generator", gen_dir, "--masks", data, "--num", 1, "--steps", 2,
                           "--device", "cpu"])]
    for command, argv in cases:
        out = tmp_path / f"out_{command}"
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(src=SRC), str(out), command],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            code, text = run_cli(capsys, *argv, "--out", out)
            assert code == 2 and "Traceback" not in text, (command, text)
            assert f"`anomalign {command}` (pid {holder.pid}" in text and "is writing into this folder" in text
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    # once the holder has exited (its lock is released by the kernel), the same command runs; and the lock is
    # released when a command returns, so this process can run it again
    argv = cases[1][1] + ["--out", tmp_path / "out_train-segmenter"]
    assert run_cli(capsys, *argv)[0] == 0
    from anomalign.files import _held
    assert str((tmp_path / "out_train-segmenter").resolve()) not in _held
    held = subprocess.run([sys.executable, "-c", LOCK_HOLDER.format(src=SRC), str(tmp_path / "out_train-segmenter"),
                           "x"], input="", capture_output=True, text=True)
    assert held.stdout.strip() == "held", held.stderr


def test_segment_streams_large_images_in_bands(monkeypatch):
    """The probability of a large image is computed band by band (never the whole image as float) and equals
    the whole-image computation: bit for bit at scale 1, within float rounding when resampled."""
    import anomalign.segmenter.sliding as sliding
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2))

    def predict(b):
        return torch.sigmoid(conv(b))
    image = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    for scale in (1.0, 0.5, 1.6):
        whole = sliding.native_probability(predict, sliding.tensor_rows(x), 150, 170, 32, scale, precision="fp32")
        spans = []

        def rows(a, b, src=sliding.uint8_rows(image)):
            spans.append(b - a)
            return src(a, b)
        monkeypatch.setattr(sliding, "BAND_PIXELS", 2000)
        monkeypatch.setattr(sliding.resized_bands, "__defaults__", (2000,))
        banded = sliding.native_probability(predict, rows, 150, 170, 32, scale, precision="fp32")
        monkeypatch.undo()
        assert max(spans) <= 150 // 2, (scale, max(spans))  # the image was read in bands, never whole
        if scale == 1:
            assert torch.equal(banded, whole)
        else:
            assert torch.allclose(banded, whole, atol=1e-6), (banded - whole).abs().max()


def test_misleading_messages_of_the_third_sweep(tmp_path, capsys):
    from anomalign.cli import build_parser
    folder = tmp_path / "dir.png"
    folder.mkdir()
    seg = Segmenter("unet-tiny")
    seg.size = 32
    with pytest.raises(DataError, match=r"dir.png: is a folder, not an image file") as e:
        seg.predict(folder)
    assert "corrupt" not in str(e.value) and "Errno" not in str(e.value)
    # one documented convention for exit codes, shown by --help
    text = build_parser().format_help()
    assert "exit codes" in text and "2 " in text and "1 " in text
    # command lines printed for the user paste back into a shell as one argument per path
    import shlex
    from anomalign.pipeline import usage_line
    line = usage_line(str(tmp_path / "my runs" / "arm_synthetic"), tmp_path / "my runs" / "report" / "index.html")
    words = shlex.split(line.split("use it: ", 1)[1].split(";")[0])
    assert words[words.index("--segmenter") + 1] == str(tmp_path / "my runs" / "arm_synthetic")
