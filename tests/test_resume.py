"""Interrupt training at every boundary — inside the optimizer step, before, inside and after the
epoch end's commit of the best weights, by Ctrl-C, SIGTERM or a hard kill — and check that
`--resume` ends exactly where an uninterrupted run does: same history, same selected epoch, same
metrics and logits."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from conftest import tiny_config

import kitae
from kitae.config import config_from_dict
from kitae.tasks.single_label import SingleLabelTask
from kitae.training import checkpoint, loop
from kitae.training.callbacks import Callback
from kitae.training.loop import TrainingInterrupted

# Dev loss improves every epoch, so every epoch end writes new best weights, and patience 1
# turns a replayed epoch end (no improvement over itself) into a visible early stop.
SECTIONS = {"training": {"epochs": 3, "select_metric": "loss", "early_stopping_patience": 1, "lr": 5e-3}}


class HardKill(BaseException):
    """Stands in for kill -9: nothing in kitae catches it, so nothing more is saved."""


def _train(cfg: dict, **kwargs):
    return kitae.train(config_from_dict(cfg), progress=False, **kwargs)


def _history(run_dir) -> list[dict]:
    import csv

    rows = list(csv.DictReader((run_dir / "history.csv").open(encoding="utf-8")))
    return [{k: v for k, v in row.items() if k not in ("seconds", "rss_gib", "cuda_peak_gib")} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, separable_data, tmp_path_factory):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path_factory.mktemp("full") / "run", **SECTIONS)
    return _train(cfg)


def _signal(signum: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), signum)  # delivered at the next bytecode, like a real Ctrl-C / kill


def _on_call(monkeypatch, owner, name: str, call: int, action, before: bool = False, where=None) -> None:
    """Run `action` around the `call`-th call of owner.name (that `where(args)` accepts): just
    before it, or just after it returns."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        hit = where is None or where(args)
        if hit:
            calls["n"] += 1
        if hit and before and calls["n"] == call:
            action()
        result = original(*args, **kwargs)
        if hit and not before and calls["n"] == call:
            action()
        return result

    monkeypatch.setattr(owner, name, wrapper)


def _writes_best(args) -> bool:
    return "best" in os.path.basename(os.path.dirname(str(args[1])))


def _hard_kill() -> None:
    raise HardKill


def _inside_optimizer_step(monkeypatch):
    # Between optimizer.step() (the weights have moved) and scheduler.step(): the old loop saved
    # post-step weights with pre-step counters here.
    def patched(optimizer, scheduler, scaler, trainable, max_grad_norm):
        if patched.calls == 21:  # mid-epoch 2 (15 updates per epoch)
            original_step = scheduler.step

            def step_after_signal(*args, **kwargs):
                del scheduler.step  # the instance attribute would be saved with the scheduler's state
                _signal(signal.SIGTERM)
                return original_step(*args, **kwargs)

            scheduler.step = step_after_signal
        patched.calls += 1
        return original(optimizer, scheduler, scaler, trainable, max_grad_norm)

    original = loop._optimizer_step
    patched.calls = 0
    monkeypatch.setattr(loop, "_optimizer_step", patched)


def _during_dev_evaluation(monkeypatch):
    # During epoch 2's dev evaluation, before anything of the epoch end is kept.
    _on_call(monkeypatch, SingleLabelTask, "metrics", 2, _signal)


def _before_best_weights(monkeypatch):
    # Epoch 2 is the best so far; its weights are about to be written.
    _on_call(monkeypatch, checkpoint, "save_file", 2, _signal, before=True, where=_writes_best)


def _after_best_weights(monkeypatch):
    # Epoch 2's best weights are written; the loop state that names them is not yet committed.
    _on_call(monkeypatch, checkpoint, "save_file", 2, _signal, where=_writes_best)


def _hard_kill_after_best_weights(monkeypatch):
    _on_call(monkeypatch, checkpoint, "save_file", 2, _hard_kill, where=_writes_best)


def _hard_kill_after_pointer(monkeypatch):
    # Epoch 2's end is committed; the folders it replaces are not yet removed.
    _on_call(monkeypatch, checkpoint, "write_json", 2, _hard_kill)


class SignalAfterEpoch(Callback):
    def on_epoch_end(self, row: dict) -> None:
        if row["epoch"] == 2:
            _signal(signal.SIGTERM)


def _after_epoch_end(monkeypatch):
    return [SignalAfterEpoch()]


POINTS = {
    "inside the optimizer step": _inside_optimizer_step,
    "during dev evaluation": _during_dev_evaluation,
    "before writing the best weights": _before_best_weights,
    "after writing the best weights": _after_best_weights,
    "after the epoch end": _after_epoch_end,
    "hard kill after the best weights": _hard_kill_after_best_weights,
    "hard kill after the commit": _hard_kill_after_pointer,
}


@pytest.mark.parametrize("point", POINTS)
def test_resume_after_interrupt_at_every_boundary(tiny_models, separable_data, tmp_path, monkeypatch,
                                                  uninterrupted, point):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", **SECTIONS)
    with monkeypatch.context() as patch:
        callbacks = POINTS[point](patch)
        with pytest.raises((TrainingInterrupted, HardKill)):
            _train(cfg, callbacks=callbacks)
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"]
    assert status in ("interrupted", "failed")
    resumed = _train(cfg, resume=True)

    assert _history(tmp_path / "run") == _history(uninterrupted.run_dir)
    assert [int(r["epoch"]) for r in _history(tmp_path / "run")] == [1, 2, 3]
    assert resumed.best_epoch == uninterrupted.best_epoch == 3
    for split in ("dev", "test"):
        assert resumed.metrics[split]["log_loss"] == pytest.approx(uninterrupted.metrics[split]["log_loss"], rel=1e-6)
        assert resumed.metrics[split]["macro_f1"] == uninterrupted.metrics[split]["macro_f1"]
    np.testing.assert_allclose(resumed.logits["test"], uninterrupted.logits["test"], rtol=1e-5, atol=1e-6)


def test_checkpoint_loads_without_pickle(tiny_models, separable_data, tmp_path, monkeypatch):
    """Resume reads the checkpoint with torch.load(weights_only=True): no code runs from the file."""
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", **SECTIONS)
    with monkeypatch.context() as patch:
        _during_dev_evaluation(patch)
        with pytest.raises(TrainingInterrupted):
            _train(cfg)
    seen = []
    original = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _train(cfg, resume=True)
    assert seen == [True]


def test_fp16_grad_scaler_state_survives_resume(tiny_models, separable_data, tmp_path):
    """fp16 autocast (here on the CPU) trains with a grad scaler whose scale adapts; a resumed run
    must continue with the same scale, or it skips or takes different steps."""
    # PEFT's own LoRA forward (B(A(x)) before the scaling) overflows fp16 early: the scale backs off.
    sections = {"model": {"dtype": "float16"}, "training": {"epochs": 2, "lr": 5e-3, "lean_lora": False}}
    full = _train(tiny_config(tiny_models["llama"], separable_data, tmp_path / "full", **sections))

    class StopAt(Callback):
        def on_step_end(self, step: dict) -> None:
            if step["global_step"] == 20:
                raise KeyboardInterrupt

    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", **sections)
    with pytest.raises(TrainingInterrupted):
        _train(cfg, callbacks=[StopAt()])
    store = checkpoint.CheckpointStore(tmp_path / "run" / "checkpoints")
    saved = torch.load(store.last_folder() / "training_state.pt", weights_only=True)["scaler"]
    assert saved is not None and saved["scale"] < 65536.0  # the scale backed off from its start
    resumed = _train(cfg, resume=True)
    np.testing.assert_array_equal(resumed.logits["test"], full.logits["test"])


def test_a_resumed_run_keeps_its_memory_peaks_and_wall_time(tiny_models, separable_data, tmp_path):
    import csv

    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", **SECTIONS)
    cfg["training"] = {**cfg["training"], "log_every_steps": 2}
    with pytest.raises(TrainingInterrupted):
        _train(cfg, callbacks=[SignalAfterEpoch()])
    run = tmp_path / "run"
    first_wall = json.loads((run / "run.json").read_text())["wall_seconds"]
    assert first_wall > 0
    # Mark the first session's logged peaks: the summary after resume must still see them.
    rows = list(csv.DictReader((run / "steps.csv").open(encoding="utf-8")))
    assert rows
    rows[0]["rss_gib"] = "99.0"
    with (run / "steps.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _train(cfg, resume=True)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["peak_rss_gib"] == 99.0
    assert json.loads((run / "run.json").read_text())["wall_seconds"] > first_wall
