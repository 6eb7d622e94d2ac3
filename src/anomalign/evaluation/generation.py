"""``anomalign evaluate-generation``: quality of generated sets against real anomalies.

Per generated set: FID with the TF-FID Inception (offline, see ``fid.py``), the alignment summary from
its ``metadata.jsonl`` (free-lunch score and the moved/empty-mask controls, oracle IoU if scored), and
— when their weights are present — torchmetrics FID / Inception Score and IC-LPIPS (AnomalyDiffusion's
diversity protocol) at 256 px; and how well a small classifier tells the generated defects from the real ones
(``discriminability.py``: AUC of a cross-fitted two-sample test on crops around each defect, whole crop and seam
ring). Figures: a grid of generated images with the conditioning mask's contour
in red (paper Fig. 6) and, given ``--generator``, a t-SNE of encoded real masks, real images and each
generated set (paper Fig. 5).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomalign.config import option, save_config
from anomalign.data.folders import DataOptions
from anomalign.data.transforms import resize_images, resize_pair_pil
from anomalign.errors import AnomalignError, ConfigError, DataError

EXTRA_SIZE = 256  # IS / IC-LPIPS resolution, as AnomalyDiffusion and its peers report them


@dataclass(kw_only=True)
class EvaluateGenerationConfig(DataOptions):
    """Options of ``anomalign evaluate-generation``."""

    generated: list[Path] = option(help="generated sets (`anomalign generate` outputs); one row each")
    real: Path = option(help="real dataset to compare with (its anomalous images of --split)")
    labels: list[str] = option(default_factory=list, help="row names for the generated sets (default: folder names)")
    split: str = option("test", "split of the real dataset (train, val, test or all)")
    out: Path | None = option(None, "output folder (default: FIRST_GENERATED/eval)")
    generator: Path | None = option(None, "generator run: adds the t-SNE of encoded masks / real / generated")
    base: str | None = option(None, "sd --generator: its Stable Diffusion base folder or hub id, overriding the path "
                                    "stored in the generator")
    oracle: Path | None = option(None, "segmenter run (e.g. a real-only one): adds its mean IoU on each generated "
                                       "set with the conditioning mask and, as the control, with the mask moved "
                                       "by a quarter width")
    max_images: int = option(1000, "use at most this many images per set")
    grid_images: int = option(24, "images in each qualitative grid")
    extra_metrics: bool = option(True, "also try torchmetrics FID / IS and IC-LPIPS (need downloaded weights)")
    discriminability: bool = option(True, "also the classifier two-sample test: AUC of telling real from generated "
                                          "defect crops (whole crop and seam ring; 0.5 = indistinguishable)")
    seed: int = option(0, "seed of the two-sample test's folds and label permutations")

    def validate(self) -> None:
        DataOptions.validate(self)
        if self.labels and len(self.labels) != len(self.generated):
            raise ConfigError(f"{len(self.labels)} --labels for {len(self.generated)} --generated sets")


def read_generated(folder: Path, max_images: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """uint8 images [N, H, W, 3], bool masks [N, H, W] and metadata rows of a generated set.

    A full-size set (``generate --normals``: images of many sizes) is read as its generation windows — the
    square the generator drew each defect in (metadata ``window``), at native resolution — so every set is
    compared window to window, whatever its images' sizes."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(f"{folder}: no metadata.jsonl; expected the output of `anomalign generate`")
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()][:max_images]
    if not rows:
        raise DataError(f"{meta}: no generated pairs listed")
    images, masks = [], []
    for r in rows:
        try:
            image = np.asarray(Image.open(folder / r["file_name"]).convert("RGB"))
            mask = np.asarray(Image.open(folder / r["mask_file_name"]).convert("L")) > 127
        except (OSError, KeyError) as e:
            raise DataError(f"{folder}: cannot read the pair of row {r.get('index')} ({e})") from None
        if r.get("window"):
            top, left, side = r["window"]
            image, mask = image[top:top + side, left:left + side], mask[top:top + side, left:left + side]
        images.append(image)
        masks.append(mask)
    if all(r.get("window") for r in rows):
        # a defect larger than the generator's resolution got a larger window (generated at that resolution and
        # resized back), a host smaller than it a smaller one: every window goes to the most common side (the
        # generator's resolution)
        side = Counter(im.shape[0] for im in images).most_common(1)[0][0]
        images, masks = map(list, zip(*(resize_pair_pil(im, m, (side, side)) for im, m in zip(images, masks))))
    if len({im.shape for im in images}) > 1:
        raise DataError(f"{folder}: generated images of different sizes and no generation windows in "
                        "metadata.jsonl; evaluate sets of one size")
    return np.stack(images), np.stack(masks), rows


def defect_window(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The square of a full-size pair centred on its defect's bounding box, ``side`` px or, for a larger defect,
    as large as the defect and resized to ``side`` (as `generate` treats one); clamped to the image, which is
    edge-padded when smaller: what a full-size generated set is compared with. uint8 [side, side, 3], bool."""
    ys, xs = np.nonzero(mask)
    need = max(side, int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1) if len(ys) else side
    ph, pw = max(0, need - mask.shape[0]), max(0, need - mask.shape[1])
    if ph or pw:
        image, mask = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge"), np.pad(mask, ((0, ph), (0, pw)))
    h, w = mask.shape
    cy, cx = ((ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2) if len(ys) else (h // 2, w // 2)
    top, left = min(max(0, cy - need // 2), h - need), min(max(0, cx - need // 2), w - need)
    image, mask = image[top:top + need, left:left + need], mask[top:top + need, left:left + need]
    return resize_pair_pil(image, mask, (side, side))  # a no-op unless the defect needed a larger square


def read_real(cfg: EvaluateGenerationConfig, size: int, windows: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real anomalous images [N, size, size, 3], masks and prompts of ``cfg.split``, resized to the
    generated size (so both sides reach the Inception network equally blurred) — or, with ``windows`` (the
    generated set is full size), ``size``-px windows around each real defect at native resolution."""
    from anomalign.data.dataset import PairDataset, default_prompt, load_pair

    samples = real_samples(cfg)
    if windows:
        pairs = [defect_window(*load_pair(s, None, cfg.mask_threshold), size) for s in samples]
    else:
        ds = PairDataset(samples, size=size, cache=False)
        pairs = [ds.pair(i) for i in range(len(ds))]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), [default_prompt(s) for s in samples]


def real_samples(cfg: EvaluateGenerationConfig) -> list:
    """The anomalous samples with masks of ``cfg.split`` of the real dataset (at most ``cfg.max_images``)."""
    from anomalign.data.validate import load_dataset

    index = load_dataset(cfg.real, cfg)
    samples = index.samples if cfg.split == "all" else index.split(cfg.split)
    samples = [s for s in samples if not s.normal and s.mask is not None][: cfg.max_images]
    if not samples:
        raise DataError(f"{cfg.real}: no anomalous images with masks in split {cfg.split!r}")
    return samples


def _stack_crops(crops: list) -> tuple[np.ndarray, np.ndarray]:
    from anomalign.evaluation.discriminability import CROP
    crops = [c for c in crops if c is not None and c[1].any()]
    if not crops:
        return np.zeros((0, CROP, CROP, 3), np.uint8), np.zeros((0, CROP, CROP), bool)
    return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])


def real_defect_crops(cfg: EvaluateGenerationConfig, real_u8: np.ndarray, real_m: np.ndarray, windows: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``discriminability.defect_crop`` around every real defect: uint8 [N, 64, 64, 3], bool [N, 64, 64]. From the
    resized real images [N, R, R, 3] when the generated sets are at the generator's resolution R; for full-size
    sets from the real images at native resolution, decoded one at a time (the crop's rule then sees both sides
    at their native scale: a window would cut the context of one side, not of the other)."""
    from anomalign.data.dataset import load_pair
    from anomalign.evaluation.discriminability import defect_crop
    if not windows:
        return _stack_crops([defect_crop(im, m) for im, m in zip(real_u8, real_m)])
    return _stack_crops([defect_crop(*load_pair(s, None, cfg.mask_threshold)) for s in real_samples(cfg)])


def generated_defect_crops(folder: Path, rows: list[dict], images: np.ndarray, masks: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``discriminability.defect_crop`` around every generated defect: uint8 [N, 64, 64, 3], bool [N, 64, 64].
    Pairs at the generator's resolution: from ``images`` [N, R, R, 3] / ``masks`` as ``read_generated`` gave them.
    Full-size pairs (rows with a ``defect_box``: ``--normals``, either synthesizer): the written image at native
    resolution, and as the mask only the new defect (the written mask inside ``defect_box``, less an anomalous
    host's own mask), so the crop is centred on the generated defect and its seam ring follows its boundary."""
    from anomalign.data.imageio import load_mask
    from anomalign.evaluation.discriminability import defect_crop
    if not all(r.get("defect_box") for r in rows):
        return _stack_crops([defect_crop(im, m) for im, m in zip(images, masks)])
    crops = []
    for r in rows:
        image = np.asarray(Image.open(Path(folder) / r["file_name"]).convert("RGB"))
        full = np.asarray(Image.open(Path(folder) / r["mask_file_name"]).convert("L")) > 127
        y, x, h, w = r["defect_box"]
        mask = np.zeros_like(full)
        mask[y:y + h, x:x + w] = full[y:y + h, x:x + w]
        if r.get("host_mask"):
            try:
                mask &= ~load_mask(Path(r["host_mask"]))
            except (OSError, ValueError, AnomalignError):  # the host's mask moved: the box alone is close enough
                pass
        crops.append(defect_crop(image, mask))
    return _stack_crops(crops)


def discriminability_row(result: dict) -> dict:
    """The table's cells of a ``discriminability.discriminability`` result: [AUC, CI low, CI high] of the crop
    and the seam ring, and the permutation controls' mean AUCs [crop, seam]."""
    c, s = result["crop"], result["seam"]
    return {"c2st_crop": [c["auc"], c["ci_low"], c["ci_high"]], "c2st_seam": [s["auc"], s["ci_low"], s["ci_high"]],
            "c2st_permuted": [c.get("auc_permuted", float("nan")), s.get("auc_permuted", float("nan"))]}


def discriminability_note(name: str, result: dict) -> str:
    """One sentence per set: the two AUCs with their intervals and controls, and the statistics that told the
    sets apart most (a positive weight: higher on the generated side)."""
    def part(v: str, label: str) -> str:
        r = result[v]
        top = ", ".join(f"{n} ({w:+.2f})" for n, w in r.get("top_features", []))
        return (f"{label} AUC {r['auc']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}], labels permuted "
                f"{r.get('auc_permuted', float('nan')):.2f} (p = {r.get('p_permutation', float('nan')):.3f}); "
                f"most telling: {top}")
    return (f"discriminability of {name} ({result['real']} real vs {result['synthetic']} generated "
            f"{result['size']}-px crops around each defect; 0.5 = indistinguishable, 1 = always told apart): "
            + part("crop", "whole crop") + "; " + part("seam", f"seam ring ({result['ring']} px each side)"))


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them if k >= n)."""
    return list(range(n)) if k >= n else [round(i * (n - 1) / (k - 1)) if k > 1 else 0 for i in range(k)]


def alignment_summary(rows: list[dict]) -> dict[str, float]:
    """Means / fractions of the per-sample scores ``generate`` recorded."""
    out: dict[str, float] = {}
    s = [r.get("scores", {}) for r in rows]
    if all("free_lunch" in x for x in s):
        out["free_lunch_mean"] = float(np.mean([x["free_lunch"] for x in s]))
        out["free_lunch_positive"] = float(np.mean([x["free_lunch"] > 0 for x in s]))
        out["true_lt_moved"] = float(np.mean([x["loss_true_mask"] < x["loss_moved_mask"] for x in s]))
        out["true_lt_empty"] = float(np.mean([x["loss_true_mask"] < x["loss_empty_mask"] for x in s]))
    if all("oracle_iou" in x for x in s):
        out["oracle_iou_mean"] = float(np.mean([x["oracle_iou"] for x in s]))
    return out


def ic_lpips(real: torch.Tensor, fake: torch.Tensor, distance) -> float:
    """IC-LPIPS (AnomalyDiffusion): assign each generated image to its closest real image (cluster
    centre) by ``distance``; the mean pairwise distance inside each cluster, averaged over clusters with
    >= 2 members. ``distance(a [B, ...], b [B, ...]) -> [B]``. Higher = more diverse."""
    d = torch.stack([distance(fake, real[j:j + 1].expand_as(fake)) for j in range(len(real))], 1)
    assign = d.argmin(1)
    scores = []
    for j in range(len(real)):
        members = fake[assign == j]
        if len(members) < 2:
            continue
        i, k = torch.triu_indices(len(members), len(members), 1)
        scores.append(float(distance(members[i], members[k]).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def _u8_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def extra_metrics(real_u8: np.ndarray, fake_u8: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """torchmetrics FID / IS and IC-LPIPS at 256 px where their weights can be loaded offline.
    Returns (values, notes naming what was missing and how to provide it)."""
    values, notes = {}, []
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        real = (_u8_to_tensor(real_u8, EXTRA_SIZE) * 255).to(torch.uint8)
        fake = (_u8_to_tensor(fake_u8, EXTRA_SIZE) * 255).to(torch.uint8)
        fid = FrechetInceptionDistance(feature=2048)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        values["fid_torchmetrics"] = float(fid.compute())
        is_metric = InceptionScore()
        is_metric.update(fake)
        values["inception_score"] = float(is_metric.compute()[0])
    except Exception as e:  # missing torch-fidelity, or weights not downloadable offline
        notes.append("Inception Score and torchmetrics FID skipped: they need `pip install torch-fidelity` and the "
                     "FID Inception weights (weights-inception-2015-12-05-6726825d.pth) in the torch hub cache "
                     f"(~/.cache/torch/hub/checkpoints; downloaded on first use when online) — {type(e).__name__}: "
                     f"{str(e).splitlines()[0][:160] if str(e) else ''}")
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        lp = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True)
        real = _u8_to_tensor(real_u8, EXTRA_SIZE)
        fake = _u8_to_tensor(fake_u8, EXTRA_SIZE)
        values["ic_lpips"] = ic_lpips(real, fake, lambda a, b: lp(a, b).flatten())
    except Exception as e:
        notes.append("IC-LPIPS skipped: LPIPS needs torchvision and the AlexNet + LPIPS weights (downloaded on "
                     "first use when online; anomalign does not install torchvision because it pulls a CUDA "
                     f"torch) — {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    return values, notes


@torch.no_grad()
def tsne_plot(generator: Path, groups: dict[str, np.ndarray], masks: np.ndarray, path: Path,
              per_group: int = 150, base: str | None = None) -> Path:
    """t-SNE of generator latents: E(real masks), E(real images) and E(each generated set) (paper Fig. 5).
    ``groups``: name -> uint8 images [N, H, W, 3]; ``masks``: bool real masks [N, H, W]."""
    from anomalign.data.transforms import to_model_range
    from anomalign.evaluation.tsne import scatter_png, tsne
    from anomalign.generator.model import MaskGenerator

    gen = MaskGenerator.load(generator, base=base).eval()
    size = gen.resolution

    def encode(x: torch.Tensor, fn) -> np.ndarray:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return torch.cat([fn(x[s:s + 32]) for s in range(0, len(x), 32)]).flatten(1).numpy()

    feats = {"real masks": encode(torch.from_numpy(masks[:per_group].astype(np.float32))[:, None],
                                  gen.encode_mask_image)}
    for name, images in groups.items():
        x = torch.stack([to_model_range(im) for im in images[:per_group]])
        feats[name] = encode(x, gen.encode)
    emb = tsne(np.concatenate(list(feats.values())))
    points, start = {}, 0
    for name, f in feats.items():
        points[name] = emb[start:start + len(f)]
        start += len(f)
    return scatter_png(points, path, title="t-SNE of generator latents")


@torch.no_grad()
def oracle_alignment(segmenter: Path, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Oracle view of alignment: mean IoU of a trained segmenter's prediction on generated images with
    their conditioning masks, and with those masks moved by a quarter width (should be ~0).

    images [N, H, W, 3] uint8, masks [N, H, W] bool -> {"oracle_iou", "oracle_iou_moved"}.
    """
    from anomalign.segmenter.model import Segmenter
    from anomalign.synthesis.scoring import oracle_iou, shift_masks

    model = Segmenter.load(segmenter, device="cpu")  # the images below are CPU tensors
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.from_numpy(masks.astype(np.float32))[:, None]
    if model.size and model.size != x.shape[-1]:
        x = resize_images(x, model.size)
        m = torch.nn.functional.interpolate(m, size=(model.size,) * 2, mode="nearest")
    return {"oracle_iou": float(oracle_iou(model, x, m).mean()),
            "oracle_iou_moved": float(oracle_iou(model, x, shift_masks(m, m.shape[-1] // 4)).mean())}


@torch.no_grad()
def feedback_premise(generator: Path, real_u8: np.ndarray, real_m: np.ndarray, prompts: list[str],
                     base: str | None = None) -> dict:
    """The premise of Generative Feedback on real anomalous images (uint8 [B, H, W, 3], bool masks [B, H, W]):
    ``synthesis.scoring.premise`` with the generator of run folder ``generator``."""
    from anomalign.data.transforms import to_model_range
    from anomalign.generator.model import MaskGenerator
    from anomalign.synthesis.scoring import premise

    x = torch.stack([to_model_range(im) for im in real_u8])
    m = torch.from_numpy(real_m.astype(np.float32))[:, None]
    return premise(MaskGenerator.load(generator, base=base).eval(), x, m, prompts)


def premise_note(premise: dict, split: str) -> str:
    """One sentence summing up ``feedback_premise`` (the notes here and the demo summary)."""
    return (f"Generative Feedback premise on {premise['images']} real {split} images: the generator's "
            f"denoising loss is lower with the true mask than with the moved mask on "
            f"{100 * premise['frac_true_lt_moved']:.0f}%, than with the empty mask on "
            f"{100 * premise['frac_true_lt_empty']:.0f}%, than both on {100 * premise['frac_true_lt_both']:.0f}%")


def run_evaluate_generation(cfg: EvaluateGenerationConfig) -> dict:
    from anomalign.evaluation.fid import frechet_distance, inception_features
    from anomalign.figures import draw_contour, grid, save_png

    cfg.validate()
    out = Path(cfg.out) if cfg.out else Path(cfg.generated[0]) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "evaluate_generation.yaml")
    labels = cfg.labels or [Path(g).name for g in cfg.generated]
    sets = {name: read_generated(g, cfg.max_images) for name, g in zip(labels, cfg.generated)}
    size = next(iter(sets.values()))[0].shape[1]
    windows = any(rows and rows[0].get("window") for _, _, rows in sets.values())
    real_u8, real_m, real_prompts = read_real(cfg, size, windows)
    results, notes, figures = {}, [], {}
    real_crops = real_defect_crops(cfg, real_u8, real_m, windows) if cfg.discriminability else None
    try:
        real_feat = inception_features(real_u8)
    except AnomalignError as e:  # weights not installed: say so, compute the rest
        real_feat = None
        notes.append(f"FID skipped: {e}")
    for name, (images, masks, rows) in sets.items():
        r: dict = {"images": len(images)}
        if real_feat is not None:
            r["fid"] = frechet_distance(real_feat, inception_features(images))
        r |= alignment_summary(rows)
        if cfg.oracle is not None:
            r |= oracle_alignment(cfg.oracle, images, masks)
        if real_crops is not None:
            from anomalign.evaluation.discriminability import discriminability
            syn_crops = generated_defect_crops(Path(cfg.generated[labels.index(name)]), rows, images, masks)
            if min(len(real_crops[0]), len(syn_crops[0])) >= 2:
                r["discriminability"] = discriminability(*real_crops, *syn_crops, seed=cfg.seed)
                r |= discriminability_row(r["discriminability"])
                notes.append(discriminability_note(name, r["discriminability"]))
            else:
                notes.append(f"discriminability of {name} skipped: it needs >= 2 defect crops on each side "
                             f"({len(real_crops[0])} real, {len(syn_crops[0])} generated)")
        if cfg.extra_metrics:
            extra, why = extra_metrics(real_u8, images)
            r |= extra
            notes += [n for n in why if n not in notes]
        results[name] = r
        scale = max(1, 128 // images.shape[1])
        pick = spread(len(images), cfg.grid_images)  # evenly over the set: every defect type, not the first one
        tiles = [draw_contour(images[i], masks[i], scale=scale) for i in pick]
        figures[f"grid {name}"] = save_png(grid(tiles, columns=min(8, len(tiles))), out / f"grid_{name}.png").name
    tiles = [draw_contour(real_u8[i], real_m[i], scale=max(1, 128 // size)) for i in spread(len(real_u8), cfg.grid_images)]
    figures["grid real"] = save_png(grid(tiles, columns=min(8, len(tiles))), out / "grid_real.png").name
    premise = None
    if cfg.generator is not None:
        groups = {"real images": real_u8} | {f"generated: {n}": s[0] for n, s in sets.items()}
        figures["t-SNE"] = tsne_plot(cfg.generator, groups, real_m, out / "tsne.png", base=cfg.base).name
        premise = feedback_premise(cfg.generator, real_u8, real_m, real_prompts, base=cfg.base)
        notes.append(premise_note(premise, cfg.split))
    if windows:
        notes.append(f"full-size sets: compared as their {size}-px generation windows with {size}-px windows around "
                     "the real defects, at native resolution")
    payload = {"real": str(cfg.real), "split": cfg.split, "real_images": len(real_u8), "resolution": size,
               "sets": results, "premise": premise, "notes": notes, "figures": figures,
               "fid_note": ("FID from few hundred images is biased upwards and noisy: compare sets side by "
                            "side against the same real set, not with published numbers")}
    (out / "generation.json").write_text(json.dumps(payload, indent=1))
    table = format_generation_table(results)
    (out / "generation.md").write_text(table + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
    print(table)
    for n in notes:
        print(f"note: {n}")
    print(f"written to {out}")
    return payload


def format_generation_table(results: dict[str, dict]) -> str:
    cols = [("images", "images", "{:d}"), ("fid", "FID (TF-Inception)", "{:.1f}"),
            ("free_lunch_mean", "free-lunch score", "{:+.4f}"), ("free_lunch_positive", "free-lunch > 0", "{:.0%}"),
            ("true_lt_moved", "L(true) < L(moved)", "{:.0%}"), ("true_lt_empty", "L(true) < L(empty)", "{:.0%}"),
            ("oracle_iou_mean", "oracle IoU (at generation)", "{:.3f}"), ("oracle_iou", "oracle IoU", "{:.3f}"),
            ("oracle_iou_moved", "oracle IoU, mask moved", "{:.3f}"),
            ("c2st_crop", "C2ST AUC, crop [95 % CI]", "{:.2f} [{:.2f}, {:.2f}]"),
            ("c2st_seam", "C2ST AUC, seam ring [95 % CI]", "{:.2f} [{:.2f}, {:.2f}]"),
            ("c2st_permuted", "C2ST AUC, labels permuted (crop / seam)", "{:.2f} / {:.2f}"),
            ("inception_score", "IS (256 px)", "{:.2f}"), ("ic_lpips", "IC-LPIPS (256 px)", "{:.3f}")]
    cols = [c for c in cols if any(c[0] in r for r in results.values())]
    lines = ["| set | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]

    def cell(v, fmt: str) -> str:
        values = list(v) if isinstance(v, (list, tuple)) else [v]  # the C2ST cells hold [AUC, low, high]
        if any(isinstance(x, float) and math.isnan(x) for x in values):
            return "—"
        return fmt.format(*values)

    for name, r in results.items():
        cells = [cell(r[k], fmt) if k in r else "—" for k, _, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

