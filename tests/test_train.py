"""End to end on tiny models: learning, save -> load -> identical logits, resume == uninterrupted,
predict / evaluate from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import tiny_config, write_jsonl
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.training.callbacks import Callback
from kitae.training.loop import TrainingInterrupted


def _train(cfg: dict, **kwargs):
    return kitae.train(config_from_dict(cfg), progress=False, **kwargs)


@pytest.mark.parametrize("arch,adapter", [("llama_left", "lora"), ("gpt_neox", "lora"), ("gemma3", "lora"),
                                          ("bert", "full"), ("bert", "lora"), ("deberta", "full"), ("llama", "full")])
def test_tiny_model_learns_separable_data(tiny_models, separable_data, tmp_path, arch, adapter):
    # A decoder in full fine-tuning also exercises gradient checkpointing.
    cfg = tiny_config(tiny_models[arch], separable_data, tmp_path / "run", adapter={"type": adapter},
                      training={"lr": 1e-2 if adapter == "lora" else 1e-3 if arch == "llama" else 5e-3,
                                "gradient_checkpointing": arch == "llama"})
    result = _train(cfg)
    test = result.metrics["test"]
    # 3 balanced classes: chance is 1/3.
    assert test["accuracy"] >= 0.9, test
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    first, last = (dict(zip(history[0].split(","), row.split(","))) for row in (history[1], history[-1]))
    assert float(last["train_loss"]) < float(first["train_loss"])


def test_run_directory_and_reload_gives_identical_logits(tiny_models, separable_data, tmp_path):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", training={"epochs": 2})
    result = _train(cfg)
    run = result.run_dir
    for name in ["config.yaml", "metrics.json", "history.csv", "history.png", "labels.json", "train.log",
                 "predictions_dev.jsonl", "predictions_test.jsonl", "confusion_matrix_test.png",
                 "confusion_matrix_test.csv", "classification_report_test.csv", "run.json",
                 "model/adapter_model.safetensors", "model/adapter_config.json", "model/config.json",
                 "model/tokenizer.json", "model/kitae_model.json"]:
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == result.metrics["test"]["accuracy"]
    # The head is saved with the adapter (not lost on reload).
    from safetensors import safe_open

    with safe_open(run / "model" / "adapter_model.safetensors", "pt") as f:
        assert any("score" in key for key in f.keys())  # noqa: SIM118 (safe_open has no __iter__)
    prediction = json.loads((run / "predictions_test.jsonl").read_text().splitlines()[0])
    assert set(prediction) == {"id", "gold", "predicted", "probabilities"}

    # With the adapter as trained (unmerged) and the same batches (so the same packed rows), the
    # reload computes exactly what training did.
    clf = kitae.load(run, batch_size=cfg["training"]["batch_size"] * 2, merge=False)
    texts = [json.loads(line)["text"] for line in separable_data["test"].read_text().splitlines()]
    np.testing.assert_array_equal(clf.logits(texts), result.logits["test"])
    # Dev logits are reused from the selected epoch's evaluation: they equal a fresh computation.
    dev_texts = [json.loads(line)["text"] for line in separable_data["dev"].read_text().splitlines()]
    np.testing.assert_array_equal(clf.logits(dev_texts), result.logits["dev"])
    # The default load merges the LoRA into the weights: the same numbers up to float rounding.
    merged = kitae.load(run)
    np.testing.assert_allclose(merged.logits(texts), result.logits["test"], rtol=1e-5, atol=1e-5)
    assert (merged.logits(texts).argmax(-1) == result.logits["test"].argmax(-1)).all()
    predictions = clf.predict(texts[:3])
    assert all(p.label in clf.labels and abs(sum(p.probabilities.values()) - 1) < 1e-6 for p in predictions)
    assert all(p.scores is None for p in predictions)
    np.testing.assert_allclose(clf.predict_proba(texts[:3]), [list(p.probabilities.values()) for p in predictions],
                               rtol=1e-6)


class InterruptAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: dict) -> None:
        if step["global_step"] == self.step and step["batch"] % 2 == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_interrupt_gives_same_metrics(tiny_models, separable_data, tmp_path, grad_accum):
    sections = {"training": {"epochs": 3, "grad_accum": grad_accum}}
    full = _train(tiny_config(tiny_models["gemma3"], separable_data, tmp_path / "full", **sections))

    cfg = tiny_config(tiny_models["gemma3"], separable_data, tmp_path / "resumed", **sections)
    with pytest.raises(TrainingInterrupted):
        _train(cfg, callbacks=[InterruptAt(step=20 // grad_accum)])  # mid-epoch 2 (15 batches/epoch)
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "interrupted"
    with pytest.raises(kitae.api.RunDirError, match="--resume"):
        _train(cfg)
    resumed = _train(cfg, resume=True)
    for split in ("dev", "test"):
        assert resumed.metrics[split]["log_loss"] == pytest.approx(full.metrics[split]["log_loss"], rel=1e-5)
        assert resumed.metrics[split]["macro_f1"] == full.metrics[split]["macro_f1"]
    np.testing.assert_allclose(resumed.logits["test"], full.logits["test"], rtol=1e-4, atol=1e-5)
    full_history = (tmp_path / "full" / "history.csv").read_text().splitlines()
    resumed_history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert len(resumed_history) == len(full_history)


def test_early_stopping_stops_after_patience_epochs_without_improvement(tiny_models, separable_data, tmp_path):
    # A learning rate too small to change any prediction: dev accuracy never improves after
    # epoch 1, so patience 2 stops the run after epoch 3 of 6 and keeps epoch 1.
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run",
                      training={"epochs": 6, "early_stopping_patience": 2, "lr": 1e-12, "select_metric": "accuracy"})
    result = _train(cfg)
    summary = json.loads((result.run_dir / "metrics.json").read_text())["summary"]
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == 3 and summary["selected_epoch"] == result.best_epoch == 1
    assert len((result.run_dir / "history.csv").read_text().splitlines()) == 1 + 3


def test_without_a_dev_split_the_last_epoch_is_kept(tiny_models, separable_data, tmp_path):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run",
                      data={"dev": None, "split": {"dev": 0.0}},
                      training={"epochs": 3, "early_stopping_patience": 1, "lr": 1e-12})
    result = _train(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "dev" not in metrics and metrics["test"]["n"] == 45
    # Nothing to compare on: every epoch runs and the last one is the model.
    assert metrics["summary"]["epochs_run"] == 3 and metrics["summary"]["stopped_early"] is False
    assert result.best_epoch == 3
    assert "dev_loss" not in (result.run_dir / "history.csv").read_text().splitlines()[0]


def test_held_out_dev_split_is_stratified(tiny_models, separable_data, tmp_path):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run",
                      data={"dev": None, "split": {"dev": 0.2, "seed": 1}}, training={"epochs": 1})
    metrics = json.loads((_train(cfg).run_dir / "metrics.json").read_text())
    assert metrics["dev"]["n"] == 24  # 20% of 120
    assert [row["support"] for row in metrics["dev"]["per_class"].values()] == [8, 8, 8]


def test_the_schedule_spans_the_updates_of_re_sampled_epochs(tiny_models, tmp_path):
    """Fractional up-sampling draws a different number of rows every epoch: the learning rate must
    still decay to exactly 0 at the run's last update, not at epoch 1's count times epochs."""
    from test_multi_label import multilabel_rows

    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", multilabel_rows(n, seed))
             for split, n, seed in (("train", 150, 1), ("dev", 30, 2), ("test", 30, 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", data={"label_field": "categories"},
                      balance={"upsample": {"経済": 1.5, "天気": 1.3}}, training={"epochs": 4, "warmup_ratio": 0.0})
    cfg["task"] = "multi_label"

    class Recorder(Callback):
        def __init__(self) -> None:
            self.lrs: dict[int, float] = {}
            self.batches: list[int] = []

        def on_train_begin(self, info: dict) -> None:
            self.updates = info["updates"]

        def on_epoch_begin(self, epoch: int, num_batches: int, batches_done: int) -> None:
            self.batches.append(num_batches)

        def on_step_end(self, step: dict) -> None:
            self.lrs[step["global_step"]] = step["lr"]

    recorder = Recorder()
    _train(cfg, callbacks=[recorder])
    assert len(set(recorder.batches)) > 1, recorder.batches  # epochs really differ in length
    assert recorder.updates == sum(recorder.batches) == max(recorder.lrs)
    assert recorder.lrs[recorder.updates] == 0.0
    assert min(lr for step, lr in recorder.lrs.items() if step < recorder.updates) > 0.0


def test_cli_train_predict_evaluate(tiny_models, separable_data, tmp_path):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", training={"epochs": 2})
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config_path), "--set", "training.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "macro_f1" in result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["epochs"] == 1

    again = runner.invoke(app, ["train", str(config_path)])
    assert again.exit_code == 2 and "--overwrite" in again.output

    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(separable_data["test"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("id,gold,predicted,p_")
    out_jsonl = tmp_path / "pred.jsonl"
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(separable_data["test"]), "-o", str(out_jsonl)])
    assert result.exit_code == 0 and len(out_jsonl.read_text().splitlines()) == 45

    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(separable_data["test"])])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert evaluated["accuracy"] == saved["accuracy"]
    assert evaluated["macro_f1"] == saved["macro_f1"]


def test_kill_9_then_resume_gives_same_metrics(tiny_models, separable_data, tmp_path):
    """A hard kill (no chance to save) resumes from the last periodic checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sections = {"training": {"epochs": 4, "checkpoint_every_steps": 4}}
    full = _train(tiny_config(tiny_models["llama"], separable_data, tmp_path / "full", **sections))

    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "killed", **sections)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "kitae.cli", "train", str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            last = json.loads((checkpoints / "state.json").read_text())["last"]
            if json.loads((checkpoints / last / "loop.json").read_text())["global_step"] >= 20:  # mid-epoch 2
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "running"

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    saved = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert saved[split]["log_loss"] == pytest.approx(full.metrics[split]["log_loss"], rel=1e-5)
        assert saved[split]["accuracy"] == full.metrics[split]["accuracy"]


def test_a_collapsed_model_is_reported():
    """One answer for every dev example (e.g. a too-high learning rate) is named, not hidden."""
    from kitae.tasks.multi_label import MultiLabelTask
    from kitae.tasks.single_label import SingleLabelTask

    cfg = config_from_dict({"data": {"train": "t.jsonl"}, "model": {"name": "m"}, "output": "o"}, check_files=False)
    single = SingleLabelTask(cfg, ["neutral", "entailment"])
    assert single.collapse_warning([0, 1, 0], np.array([[2.0, 0.0], [1.0, 0.0], [3.0, 1.0]])) == \
        "every example is predicted 'neutral'"
    assert single.collapse_warning([0, 1, 0], np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])) is None
    assert single.collapse_warning([0, 0], np.array([[2.0, 0.0], [1.0, 0.0]])) is None  # dev has one class
    multi_cfg = config_from_dict({"task": "multi_label", "data": {"train": "t.jsonl"}, "model": {"name": "m"},
                                  "output": "o"}, check_files=False)
    multi = MultiLabelTask(multi_cfg, ["a", "b"])
    targets = [np.array([1, 0]), np.array([0, 1])]
    assert multi.collapse_warning(targets, np.full((2, 2), -3.0)) is not None  # never any category
    assert multi.collapse_warning(targets, np.array([[3.0, -3.0], [-3.0, -3.0]])) is None


def test_a_select_metric_nan_in_every_epoch_keeps_the_last_epoch(tiny_models, separable_data, tmp_path):
    # A learning rate of 1e6 without clipping diverges in the first epoch: dev loss is NaN in
    # every epoch, so no epoch can be selected on it. The run still finishes, with the last epoch.
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", adapter={"type": "full"},
                      training={"epochs": 2, "lr": 1e6, "max_grad_norm": None, "batch_size": 4,
                                "select_metric": "loss"})
    result = _train(cfg)
    run = result.run_dir
    history = (run / "history.csv").read_text().splitlines()
    loss_column = history[0].split(",").index("dev_loss")
    assert [row.split(",")[loss_column] for row in history[1:]] == ["nan", "nan"]
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["selected_epoch"] == result.best_epoch == 2
    assert any("undefined (NaN) in every epoch" in w and "last epoch (2)" in w for w in summary["warnings"])
    assert any("diverged" in w for w in summary["warnings"])
    assert "undefined (NaN) in every epoch" in (run / "train.log").read_text(encoding="utf-8")
    assert "**Warning:** dev loss was undefined" in (run / "README.md").read_text(encoding="utf-8")
    assert (run / "model" / "model.safetensors").is_file() and not (run / "checkpoints").exists()
