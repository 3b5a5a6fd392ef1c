"""Trackers for real: a tiny run logged to a local MLflow store and to TensorBoard event files,
read back; a resumed run continues the same MLflow run; a missing tracker package is refused
before anything is written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.training.callbacks import Callback
from kitae.training.loop import TrainingInterrupted


def _config(tiny_models, separable_data, output, tracking, **training):
    cfg = tiny_config(tiny_models["llama"], separable_data, output,
                      training={"epochs": 2, "log_every_steps": 5, **training})
    cfg["tracking"] = tracking
    return cfg


def test_mlflow_holds_params_step_and_epoch_metrics_final_metrics_and_artifacts(tiny_models, separable_data, tmp_path,
                                                                              monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is the tracking extra: pip install 'kitae[tracking]'")
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns: here, not in the checkout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _config(tiny_models, separable_data, tmp_path / "run", {"report_to": ["mlflow"], "mlflow_uri": uri,
                                                                  "experiment": "kitae-test"})

    class StopAt(Callback):
        def on_step_end(self, step: dict) -> None:
            if step["global_step"] == 20:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        kitae.train(config_from_dict(cfg), callbacks=[StopAt()], progress=False)
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["tracking"]["mlflow_run_id"]
    result = kitae.train(config_from_dict(cfg), resume=True, progress=False)

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("kitae-test").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the resumed run continued the same tracked run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.lr"] == "0.01" and run.data.params["task"] == "single_label"
    epochs = client.get_metric_history(run_id, "epoch.dev_macro_f1")
    history = [json.loads(json.dumps(r)) for r in _history(result.run_dir)]
    assert sorted((m.step, m.value) for m in epochs) == [(int(r["epoch"]), pytest.approx(float(r["dev_macro_f1"])))
                                                         for r in history]
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train.loss")})
    assert steps == [5, 10, 15, 20, 25, 30]  # 15 updates per epoch; step 20's row logged once
    assert client.get_metric_history(run_id, "train.rss_gib")[0].value > 0.1
    assert run.data.metrics["final.test_accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"README.md", "metrics.json", "history.png", "confusion_matrix_test.png"} <= artifacts


def _history(run_dir):
    import csv

    return list(csv.DictReader((run_dir / "history.csv").open(encoding="utf-8")))


def test_tensorboard_event_files_hold_the_run(tiny_models, separable_data, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is the tracking extra: pip install 'kitae[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _config(tiny_models, separable_data, tmp_path / "run", {"report_to": ["tensorboard"]})
    result = kitae.train(config_from_dict(cfg), progress=False)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/rss_gib", "epoch/dev_macro_f1", "final/test_macro_f1"} <= set(scalars)
    dev = [(e.step, e.value) for e in events.Scalars("epoch/dev_macro_f1")]
    assert dev == [(int(r["epoch"]), pytest.approx(float(r["dev_macro_f1"]), abs=1e-6)) for r in _history(result.run_dir)]
    assert events.Scalars("final/test_macro_f1")[0].value == pytest.approx(result.metrics["test"]["macro_f1"], abs=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]


def test_a_tracker_without_its_package_is_refused_before_the_run(tiny_models, separable_data, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_models["llama"], separable_data, tmp_path / "run"),
                                     allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(config), "--report-to", "wandb"])
    assert result.exit_code == 2 and "tracking.report_to: wandb needs the wandb package" in result.output
    assert not (tmp_path / "run").exists()


def test_credentials_of_a_uri_never_reach_trackers_or_exports(tiny_models, separable_data, tmp_path):
    from kitae.export import public_config
    from kitae.tracking import Tracker

    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run")
    cfg["tracking"] = {"report_to": [], "mlflow_uri": "https://alice:s3cret@mlflow.example.org:5000/"}
    config = config_from_dict(cfg)
    params = Tracker(config, tmp_path / "run").params()
    assert params["tracking.mlflow_uri"] == "https://mlflow.example.org:5000/"
    exported = yaml.safe_load(public_config(config))
    assert exported["tracking"]["mlflow_uri"] == "https://mlflow.example.org:5000/"
    assert "s3cret" not in public_config(config) and "alice" not in str(params)
