"""task: regression — metrics against scipy / scikit-learn, target normalisation, learning, reload."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import CLASS_CHARS, FILLER, tiny_config, write_jsonl
from scipy import stats
from sklearn import metrics as skm

import kitae
from kitae.config import config_from_dict
from kitae.errors import DataError, KitaeError
from kitae.metrics.regression import mae, pearson, r2, regression_metrics, rmse, spearman


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_scipy_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=200)
    p = y + rng.normal(scale=0.5, size=200)
    p[:20] = np.round(p[:20])  # ties for the rank correlation
    assert rmse(y, p) == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))
    assert mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p))
    assert r2(y, p) == pytest.approx(skm.r2_score(y, p))
    assert pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0])
    assert spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0])
    two = regression_metrics(np.stack([y, 2 * y], 1), np.stack([p, 2 * p], 1), ["a", "b"])
    assert two["rmse"] == pytest.approx((rmse(y, p) + rmse(2 * y, 2 * p)) / 2)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))


def score_rows(n: int, seed: int) -> list[dict]:
    """score = 5 x the share of 天気 characters: learnable from the characters."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        share = rng.random()
        length = rng.randint(6, 14)
        text = "".join(rng.choice(CLASS_CHARS["天気"]) if rng.random() < share else rng.choice(FILLER)
                       for _ in range(length))
        score = 5 * sum(c in CLASS_CHARS["天気"] for c in text) / length
        rows.append({"id": f"r{seed}-{i}", "text": text, "score": round(score, 3)})
    return rows


def test_regression_learns_and_reloads(tiny_models, tmp_path):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", score_rows(160, 1)),
             "dev": write_jsonl(tmp_path / "dev.jsonl", score_rows(40, 2)),
             "test": write_jsonl(tmp_path / "test.jsonl", score_rows(40, 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", data={"label_field": "score",
                      "normalize_targets": True}, training={"epochs": 6, "lr": 1e-2})
    cfg["task"] = "regression"
    result = kitae.train(config_from_dict(cfg), progress=False)
    test = result.metrics["test"]
    assert test["pearson"] >= 0.8, test
    meta = json.loads((result.run_dir / "model" / "kitae_model.json").read_text())
    assert meta["task_state"]["mean"][0] == pytest.approx(np.mean([r["score"] for r in score_rows(160, 1)]))
    hf_config = json.loads((result.run_dir / "model" / "config.json").read_text())
    assert hf_config["problem_type"] == "regression"
    clf = kitae.load(result.run_dir, batch_size=16)
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    predictions = clf.predict([r["text"] for r in rows])
    values = [p.label for p in predictions]
    # A regression model outputs values, not probabilities (scores, not probabilities, hold them).
    assert predictions[0].probabilities is None and predictions[0].scores == {"score": values[0]}
    np.testing.assert_allclose(clf.decision_function([r["text"] for r in rows[:4]])[:, 0], values[:4], rtol=1e-5)
    with pytest.raises(KitaeError, match="outputs values, not probabilities"):
        clf.predict_proba([rows[0]["text"]])
    # Predictions come back in the targets' scale (0-5), not z-scores.
    assert 0.5 < np.mean(values) < 4.5
    assert pearson([r["score"] for r in rows], values) == pytest.approx(test["pearson"], abs=1e-4)
    for name in ("scatter_test.png", "regression_report_test.csv"):
        assert (result.run_dir / name).is_file()


def test_bad_target_names_row_and_field(tmp_path):
    from kitae.api import prepare_data

    rows = [{"text": "雨", "score": 1.5}, {"text": "晴", "score": "高い"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = config_from_dict({"task": "regression", "data": {"train": str(path), "label_field": "score",
                            "split": {"dev": 0.0}}, "model": {"name": "m"}, "output": "o"})
    with pytest.raises(DataError, match=r"line 2, field 'score': expected a number"):
        prepare_data(cfg)
    assert cfg.training.select_metric == "rmse"  # the regression default


def similarity_rows(n: int, seed: int) -> list[dict]:
    """A 0-5 similarity of two texts: 5 x the share of text_b's characters on text_a's topic."""
    rng = random.Random(seed)
    topics = list(CLASS_CHARS)
    rows = []
    for _ in range(n):
        topic = rng.choice(topics)
        a = "".join(rng.choice(CLASS_CHARS[topic]) for _ in range(rng.randint(4, 8)))
        share = rng.random()
        b = [rng.choice(CLASS_CHARS[topic]) if rng.random() < share else rng.choice(FILLER)
             for _ in range(rng.randint(6, 12))]
        score = 5 * sum(c in CLASS_CHARS[topic] for c in b) / len(b)
        rows.append({"text_a": a, "text_b": "".join(b), "relatedness": round(score, 3)})
    return rows


def test_regression_on_text_pairs_uses_the_pair_encoding(tiny_models, tmp_path):
    """Similarity scores (JSICK relatedness, STS) are regression over a text pair."""
    files = {"train": write_jsonl(tmp_path / "train.jsonl", similarity_rows(160, 1)),
             "dev": write_jsonl(tmp_path / "dev.jsonl", similarity_rows(40, 2)),
             "test": write_jsonl(tmp_path / "test.jsonl", similarity_rows(40, 3))}
    cfg = tiny_config(tiny_models["bert"], files, tmp_path / "run", adapter={"type": "full"},
                      data={"label_field": "relatedness", "text_fields": ["text_a", "text_b"],
                            "normalize_targets": True},
                      training={"epochs": 6, "lr": 3e-3})
    cfg["task"] = "regression"
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["pearson"] >= 0.7, result.metrics["test"]
    clf = kitae.load(result.run_dir, batch_size=16)
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    pairs = [(r["text_a"], r["text_b"]) for r in rows]
    np.testing.assert_array_equal(clf.logits(pairs), result.logits["test"])
    # Swapping the two texts changes the input (segment ids differ), so it is read as a pair.
    swapped = clf.logits([(b, a) for a, b in pairs])
    assert not np.allclose(swapped, result.logits["test"])


def test_text_fields_need_two_columns():
    from kitae.errors import ConfigError

    base = {"task": "regression", "data": {"train": "t.jsonl", "label_field": "s"},
            "model": {"name": "m"}, "output": "o"}
    base["data"]["text_fields"] = ["a", "b", "c"]
    with pytest.raises(ConfigError, match="exactly 2 columns"):
        config_from_dict(base, check_files=False)
