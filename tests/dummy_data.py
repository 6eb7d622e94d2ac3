"""Dummy datasets in every layout anomalign reads (anomalib-style generators), made in code for tests.

Each writer returns what it wrote so tests can compare counts with what the readers find.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def pair(seed: int, size: tuple[int, int] = (24, 32), empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image (uint8 [H, W, 3]) with a rectangle defect and its bool mask [H, W]."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    if not empty:
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        mask[y:y + rng.integers(3, 6), x:x + rng.integers(3, 6)] = True
        image[mask] = 230
    return image, mask


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def write_paired(root: Path, defects=("scratch", "hole"), n: int = 5, normals: int = 3, splits=None,
                 image_ext: str = ".jpg", mask_ext: str = ".png", dirs=("images", "masks")) -> dict:
    """``root[/split]/images/<defect>/i.jpg`` + ``masks/<defect>/i.png``; normals under ``good/``."""
    seed = 0
    counts = {}
    for split in splits or [None]:
        base = root / split if split else root
        for d in [*defects, "good"]:
            k = normals if d == "good" else n
            for i in range(k):
                image, mask = pair(seed, empty=d == "good")
                seed += 1
                save(base / dirs[0] / d / f"{i:03d}{image_ext}", image)
                save(base / dirs[1] / d / f"{i:03d}{mask_ext}", mask)
            counts[(split, d)] = k
    return counts


def write_flat_paired(root: Path, n: int = 6, mask_ext: str = ".jpg") -> int:
    """Kvasir-SEG style: ``images/x.jpg`` + ``masks/x.jpg`` (JPEG masks), no defect sub-folders."""
    for i in range(n):
        image, mask = pair(100 + i)
        save(root / "images" / f"cju{i:04d}.jpg", image)
        save(root / "masks" / f"cju{i:04d}{mask_ext}", mask)
    return n


def write_same_folder(root: Path, defects=("Blowhole", "Crack"), n: int = 4, normals: int = 5) -> dict:
    """Magnetic-tile style: ``MT_<Defect>/Imgs/x.jpg`` + ``x.png``; ``MT_Free`` holds normals."""
    counts = {}
    for j, d in enumerate([*defects, "Free"]):
        k = normals if d == "Free" else n
        for i in range(k):
            image, mask = pair(200 + 10 * j + i, empty=d == "Free")
            save(root / f"MT_{d}" / "Imgs" / f"exp{j}_num_{i}.jpg", image)
            save(root / f"MT_{d}" / "Imgs" / f"exp{j}_num_{i}.png", mask)
        counts[d] = k
    return counts


def write_same_folder_suffix(root: Path, n: int = 4) -> int:
    """``x.png`` + ``x_mask.png`` side by side in one folder."""
    for i in range(n):
        image, mask = pair(300 + i)
        save(root / f"part{i}.png", image)
        save(root / f"part{i}_mask.png", mask)
    return n


def write_mvtec(root: Path, categories=("bottle", "screw"), defects=("broken", "scratch"), n: int = 7,
                good_train: int = 4, good_test: int = 2) -> dict:
    """MVTec AD. The last category has no ``train/good`` (allowed)."""
    seed = 400
    for c, cat in enumerate(categories):
        if c < len(categories) - 1:
            for i in range(good_train):
                save(root / cat / "train" / "good" / f"{i:03d}.png", pair(seed := seed + 1, empty=True)[0])
        for i in range(good_test):
            save(root / cat / "test" / "good" / f"{i:03d}.png", pair(seed := seed + 1, empty=True)[0])
        for d in defects:
            for i in range(n):
                image, mask = pair(seed := seed + 1)
                save(root / cat / "test" / d / f"{i:03d}.png", image)
                save(root / cat / "ground_truth" / d / f"{i:03d}_mask.png", mask)
    return {"categories": list(categories), "defects": list(defects), "n": n}


def write_visa(root: Path, objects=("candle", "pcb1"), n_normal: int = 4, n_anomaly: int = 3) -> dict:
    """VisA: ``split_csv/1cls.csv`` + ``<obj>/Data/Images/{Normal,Anomaly}`` + ``Masks/Anomaly`` (class ids)."""
    rows = ["object,split,label,image,mask"]
    seed = 500
    for obj in objects:
        for i in range(n_normal):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            save(root / rel, pair(seed := seed + 1, empty=True)[0])
            rows.append(f"{obj},{'train' if i < n_normal - 1 else 'test'},normal,{rel},")
        for i in range(n_anomaly):
            image, mask = pair(seed := seed + 1)
            rel, mrel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save(root / rel, image)
            save(root / mrel, mask.astype(np.uint8) * (1 + i % 2))  # class ids 1 and 2, not 255
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return {"objects": list(objects), "normal": n_normal, "anomaly": n_anomaly}


def write_realiad(root: Path, categories=("audiojack",), n_ok: int = 3, n_ng: int = 4) -> dict:
    """Real-IAD: ``realiad_jsons/<cat>.json`` listing paths under ``realiad_1024/<cat>/``."""
    seed = 600
    for cat in categories:
        data = {"meta": {"prefix": "", "normal_class": "OK"}, "train": [], "test": []}
        for i in range(n_ok):
            rel = f"OK/S{i:04d}/{cat}_{i:04d}_OK_C1.jpg"
            save(root / "realiad_1024" / cat / rel, pair(seed := seed + 1, empty=True)[0])
            data["train" if i < n_ok - 1 else "test"].append(
                {"category": cat, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
        for i in range(n_ng):
            image, mask = pair(seed := seed + 1)
            code = "AK" if i % 2 else "HS"
            rel = f"NG/{code}/S{i:04d}/{cat}_{i:04d}_NG_{code}_C1.jpg"
            save(root / "realiad_1024" / cat / rel, image)
            save(root / "realiad_1024" / cat / rel.replace(".jpg", ".png"), mask)
            data["train" if i < n_ng // 2 else "test"].append(
                {"category": cat, "anomaly_class": code, "image_path": rel, "mask_path": rel.replace(".jpg", ".png")})
        (root / "realiad_jsons").mkdir(parents=True, exist_ok=True)
        (root / "realiad_jsons" / f"{cat}.json").write_text(json.dumps(data))
    return {"categories": list(categories), "ok": n_ok, "ng": n_ng}


def write_pranet(root: Path, n_train: int = 6, test_sets=("CVC-300", "Kvasir", "ETIS-LaribPolypDB"),
                 n_test: int = 3) -> dict:
    """PraNet polyp split: ``TrainDataset/{image,mask}`` and ``TestDataset/<set>/{images,masks}``."""
    for i in range(n_train):
        image, mask = pair(700 + i)
        save(root / "TrainDataset" / "image" / f"{i}.png", image)
        save(root / "TrainDataset" / "mask" / f"{i}.png", mask)
    for j, s in enumerate(test_sets):
        for i in range(n_test):
            image, mask = pair(800 + 10 * j + i)
            save(root / "TestDataset" / s / "images" / f"{i}.png", image)
            save(root / "TestDataset" / s / "masks" / f"{i}.png", mask)
    return {"train": n_train, "sets": list(test_sets), "test": n_test}


def noisy_png_bytes(size: int = 64, seed: int = 0) -> bytes:
    """PNG bytes of random noise (does not compress: cutting it in half truncates the image data)."""
    import io
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def line_defect(rng: np.random.Generator, h: int, w: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grainy grey-brown surface [h, w, 3] uint8 with one bright slanted line ``width`` px wide, and its mask."""
    base = rng.normal(120, 18, (h, w)).astype(np.float32)
    image = np.clip(np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    y0, x0, length = rng.integers(h // 5, 4 * h // 5), rng.integers(0, w // 3), rng.integers(w // 4, w // 2)
    for x in range(x0, min(w, x0 + length)):
        y = int(y0 + 0.3 * (x - x0))
        if 0 <= y < h:
            mask[max(0, y - width // 2): y + (width + 1) // 2, x] = True
    image[mask] = (235, 235, 240)
    return image, mask


def write_line_dataset(root: Path, n_train: int = 10, n_val: int = 2, n_test: int = 2, size: int = 256,
                       width: int = 10, seed: int = 0) -> None:
    """Paired ``train/ val/ test/`` folders of ``line_defect`` images (large images, thin defects)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            image, mask = line_defect(rng, size, size, width)
            save(root / split / "images" / f"{i:03d}.png", image)
            save(root / split / "masks" / f"{i:03d}.png", mask)


def pasted_pairs(out: Path):
    """Each record of a full-size ``generate --normals`` folder ``out`` with its arrays: (record, image int [H, W, 3],
    mask bool [H, W], host image int [H, W, 3])."""
    for line in (Path(out) / "metadata.jsonl").read_text().splitlines():
        r = json.loads(line)
        yield (r, np.asarray(Image.open(Path(out) / r["file_name"]).convert("RGB")).astype(int),
               np.asarray(Image.open(Path(out) / r["mask_file_name"])) > 127,
               np.asarray(Image.open(r["normal_image"]).convert("RGB")).astype(int))
