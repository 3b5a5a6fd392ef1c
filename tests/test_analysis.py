"""`kitae data analyze`: rates, labels-per-example histogram, co-occurrence and token lengths
match direct counts; works for single- and multi-label data, from a config or a data file."""

from __future__ import annotations

import csv
import json
from collections import Counter

from conftest import write_jsonl
from test_multi_label import CATEGORIES, multilabel_rows
from typer.testing import CliRunner

from kitae.cli import app


def test_multilabel_analysis_from_config(tmp_path, tiny_models):
    rows = multilabel_rows(60, 11)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "task": "multi_label",
        "data": {"train": str(data), "label_field": "categories", "labels": CATEGORIES, "split": {"dev": 0.25}},
        "model": {"name": str(tiny_models["llama"]), "max_length": 10}, "output": str(tmp_path / "run")},
        ensure_ascii=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "analyze", str(config), "-o", str(tmp_path / "an")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert summary["splits"]["train"]["examples"] + summary["splits"]["dev"]["examples"] == 60
    rates = list(csv.DictReader((tmp_path / "an" / "label_rates.csv").open(encoding="utf-8")))
    for category in CATEGORIES:
        yes = sum(int(r["yes"]) for r in rates if r["label"] == category)
        assert yes == sum(category in row["categories"] for row in rows)
    histogram = Counter(len(row["categories"]) for row in rows)
    merged = Counter()
    for split in ("train", "dev"):
        merged.update({int(k): v for k, v in summary["splits"][split]["label_count_histogram"].items()})
    assert +merged == histogram
    # Tokens: <s> + one per character with the tiny char-level tokenizer.
    lengths = [len(row["text"]) + 1 for row in rows]
    over = sum(n > 10 for n in lengths)
    assert sum(summary["splits"][s]["tokens"]["over_max_length"] for s in ("train", "dev")) == over
    for name in ("label_rates.png", "token_lengths.png", "cooccurrence_train.csv", "cooccurrence_train.png"):
        assert (tmp_path / "an" / name).is_file()
    assert "labels per example" in result.output


def test_single_label_analysis_from_a_data_file(tmp_path):
    rows = [{"text": "雨" * (i % 5 + 1), "label": "天気" if i % 3 else "経済"} for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "analyze", str(data), "-o", str(tmp_path / "an")])
    assert result.exit_code == 0, result.output
    rates = {r["label"]: int(r["count"]) for r in csv.DictReader((tmp_path / "an" / "label_rates.csv").open())}
    assert rates == {"天気": 20, "経済": 10}


def test_pair_regression_and_reward_analysis(tmp_path, tiny_models):
    """Lengths are those of what the model reads: the tokenizer's pair, and each reward text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    rows = [{"id": str(i), "text_a": "雨" * (i % 5 + 1), "text_b": "晴" * (i % 3 + 1), "score": float(i % 4),
             "prompt": "問" * (i % 2 + 1), "chosen": "良" * 3, "rejected": "悪" * (i % 6 + 1)} for i in range(20)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cases = {"regression": {"text_fields": ["text_a", "text_b"], "label_field": "score"},
             "reward": {"prompt_field": "prompt"}}
    for task, data_section in cases.items():
        config = tmp_path / f"{task}.yaml"
        config.write_text(json.dumps({"task": task, "data": {"train": str(data), "split": {"dev": 0.0},
                                                             **data_section},
                                      "model": {"name": str(tiny_models["bert"]), "max_length": 8},
                                      "output": str(tmp_path / "run")}), encoding="utf-8")
        result = CliRunner().invoke(app, ["data", "analyze", str(config), "-o", str(tmp_path / task)])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / task / "summary.json").read_text())["splits"]["train"]
        if task == "regression":
            pairs = [(r["text_a"], r["text_b"]) for r in rows]
            assert summary["targets"]["score"]["mean"] == 1.5 and summary["targets"]["score"]["max"] == 3.0
        else:
            pairs = [(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")]
        tokens = [len(tok(a, b)["input_ids"]) for a, b in pairs]
        assert summary["tokens"]["max"] == max(tokens)
        assert summary["tokens"]["over_max_length"] == sum(n > 8 for n in tokens)
        assert not (tmp_path / task / "label_rates.csv").exists()
