"""kitae ui without a browser: the form covers the whole schema (with Japanese), validates as
`kitae config check` does, round-trips YAML; the routes refuse what they must."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_config, write_jsonl
from typer.testing import CliRunner

from kitae.cli import app as cli
from kitae.config import TASK_CONFIGS, config_to_dict, load_config, task_schema
from kitae.ui.form import check, form_fields, sections, values_to_config, yaml_to_values
from kitae.ui.i18n import DESCRIPTIONS_JA, SECTION_TITLES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytest.importorskip("fastapi")


def schema_keys(task: str = "single_label") -> set[str]:
    """Every leaf key of the task's config JSON schema, as a dotted path."""
    schema = task_schema(task)
    keys: set[str] = set()

    def walk(properties: dict, prefix: str) -> None:
        for key, prop in properties.items():
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
            if ref:
                walk(schema["$defs"][ref.split("/")[-1]]["properties"], f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    walk(schema["properties"], "")
    return keys


def test_every_schema_key_is_a_field_with_english_and_japanese_help():
    every_key: set[str] = set()
    for task in TASK_CONFIGS:
        fields = {f["path"]: f for f in form_fields(task)}
        assert set(fields) == schema_keys(task), task
        every_key |= set(fields)
        for path, field in fields.items():
            assert field["description"]["en"], path
            assert field["description"]["ja"], path
        assert {s["section"] for s in sections(task)} <= set(SECTION_TITLES)
    assert set(DESCRIPTIONS_JA) == every_key, "every config key needs a Japanese description (kitae/ui/i18n.py)"
    fields = {f["path"]: f for f in form_fields()}
    assert fields["task"]["kind"] == "choice" and fields["task"]["choices"] == list(TASK_CONFIGS)
    assert fields["adapter.type"]["choices"] == ["lora", "qlora", "full", "prompt_tuning"]
    assert fields["training.epochs"]["kind"] == "int" and fields["training.epochs"]["bounds"] == {"exclusiveMinimum": 0}
    assert fields["data.train"]["required"]
    assert {f["path"]: f for f in form_fields("multi_label")}["evaluation.thresholds"]["kind"] == "yaml"


def test_the_form_is_the_chosen_tasks_schema(tmp_path):
    """Each task's form has its own keys: thresholds for multi_label only, generation for the
    generative tasks, instruction columns for sft; /api/schema?task= serves that form."""
    from fastapi.testclient import TestClient

    from kitae.ui import create_ui_app

    single, multi = schema_keys("single_label"), schema_keys("multi_label")
    assert "evaluation.thresholds" in multi and "evaluation.thresholds" not in single
    assert "balance.sampling" in single and "balance.sampling" not in multi and "balance.target_rate" in multi
    assert not any(k.startswith("generation.") for k in single | multi)
    assert {"generation.min_p", "data.instruction_field"} <= schema_keys("sft")
    assert "generation.min_p" in schema_keys("causal_lm") and "data.instruction_field" not in schema_keys("causal_lm")
    assert not any(k.startswith("balance.") for k in schema_keys("regression") | schema_keys("reward"))
    client = TestClient(create_ui_app(tmp_path / "runs", base_dir=tmp_path), base_url="http://127.0.0.1")
    served = client.get("/api/schema", params={"task": "multi_label"}).json()
    assert served["task"] == "multi_label" and {f["path"] for f in served["fields"]} == multi
    assert {f["path"] for f in client.get("/api/schema").json()["fields"]} == single
    assert client.get("/api/schema", params={"task": "nope"}).status_code == 400
    # Values of another task's keys (left from before the task changed) stay out of the config.
    values = {"task": "single_label", "data.train": "t.jsonl", "evaluation.thresholds": "tune"}
    assert "evaluation" not in values_to_config(values)
    # An older run directory's config.yaml holds every task's keys at their defaults: not unknown.
    _, unknown = yaml_to_values("task: single_label\ngeneration: {max_new_tokens: 64, stop: []}\n"
                                "evaluation: {thresholds: 0.5, generate_each_epoch: false}\n")
    assert unknown == []
    _, unknown = yaml_to_values("task: single_label\nevaluation: {thresholds: tune}\n")
    assert unknown == ["evaluation.thresholds"]


def _values(tiny_models, separable_data, tmp_path, **changes) -> dict:
    values, unknown = yaml_to_values(yaml.safe_dump(tiny_config(tiny_models["llama"], separable_data,
                                                                tmp_path / "runs" / "a")))
    assert unknown == []
    values.update(changes)
    return values


@pytest.mark.parametrize("change", [{"training.epochs": "abc"}, {"training.lr": "-1"}, {"adapter.dropout": "1.5"},
                                    {"data.train": "missing.jsonl"}, {"task": "multi_labl"},
                                    {"training.select_metric": "f2"}, {"data.train": ""}])
def test_a_wrong_value_shows_the_message_of_config_check(tiny_models, separable_data, tmp_path, change):
    result = check(_values(tiny_models, separable_data, tmp_path, **change), base_dir=tmp_path)
    assert not result["valid"] and result["errors"]
    # The same YAML through the CLI prints the same message for the field.
    path = tmp_path / "form.yaml"
    path.write_text(result["yaml"], encoding="utf-8")
    out = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert out.exit_code == 2
    for error in result["errors"]:
        assert error["message"] in out.output, (error, out.output)
    field = next(iter(change))
    assert any(e["field"] == field for e in result["errors"]), result["errors"]


def test_a_valid_form_round_trips_to_the_same_yaml(tiny_models, separable_data, tmp_path):
    result = check(_values(tiny_models, separable_data, tmp_path), base_dir=tmp_path)
    assert result["valid"], result["message"]
    again, unknown = yaml_to_values(result["yaml"])
    assert unknown == [] and check(again, base_dir=tmp_path)["yaml"] == result["yaml"]
    # An example loaded into the form makes the same config as the example file itself.
    example = EXAMPLES / "quickstart.yaml"
    values, unknown = yaml_to_values(example.read_text(encoding="utf-8"), example.parent)
    assert unknown == []
    from kitae.config import config_from_dict

    from_form = config_to_dict(config_from_dict(values_to_config(values), base_dir=tmp_path))
    assert from_form == config_to_dict(load_config(example))
    # Keys left at their default stay out of the YAML, as in a hand-written config.
    assert "warmup_ratio" not in result["yaml"] and result["yaml"].startswith("task: single_label\n")


def test_the_routes_guard_the_machine(tmp_path):
    from fastapi.testclient import TestClient

    from kitae.ui import create_ui_app

    client = TestClient(create_ui_app(tmp_path / "runs", base_dir=tmp_path), base_url="http://127.0.0.1")
    assert client.get("/api/info").status_code == 200
    assert client.get("/").status_code == 200 and "app.js" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    # DNS rebinding: a page of another site resolving to 127.0.0.1 is refused.
    assert client.get("/api/runs", headers={"host": "evil.example:7860"}).status_code == 403
    # A cross-site form post carries no X-Kitae header.
    assert client.post("/api/jobs/stop", json={"run": "x"}).status_code == 403
    headers = {"X-Kitae": "1"}
    refused = client.post("/api/jobs/stop", json={"run": "../elsewhere"}, headers=headers)
    assert refused.status_code == 400 and "inside" in refused.json()["error"]
    refused = client.post("/api/jobs/launch", json={"values": {"task": "single_label"}}, headers=headers)
    assert refused.status_code == 400 and "data: required key is missing" in refused.json()["error"]
    assert client.get("/api/run/file", params={"run": "a", "file": "../../etc/passwd"}).status_code == 400

    # The test client's own host name is no local name.
    assert TestClient(create_ui_app(tmp_path / "runs", base_dir=tmp_path)).get("/api/info").status_code == 403


def test_progress_file_is_throttled_whole_and_kept_on_resume(tmp_path):
    import json

    from kitae.training.callbacks import ProgressFile

    progress = ProgressFile(tmp_path, min_interval=3600)  # no time-based write during this test
    progress.on_train_begin({"epochs": 2, "updates": 20, "examples": 80, "batch_size": 8, "history": [],
                             "global_step": 0})
    progress.on_epoch_begin(0, 10, 0)
    step = {"epoch": 0, "lr": 1e-3, "examples": 8, "tokens": 80, "boundary": True}
    for batch in range(1, 11):
        progress.on_step_end({**step, "batch": batch, "global_step": batch, "loss": 1.0 / batch})
        written = json.loads((tmp_path / "progress.json").read_text())
        # Throttled: the file changes at the epoch's last batch (then evaluation), not at every step.
        assert len(written["steps"]) == (1 if batch == 10 else 0)
    assert written["phase"] == "evaluating" and written["batch"] == 10
    point = written["steps"][0]
    assert point["step"] == 10 and point["epoch"] == 1.0 and abs(point["loss"] - sum(1 / b for b in range(1, 11)) / 10) < 1e-4
    progress.on_epoch_end({"epoch": 1, "train_loss": 0.3})
    progress.on_run_stopped("interrupted")
    assert json.loads((tmp_path / "progress.json").read_text())["phase"] == "interrupted"
    assert not list(tmp_path.glob(".progress.json.*"))  # atomic: no temporary file left
    # Resumed at step 10: the curve so far is kept.
    resumed = ProgressFile(tmp_path)
    resumed.on_train_begin({"epochs": 2, "updates": 20, "history": [{"epoch": 1, "train_loss": 0.3}],
                            "global_step": 10})
    written = json.loads((tmp_path / "progress.json").read_text())
    assert [p["step"] for p in written["steps"]] == [10] and written["epochs_done"] == [{"epoch": 1, "train_loss": 0.3}]


def test_try_a_multi_label_run_shows_each_category_against_its_threshold(tiny_models, tmp_path, monkeypatch):
    """The Try panel's route mounts the run's `kitae serve` app; its answers are the run's
    predictions, with the tuned thresholds to draw each category against."""
    from fastapi.testclient import TestClient
    from test_multi_label import CATEGORIES, multilabel_rows

    import kitae
    from kitae.config import config_from_dict
    from kitae.ui import create_ui_app

    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", multilabel_rows(n, seed))
             for split, n, seed in (("train", 60, 1), ("dev", 20, 2), ("test", 20, 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "runs" / "ml", data={"label_field": "categories"},
                      evaluation={"thresholds": "tune"}, training={"epochs": 2, "select_metric": "micro_f1"})
    cfg["task"] = "multi_label"
    kitae.train(config_from_dict(cfg), progress=False)

    client = TestClient(create_ui_app(tmp_path / "runs", base_dir=tmp_path), base_url="http://127.0.0.1")
    headers = {"X-Kitae": "1"}
    table = client.get("/api/runs").json()["runs"]
    assert [(r["run"], r["status"], r["task"]) for r in table] == [("ml", "finished", "multi_label")]
    served = client.post("/api/try", json={"run": "ml"}, headers=headers).json()
    assert served["kind"] == "classifier" and set(served["thresholds"]) == set(CATEGORIES)
    texts = ["雨晴雪風肉魚", "株円税金"]
    answer = client.post(served["predict_url"], json={"texts": texts}).json()["predictions"]
    expected = kitae.load(tmp_path / "runs" / "ml").predict(texts)
    assert [p["label"] for p in answer] == [p.label for p in expected]
    for prediction in answer:
        decided = [c for c in CATEGORIES if prediction["probabilities"][c] >= served["thresholds"][c]]
        assert prediction["label"] == decided
    # The run's page: metrics, plots and the commands it stands for.
    detail = client.get("/api/run", params={"run": "ml"}).json()
    assert detail["status"] == "finished" and "micro_f1" in detail["metrics"]["test"]
    assert detail["progress"]["phase"] == "finished" and detail["commands"]["show"].startswith("kitae runs show")
    # Export writes only inside the runs folder.
    exported = client.post("/api/export", json={"run": "ml"}, headers=headers).json()
    assert Path(exported["folder"]).resolve().parent == (tmp_path / "runs" / "exports").resolve()
    # Push: first what would be uploaded (private unless the form says otherwise), then the upload.
    from test_export_and_card import FakeHub

    hub = FakeHub(existing={"someone/ml": False})
    monkeypatch.setattr("kitae.hub.hub_api", lambda token=None: hub)
    preview = client.post("/api/push/preview", json={"run": "ml", "repo_id": "someone/ml"}, headers=headers).json()
    assert preview["private"] is True and {"README.md", "kitae_config.yaml"} <= {f["name"] for f in preview["files"]}
    assert preview["bytes"] == sum(f["bytes"] for f in preview["files"]) > 0 and not hub.calls
    pushed = client.post("/api/push", json={"run": "ml", "repo_id": "someone/ml"}, headers=headers).json()
    assert pushed["private"] is True and hub.repos["someone/ml"] is True  # the public repo made private
    assert set(hub.files) == {Path(f["name"]).parts[0] for f in preview["files"]}


def test_sweeps_are_shown_with_their_table_and_plots(tmp_path):
    from fastapi.testclient import TestClient

    from kitae.runs import write_bytes_atomic, write_csv
    from kitae.ui import create_ui_app

    sweep = tmp_path / "runs" / "sweeps" / "lr"
    write_csv(sweep / "sweep_results.csv", [{"configuration": 0, "training.lr": 1e-4, "dev_macro_f1_mean": 0.8},
                                            {"configuration": 1, "training.lr": 1e-3, "dev_macro_f1_mean": 0.9}])
    write_bytes_atomic(sweep / "sweep_metric.png", b"\x89PNG\r\n\x1a\n")
    client = TestClient(create_ui_app(tmp_path / "runs", base_dir=tmp_path), base_url="http://127.0.0.1")
    [shown] = client.get("/api/runs").json()["sweeps"]
    assert shown["name"] == "sweeps/lr" and shown["plots"] == ["sweep_metric.png"]
    assert [row["training.lr"] for row in shown["rows"]] == ["0.0001", "0.001"]
    image = client.get("/api/run/file", params={"run": "sweeps/lr", "file": "sweep_metric.png"})
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
