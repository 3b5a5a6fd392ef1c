"""Sweeps on tiny models: the expected trials, table and selected configuration (maximised and
minimised metrics), deterministic seeds, failing trials, resume after a hard kill, test unseen
before selection, two Optuna workers on one SQLite study, pruning."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import separable_rows, tiny_config, write_jsonl

import kitae
from kitae.errors import ConfigError
from kitae.runs import run_status
from kitae.sweep import load_sweep, run_sweep

ROWS = separable_rows(8, seed=21)


@pytest.fixture
def base(tiny_models, tmp_path) -> Path:
    files = {split: write_jsonl(tmp_path / "data" / f"{split}.jsonl", separable_rows(8, seed=s))
             for split, s in (("train", 1), ("dev", 2), ("test", 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "unused", training={"epochs": 1})
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def write_sweep(tmp_path: Path, base: Path, **fields) -> Path:
    sweep = {"base": base.name, "method": "grid", "space": {"training.lr": [1e-2, 1e-12], "adapter.r": [4, 8]},
             "seeds": [1, 2], "output": str(tmp_path / "sweep"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, allow_unicode=True), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def _dev(run_dir: Path, metric: str) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["dev"][metric]


def test_grid_sweep_selects_on_dev_mean_and_evaluates_only_the_selected_on_test(base, tmp_path):
    path = write_sweep(tmp_path, base)
    results, selected = run_sweep(path)
    out = tmp_path / "sweep"
    trial_dirs = sorted(p.name for p in (out / "trials").iterdir() if not p.name.startswith("."))
    assert trial_dirs == [f"{n:03d}-seed{s}" for n in (1, 2, 3, 4) for s in (1, 2)]
    # The selection, recomputed from the trials' own metrics.json: best mean dev macro_f1.
    means = {n: statistics.mean(_dev(out / "trials" / f"{n:03d}-seed{s}", "macro_f1") for s in (1, 2))
             for n in (1, 2, 3, 4)}
    best = max(means, key=lambda n: (means[n], -n))
    assert selected is not None and selected.number == best
    assert selected.point["training.lr"] == 1e-2  # a learning rate of 1e-12 learns nothing
    # Test exists for the selected configuration's seeds only.
    for n in (1, 2, 3, 4):
        for s in (1, 2):
            run = out / "trials" / f"{n:03d}-seed{s}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert ("test" in metrics) == (n == best) == (run / "predictions_test.jsonl").is_file()
    rows = _rows(out / "sweep_results.csv")
    assert [int(r["configuration"]) for r in rows] == [1, 2, 3, 4]
    assert [r["selected"] for r in rows].count("True") == 1
    for row in rows:
        assert float(row["dev_macro_f1_mean"]) == pytest.approx(means[int(row["configuration"])])
    table = (out / "sweep_results.md").read_text(encoding="utf-8")
    assert "(not evaluated)" in table and "trials never saw test" in table
    assert (out / "sweep_metric.png").stat().st_size > 1000
    # A run of the sweep again finds everything done: nothing retrains.
    stamps = {p: json.loads((p / "run.json").read_text())["started"] for p in (out / "trials").glob("0*")}
    run_sweep(path)
    assert stamps == {p: json.loads((p / "run.json").read_text())["started"] for p in (out / "trials").glob("0*")}


def test_a_minimised_metric_selects_the_lowest(tiny_models, tmp_path):
    from test_regression import score_rows

    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", score_rows(n, s))
             for split, n, s in (("train", 60, 1), ("dev", 20, 2), ("test", 20, 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "unused", data={"label_field": "score"},
                      training={"epochs": 2})
    cfg["task"] = "regression"
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    path = write_sweep(tmp_path, base_path, space={"training.lr": [3e-2, 1e-12]}, seeds=[1])
    results, selected = run_sweep(path)
    rmse = {r.number: r.dev[0] for r in results}
    assert load_sweep(path).metric == "rmse" and selected.number == min(rmse, key=rmse.get)


def test_seeds_repeat_deterministically(base, tmp_path):
    first = write_sweep(tmp_path, base, space={"training.lr": [1e-2]}, seeds=[5], output=str(tmp_path / "a"))
    run_sweep(first)
    second = write_sweep(tmp_path, base, space={"training.lr": [1e-2]}, seeds=[5], output=str(tmp_path / "b"))
    run_sweep(second)
    a = json.loads((tmp_path / "a" / "trials" / "001-seed5" / "metrics.json").read_text())["dev"]
    b = json.loads((tmp_path / "b" / "trials" / "001-seed5" / "metrics.json").read_text())["dev"]
    assert a["log_loss"] == b["log_loss"] and a["macro_f1"] == b["macro_f1"]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(base, tmp_path, monkeypatch):
    import kitae.api as api

    original = api._train

    def crash_on_seed_2(config, *args, **kwargs):
        if config.training.seed == 2 and config.training.lr == 1e-2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(config, *args, **kwargs)

    monkeypatch.setattr(api, "_train", crash_on_seed_2)
    path = write_sweep(tmp_path, base, space={"training.lr": [1e-2, 3e-3]})
    results, selected = run_sweep(path)
    by_number = {r.number: r for r in results}
    assert by_number[1].status == "failed+finished" and not by_number[1].complete
    assert by_number[2].complete and selected.number == 2  # only configurations whose every seed finished
    table = (tmp_path / "sweep" / "sweep_results.md").read_text(encoding="utf-8")
    assert "Failed trials" in table and "illegal memory access" in table


def test_every_point_is_validated_before_the_first_trial(base, tmp_path):
    path = write_sweep(tmp_path, base, space={"training.lr": [1e-2], "data.template": ["{text}", "{title}: {text}"]})
    with pytest.raises(kitae.errors.DataError, match=r"configuration .*\{title\}.*'title'"):
        run_sweep(path)
    assert not (tmp_path / "sweep" / "trials").exists()
    bad_key = write_sweep(tmp_path, base, space={"training.lrr": [1e-2]})
    with pytest.raises(ConfigError, match="training.lrr"):
        run_sweep(bad_key)
    with pytest.raises(ConfigError, match="selection uses dev only"):
        run_sweep(write_sweep(tmp_path, base, select="test.macro_f1"))


def test_resume_after_sigkill_skips_finished_trials(base, tmp_path):
    path = write_sweep(tmp_path, base, space={"training.lr": [1e-2, 3e-3, 5e-3]}, seeds=[1],
                       set={"training.epochs": 4})
    out = tmp_path / "sweep" / "trials"
    process = subprocess.Popen([sys.executable, "-m", "kitae.cli", "sweep", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            done = [p for p in out.glob("00*") if run_status(p) == "finished"] if out.is_dir() else []
            second = out / "002-seed1" / "run.json"
            if done and second.is_file():
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    finished = {p.name: json.loads((p / "run.json").read_text())["started"] for p in out.glob("00*")
                if run_status(p) == "finished"}
    assert "001-seed1" in finished
    results, selected = run_sweep(path)
    assert all(r.complete for r in results) and selected is not None
    for name, started in finished.items():  # finished trials were skipped, not retrained
        assert json.loads((out / name / "run.json").read_text())["started"] == started


def test_pruning_stops_a_run_with_status_pruned(base, tmp_path):
    from kitae.config import load_config
    from kitae.sweep.optuna import OptunaPruning

    class Trial:  # Optuna's trial interface, answering "prune" after the first report
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return True

    trial = Trial()
    config = load_config(base, ["training.epochs=3", f"output={tmp_path / 'run'}"])
    result = kitae.train(config, callbacks=[OptunaPruning(trial, "macro_f1")], progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]
    assert result.stop_reason == "pruned" and run["status"] == "pruned"
    assert summary["epochs_run"] == 1 and summary["stop_reason"] == "pruned"
    assert [step for _, step in trial.reports] == [1]
    assert kitae.load(tmp_path / "run").predict(["雨"])[0].label in ("天気", "料理", "経済")


def _optuna_sweep(tmp_path: Path, base: Path, trials: int, **fields) -> Path:
    return write_sweep(tmp_path, base, method="optuna", trials=trials, seeds=[1],
                       space={"training.lr": [1e-2, 3e-3, 1e-12]}, set={"training.epochs": 2}, **fields)


def test_optuna_prunes_a_bad_trial(base, tmp_path):
    optuna = pytest.importorskip("optuna", reason="optuna is the sweep extra: pip install 'kitae[sweep]'")
    path = _optuna_sweep(tmp_path, base, trials=3)
    sweep = load_sweep(path)
    (tmp_path / "sweep").mkdir()
    study = optuna.create_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}",
                                direction="maximize")
    for lr in (1e-2, 3e-3, 1e-12):  # the order Optuna hands them out: two good, then a bad one
        study.enqueue_trial({"training.lr": lr})
    results, selected = run_sweep(path)
    statuses = {r.number: r.status for r in results}
    assert statuses == {0: "finished", 1: "finished", 2: "pruned"}, statuses
    pruned = json.loads((sweep.trial_dir(2, 1) / "metrics.json").read_text())["summary"]
    assert pruned["epochs_run"] == 1 and selected.number in (0, 1)
    states = [t.state.name for t in optuna.load_study(study_name="sweep", storage=sweep.config.storage or
              f"sqlite:///{(tmp_path / 'sweep' / 'study.db').resolve()}").get_trials()[:3]]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]


def test_two_workers_share_one_sqlite_study(base, tmp_path):
    pytest.importorskip("optuna", reason="optuna is the sweep extra: pip install 'kitae[sweep]'")
    path = _optuna_sweep(tmp_path, base, trials=4, pruning=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "kitae.cli", "sweep", str(path), "--worker"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    out = tmp_path / "sweep" / "trials"
    runs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert runs == ["000-seed1", "001-seed1", "002-seed1", "003-seed1"]  # disjoint: each trial once
    started_by = []
    for name in runs:
        log = (out / name / "train.log").read_text(encoding="utf-8")
        assert log.count("training: examples=") == 1  # trained once, by one worker
        started_by.append(name)
    rows = _rows(tmp_path / "sweep" / "sweep_results.csv")
    assert [int(r["configuration"]) for r in rows] == [0, 1, 2, 3] and all(r["status"] == "finished" for r in rows)
    assert sum("still run trials" in o or "selected:" in o for o in outputs) == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "examples" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_sweeps_load(path):
    sweep = load_sweep(path)
    assert sweep.base_raw and sweep.metric in ("macro_f1", "loss")


def test_an_sft_sweep_evaluates_the_selected_configuration_on_test(tmp_path):
    from conftest import build_tiny_model
    from test_sft import EXTRA, qa_rows

    model = build_tiny_model("llama", tmp_path / "lm", extra_chars=EXTRA, initializer_range=0.2)
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", qa_rows(n, s))
             for split, n, s in (("train", 48, 1), ("dev", 12, 2), ("test", 12, 3))}
    cfg = {"task": "sft", "data": {**{k: str(v) for k, v in files.items()}, "template": "{instruction}:"},
           "model": {"name": str(model), "max_length": 32}, "adapter": {"type": "full"},
           "training": {"epochs": 1, "batch_size": 8, "checkpoint_every_minutes": None},
           "generation": {"max_new_tokens": 3}, "output": "unused"}
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    path = write_sweep(tmp_path, base_path, space={"training.lr": [3e-3, 1e-12]}, seeds=[1])
    results, selected = run_sweep(path)
    assert load_sweep(path).metric == "loss" and selected.point["training.lr"] == 3e-3
    run = tmp_path / "sweep" / "trials" / f"{selected.number:03d}-seed1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "exact_match" in metrics["test"] and (run / "predictions_test.jsonl").is_file()
    assert "test" not in json.loads((tmp_path / "sweep" / "trials" / "002-seed1" / "metrics.json").read_text())


def test_a_changed_sweep_is_refused_in_the_same_output(base, tmp_path):
    path = write_sweep(tmp_path, base, space={"training.lr": [1e-2]}, seeds=[1])
    run_sweep(path)
    changed = write_sweep(tmp_path, base, space={"training.lr": [3e-3]}, seeds=[1])
    with pytest.raises(ConfigError, match="changed since the trials"):
        run_sweep(changed)
