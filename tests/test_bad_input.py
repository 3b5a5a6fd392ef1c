"""Every bad-input case: one clear error naming the file, line and field (or config key), exit
code 2, no traceback — and nothing already written is lost."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import separable_rows, tiny_config, write_jsonl
from typer.testing import CliRunner

from kitae.cli import app

GOOD = separable_rows(4, seed=5)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with a hash of its content: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
            else "folder" if p.is_dir() else "link" for p in sorted(root.rglob("*"))}


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


def _case_cp932_csv(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.csv"  # Excel's Japanese CSV
    path.write_bytes("text,label\n雨が降る,天気\n株が上がる,経済\n".encode("cp932"))
    cfg["data"]["train"] = str(path)


def _case_utf16(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.csv"
    path.write_text("text,label\n雨が降る,天気\n株が上がる,経済\n", encoding="utf-16")
    cfg["data"]["train"] = str(path)


def _case_json_array_of_strings(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.json"
    path.write_text(json.dumps([GOOD[0], GOOD[1], "雨が降る"], ensure_ascii=False), encoding="utf-8")
    cfg["data"]["train"] = str(path)


def _case_broken_json_array(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in GOOD[:3]) + ",\n{\"text\": }\n]",
                    encoding="utf-8")
    cfg["data"]["train"] = str(path)


def _case_csv_ragged_row(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.csv"
    path.write_text("text,label\n雨が降る,天気\n\n株が上がる\n", encoding="utf-8")
    cfg["data"]["train"] = str(path)


def _case_mixed_label_types(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    rows[6]["label"] = 1
    write_jsonl(Path(cfg["data"]["train"]), rows)


def _case_list_as_single_label(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    rows[1]["label"] = ["天気", "経済"]
    write_jsonl(Path(cfg["data"]["train"]), rows)


def _regression(cfg: dict, value: object) -> None:
    rows = [{**r, "score": float(i % 5)} for i, r in enumerate(GOOD)]
    rows[4]["score"] = value
    for split in ("train", "dev", "test"):
        write_jsonl(Path(cfg["data"][split]), rows)
    cfg["task"] = "regression"
    cfg["data"]["label_field"] = "score"


def _case_nan_target(tmp: Path, cfg: dict) -> None:
    _regression(cfg, float("nan"))  # json.dumps writes NaN, which Python's json reads back
    Path(cfg["data"]["dev"]).write_text(_lines([{**r, "score": 1.0} for r in GOOD]), encoding="utf-8")


def _case_inf_target(tmp: Path, cfg: dict) -> None:
    _regression(cfg, "inf")


def _case_csv_template_column(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.csv"
    path.write_text("text,label\n雨が降る,天気\n株が上がる,経済\n", encoding="utf-8")
    cfg["data"]["train"] = str(path)
    cfg["data"]["template"] = "本文: {body}"


def _case_max_length_below_specials(tmp: Path, cfg: dict) -> None:
    cfg["model"]["name"] = str(Path(cfg["model"]["name"]).parent / "bert")
    cfg["model"]["max_length"] = 2  # the tiny encoder adds [CLS] and [SEP]: no room for any text


def _case_empty_train_file(tmp: Path, cfg: dict) -> None:
    Path(cfg["data"]["train"]).write_bytes(b"")


def _case_one_class_train(tmp: Path, cfg: dict) -> None:
    write_jsonl(Path(cfg["data"]["train"]), [{**r, "label": "天気"} for r in GOOD])


def _split_file(tmp: Path, cfg: dict, ids: dict) -> None:
    path = tmp / "split.json"
    path.write_text(json.dumps(ids), encoding="utf-8")
    cfg["data"] = {"train": cfg["data"]["train"], "split_file": str(path)}


def _case_split_file_duplicate_id(tmp: Path, cfg: dict) -> None:
    ids = [r["id"] for r in GOOD]
    _split_file(tmp, cfg, {"train": ids[:6], "dev": ids[6:9], "test": [*ids[9:], ids[2]]})


def _case_split_file_unknown_id(tmp: Path, cfg: dict) -> None:
    ids = [r["id"] for r in GOOD]
    _split_file(tmp, cfg, {"train": ids[:6], "dev": [*ids[6:9], "no-such-id"], "test": ids[9:]})


def _case_duplicate_ids_in_data_for_split_file(tmp: Path, cfg: dict) -> None:
    rows = [dict(r) for r in GOOD]
    rows[7]["id"] = rows[2]["id"]
    write_jsonl(Path(cfg["data"]["train"]), rows)
    ids = [r["id"] for r in GOOD]
    _split_file(tmp, cfg, {"train": ids[:6], "dev": ids[6:9], "test": ids[9:]})


def _case_output_is_the_data_folder(tmp: Path, cfg: dict) -> None:
    cfg["output"] = str(tmp)


def _case_output_is_a_data_file(tmp: Path, cfg: dict) -> None:
    cfg["output"] = cfg["data"]["test"]


def _case_unreadable_file(tmp: Path, cfg: dict) -> None:
    path = tmp / "secret.jsonl"
    if os.geteuid() == 0:  # root reads any file; /proc/self/mem opens but its first read fails (EIO)
        path.symlink_to("/proc/self/mem")
    else:
        path.write_text(_lines(GOOD), encoding="utf-8")
        path.chmod(0)
    cfg["data"]["dev"] = str(path)


def _case_directory_as_file(tmp: Path, cfg: dict) -> None:
    (tmp / "dev_folder.jsonl").mkdir()
    cfg["data"]["dev"] = str(tmp / "dev_folder.jsonl")


def _case_unknown_encoding(tmp: Path, cfg: dict) -> None:
    cfg["data"]["encoding"] = "shiftjis2"


def _case_unsupported_suffix(tmp: Path, cfg: dict) -> None:
    path = tmp / "train.xlsx"
    path.write_bytes(b"PK\x03\x04")
    cfg["data"]["train"] = str(path)


def _case_roc_auc_on_one_class_dev(tmp: Path, cfg: dict) -> None:
    write_jsonl(Path(cfg["data"]["dev"]), [r for r in GOOD if r["label"] == "経済"])
    cfg["training"]["select_metric"] = "roc_auc"


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
    ("CP932 file", _case_cp932_csv, ["train.csv", "line 2", "not valid UTF-8", "data.encoding: cp932"]),
    ("UTF-16 file", _case_utf16, ["train.csv", "UTF-16", "data.encoding: utf-16"]),
    ("JSON array with a non-object", _case_json_array_of_strings, ["train.json", "element 3", "JSON object"]),
    ("broken JSON array", _case_broken_json_array, ["train.json", "line 5", "not valid JSON"]),
    ("CSV ragged row", _case_csv_ragged_row, ["train.csv", "line 4", "1 cells", "2 columns"]),
    ("label column of mixed types", _case_mixed_label_types, ["train.jsonl", "line 7", "'label'", "number", "text"]),
    ("list in a single-label column", _case_list_as_single_label, ["train.jsonl", "line 2", "'label'", "list"]),
    ("NaN regression target", _case_nan_target, ["train.jsonl", "line 5", "'score'", "finite"]),
    ("inf regression target", _case_inf_target, ["train.jsonl", "line 5", "'score'", "finite"]),
    ("CSV template column missing", _case_csv_template_column, ["train.csv", "line 2", "'body'", "template"]),
    ("max_length below the special tokens", _case_max_length_below_specials, ["model.max_length", "special tokens"]),
    ("empty train file", _case_empty_train_file, ["train.jsonl", "holds no rows"]),
    ("one class in train", _case_one_class_train, ["train.jsonl", "'label'", "at least 2 classes", "天気"]),
    ("split_file id listed twice", _case_split_file_duplicate_id, ["split.json", "'test'", "listed twice", GOOD[2]["id"]]),
    ("split_file id not in the data", _case_split_file_unknown_id, ["split.json", "'dev'", "no-such-id"]),
    ("split_file over duplicate data ids", _case_duplicate_ids_in_data_for_split_file,
     ["train.jsonl", "line 8", "'id'", "line 3", GOOD[2]["id"]]),
    ("output is the data folder", _case_output_is_the_data_folder, ["output", "holds", "never writes over"]),
    ("output is a data file", _case_output_is_a_data_file, ["test.jsonl", "is a file", "output"]),
    ("unreadable file", _case_unreadable_file, ["secret.jsonl", "cannot read"]),
    ("directory given as a file", _case_directory_as_file, ["data.dev", "dev_folder.jsonl", "directory"]),
    ("unknown encoding", _case_unknown_encoding, ["data.encoding", "shiftjis2", "cp932"]),
    ("unsupported file type", _case_unsupported_suffix, ["data.train", ".xlsx", ".csv"]),
    ("roc_auc on a one-class dev", _case_roc_auc_on_one_class_dev, ["dev.jsonl", "roc_auc", "two classes", "経済"]),
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
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["train", str(config_path)])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert output.count("error:") == 1, result.output
    for word in expected:
        assert word in output, (word, result.output)
    # Errors are found before anything is written: no run directory, no file changed or removed.
    assert not (tmp_path / "run").exists()
    assert snapshot(tmp_path) == before


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


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished-run")
    files = {split: write_jsonl(root / f"{split}.jsonl", GOOD) for split in ("train", "dev", "test")}
    cfg = tiny_config(tiny_models["llama"], files, root / "run", training={"epochs": 1})
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert CliRunner().invoke(app, ["train", str(config_path)]).exit_code == 0
    return root / "run"


def _input_without_text_column(tmp: Path) -> Path:
    return write_jsonl(tmp / "posts.jsonl", [{"id": "a", "body": "雨"}, {"id": "b", "body": "株"}])


def _empty_input(tmp: Path) -> Path:
    (tmp / "posts.jsonl").write_bytes(b"")
    return tmp / "posts.jsonl"


def _cp932_input(tmp: Path) -> Path:
    (tmp / "posts.csv").write_bytes("text\n雨が降る\n株が上がる\n".encode("cp932"))
    return tmp / "posts.csv"


def _folder_input(tmp: Path) -> Path:
    (tmp / "posts.jsonl").mkdir()
    return tmp / "posts.jsonl"


def _late_empty_text(tmp: Path) -> Path:
    # The bad row comes after a whole streamed chunk: nothing may be written for the good ones either.
    from kitae.predictor import PREDICT_CHUNK_ROWS

    rows = [{"text": "雨が降る"}] * (PREDICT_CHUNK_ROWS + 5) + [{"text": ""}]
    return write_jsonl(tmp / "posts.jsonl", rows)


def _input_without_labels(tmp: Path) -> Path:
    return write_jsonl(tmp / "posts.jsonl", [{"text": "雨が降る"}, {"text": "株が上がる"}])


PREDICT_CASES = [
    # (name, command, make the input, words the message must contain)
    ("predict: no text column", "predict", _input_without_text_column, ["posts.jsonl", "line 1", "'text'", "missing column"]),
    ("predict: 0-byte file", "predict", _empty_input, ["posts.jsonl", "holds no rows"]),
    ("predict: CP932 file", "predict", _cp932_input, ["posts.csv", "line 2", "cp932"]),
    ("predict: a folder as input", "predict", _folder_input, ["posts.jsonl", "directory"]),
    ("predict: empty text after the first chunk", "predict", _late_empty_text, ["posts.jsonl", "empty text", "'text'"]),
    ("evaluate: no label column", "evaluate", _input_without_labels, ["posts.jsonl", "line 1", "'label'", "no label column"]),
]


@pytest.mark.parametrize("name,command,make_input,expected", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_bad_prediction_input_is_one_clear_error(finished_run, tmp_path, name, command, make_input, expected):
    source = make_input(tmp_path)
    run_before = snapshot(finished_run)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    args = ["-o", str(out / "predictions.jsonl")] if command == "predict" else ["-o", str(out)]
    if command == "predict":
        out.mkdir()
        before = snapshot(tmp_path)
    result = CliRunner().invoke(app, [command, str(finished_run), str(source), *args])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and output.count("error:") == 1, result.output
    for word in expected:
        assert word in output, (word, result.output)
    assert snapshot(tmp_path) == before and snapshot(finished_run) == run_before


def test_predict_never_replaces_a_file_unasked(finished_run, tmp_path):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "雨が降る"}])
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my results\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(finished_run), str(source), "-o", str(mine)])
    assert result.exit_code == 2 and "exists" in result.output and mine.read_text() == "my results\n"
    same = CliRunner().invoke(app, ["predict", str(finished_run), str(source), "-o", str(source), "--overwrite"])
    assert same.exit_code == 2 and "is the input file" in same.output
    assert CliRunner().invoke(app, ["predict", str(finished_run), str(source), "-o", str(mine), "--overwrite"]).exit_code == 0
    assert json.loads(mine.read_text().splitlines()[0])["predicted"] in {"天気", "料理", "経済"}
