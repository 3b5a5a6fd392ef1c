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
from kitae.config import config_from_dict
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
