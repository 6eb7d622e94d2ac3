"""The one training loop both trainers use: accelerate, checkpoints, exact resume, logs, EMA, NaN stop.

Determinism by construction: the data order of micro-step k comes from ``(seed, epoch)`` and every
random draw of a step comes from generators seeded by the step: ``step_generator(seed, step, rank)``,
or better, per sample ``sample_seed(seed, step, position in the global batch)``, which makes the
result independent of the number of processes. A checkpoint therefore needs no RNG state, and ``--resume latest`` continues
with exactly the losses an uninterrupted run would have produced.

Checkpoints are safetensors folders ``checkpoints/step-NNNNNNN/`` (model, optimizer, EMA) + ``trainer.json``;
nothing is pickled. Multi-process (``accelerate launch``): each rank takes its share of every global
batch and gradients are averaged across ranks before the optimizer step.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from anomalign.config import option
from anomalign.errors import AnomalignError


class TrainingDiverged(AnomalignError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass(kw_only=True)
class LoopOptions:
    """Options of the shared training loop (part of every trainer's config)."""

    max_steps: int = option(1000, "optimizer steps")
    batch_size: int = option(16, "global batch size (split across processes)")
    learning_rate: float = option(1e-4, "peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "cosine", "linear"] = option("constant", "learning-rate schedule after warm-up")
    lr_warmup_steps: int = option(0, "linear warm-up steps")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", "autocast precision (accelerate)")
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet")
    ema_decay: float = option(0.0, "EMA decay of the trained weights (0: off); the EMA weights are saved")
    checkpoint_every: int = option(200, "save a resumable checkpoint every N steps")
    keep_checkpoints: int = option(2, "checkpoints kept (older ones are deleted)")
    validate_every: int = option(0, "run validation every N steps (0: only at the end)")
    log_every: int = option(10, "write a log row every N steps")
    seed: int = option(0, "training seed (data order, noise, timesteps, dropout)")
    resume: str | None = option(None, "'latest' or a checkpoint folder to continue from")
    device: str = option("auto", "auto, cpu or cuda")


def step_generator(seed: int, step: int, rank: int = 0, micro: int = 0) -> torch.Generator:
    """The torch.Generator for all random draws of one (micro-)step: depends only on its arguments."""
    return torch.Generator().manual_seed((((seed * 1_000_003 + step) * 101 + rank) * 1009 + micro) % (2**63))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024


def sample_seed(seed: int, micro_step: int, position: int) -> int:
    """Seed for the random draws of the sample at ``position`` of global micro-batch ``micro_step``."""
    return ((seed * 1_000_003 + micro_step) * 10_007 + position) % (2**63)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index batches of one epoch: a seeded permutation, the last short batch filled from the start."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    if n < batch_size:
        perm = (perm * math.ceil(batch_size / n))[:batch_size]
    nb = math.ceil(len(perm) / batch_size)
    perm = perm + perm[: nb * batch_size - len(perm)]
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(nb)]


def batch_indices(n: int, batch_size: int, seed: int, micro_step: int) -> list[int]:
    """Global index batch of micro-step k (epochs follow each other)."""
    nb = math.ceil(max(n, batch_size) / batch_size)
    return epoch_batches(n, batch_size, seed, micro_step // nb)[micro_step % nb]


class EMA:
    """Exponential moving average of parameters (kept in float32 on the parameters' device)."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp.float())


def _lr_lambda(opts: LoopOptions) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < opts.lr_warmup_steps:
            return (step + 1) / max(1, opts.lr_warmup_steps)
        frac = (step - opts.lr_warmup_steps) / max(1, opts.max_steps - opts.lr_warmup_steps)
        if opts.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        if opts.lr_schedule == "linear":
            return max(0.0, 1 - frac)
        return 1.0
    return f


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def find_checkpoint(out_dir: Path, resume: str) -> Path | None:
    """Resolve ``resume`` ('latest' or a folder) to a checkpoint folder; None if 'latest' finds none."""
    if resume == "latest":
        found = sorted((out_dir / "checkpoints").glob("step-*[0-9]"))
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise AnomalignError(f"{resume}: not a checkpoint folder (no trainer.json)")
    return path


@dataclass
class TrainTask:
    """What a trainer plugs into the loop.

    ``params``: parameters the optimizer trains. ``get_batch(micro_step, rank, world)``: this rank's
    share of global micro-batch k. ``step_fn(batch, generator)``: returns {"loss": scalar, ...} (the
    other entries are logged). ``state_fn()`` / ``load_state_fn(state)``: trainable weights for
    checkpoints. ``save_fn(folder)``: writes the final artifact. ``validate_fn(step, folder)``: optional,
    returns metrics and may write images into ``folder``.
    """

    params: list[nn.Parameter]
    get_batch: Callable[[int, int, int], Any]
    step_fn: Callable[[Any, torch.Generator], dict[str, torch.Tensor]]
    state_fn: Callable[[], dict[str, torch.Tensor]]
    load_state_fn: Callable[[dict[str, torch.Tensor]], None]
    save_fn: Callable[[Path], None]
    validate_fn: Callable[[int, Path], dict[str, float]] | None = None
    best_metric: str | None = None  # a key of validate_fn's result, higher is better


def make_accelerator(opts: LoopOptions):
    from accelerate import Accelerator
    cpu = opts.device == "cpu" or (opts.device == "auto" and not torch.cuda.is_available())
    return Accelerator(mixed_precision=opts.mixed_precision, cpu=cpu)


def train_loop(task: TrainTask, opts: LoopOptions, out_dir: Path, accelerator=None,
               progress: bool = True) -> dict[str, Any]:
    """Run ``opts.max_steps`` optimizer steps of ``task``; returns a summary (last losses, best metric, timing)."""
    out_dir = Path(out_dir)
    acc = accelerator or make_accelerator(opts)
    rank, world = acc.process_index, acc.num_processes
    opt = torch.optim.AdamW(task.params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opts))
    ema = EMA(task.params, opts.ema_decay) if opts.ema_decay > 0 else None
    start, best = 0, None
    if opts.resume:
        ckpt = find_checkpoint(out_dir, opts.resume)
        if ckpt is not None:
            info = json.loads((ckpt / "trainer.json").read_text())
            task.load_state_fn(load_file(str(ckpt / "model.safetensors")))
            _load_optimizer_state(opt, load_file(str(ckpt / "optimizer.safetensors")), info["optimizer"])
            sched.load_state_dict(info["lr_scheduler"])
            if ema is not None and (ckpt / "ema.safetensors").is_file():
                shadow = load_file(str(ckpt / "ema.safetensors"))
                ema.shadow = [shadow[str(i)].to(p.device) for i, p in enumerate(task.params)]
            start, best = info["step"], info.get("best")
            if acc.is_main_process:
                print(f"resumed from {ckpt} at step {start}")
                for name in ("train.csv", "validation.csv"):  # rows logged after the checkpoint are redone
                    _truncate_log(out_dir / "logs" / name, start)
    log_path = out_dir / "logs" / "train.csv"
    writer = _tensorboard(out_dir / "logs") if acc.is_main_process else None
    bar = tqdm(total=opts.max_steps, initial=start, desc="training", unit="step",
               disable=not (progress and acc.is_main_process))
    last: dict[str, float] = {}
    window: dict[str, list[float]] = {}  # per loss: its values since the last log row
    t_last, n_since = time.perf_counter(), 0
    try:
        for step in range(start, opts.max_steps):
            micro_values: dict[str, list[float]] = {}
            for micro in range(opts.gradient_accumulation_steps):
                k = step * opts.gradient_accumulation_steps + micro
                batch = task.get_batch(k, rank, world)
                with acc.autocast():
                    losses = task.step_fn(batch, step_generator(opts.seed, step, rank, micro))
                loss = losses["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {step}; stopped without saving these weights. "
                        f"Last good checkpoint: {find_checkpoint(out_dir, 'latest') or 'none yet'} "
                        "(lower the learning rate or use --mixed-precision no, then --resume latest)")
                acc.backward(loss / opts.gradient_accumulation_steps)
                for name, v in losses.items():
                    micro_values.setdefault(name, []).append(float(v.detach()))
            totals = {name: _finite_mean(vs) for name, vs in micro_values.items()}
            if world > 1:  # each rank computed the mean over its equal share: average = global mean
                for p in task.params:
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
                totals = {k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean"))
                          for k, v in totals.items()}
            if opts.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(task.params, opts.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            last = dict(totals, lr=sched.get_last_lr()[0])
            for name, v in totals.items():
                window.setdefault(name, []).append(v)
            n_since += 1
            done = step + 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in totals.items() if math.isfinite(v)})
            if acc.is_main_process and (done % opts.log_every == 0 or done == opts.max_steps):
                now = time.perf_counter()
                # a row holds each loss averaged over the steps since the previous row (where it was computed)
                row = {k: _finite_mean(vs) for k, vs in window.items()}
                row |= {"lr": last["lr"], "it_per_s": n_since / max(now - t_last, 1e-9)}
                last["it_per_s"] = row["it_per_s"]
                t_last, n_since, window = now, 0, {}
                _log_row(log_path, done, row)
                if writer is not None:
                    for name, v in row.items():
                        if math.isfinite(v):
                            writer.add_scalar(name, v, done)
            if task.validate_fn is not None and opts.validate_every and done % opts.validate_every == 0:
                best = _validate(task, ema, acc, done, out_dir, best)
            if done % opts.checkpoint_every == 0 and done < opts.max_steps and acc.is_main_process:
                _save_checkpoint(out_dir, done, task, opt, sched, ema, best, opts.keep_checkpoints)
        if task.validate_fn is not None:
            best = _validate(task, ema, acc, opts.max_steps, out_dir, best)
        if acc.is_main_process:
            if ema is not None:
                ema.swap()
            task.save_fn(out_dir)
            if ema is not None:
                ema.swap()
            _save_checkpoint(out_dir, opts.max_steps, task, opt, sched, ema, best, opts.keep_checkpoints)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    acc.wait_for_everyone()
    return {"last": last, "best": best, "steps": opts.max_steps}


def _validate(task: TrainTask, ema: EMA | None, acc, step: int, out_dir: Path, best: dict | None) -> dict | None:
    if not acc.is_main_process:
        return best
    if ema is not None:
        ema.swap()
    try:
        metrics = task.validate_fn(step, out_dir / "validation")
        _log_row(out_dir / "logs" / "validation.csv", step, metrics)
        key = task.best_metric
        if key is not None and key in metrics and (best is None or metrics[key] > best["value"]):
            best = {"step": step, "metric": key, "value": metrics[key]}
            task.save_fn(out_dir / "best")
    finally:
        if ema is not None:
            ema.swap()
    return best


def _save_checkpoint(out_dir: Path, step: int, task: TrainTask, opt, sched, ema: EMA | None, best, keep: int) -> Path:
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in task.state_fn().items()}, str(tmp / "model.safetensors"))
    tensors, meta = _optimizer_state(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file({str(i): s.cpu().contiguous() for i, s in enumerate(ema.shadow)}, str(tmp / "ema.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "optimizer": meta, "best": best,
                                                  "lr_scheduler": sched.state_dict()}, default=float))
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    for old in sorted(root.glob("step-*[0-9]"))[:-max(1, keep)]:
        shutil.rmtree(old)
    return final


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (NaN marks a loss not computed at that step or micro-batch, e.g. feedback
    every k-th step); NaN if there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _log_row(path: Path, step: int, values: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["step", *values])
        w.writerow([step, *(f"{v:.6g}" if isinstance(v, float) else v for v in values.values())])


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    path.write_text("".join(kept))


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; the CSV log is always written
        return None
    return SummaryWriter(str(folder))
