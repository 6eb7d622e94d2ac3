"""``anomalign generate``: real masks -> synthetic aligned image/mask pairs (paper Fig. 2b), at scale.

Sample ("attempt") i is a pure function of (options, generator weights, i): its source mask is
``i mod #masks``, and its augmentation, starting noise, background noise and scoring noise come from
seeds derived from (seed, i). Hence the same image whatever the batch size or number of processes.

Sharding: attempts are processed in rounds of ``batch_size x processes``; process r takes the attempts
of a round with (i - round start) mod processes == r. Every finished attempt writes its image and mask
(temp name, then rename) and then a small record ``.records/NNNNNNN.json``; a restarted run skips
attempts whose record exists, so a killed run resumes where it stopped and never leaves partial files.
Processes must share the output folder (one machine, or a shared file system).

Filtering (``min_alignment``): rejected attempts are recorded but not written; attempts continue until
``num`` are kept (cap: ``max_attempts x num`` attempts). The kept set is the first ``num`` accepted
attempts by index — again independent of batch size and process count.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomalign.devices import DTYPES, use_cpu
from anomalign.errors import AnomalignError, ConfigError, DataError
from anomalign.files import check_out_outside, file_sha256, releases_locks, write_text_atomic
from anomalign.generator.sampler import DEFAULT_GUIDANCE
from anomalign.synthesis.diffusion import DiffusionSynthesizer
from anomalign.synthesis.options import GenerateConfig
from anomalign.synthesis.sources import host_files, load_masks, read_backgrounds, read_mask_sources, usable_hosts
from anomalign.synthesis.store import prepare_out, read_record, write_attempt

TINY_GUIDANCE, SD_GUIDANCE = DEFAULT_GUIDANCE["tiny"], DEFAULT_GUIDANCE["sd"]


def summarize(records: list[dict], attempts: int) -> dict:
    """Counts and per-score mean/median/min over the kept samples."""
    summary: dict = {"kept": len(records), "attempts": attempts,
                     "acceptance": len(records) / attempts if attempts else float("nan"), "scores": {}}
    names = sorted({k for r in records for k in r["scores"]})
    for name in names:
        v = np.array([r["scores"][name] for r in records if name in r["scores"]], dtype=np.float64)
        summary["scores"][name] = {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                                   "max": float(v.max())}
    if "free_lunch" in names:
        summary["scores"]["free_lunch"]["frac_positive"] = float(np.mean(
            [r["scores"]["free_lunch"] > 0 for r in records]))
    return summary


@releases_locks
def run_generate(cfg: GenerateConfig, progress: bool = True, oracle=None) -> dict:
    """Write ``cfg.num`` pairs to ``cfg.out`` (resuming a previous identical run); returns the summary.

    ``oracle``: any object with ``predict_proba(images [B, 3, H, W] in [-1, 1]) -> [B, 1, H, W]``, e.g. the
    segmenter ``cfg.oracle`` names (the ``generate`` command loads it; a module is moved to the device).
    """
    from accelerate import Accelerator

    cfg.validate()  # idempotent; fills defaults that depend on other options (steps, scores)
    check_out_outside(cfg.out, {"--masks": cfg.masks, "--background": cfg.background, "--normals": cfg.normals})
    cfg.check_scores(oracle is not None or cfg.oracle is not None)
    acc = Accelerator(cpu=use_cpu(cfg.device))
    main = acc.is_main_process
    gen, sha, size = load_generator(cfg, acc.device)
    from anomalign.data.imageio import set_max_megapixels
    from anomalign.data.validate import skipped_records
    set_max_megapixels(cfg.max_megapixels)  # mask folders and backgrounds are read without load_dataset
    sources, skipped = read_mask_sources(cfg)
    skipped = list(skipped)
    normals = None
    if cfg.normals is not None:  # full size: masks stay at their own resolution, defects go into the normals
        from anomalign.data.imageio import load_mask
        from anomalign.synthesis.fullsize import NormalImages
        files, host_masks = host_files(cfg, Path(cfg.normals), cfg.split, cfg.hosts)
        files, host_masks, problems = usable_hosts(cfg, files, host_masks)
        skipped += problems
        normals = NormalImages(files, cfg.foreground, host_masks=host_masks, host_gap=cfg.host_gap,
                               mask_threshold=cfg.mask_threshold)
        masks = [torch.from_numpy(load_mask(s.mask, cfg.mask_threshold, s.mask_ids).astype(np.float32))[None]
                 for s in sources]
        vanished = [str(s.mask) for s, m in zip(sources, masks) if not m.any()]
    else:
        masks, vanished = load_masks(sources, size, cfg.mask_threshold)
    if len(vanished) == len(sources):
        raise DataError(f"{cfg.masks}: every mask is empty at {size}x{size} px (e.g. {vanished[0]}); "
                        "use a larger --resolution")
    if vanished and main:
        where = "" if normals is not None else f" left at {size}x{size}"  # full size: the masks were empty
        print(f"warning: {len(vanished)} mask(s) have no anomaly pixel{where} and are skipped "
              f"(e.g. {vanished[0]})", file=sys.stderr)
    backgrounds = None
    if cfg.background is not None:
        backgrounds, problems = read_backgrounds(cfg, size)
        skipped += problems
    if oracle is None and cfg.oracle is not None:
        raise ConfigError("--oracle: pass the loaded segmenter as run_generate(..., oracle=...); the `generate` "
                          "command loads it (synthesis sits below the segmenter and does not import it)")
    if isinstance(oracle, torch.nn.Module):
        oracle = oracle.to(acc.device)
    out = prepare_out(cfg, sha, main, skipped_records(skipped), barrier=acc.wait_for_everyone)
    acc.wait_for_everyone()
    if cfg.synthesizer == "cutpaste":
        from anomalign.synthesis.cutpaste import CutPaste, source_images
        synth = CutPaste(cfg, sources, masks, source_images(sources, masks, cfg.mask_threshold), backgrounds,
                         normals, oracle)
    else:
        synth = DiffusionSynthesizer(cfg, gen, sources, masks, backgrounds, oracle, sha, normals)

    t0 = time.perf_counter()
    attempts, made = generate_rounds(synth, out, acc, progress)
    if cfg.output_layout == "anomalib" and main:  # the hosts beside the pairs: anomalib's normal_dir
        from anomalign.synthesis.anomalib_bridge import write_normal_dir
        write_normal_dir(out, normals.files)
        print(f"anomalib: Folder(name='synthetic', root='{out}', normal_dir='normal', abnormal_dir='images', "
              "mask_dir='masks') reads this folder (docs/ecosystem.md)")
    return finish_run(cfg, out, acc, attempts, made, time.perf_counter() - t0)


def load_generator(cfg: GenerateConfig, device) -> tuple:
    """(generator or None, identity, generation size) of a run: the fine-tuned generator in eval mode on
    ``device`` at ``--dtype`` and the SHA-256 of its weights, or for cut-paste no generator and the method's
    name. Fills ``cfg.guidance`` with the backend's default when it was not given."""
    from anomalign.generator.model import WEIGHTS_NAME, MaskGenerator
    from anomalign.weights import weights_file
    if cfg.synthesizer == "cutpaste":  # no generator: the identity is the method's name
        return None, "cutpaste", cfg.resolution
    gen_dir = Path(cfg.generator)
    weights = weights_file(gen_dir, WEIGHTS_NAME)
    if not weights.is_file():
        raise AnomalignError(f"{gen_dir}: not a generator run folder (no {WEIGHTS_NAME}); train one with "
                             "`anomalign train-generator`")
    gen = MaskGenerator.load(gen_dir, base=cfg.base, device=device).cast(DTYPES[cfg.dtype]).eval()
    size = cfg.resolution or gen.resolution
    step = gen.factor * 4
    if size % step:
        raise ConfigError(f"resolution {size} does not fit this generator: it must be a multiple of {step} "
                          f"(the generator was trained at {gen.resolution})")
    if cfg.guidance is None:  # measured: the tiny model aligns best at 3 (docs/generator.md); SD: the paper's 7
        cfg.guidance = TINY_GUIDANCE if gen.spec["backend"] == "tiny" else SD_GUIDANCE
    return gen, file_sha256(weights), size


def generate_rounds(synth, out: Path, acc, progress: bool) -> tuple[int, int]:
    """Attempts in rounds of batch_size x processes (each process its share, skipping recorded ones) until
    ``num`` are kept or the attempt cap is reached; returns (attempts made so far in all, made by this call)."""
    from tqdm.auto import tqdm

    cfg, main = synth.cfg, acc.is_main_process
    rank, world = acc.process_index, acc.num_processes
    # Attempts can be rejected by the filter or, at full size, skipped when their defect fits on no host: then
    # more than --num attempts are needed, up to --max-attempts x --num.
    may_reject = cfg.min_alignment is not None or cfg.normals is not None
    cap = math.ceil(cfg.num * cfg.max_attempts) if may_reject else cfg.num
    round_size = cfg.batch_size * world
    kept_so_far, start, made = 0, 0, 0
    bar = tqdm(total=cfg.num, unit="img", disable=not (progress and main), desc="generate", dynamic_ncols=True)
    while start < cap and kept_so_far < cfg.num:
        end = min(start + round_size, cap)
        if cfg.min_alignment is None:  # every placed attempt is kept: a round asks only for what is missing
            end = min(end, start + cfg.num - kept_so_far)
        todo = [i for i in range(start + rank, end, world) if read_record(out, i) is None]
        for b in range(0, len(todo), cfg.batch_size):
            for rec, image, mask in synth.run(todo[b:b + cfg.batch_size]):
                write_attempt(out, rec, image, mask)
                made += 1
        acc.wait_for_everyone()
        done = [read_record(out, i) for i in range(start, end)]
        if any(r is None for r in done):
            raise AnomalignError(f"{out}: records missing after a round; do all processes share this folder?")
        new_kept = sum(r["kept"] for r in done)
        bar.update(min(new_kept, cfg.num - kept_so_far))
        kept_so_far += new_kept
        start = end
        if made and main:
            bar.set_postfix(kept=f"{kept_so_far}/{start}")
    bar.close()
    return start, made


def finish_run(cfg: GenerateConfig, out: Path, acc, attempts: int, made: int, seconds: float) -> dict:
    """The result files (metadata.jsonl of the first ``num`` kept, rejected.jsonl, summary.json; the main
    process writes them) and the summary; an error when filtering kept fewer than ``num``."""
    acc.wait_for_everyone()
    records = [read_record(out, i) for i in range(attempts)]
    kept = [r for r in records if r is not None and r["kept"]]
    # The result is the first --num kept attempts; attempts after the last of them (the over-shoot of the last
    # round) are not part of it, so they count neither as tried nor as rejected.
    used = kept[cfg.num - 1]["index"] + 1 if len(kept) >= cfg.num else attempts
    counted = [r for r in records[:used] if r is not None]
    summary = summarize(kept[: cfg.num], used)
    summary["unplaceable"] = sum(r.get("reason") == "unplaceable" for r in counted)
    summary["images_per_s"] = made / seconds if made else None
    summary["generated_now"] = made
    if acc.is_main_process:
        for r in kept[cfg.num:]:  # over-shoot of the last round: not part of the result
            for key in ("file_name", "mask_file_name"):
                (out / r[key]).unlink(missing_ok=True)
        write_text_atomic(out / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in kept[: cfg.num]))
        write_text_atomic(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in counted if not r["kept"]))
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
        print(format_summary(summary, out, cfg.num))
    acc.wait_for_everyone()
    if len(kept) < cfg.num:
        why = []
        if summary["unplaceable"]:
            why.append(f"{summary['unplaceable']} had a defect that fits on no host image (larger or more "
                       "normal images, or --foreground masks, help)")
        low = sum(not r["kept"] and r.get("reason") != "unplaceable" for r in counted)
        if low:
            why.append(f"{low} scored below --min-alignment {cfg.min_alignment} (lower the threshold)")
        raise AnomalignError(f"{out}: only {len(kept)} of {attempts} attempts were kept ({'; '.join(why)}; cap "
                             f"{cfg.max_attempts} x --num, raise --max-attempts); the kept ones are written")
    return summary


def format_summary(summary: dict, out: Path, num: int) -> str:
    lines = [f"wrote {min(summary['kept'], num)} pairs to {out} ({summary['attempts']} attempts, "
             f"{100 * summary['acceptance']:.0f}% kept)"]
    if summary.get("unplaceable"):
        lines.append(f"{summary['unplaceable']} attempt(s) skipped: their defect fits on no host image "
                     "(listed in rejected.jsonl with reason 'unplaceable')")
    if summary.get("images_per_s"):
        lines.append(f"speed: {summary['images_per_s']:.2f} images/s ({summary['generated_now']} generated now)")
    for name, s in summary["scores"].items():
        extra = f", {100 * s['frac_positive']:.0f}% > 0" if "frac_positive" in s else ""
        lines.append(f"{name}: mean {s['mean']:.4f}, median {s['median']:.4f}, min {s['min']:.4f}{extra}")
    return "\n".join(lines)
