"""Using a trained segmenter: ``anomalign segment`` (masks + overlays for new images, any size) and
``anomalign export`` (ONNX, checked against PyTorch with onnxruntime when it is installed).

A segmenter trained on crops (``--crop-size``) predicts at each image's own resolution with overlapping
sliding windows (``segmenter/sliding.py``); one trained on whole resized images sees each image resized to
its training size, and the probability is resized back (bilinear). Either way it is thresholded at the
image's own size, so masks always match their image pixel for pixel.
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anomalign.config import option, save_config
from anomalign.data.folders import is_image, walk_files
from anomalign.devices import pick_device
from anomalign.errors import AnomalignError, ConfigError, DataError
from anomalign.files import check_out_outside, file_sha256, save_png
from anomalign.segmenter.export import OnnxSegmenter
from anomalign.segmenter.model import check_size


@dataclass(kw_only=True)
class PredictOptions:
    """How a segmenter predicts a full-size image: the options ``segment`` and ``evaluate`` share."""

    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "auto = bf16 where the hardware computes it natively (CPU flags avx512_bf16 / amx_bf16, or a GPU "
                "that supports it), else fp32; bf16 runs the network under autocast: 1.8x faster on such a CPU, the "
                "same test mIoU, masks agreeing with fp32's at IoU 0.99 (docs/segmenter.md)")
    inference: Literal["windows", "one-pass"] = option(
        "windows", "how a crop-trained segmenter predicts a whole image: windows = half-overlapping sliding windows "
                   "of its crop size (the measured default); one-pass = tiles of up to 1024 px with 64 px of context, "
                   "about 3x fewer pixels computed but measured 7.6 val mIoU points worse on magnetic tile even for "
                   "a --norm batch U-Net (docs/segmenter.md)")


@dataclass(kw_only=True)
class SegmentConfig(PredictOptions):
    """Options of ``anomalign segment``."""

    images: list[Path] = option(help="image files and/or folders (searched recursively)", positional=True)
    segmenter: Path = option(help="segmenter run folder (from `anomalign train-segmenter`)")
    out: Path = option(help="output folder: masks/, overlays/ (and probabilities/ with --save-probabilities); "
                            "rerun with the same options to continue an interrupted run")
    threshold: float = option(0.5, "anomaly probability at or above which a pixel is anomalous")
    size: int | None = option(None, "input size for a segmenter trained on whole resized images (default: the "
                                    "size it was trained at); crop-trained segmenters predict at native resolution")
    batch_size: int = option(16, "sliding windows per forward pass")
    save_probabilities: bool = option(False, "also write the probability map as an 8-bit PNG")
    runtime: Literal["torch", "onnx", "openvino"] = option(
        "torch", "torch, or the exported graph (SEGMENTER/segmenter.onnx, exported first when missing) run as a "
                 "deployment would: onnx = onnxruntime (fp32), openvino = OpenVINO's CPU plugin (bf16 with "
                 "--precision auto where native; 1.5x PyTorch on this project's CPU); the same masks within float "
                 "rounding (docs/segmenter.md)")
    policy: Literal["fail", "skip"] = option("fail", "an unreadable or too large image: fail = stop with its name "
                                                     "(finished images are kept), skip = leave it out, list it in "
                                                     "skipped.json and go on")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to run")
    max_megapixels: float = option(100.0, "largest input image, in megapixels, after the segmenter's own "
                                          "resampling (refused from its header)")

    def validate(self) -> None:
        if not self.max_megapixels > 0:
            raise ConfigError(f"max_megapixels must be > 0, got {self.max_megapixels}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        check_size(self.size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def list_images(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, output name relative to the output folders) for every image; names keep sub-folders."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item}: no such file or folder")
        if item.is_file():
            if not is_image(item):
                raise DataError(f"{item}: not an image file")
            found.append((item, Path(item.stem + ".png")))
        else:
            files = [f for f in walk_files(item) if is_image(f)]
            if not files:
                raise DataError(f"{item}: no image files found in this folder")
            found += [(f, f.relative_to(item).with_suffix(".png")) for f in sorted(files)]
    seen: dict[Path, Path] = {}
    for f, name in found:
        if name in seen:
            raise DataError(f"{f}: gives the same output name {name} as {seen[name]}; segment them separately")
        seen[name] = f
    return found


def overlay_image(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45, band_pixels: int = 4_000_000):
    """PIL RGB image: the uint8 image [H, W, 3], anomalous pixels (bool ``mask`` [H, W]) tinted red, their
    contour solid red. Drawn on PIL's own copy in row bands of about ``band_pixels`` (with one row of context for
    the contour), so a 144-MP image needs no float copy and no second array of itself."""
    from PIL import Image

    from anomalign.figures import mask_contour
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    red = np.array([255, 0, 0], np.float32)
    h, w = mask.shape
    step = max(1, band_pixels // max(1, w))
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        m = mask[y0:y1]
        a, b = max(0, y0 - 1), min(h, y1 + 1)  # a contour pixel looks at the rows above and below
        contour = mask_contour(mask[a:b])[y0 - a:y0 - a + (y1 - y0)]
        if not m.any():
            continue
        box = (0, y0, w, y1)
        part = np.array(canvas.crop(box))
        part[m] = ((1 - alpha) * part[m].astype(np.float32) + alpha * red).round().astype(np.uint8)
        part[contour] = (255, 0, 0)
        canvas.paste(Image.fromarray(part), box)
    return canvas


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 [H, W, 3]: ``overlay_image`` as an array."""
    return np.array(overlay_image(image, mask, alpha))


SEGMENT_MARKER = "run.json"
INDEX = "predictions.jsonl"
WINDOW_PROGRESS = 64  # images cut into more windows than this get a progress bar of their own


def segment_identity(cfg: SegmentConfig, model_sha: str, size: int | None, precision: str = "fp32") -> dict:
    """What decides the files of a segment run: the segmenter's weights and the options that change masks
    (``precision``: the one the run computes in, auto resolved)."""
    return {"segmenter_sha256": model_sha, "threshold": cfg.threshold, "size": size,
            "save_probabilities": cfg.save_probabilities} | ({"runtime": cfg.runtime} if cfg.runtime != "torch" else {}) \
        | ({"inference": cfg.inference} if cfg.inference != "windows" else {}) \
        | ({"precision": precision} if precision != "fp32" else {})


def prepare_segment_out(out: Path, identity: dict) -> list[dict]:
    """Check ``out`` may receive this segment run (nothing is written): new, empty, or an earlier run with the
    same identity (whose finished rows are returned, to be skipped). A foreign folder, a file, or a run with
    other options is refused."""
    if out.exists() and not out.is_dir():
        raise AnomalignError(f"{out}: --out is a file, not a folder; nothing was changed. Choose a new --out.")
    if not (out.is_dir() and any(out.iterdir())):
        return []
    marker = out / SEGMENT_MARKER
    if not (out / "segment.yaml").is_file():
        raise AnomalignError(f"{out}: folder is not empty and was not written by `anomalign segment`; refusing "
                             "to write into it (nothing was changed). Choose a new --out.")
    try:
        prev = json.loads(marker.read_text())["identity"] if marker.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        prev = "unreadable"
    if prev is None:
        return []  # a run from before resumable segment: redone from the start, as it always was
    if prev != identity:
        diff = (sorted(k for k in set(prev) | set(identity) if prev.get(k) != identity.get(k))
                if isinstance(prev, dict) else ["run.json"])
        raise AnomalignError(f"{out}: holds the masks of another segment run (different {', '.join(diff)}); nothing "
                             "was changed. Choose a new --out, or rerun with that run's options to continue it.")
    return read_index(out / INDEX)


def read_index(path: Path) -> list[dict]:
    """The finished rows of an index written line by line; a last line cut by a kill or a full disk is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(row, dict) and "mask" in row:
            rows.append(row)
    return rows


def run_segment(cfg: SegmentConfig, progress: bool = True) -> Path:
    """Write masks/ and overlays/ for every input image into ``cfg.out``, and the index ``predictions.jsonl``
    (one row per image, appended as each image is finished: a killed or failed run continues where it stopped
    when rerun with the same options); returns ``cfg.out``."""
    from tqdm.auto import tqdm

    from anomalign.data.imageio import FileProblem, set_max_megapixels
    from anomalign.data.validate import format_skipped, skipped_records
    from anomalign.files import write_text_atomic
    from anomalign.segmenter.model import WEIGHTS_NAME
    from anomalign.weights import weights_file

    cfg.validate()
    check_out_outside(cfg.out, {"the images": [p for p in cfg.images if Path(p).is_dir()]})
    set_max_megapixels(cfg.max_megapixels)
    model, precision, size = segment_model(cfg)
    items = list_images(cfg.images)
    out = Path(cfg.out)
    identity = segment_identity(cfg, file_sha256(weights_file(cfg.segmenter, WEIGHTS_NAME)), size, precision)
    done = {row["image"]: row for row in prepare_segment_out(out, identity)}
    todo, skipped = check_headers([(f, n) for f, n in items if str(f) not in done], model, cfg.policy)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "segment.yaml")
    write_text_atomic(out / SEGMENT_MARKER, json.dumps({"command": "segment", "identity": identity}, indent=1) + "\n")
    if done:
        print(f"{out}: continuing: {len(done)} of {len(items)} images are already segmented")
    index = out / INDEX
    write_text_atomic(index, "".join(json.dumps(r) + "\n" for r in done.values()))  # drop a cut last line
    bar = tqdm(todo, disable=not progress, desc="segment", unit="img", dynamic_ncols=True)
    with index.open("a") as log:
        for f, name in bar:
            try:
                row = segment_file(model, f, name, out, size, cfg, progress, precision)
            except DataError as e:  # unreadable: its header was fine, its data is not
                if cfg.policy == "fail":
                    raise
                skipped.append(e.problem if isinstance(e, FileProblem) else e)
                continue
            done[str(f)] = row
            log.write(json.dumps(row) + "\n")  # after the image's files: a row means the image is finished
            log.flush()
    order = {str(f): k for k, (f, _) in enumerate(items)}
    rows = sorted(done.values(), key=lambda r: order.get(r["image"], len(order)))
    write_text_atomic(index, "".join(json.dumps(r) + "\n" for r in rows))  # input order, as one run writes it
    if skipped:
        write_text_atomic(out / "skipped.json", json.dumps(skipped_records(skipped), indent=1) + "\n")
        print(format_skipped(Path(", ".join(map(str, cfg.images))), skipped), file=sys.stderr)
    flagged = sum(r["anomalous_pixels"] > 0 for r in rows)
    print(f"segmented {len(rows)} images into {out} ({flagged} with anomalous pixels at threshold {cfg.threshold})")
    return out


def segment_model(cfg: SegmentConfig):
    """(model, precision, size) of a segment run: the segmenter on its device, or its exported graph for
    ``--runtime onnx|openvino``; the precision the network computes in (auto resolved); the input size of a
    segmenter trained on whole resized images (None for crop-trained ones). Option clashes are refused here,
    before any image is read."""
    from anomalign.segmenter.model import Segmenter
    from anomalign.segmenter.sliding import inference_precision, uses_one_pass
    device = pick_device(cfg.device)
    model = Segmenter.load(cfg.segmenter, device=device)
    # the precision the network computes in: onnxruntime's CPU graph runs fp32 only
    precision = "fp32" if cfg.runtime == "onnx" else inference_precision(cfg.precision, torch.device(device).type)
    if cfg.runtime != "torch":
        if cfg.runtime == "onnx" and cfg.precision == "bf16":
            raise ConfigError("--precision bf16 applies to --runtime torch or openvino (onnxruntime runs the graph "
                              "in fp32)")
        graph = OnnxSegmenter.of(model, Path(cfg.segmenter), cfg.runtime, precision)
        if model.crop_size and uses_one_pass(cfg.inference) and graph.side is not None:
            raise ConfigError(f"{graph.file}: takes {graph.side}-px inputs only, so it cannot predict in one pass "
                              f"(--inference {cfg.inference}); export it again (anomalign export) or use --inference "
                              "windows")
        model = graph
    if model.crop_size and cfg.size is not None:
        raise ConfigError(f"--size {cfg.size} does not apply: {cfg.segmenter} was trained on {model.crop_size}-px "
                          f"crops at scale {model.scale:g} and predicts each image at its own resolution with "
                          "sliding windows; drop --size")
    size = None if model.crop_size else (cfg.size or model.size or 64)
    if cfg.runtime != "torch" and size and model.side and size != model.side:
        raise ConfigError(f"--size {size}: the exported graph {model.file} takes {model.side}-px inputs; drop --size "
                          f"or export at that size (anomalign export --size {size} --out {shlex.quote(str(model.file))})")
    return model, precision, size


def check_headers(items: list[tuple[Path, Path]], model, policy: str) -> tuple[list, list]:
    """(images to segment, problems) from every image's header (cheap): a file that is no image, or too large
    after the segmenter's own resampling, stops the run before any work (``policy`` fail) or is left out
    (skip)."""
    from anomalign.data.imageio import FileProblem, check_scaled_size, header_size
    from anomalign.data.sample import Problem
    todo, skipped = [], []
    for f, name in items:
        try:
            w, h = header_size(f)
            if model.crop_size:
                check_scaled_size(f, w, h, model.scale, "the segmenter's scale")
            todo.append((f, name))
        except FileProblem as e:
            if policy == "fail":
                raise DataError(f"{f}: {e.problem.message} (--policy skip leaves such images out)") from None
            skipped.append(e.problem)
        except DataError as e:
            if policy == "fail":
                raise
            skipped.append(Problem(f, "too-large", str(e).split(": ", 1)[-1]))
    return todo, skipped


def segment_file(model, file: Path, name: Path, out: Path, size: int | None, cfg: SegmentConfig, progress: bool,
                 precision: str) -> dict:
    """Read one image, predict it at its own size and write its mask, overlay (and probability) under ``out``
    as ``name``; returns its index row. A very large image is held once at a time: the uint8 image, the float32
    probability and the mask (the probability is freed before the overlay, the image once PIL has copied it)."""
    from anomalign.data.imageio import read_image
    image = read_image(file)
    prob = predict_one(model, image, size, progress, cfg.inference, precision)
    mask = prob >= cfg.threshold
    top = float(prob.max())
    if cfg.save_probabilities:  # in place: no second float copy of a large image
        save_png(np.multiply(prob, 255, out=prob).round(out=prob).astype(np.uint8), out / "probabilities" / name)
    del prob
    save_png(np.where(mask, np.uint8(255), np.uint8(0)), out / "masks" / name)
    drawn = overlay_image(image, mask)
    del image
    save_png(drawn, out / "overlays" / name)
    return {"image": str(file), "mask": f"masks/{name.as_posix()}", "anomalous_pixels": int(mask.sum()),
            "anomaly_fraction": float(mask.mean()), "max_probability": top}


def predict_one(model, image: np.ndarray, size: int | None, progress: bool, mode: str = "windows",
                precision: str = "auto") -> np.ndarray:
    """Probability float32 [H, W] of one uint8 image [H, W, 3]; a progress bar over its windows when it is cut
    into many (a 6000 x 6000 image is thousands of windows)."""
    from anomalign.segmenter.sliding import image_probability
    bar = None

    def on_windows(n: int, total: int) -> None:
        nonlocal bar
        if total <= WINDOW_PROGRESS or not progress:
            return
        if bar is None:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="  windows", unit="win", leave=False, dynamic_ncols=True)
        bar.update(n - bar.n)

    try:
        return image_probability(model, image, size, on_windows=on_windows, mode=mode, precision=precision)
    finally:
        if bar is not None:
            bar.close()
