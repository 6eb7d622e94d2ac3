"""The one training loop both trainers use: accelerate, checkpoints, exact resume, logs, EMA, NaN stop.

Determinism by construction: the data order of micro-step k comes from ``(seed, epoch)`` and every
random draw of a step comes from generators seeded by the step: ``step_generator(seed, step, rank)``,
or better, per sample ``sample_seed(seed, step, position in the global batch)``, which makes the
result independent of the number of processes. Models that draw from the global RNG themselves (dropout,
Segformer's drop-path) get it restored from the checkpoint, so ``--resume latest`` continues with the losses an
uninterrupted run would have produced: exactly, up to float rounding where a latent cache is filled in another
batch order after the resume (tests/test_reliability.py).

Checkpoints are safetensors folders ``checkpoints/step-NNNNNNN/`` (model, optimizer, EMA, global RNG state) +
``trainer.json``; nothing is pickled. Multi-process (``accelerate launch``): each rank takes its share of every
global batch and gradients are averaged across ranks before the optimizer step.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from anomalign.config import option
from anomalign.devices import make_accelerator as _make_accelerator
from anomalign.errors import AnomalignError
from anomalign.files import os_errors


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
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = option(
        "no", "autocast precision (accelerate); fp16 scales the loss and skips overflow steps; auto: bf16 on a GPU "
              "that has it, else fp16 on a GPU, no on the CPU")
    gradient_checkpointing: bool = option(False, "trade compute for memory in the UNet")
    ema_decay: float = option(0.0, "EMA decay of the trained weights (0: off); the EMA weights are saved")
    checkpoint_every: int = option(200, "save a resumable checkpoint every N steps")
    keep_checkpoints: int = option(2, "checkpoints kept (older ones are deleted)")
    validate_every: int = option(0, "run validation every N steps (0: only at the end)")
    extend_steps: int = option(0, "train on while the val score still rises: up to this many steps after "
                                  "--max-steps, in blocks, each kept only while the validation at its end is the "
                                  "best so far (0: off; needs a validation)")
    extend_block: int = option(0, "steps per extension block, a warm restart of the schedule (0: max_steps // 4)")
    extend_lr: float = option(0.5, "peak learning rate of each extension block, times --learning-rate")
    extend_min_gain: float = option(0.0, "a validation is a new best only when it beats the best by at least this "
                                         "fraction of it (the patience rule's noise floor; 0: any improvement)")
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
        if step >= opts.max_steps and opts.extend_steps:  # an extension block: the schedule again from extend_lr
            block = extension_block(opts)
            return opts.extend_lr * shape(((step - opts.max_steps) % block) / block)
        if step < opts.lr_warmup_steps:
            return (step + 1) / max(1, opts.lr_warmup_steps)
        return shape((step - opts.lr_warmup_steps) / max(1, opts.max_steps - opts.lr_warmup_steps))

    def shape(frac: float) -> float:
        if opts.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        if opts.lr_schedule == "linear":
            return max(0.0, 1 - frac)
        return 1.0
    return f


def extension_block(opts: LoopOptions) -> int:
    """Steps per extension block (``--extend-block``, or a quarter of ``--max-steps``)."""
    return opts.extend_block or max(1, opts.max_steps // 4)


def train_on(opts: LoopOptions, best: dict | None, done: int) -> bool:
    """The patience rule: after ``done`` steps (``--max-steps`` or an extension block's end), train one more block
    only when the validation at ``done`` is the best of the run so far (the val score still rises) and the block
    fits in ``--extend-steps``. One block of patience: a block whose end is not a new best ends training."""
    return (opts.extend_steps > 0 and best is not None and best.get("step") == done
            and done + extension_block(opts) <= opts.max_steps + opts.extend_steps)


def segment_end(opts: LoopOptions, step: int) -> int:
    """Where the stretch of training that holds ``step`` ends: ``--max-steps``, or the end of its extension block
    (a resume inside a block finishes that block; a resume at a block's end decides again, from the checkpoint's
    best, what the uninterrupted run decided)."""
    if step <= opts.max_steps:
        return opts.max_steps
    block = extension_block(opts)
    return opts.max_steps + math.ceil((step - opts.max_steps) / block) * block


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

    ``params``: parameters the optimizer trains (all of them: clipping, EMA, checkpoints). ``param_groups``:
    optional AdamW groups over the same parameters, each {"params": [...], "lr": peak lr} (e.g. the generator's
    zero-initialised mask channels at their own rate); None = one group at ``--learning-rate``. ``get_batch(micro_step, rank, world)``: this rank's
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
    best_metric: str | None = None  # a key of validate_fn's result
    best_higher: bool = True  # whether a higher best_metric is better (False: a loss)
    param_groups: list[dict] | None = None


def make_accelerator(opts: LoopOptions):
    """The run's Accelerator (precision and device from ``opts``; ``devices.make_accelerator``)."""
    return _make_accelerator(opts.mixed_precision, opts.device)


def train_loop(task: TrainTask, opts: LoopOptions, out_dir: Path, accelerator=None,
               progress: bool = True) -> dict[str, Any]:
    """Run ``opts.max_steps`` optimizer steps of ``task``; returns a summary (last losses, best metric, timing)."""
    out_dir = Path(out_dir)
    if opts.extend_steps < 0 or opts.extend_block < 0 or not opts.extend_lr > 0 or not opts.extend_min_gain >= 0:
        raise AnomalignError(f"--extend-steps, --extend-block and --extend-min-gain must be >= 0 and --extend-lr > 0, "
                             f"got {opts.extend_steps}, {opts.extend_block}, {opts.extend_min_gain} and {opts.extend_lr}")
    acc = accelerator or make_accelerator(opts)
    rank, world = acc.process_index, acc.num_processes
    opt = torch.optim.AdamW(task.param_groups or task.params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opts))  # one lambda scales every group's peak lr
    # The accelerator's optimizer: with fp16 its step goes through the accelerator's grad scaler (skipped when a
    # gradient overflowed, scale adapted); without a scaler it is the plain AdamW step.
    opt = acc.prepare(opt)
    ema = EMA(task.params, opts.ema_decay) if opts.ema_decay > 0 else None
    start, best = 0, None
    ckpt = find_checkpoint(out_dir, opts.resume) if opts.resume else None
    if ckpt is not None:
        start, best = _load_checkpoint(ckpt, task, opt, sched, ema, acc.scaler)
        if not _own_checkpoint(ckpt, out_dir):
            # a fork (another run's checkpoint, e.g. an arm from the baseline's half-way one): that run's best
            # step and value are not this run's, and its best/ folder is not here; this run's best starts afresh
            best = None
        if acc.is_main_process:
            print(f"resumed from {ckpt} at step {start}")
    if acc.is_main_process:  # rows logged after the checkpoint (or by a run killed before its first one) are redone
        for name in ("train.csv", "validation.csv"):
            _truncate_log(out_dir / "logs" / name, start)
    scale0 = _max_abs(task.params)
    log_path = out_dir / "logs" / "train.csv"
    writer = _tensorboard(out_dir / "logs") if acc.is_main_process else None
    bar = tqdm(total=opts.max_steps, initial=start, desc="training", unit="step",
               disable=not (progress and acc.is_main_process))
    last: dict[str, float] = {}
    window = _LogWindow(log_path, writer)
    if ckpt is not None:  # the steps since the last log row: a resumed row averages the same steps as one run's
        window.restore(_read_trainer_json(ckpt).get("log_window"))
    end = segment_end(opts, start)
    try:
        while True:
            for step in range(start, end):
                micro_values: dict[str, list[float]] = {}
                for micro in range(opts.gradient_accumulation_steps):
                    k = step * opts.gradient_accumulation_steps + micro
                    batch = task.get_batch(k, rank, world)
                    with acc.autocast():
                        losses = task.step_fn(batch, step_generator(opts.seed, step, rank, micro))
                    loss = losses["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingDiverged(_diverged_message(out_dir, float(loss.detach()), step, scale0))
                    acc.backward(loss / opts.gradient_accumulation_steps)
                    for name, v in losses.items():
                        micro_values.setdefault(name, []).append(float(v.detach()))
                totals = {name: _finite_mean(vs) for name, vs in micro_values.items()}
                totals = _optimizer_step(task, opts, acc, opt, sched, ema, totals)
                last = dict(totals, lr=sched.get_last_lr()[0])
                window.add(totals)
                done = step + 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in totals.items() if math.isfinite(v)})
                if acc.is_main_process and (done % opts.log_every == 0 or done == end):
                    last["it_per_s"] = window.write(done, last["lr"])
                if (task.validate_fn is not None and opts.validate_every and done % opts.validate_every == 0
                        and done < end):  # the stretch's last validation is below, once
                    best = _validate(task, ema, acc, done, out_dir, best, opts.extend_min_gain)
                if done % opts.checkpoint_every == 0 and done < end and acc.is_main_process:
                    _save_checkpoint(out_dir, done, task, opt, sched, ema, best, opts.keep_checkpoints, acc.scaler,
                                     log_window=window.state())
            # a resume from this run's own checkpoint at ``end`` finds its validation done (the checkpoint was
            # saved after it)
            if task.validate_fn is not None and not (start == end and ckpt is not None and best is not None):
                best = _validate(task, ema, acc, end, out_dir, best, opts.extend_min_gain)
            if acc.num_processes > 1 and opts.extend_steps:  # only the main process validates: all decide as it
                from accelerate.utils import broadcast_object_list
                best = broadcast_object_list([best])[0]
            if not train_on(opts, best, end):
                break
            if acc.is_main_process:  # the block end the rule continued from: a resume decides the same again
                _save_checkpoint(out_dir, end, task, opt, sched, ema, best, opts.keep_checkpoints, acc.scaler)
            start, end = end, end + extension_block(opts)
            bar.total = end
            bar.refresh()
            if acc.is_main_process and progress:
                print(f"val {best['metric']} still improving at step {start} ({best['value']:.4f}): training on to "
                      f"step {end} (--extend-steps {opts.extend_steps})")
        best = _finish(task, opts, acc, out_dir, opt, sched, ema, best, end)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    acc.wait_for_everyone()
    return {"last": last, "best": best, "steps": end}


def _own_checkpoint(ckpt: Path, out_dir: Path) -> bool:
    """Whether ``ckpt`` is one of this run's checkpoints (a resume) rather than another run's (a fork)."""
    return Path(ckpt).resolve().parent == (Path(out_dir) / "checkpoints").resolve()


def _read_trainer_json(ckpt: Path) -> dict:
    """A checkpoint's trainer.json (read again after ``_load_checkpoint`` checked it)."""
    return json.loads((ckpt / "trainer.json").read_text())


def _load_checkpoint(ckpt: Path, task: TrainTask, opt, sched, ema: EMA | None, scaler=None
                     ) -> tuple[int, dict | None]:
    """Restore weights, optimizer, schedule and EMA from ``ckpt``; returns (step, best). A damaged file gives
    an error naming it (nothing is unpickled: safetensors and JSON only)."""
    def tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(ckpt / name))
        except Exception as e:  # SafetensorError, OSError, ...: whatever the damage, name the file
            raise AnomalignError(f"{ckpt / name}: damaged checkpoint file, not readable as safetensors "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); resume from "
                                 f"another checkpoint with --resume {ckpt.parent}/step-NNNNNNN") from None
    try:
        info = json.loads((ckpt / "trainer.json").read_text())
        step, opt_meta, lr_state = int(info["step"]), info["optimizer"], info["lr_scheduler"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise AnomalignError(f"{ckpt / 'trainer.json'}: damaged checkpoint file ({type(e).__name__}: {e})") from None
    model_state = tensors("model.safetensors")
    try:
        task.load_state_fn(model_state)
    except (RuntimeError, KeyError) as e:
        raise AnomalignError(f"{ckpt / 'model.safetensors'}: weights do not fit this run's model "
                             f"({str(e).splitlines()[0]})") from None
    try:
        _load_optimizer_state(opt, tensors("optimizer.safetensors"), opt_meta)
        sched.load_state_dict(lr_state)
    except (ValueError, KeyError, TypeError) as e:
        raise AnomalignError(f"{ckpt / 'optimizer.safetensors'}: optimizer state does not fit this run "
                             f"({type(e).__name__}: {e})") from None
    if ema is not None and (ckpt / "ema.safetensors").is_file():
        shadow = tensors("ema.safetensors")
        ema.shadow = [shadow[str(i)].to(p.device) for i, p in enumerate(task.params)]
    if (ckpt / "rng.safetensors").is_file():
        _set_rng_state(tensors("rng.safetensors"))
    if scaler is not None and info.get("grad_scaler"):
        scaler.load_state_dict(info["grad_scaler"])
    return step, info.get("best")


def _rng_state() -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU, current CUDA device): what models draw from themselves (dropout,
    Segformer's drop-path), outside the per-step generators. Saved so that a resumed run draws the same."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _max_abs(params: list[nn.Parameter]) -> float:
    """Largest |weight| over ``params`` (a cheap divergence indicator)."""
    return max((float(p.detach().abs().max()) for p in params if p.numel()), default=0.0)


def _diverged_message(out_dir: Path, loss: float, step: int, scale0: float) -> str:
    """What the NaN stop tells the user about the latest checkpoint: only what was checked."""
    # ``step`` counts from 0; checkpoint step-N holds the weights after N steps: the message counts like the files
    msg = f"loss became {loss} in step {step + 1}; training stopped, and the weights of that step were not saved. "
    latest = find_checkpoint(out_dir, "latest")
    if latest is None:
        return msg + "No checkpoint was saved before it (lower the learning rate or use --mixed-precision no)"
    try:
        info = json.loads((latest / "trainer.json").read_text())
        scale = float(info["max_abs_weight"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        scale = float("nan")
    msg += (f"Latest checkpoint, from before that step: {latest} (its weights are finite, largest |weight| "
            f"{scale:.3g}; "
            f"{scale0:.3g} when this run started)")
    if not scale <= 10 * max(scale0, 1e-12):
        msg += (". Its weights grew more than 10x: it is probably diverging already — resume from an earlier "
                "checkpoint or restart")
    return msg + ". Lower the learning rate or use --mixed-precision no, then --resume with a checkpoint"


def _optimizer_step(task: TrainTask, opts: LoopOptions, acc, opt, sched, ema: EMA | None,
                    totals: dict[str, float]) -> dict[str, float]:
    """Average the gradients (and the logged losses) over processes, clip, step, update the EMA; returns the
    step's losses as every process sees them."""
    if acc.num_processes > 1:  # each rank computed the mean over its equal share: average = global mean
        for p in task.params:
            if p.grad is not None:
                p.grad = acc.reduce(p.grad, reduction="mean")
        totals = {k: float(acc.reduce(torch.tensor(v, device=acc.device), reduction="mean"))
                  for k, v in totals.items()}
    if acc.scaler is not None:  # fp16: gradients are multiplied by the loss scale; clip the true ones
        acc.scaler.unscale_(opt.optimizer)
    if opts.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(task.params, opts.max_grad_norm)
    opt.step()  # with a scaler: skipped when a gradient is inf/NaN (fp16 overflow), and the scale is adapted
    if acc.scaler is not None:  # a column in every row (the CSV header is written once), 1 on skipped steps
        totals = dict(totals, skipped_step=float(opt.step_was_skipped))
    with warnings.catch_warnings():  # the schedule counts skipped steps too; torch's "step order" warning misleads
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        sched.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update()
    return totals


class _LogWindow:
    """The losses of the steps since the last log row: a row holds each loss averaged over the steps
    where it was computed (NaN marks the others), the learning rate and the speed since the last row."""

    def __init__(self, path: Path, writer):
        self.path, self.writer = path, writer
        self.values: dict[str, list[float]] = {}
        self.t_last, self.steps = time.perf_counter(), 0

    def state(self) -> dict:
        """The losses gathered since the last row (NaN as null), for a checkpoint."""
        return {k: [v if math.isfinite(v) else None for v in vs] for k, vs in self.values.items()}

    def restore(self, state: dict | None) -> None:
        """Continue a window saved by ``state`` (a checkpoint taken between two log rows)."""
        self.values = {k: [float("nan") if v is None else float(v) for v in vs] for k, vs in (state or {}).items()}

    def add(self, totals: dict[str, float]) -> None:
        for name, v in totals.items():
            self.values.setdefault(name, []).append(v)
        self.steps += 1

    def write(self, step: int, lr: float) -> float:
        """Write the row of ``step`` (CSV, and TensorBoard when available) and start a new window; returns it/s."""
        now = time.perf_counter()
        row = {k: _finite_mean(vs) for k, vs in self.values.items()}
        row |= {"lr": lr, "it_per_s": self.steps / max(now - self.t_last, 1e-9)}
        self.t_last, self.steps, self.values = now, 0, {}
        _log_row(self.path, step, row)
        if self.writer is not None:
            for name, v in row.items():
                if math.isfinite(v):
                    self.writer.add_scalar(name, v, step)
        return row["it_per_s"]


def _finish(task: TrainTask, opts: LoopOptions, acc, out_dir: Path, opt, sched, ema: EMA | None,
            best: dict | None, end: int) -> dict | None:
    """The final artifact (EMA weights when on) and the final checkpoint, after ``end`` steps; returns best.
    After an extension whose last block did not beat the best validation, the artifact is the best one
    (``best/``, from a step >= --max-steps: training went on only from a best), so the run ships the weights the
    patience rule kept."""
    if acc.is_main_process:
        if end > opts.max_steps and best is not None and best.get("step") != end and (out_dir / "best").is_dir():
            _copy_artifact(out_dir / "best", out_dir)
        else:
            if ema is not None:
                ema.swap()
            task.save_fn(out_dir)
            if ema is not None:
                ema.swap()
        _save_checkpoint(out_dir, end, task, opt, sched, ema, best, opts.keep_checkpoints, acc.scaler)
    return best


def _copy_artifact(src: Path, dst: Path) -> None:
    """Copy the files of an artifact folder (what ``save_fn`` writes) over ``dst``'s, each replaced atomically."""
    for f in sorted(src.iterdir()):
        if f.is_file():
            tmp = dst / f".{f.name}.tmp"
            shutil.copyfile(f, tmp)
            tmp.replace(dst / f.name)


def _validate(task: TrainTask, ema: EMA | None, acc, step: int, out_dir: Path, best: dict | None,
              min_gain: float = 0.0) -> dict | None:
    if not acc.is_main_process:
        return best
    if ema is not None:
        ema.swap()
    try:
        metrics = task.validate_fn(step, out_dir / "validation")
        _log_row(out_dir / "logs" / "validation.csv", step, metrics)
        key = task.best_metric
        value = metrics.get(key, math.nan) if key is not None else math.nan
        margin = min_gain * abs(best["value"]) if best is not None else 0.0
        better = best is None or (value > best["value"] + margin if task.best_higher
                                  else value < best["value"] - margin)
        if math.isfinite(value) and better:
            best = {"step": step, "metric": key, "value": value}
            task.save_fn(out_dir / "best")
    finally:
        if ema is not None:
            ema.swap()
    return best


def _save_checkpoint(out_dir: Path, step: int, task: TrainTask, opt, sched, ema: EMA | None, best, keep: int,
                     scaler=None, log_window: dict | None = None) -> Path:
    root = out_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in task.state_fn().items()}
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        shutil.rmtree(tmp)
        raise TrainingDiverged(f"weights became NaN/inf before step {step} was saved; not saving them. "
                               f"Latest checkpoint: {find_checkpoint(out_dir, 'latest') or 'none'}")
    try:
        with os_errors(tmp):  # a full disk: one line from the CLI, and no half-written checkpoint left behind
            _write_checkpoint(tmp, step, state, task, opt, sched, ema, best, scaler, log_window)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    for old in sorted(root.glob("step-*[0-9]"))[:-max(1, keep)]:
        shutil.rmtree(old)
    return final


def _write_checkpoint(tmp: Path, step: int, state: dict, task: TrainTask, opt, sched, ema: EMA | None, best,
                      scaler, log_window: dict | None) -> None:
    save_file(state, str(tmp / "model.safetensors"))
    tensors, meta = _optimizer_state(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file({str(i): s.cpu().contiguous() for i, s in enumerate(ema.shadow)}, str(tmp / "ema.safetensors"))
    save_file(_rng_state(), str(tmp / "rng.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "optimizer": meta, "best": best,
                                                  "lr_scheduler": sched.state_dict(),
                                                  "max_abs_weight": _max_abs(task.params),
                                                  # fp16: the loss scale reached, so a resume does not relearn it
                                                  "grad_scaler": scaler.state_dict() if scaler is not None else None,
                                                  "log_window": log_window},
                                                 default=float))


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
    """Drop the rows after ``step`` (the whole file at step 0: a fresh start may log other columns)."""
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
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
