"""task: reward — the pairwise (Bradley-Terry) loss and its accuracy by hand; a tiny reward model
learns a preference; scores for single texts; export as a one-output model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_jsonl
from test_preference import preference_rows

import kitae
from kitae.card import card_front_matter
from kitae.config import config_from_dict
from kitae.errors import KitaeError
from kitae.export import export_run
from kitae.tasks.reward import pairwise_loss


def test_pairwise_loss_and_accuracy_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 2, 0, -2.
    expected = (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected)
    from kitae.tasks.reward import RewardTask

    cfg = config_from_dict({"task": "reward", "data": {"train": "x.jsonl"}, "model": {"name": "m"}, "output": "o"},
                           check_files=False)
    metrics = RewardTask(cfg, ["score"]).metrics([1, 1, 1], np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, 1.0]]))
    assert metrics["pairwise_accuracy"] == pytest.approx(1 / 3)  # a tie is not a win
    assert metrics["mean_margin"] == pytest.approx((2 + 0 - 2) / 3)
    assert metrics["loss"] == pytest.approx(expected)


def test_reward_model_learns_a_preference(tiny_models, tmp_path):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", preference_rows(100, 1)),
             "dev": write_jsonl(tmp_path / "dev.jsonl", preference_rows(30, 2)),
             "test": write_jsonl(tmp_path / "test.jsonl", preference_rows(30, 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", training={"epochs": 3})
    cfg["task"] = "reward"
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["pairwise_accuracy"] >= 0.9, result.metrics["test"]
    assert result.metrics["test"]["mean_margin"] > 0
    record = json.loads((result.run_dir / "predictions_test.jsonl").read_text().splitlines()[0])
    assert {"score_chosen", "score_rejected", "margin", "correct"} <= set(record)
    clf = kitae.load(result.run_dir, batch_size=16)
    rows = preference_rows(30, 3)
    scores_chosen = [p.label for p in clf.predict([r["chosen"] for r in rows])]
    scores_rejected = [p.label for p in clf.predict([r["rejected"] for r in rows])]
    # Scoring texts one by one gives the scores the pairs got in evaluation.
    np.testing.assert_allclose(np.stack([scores_chosen, scores_rejected], 1), result.logits["test"], atol=1e-5)
    evaluated = clf.evaluate_file(files["test"])
    assert evaluated["pairwise_accuracy"] == result.metrics["test"]["pairwise_accuracy"]


def prompted_rows(n: int, seed: int) -> list[dict]:
    """Preference rows with a prompt (a question of filler characters)."""
    import random

    from conftest import FILLER

    rng = random.Random(seed)
    return [{**row, "question": "".join(rng.choice(FILLER) for _ in range(rng.randint(3, 6)))}
            for row in preference_rows(n, seed)]


@pytest.mark.parametrize("arch,adapter,lr", [("bert", "full", 3e-3), ("llama", "lora", 1e-2)])
def test_reward_with_a_prompt_reads_prompt_and_response_together(tiny_models, tmp_path, arch, adapter, lr):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", prompted_rows(100, 1)),
             "dev": write_jsonl(tmp_path / "dev.jsonl", prompted_rows(30, 2)),
             "test": write_jsonl(tmp_path / "test.jsonl", prompted_rows(30, 3))}
    cfg = tiny_config(tiny_models[arch], files, tmp_path / "run", adapter={"type": adapter},
                      data={"prompt_field": "question"}, training={"epochs": 3, "lr": lr})
    cfg["task"] = "reward"
    if arch == "llama":
        cfg["data"]["template"] = "問: {question}\n答: {text}"
    else:
        cfg["model"]["pooling"] = "cls"  # exportable merged (mean pooling is kitae's own head)
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["pairwise_accuracy"] >= 0.9, result.metrics["test"]
    clf = kitae.load(result.run_dir, batch_size=16)
    rows = prompted_rows(30, 3)
    # What the model reads: the tokenizer's pair encoding for the encoder, the template for the decoder.
    texts, group = clf.task.model_texts([(("問", "甲"), ("問", "乙"))], clf.model.is_decoder)
    assert group == 2
    assert texts == (["問: 問\n答: 甲", "問: 問\n答: 乙"] if arch == "llama" else [("問", "甲"), ("問", "乙")])
    # One (prompt, response) at a time gives the scores the pairs got in evaluation ...
    chosen = [p.label for p in clf.predict([(r["question"], r["chosen"]) for r in rows])]
    rejected = [p.label for p in clf.predict([{"question": r["question"], "text": r["rejected"]} for r in rows])]
    np.testing.assert_allclose(np.stack([chosen, rejected], 1), result.logits["test"], atol=1e-5)
    # ... the prompt is part of the input (another prompt, other scores) ...
    other = [p.label for p in clf.predict([(r["question"] + "。", r["chosen"]) for r in rows])]
    assert not np.allclose(other, chosen)
    # ... and a file of prompts with single responses is scored row by row.
    single = write_jsonl(tmp_path / "single.jsonl", [{"id": r["id"], "question": r["question"], "text": r["chosen"]}
                                                    for r in rows])
    assert clf.predict_file(single, tmp_path / "scores.jsonl") == len(rows)
    scores = [json.loads(line)["score"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(scores, chosen, atol=1e-5)
    with pytest.raises(KitaeError, match="with its prompt"):
        clf.predict([rows[0]["chosen"]])
    card = (result.run_dir / "README.md").read_text(encoding="utf-8")
    assert "reward model" in card and 'clf.predict([("質問", "回答")])' in card
    assert "pairwise_accuracy" in card_front_matter(card)["metrics"]
    if arch == "bert":  # merged export: plain transformers reads (prompt, response) as a tokenizer pair
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        out = export_run(result.run_dir, tmp_path / "merged", merge=True)
        assert 'tok(["質問"], ["回答"]' in (out / "README.md").read_text(encoding="utf-8")
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        with torch.no_grad():
            plain = model(**tokenizer([r["question"] for r in rows], [r["chosen"] for r in rows],
                                      return_tensors="pt", padding=True)).logits.numpy()
        np.testing.assert_allclose(plain[:, 0], chosen, rtol=1e-4, atol=1e-5)


def test_prompt_field_config_checks():
    from kitae.errors import ConfigError

    def config(task: str, **data):
        return config_from_dict({"task": task, "data": {"train": "t.jsonl", **data}, "model": {"name": "m"},
                                 "output": "o"}, check_files=False)

    cfg = config("single_label", from_preference=True, prompt_field="prompt")
    assert cfg.data.text_fields == ["prompt", "text"]  # each example: (prompt, response)
    assert config("reward", prompt_field="q", template="Q: {q}\nA: {text}").data.prompt_field == "q"
    with pytest.raises(ConfigError, match="prompt_field is for preference data"):
        config("single_label", prompt_field="prompt")
    with pytest.raises(ConfigError, match=r"may name only its two columns: \{q\} and \{text\}"):
        config("reward", prompt_field="q", template="Q: {q}\nA: {answer}")
    with pytest.raises(ConfigError, match=r"data.template: names body"):
        config("pair", template="{text_a} {body}")
