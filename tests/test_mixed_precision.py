"""Mixed precision in the shared loop (issue 36): the accelerator's optimizer and grad scaler (unscale before
clipping, overflow steps skipped, the scale kept across a resume), and a bf16 autocast step on CPU."""
import csv
import json

import pytest
import torch

from anomalign.devices import resolve_precision
from anomalign.training import LoopOptions, TrainTask, train_loop


def fp16_accelerator(init_scale=2.0 ** 16):
    """A CPU accelerator with torch's CPU GradScaler in place of the CUDA one that fp16 gets on a GPU
    (accelerate gives a CPU run no scaler), so the loop runs exactly the fp16 code path."""
    from anomalign.devices import make_accelerator
    acc = make_accelerator("no", "cpu")
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    return acc


def scalar_task(w, inf_at=()):
    """loss = Σ x·w (gradient x) at every micro-step, except at ``inf_at`` where loss = Σ sqrt(w - w) is 0 (finite)
    and its gradient is +inf: an fp16 overflow in miniature."""
    x = torch.tensor([3.0, -4.0])

    def step_fn(k, g):
        if k in inf_at:
            return {"loss": (w - w.detach()).pow(0.5).sum()}
        return {"loss": (x * w).sum()}

    return TrainTask(params=[w], get_batch=lambda k, r, n: k, step_fn=step_fn,
                     state_fn=lambda: {"w": w.detach().clone()}, load_state_fn=lambda sd: w.data.copy_(sd["w"]),
                     save_fn=lambda d: None)


def test_fp16_unscales_before_clipping_and_skips_an_overflow_step(tmp_path, monkeypatch):
    acc = fp16_accelerator()
    events = []
    unscale = acc.scaler.unscale_
    monkeypatch.setattr(acc.scaler, "unscale_", lambda opt: (events.append("unscale"), unscale(opt))[1])
    clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *a, **kw):
        params = list(params)
        events.append(("clip", float(torch.cat([p.grad.flatten() for p in params]).norm())))
        return clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    seen = []
    task = scalar_task(w, inf_at={1})
    step_fn = task.step_fn
    task.step_fn = lambda k, g: (seen.append(w.detach().clone()), step_fn(k, g))[1]
    opts = LoopOptions(max_steps=3, batch_size=1, learning_rate=0.1, weight_decay=0.0, max_grad_norm=1.0,
                       checkpoint_every=100, log_every=1)
    train_loop(task, opts, tmp_path, acc, progress=False)
    # the accelerator's optimizer and scaler: unscaled before each clip, which sees the true gradient norm 5
    assert events[0] == "unscale" and events[1] == ("clip", pytest.approx(5.0))
    assert [e if e == "unscale" else e[0] for e in events] == ["unscale", "clip"] * 3
    assert events[3][1] == float("inf")  # step 1: the overflowed gradient reaches the clip unscaled, as inf
    assert not torch.equal(seen[0], seen[1])  # step 0 moved the weights
    assert torch.equal(seen[1], seen[2])  # step 1 (inf gradient) was skipped: the weights did not move
    assert torch.isfinite(w).all() and not torch.equal(seen[2], w.detach())  # step 2 ran again
    assert acc.scaler.get_scale() == 2.0 ** 15  # the scale backed off once
    rows = list(csv.DictReader(open(tmp_path / "logs" / "train.csv")))
    assert [float(r["skipped_step"]) for r in rows] == [0.0, 1.0, 0.0]
    info = json.loads(next((tmp_path / "checkpoints").glob("step-*")).joinpath("trainer.json").read_text())
    assert info["grad_scaler"]["scale"] == 2.0 ** 15  # kept for --resume


def test_fp16_resume_restores_the_loss_scale(tmp_path):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opts = dict(batch_size=1, learning_rate=0.1, weight_decay=0.0, checkpoint_every=2, log_every=1)
    train_loop(scalar_task(w, inf_at={0}), LoopOptions(max_steps=2, **opts), tmp_path, fp16_accelerator(), False)
    acc = fp16_accelerator()
    train_loop(scalar_task(w), LoopOptions(max_steps=3, resume="latest", **opts), tmp_path, acc, False)
    assert acc.scaler.get_scale() == 2.0 ** 15


def test_auto_precision_is_no_on_cpu_and_explicit_choices_pass():
    assert resolve_precision("auto", "cpu") == "no"
    assert [resolve_precision(p, "cpu") for p in ("no", "fp16", "bf16")] == ["no", "fp16", "bf16"]
