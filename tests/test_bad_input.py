"""Every bad-input case: one clear error naming the file, line and field (or config key), exit
code 2, no traceback — and nothing already written is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import separable_rows, tiny_config, write_jsonl
from typer.testing import CliRunner

from kitae.cli import app

GOOD = separable_rows(4, seed=5)


def _lines(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _case_bad_json(tmp: Path, cfg: dict) -> None:
    Path(cfg["data"]["train"]).write_text(_lines(GOOD[:2]) + '{"text": "雨", "label": \n' + _lines(GOOD[2:]),
                                          encoding="utf-8")


def _case_missing_column(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    del rows[3]["text"]
    write_jsonl(Path(cfg["data"]["train"]), rows)


def _case_empty_text(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    rows[5]["text"] = "   "
    write_jsonl(Path(cfg["data"]["train"]), rows)


def _case_unseen_dev_label(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD[:6]]
    rows[4]["label"] = "スポーツ"
    write_jsonl(Path(cfg["data"]["dev"]), rows)


def _case_missing_label(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    rows[2]["label"] = ""
    write_jsonl(Path(cfg["data"]["train"]), rows)


def _case_csv_extra_cells(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.csv"
    path.write_text("text,label\n雨が降る,天気\n株が上がる,経済,余分\n", encoding="utf-8")
    cfg["data"]["train"] = str(path)


def _case_template_column(tmp: Path, cfg: dict) -> None:
    cfg["data"]["template"] = "タイトル: {title}\n{text}"


def _case_missing_file(tmp: Path, cfg: dict) -> None:
    cfg["data"]["dev"] = str(tmp / "nope.jsonl")


def _case_unknown_key(tmp: Path, cfg: dict) -> None:
    cfg["training"]["lrr"] = 1e-4


def _case_unknown_section(tmp: Path, cfg: dict) -> None:
    cfg["trainig"] = {"lr": 1e-4}


def _case_wrong_type(tmp: Path, cfg: dict) -> None:
    cfg["training"]["epochs"] = "three"


def _case_unknown_task(tmp: Path, cfg: dict) -> None:
    cfg["task"] = "single_lable"


def _case_unknown_metric(tmp: Path, cfg: dict) -> None:
    cfg["training"]["select_metric"] = "macro-f1"


def _case_missing_required(tmp: Path, cfg: dict) -> None:
    del cfg["output"]


def _case_qlora_without_gpu(tmp: Path, cfg: dict) -> None:
    cfg["adapter"]["type"] = "qlora"


CASES = [
    # (name, mutate, words the message must contain)
    ("bad JSON line", _case_bad_json, ["train.jsonl", "line 3", "not valid JSON"]),
    ("missing column", _case_missing_column, ["train.jsonl", "line 4", "'text'", "missing column"]),
    ("empty text", _case_empty_text, ["train.jsonl", "line 6", "'text'", "empty text"]),
    ("label unseen in train", _case_unseen_dev_label, ["dev.jsonl", "line 5", "'label'", "スポーツ", "not seen in train"]),
    ("empty label", _case_missing_label, ["train.jsonl", "line 3", "'label'", "empty label"]),
    ("CSV row with extra cells", _case_csv_extra_cells, ["train.csv", "line 3"]),
    ("template column missing", _case_template_column, ["line 1", "'title'", "template"]),
    ("missing file", _case_missing_file, ["data.dev", "file not found", "nope.jsonl"]),
    ("unknown key", _case_unknown_key, ["training.lrr", "unknown key", "did you mean 'lr'"]),
    ("unknown section", _case_unknown_section, ["trainig", "did you mean 'training'"]),
    ("wrong type", _case_wrong_type, ["training.epochs", "integer", "'three'"]),
    ("unknown task", _case_unknown_task, ["task", "did you mean 'single_label'"]),
    ("unknown metric", _case_unknown_metric, ["select_metric", "did you mean 'macro_f1'"]),
    ("missing required key", _case_missing_required, ["output", "required"]),
    ("qlora without a GPU", _case_qlora_without_gpu, ["qlora needs a CUDA GPU", "adapter.type: lora"]),
]


@pytest.mark.parametrize("name,mutate,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(tmp_path, tiny_models, name, mutate, expected):
    if mutate is _case_qlora_without_gpu:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU: QLoRA is allowed here")
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", GOOD) for split in ("train", "dev", "test")}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run")
    mutate(tmp_path, cfg)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(config_path)])
    output = result.output.replace("\n", " ")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in expected:
        assert word in output, (word, result.output)
    # Data errors are found before the run directory is created.
    assert not (tmp_path / "run").exists()


def test_config_check_does_not_train(tmp_path, tiny_models):
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", GOOD) for split in ("train", "dev", "test")}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tiny_models["llama"], files, tmp_path / "run")),
                           encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "check", str(config_path), "--set", "training.lr=3e-4"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.0003" in result.output and "ok" in result.output
    assert not (tmp_path / "run").exists()
    bad = CliRunner().invoke(app, ["config", "check", str(config_path), "--set", "adapter.rank=8"])
    assert bad.exit_code == 2 and "adapter.rank" in bad.output and "did you mean 'r'" in bad.output


def test_finished_run_is_not_overwritten_by_a_failing_one(tmp_path, tiny_models):
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", GOOD) for split in ("train", "dev", "test")}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", training={"epochs": 1})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(config_path)]).exit_code == 0
    metrics_before = (tmp_path / "run" / "metrics.json").read_text()
    # Without --overwrite: refused.
    refused = runner.invoke(app, ["train", str(config_path)])
    assert refused.exit_code == 2 and "finished run" in refused.output and "--overwrite" in refused.output
    # Resume of a finished run: refused, clearly.
    resumed = runner.invoke(app, ["train", str(config_path), "--resume"])
    assert resumed.exit_code == 2 and "already finished" in resumed.output
    # With --overwrite but broken data: the error comes first and the finished run survives.
    _case_empty_text(tmp_path, cfg)
    failed = runner.invoke(app, ["train", str(config_path), "--overwrite"])
    assert failed.exit_code == 2 and "empty text" in failed.output
    assert (tmp_path / "run" / "metrics.json").read_text() == metrics_before


def test_predict_on_unfinished_or_missing_run(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "none"), str(tmp_path / "x.jsonl"), "-o",
                                      str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "not a kitae run directory" in result.output
