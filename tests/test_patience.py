"""The patience rule of the shared training loop (``--extend-steps``): train on, in blocks, while the validation
at a stretch's end is the best so far; ship the best weights when a block did not beat it; resume exactly."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anomalign.training import LoopOptions, TrainTask, _lr_lambda, train_loop, train_on


def scripted_task(w: torch.nn.Parameter, scores: dict[int, float]) -> TrainTask:
    """A one-weight task whose validation at step s scores ``scores[s]`` (a stand-in for a val mIoU curve), and
    whose artifact is the weight itself (``w.safetensors``)."""
    def get_batch(k, rank, world):
        return torch.ones(3)

    def save_fn(folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({"w": w.detach().clone()}, str(Path(folder) / "w.safetensors"))

    return TrainTask(params=[w], get_batch=get_batch, step_fn=lambda b, g: {"loss": ((w * b - 3) ** 2).sum()},
                     state_fn=lambda: {"w": w.data}, load_state_fn=lambda sd: w.data.copy_(sd["w"]),
                     save_fn=save_fn, validate_fn=lambda step, folder: {"miou": scores[step]}, best_metric="miou")


def opts(**kw) -> LoopOptions:
    base = dict(max_steps=8, validate_every=4, checkpoint_every=4, keep_checkpoints=10, learning_rate=0.05,
                lr_schedule="cosine", device="cpu", log_every=1, extend_steps=8, extend_block=4)
    return LoopOptions(**(base | kw))


def validated_steps(out: Path) -> list[int]:
    rows = (out / "logs" / "validation.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows]


def test_still_rising_trains_on_to_the_cap(tmp_path):
    scores = {4: 0.1, 8: 0.2, 12: 0.3, 16: 0.4}
    summary = train_loop(scripted_task(torch.nn.Parameter(torch.zeros(3)), scores), opts(), tmp_path, progress=False)
    assert summary["steps"] == 16 and summary["best"]["step"] == 16
    assert validated_steps(tmp_path) == [4, 8, 12, 16]


def test_a_block_that_does_not_improve_ends_training_and_the_best_weights_ship(tmp_path):
    w = torch.nn.Parameter(torch.zeros(3))
    summary = train_loop(scripted_task(w, {4: 0.1, 8: 0.3, 12: 0.2}), opts(), tmp_path, progress=False)
    assert summary["steps"] == 12 and summary["best"]["step"] == 8
    shipped = load_file(str(tmp_path / "w.safetensors"))["w"]
    assert torch.equal(shipped, load_file(str(tmp_path / "best" / "w.safetensors"))["w"])
    assert not torch.equal(shipped, w.detach())  # the last block's weights were trained on, and not shipped
    assert json.loads((tmp_path / "checkpoints" / "step-0000012" / "trainer.json").read_text())["step"] == 12


def test_a_peak_before_the_end_changes_nothing(tmp_path):
    scores = {4: 0.5, 8: 0.3}
    ext = train_loop(scripted_task(wa := torch.nn.Parameter(torch.zeros(3)), scores), opts(), tmp_path / "a",
                     progress=False)
    off = train_loop(scripted_task(wb := torch.nn.Parameter(torch.zeros(3)), scores), opts(extend_steps=0),
                     tmp_path / "b", progress=False)
    assert ext["steps"] == off["steps"] == 8 and torch.equal(wa, wb)
    # without an extension the final weights ship, as before the rule (not best/'s)
    assert torch.equal(load_file(str(tmp_path / "a" / "w.safetensors"))["w"], wa.detach())


def test_the_cap_counts_whole_blocks():
    o = opts(extend_steps=6, extend_block=4)
    assert train_on(o, {"step": 8}, 8) and not train_on(o, {"step": 12}, 12)
    assert not train_on(o, {"step": 4}, 8) and not train_on(o, None, 8)
    assert not train_on(opts(extend_steps=0), {"step": 8}, 8)


def test_each_block_restarts_the_schedule_at_extend_lr():
    f = _lr_lambda(opts(extend_lr=0.5))
    assert f(0) == 1.0 and f(7) < 0.05
    assert f(8) == 0.5 and f(12) == 0.5 and f(10) == pytest.approx(0.25)
    assert _lr_lambda(opts(extend_steps=0))(8) == 0.0  # off: the schedule as before


@pytest.mark.parametrize("kill_at", [8, 10, 12])
def test_a_resume_inside_or_at_the_end_of_a_block_decides_as_the_whole_run(tmp_path, kill_at):
    scores = {4: 0.1, 8: 0.2, 12: 0.3, 16: 0.25}
    whole = torch.nn.Parameter(torch.zeros(3))
    train_loop(scripted_task(whole, scores), opts(checkpoint_every=2), tmp_path / "whole", progress=False)

    class Killed(Exception):
        pass

    def killing(scores):
        task = scripted_task(w := torch.nn.Parameter(torch.zeros(3)), scores)
        real = task.get_batch

        def get_batch(k, rank, world):
            if k == kill_at:
                raise Killed
            return real(k, rank, world)
        task.get_batch = get_batch
        return task
    with pytest.raises(Killed):
        train_loop(killing(scores), opts(checkpoint_every=2), tmp_path / "cut", progress=False)
    again = torch.nn.Parameter(torch.zeros(3))
    summary = train_loop(scripted_task(again, scores), opts(checkpoint_every=2, resume="latest"), tmp_path / "cut",
                         progress=False)
    assert summary["steps"] == 16 and summary["best"]["step"] == 12
    assert validated_steps(tmp_path / "cut") == validated_steps(tmp_path / "whole") == [4, 8, 12, 16]
    shipped = [load_file(str(tmp_path / f / "w.safetensors"))["w"] for f in ("whole", "cut")]
    assert torch.allclose(shipped[0], shipped[1]) and math.isfinite(float(shipped[0].sum()))


def test_a_loss_trains_on_while_it_falls_by_the_min_gain(tmp_path):
    """``best_higher`` False (a held-out loss): lower is better. With ``extend_min_gain`` 0.05 a block that lowers the
    loss by under 5 % of it is not a new best: training stops and the last clearly better weights ship."""
    w = torch.nn.Parameter(torch.zeros(3))
    task = scripted_task(w, {8: 1.0, 12: 0.9, 16: 0.88})  # -10 %, then -2.2 %
    task.best_metric, task.best_higher = "miou", False
    summary = train_loop(task, opts(validate_every=0, extend_min_gain=0.05), tmp_path, progress=False)
    assert summary["steps"] == 16 and summary["best"] == {"step": 12, "metric": "miou", "value": 0.9}
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"],
                       load_file(str(tmp_path / "best" / "w.safetensors"))["w"])
    assert not torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"], w.detach())
    # without the noise floor the 2.2 % step is a new best and training goes on to the cap (16 + 0 left: stops)
    task2 = scripted_task(torch.nn.Parameter(torch.zeros(3)), {8: 1.0, 12: 0.9, 16: 0.88})
    task2.best_metric, task2.best_higher = "miou", False
    assert train_loop(task2, opts(validate_every=0), tmp_path / "b", progress=False)["best"]["step"] == 16


def test_a_nan_validation_is_never_the_best(tmp_path):
    summary = train_loop(scripted_task(torch.nn.Parameter(torch.zeros(3)), {4: math.nan, 8: math.nan}), opts(),
                         tmp_path, progress=False)
    assert summary["best"] is None and summary["steps"] == 8
