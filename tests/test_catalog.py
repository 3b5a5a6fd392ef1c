"""`kitae runs`: find, summarise, filter, sort and compare run directories from their run.json,
config.yaml and metrics.json."""

from __future__ import annotations

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

import kitae
from kitae.catalog import config_differences, find_runs, list_runs, parse_filter, summarize
from kitae.cli import app
from kitae.config import config_from_dict


@pytest.fixture(scope="module")
def runs(tiny_models, separable_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    for name, lr in (("fast", 1e-2), ("slow", 1e-12)):
        cfg = tiny_config(tiny_models["llama"], separable_data, root / "runs" / name, training={"epochs": 1, "lr": lr})
        kitae.train(config_from_dict(cfg), progress=False)
    (root / "runs" / "notes").mkdir()  # a folder that is not a run
    (root / "runs" / "notes" / "config.yaml").write_text("a: 1\n")
    return root / "runs"


def test_find_summarise_filter_and_sort(runs):
    assert [p.name for p in find_runs(runs)] == ["fast", "slow"]
    fast = summarize(runs / "fast")
    assert fast.status == "finished" and fast.task == "single_label" and fast.adapter == "lora"
    assert fast.value("training.lr") == 1e-2 and fast.value("dev.accuracy") == fast.metrics["dev"]["accuracy"]
    assert fast.value("train_seconds") > 0
    ordered = list_runs(runs, sort="dev.macro_f1", descending=True)
    values = [r.value("dev.macro_f1") for r in ordered]
    assert values == sorted(values, reverse=True)
    assert [r.name for r in list_runs(runs, ["training.lr>=0.001"])] == ["fast"]
    assert [r.name for r in list_runs(runs, ["status=finished", "task!=sft"])] == ["fast", "slow"]
    assert parse_filter("adapter=full")(fast) is False
    with pytest.raises(kitae.errors.KitaeError, match="expected KEY=VALUE"):
        parse_filter("lr")
    differences = config_differences([fast, summarize(runs / "slow")])
    assert differences == {"training.lr": [1e-2, 1e-12]}


def test_runs_cli(runs):
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", str(runs), "--sort", "training.lr"])
    assert listed.exit_code == 0 and "fast" in listed.output and "slow" in listed.output, listed.output
    assert listed.output.index("slow") < listed.output.index("fast")  # 1e-12 first
    shown = runner.invoke(app, ["runs", "show", str(runs / "fast")])
    assert shown.exit_code == 0 and "macro_f1" in shown.output and "training.lr" in shown.output
    compared = runner.invoke(app, ["runs", "compare", str(runs / "fast"), str(runs / "slow")])
    assert compared.exit_code == 0 and "training.lr" in compared.output and "dev.macro_f1" in compared.output
    missing = runner.invoke(app, ["runs", "show", str(runs / "notes")])
    assert missing.exit_code == 2 and "not a kitae run directory" in missing.output


def test_runs_list_prints_full_values_when_piped_and_in_every_format(runs):
    import csv
    import io
    import json

    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", str(runs), "--column", "model.name"])
    assert listed.exit_code == 0 and "…" not in listed.output, listed.output  # not a terminal: nothing cut
    records = json.loads(runner.invoke(app, ["runs", "list", str(runs), "--format", "json"]).output)
    assert [r["run"] for r in records] == ["fast", "slow"]
    fast = summarize(runs / "fast")
    assert records[0]["metrics"] == fast.metrics and records[0]["settings"]["training.lr"] == 1e-2
    assert records[0]["train_seconds"] == fast.value("train_seconds") and records[0]["status"] == "finished"
    assert str(fast.config["model.name"]) in listed.output  # a long path, whole
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["runs", "list", str(runs), "--format", "csv"]).output)))
    assert [r["run"] for r in rows] == ["fast", "slow"] and float(rows[1]["training.lr"]) == 1e-12
    [dev_key] = [k for k in rows[0] if k.startswith("dev.")]  # the task's headline metric
    assert float(rows[0][dev_key]) == pytest.approx(fast.metrics["dev"][dev_key[4:]], abs=1e-4)
    markdown = runner.invoke(app, ["runs", "list", str(runs), "--format", "markdown"]).output.splitlines()
    assert markdown[0].startswith("| run | status |") and markdown[1].startswith("| --- |") and len(markdown) == 4
    wrong = runner.invoke(app, ["runs", "list", str(runs), "--format", "xml"])
    assert wrong.exit_code == 2 and "table, csv, json or markdown" in wrong.output
