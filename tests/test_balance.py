"""Imbalance tools: loss weights, focal loss, per-epoch re-sampling (train only), dropping rare
categories — each giving the promised rates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, write_jsonl
from sklearn.utils.class_weight import compute_class_weight

import kitae
from kitae.config import config_from_dict
from kitae.data.balance import (
    balanced_class_weights,
    balanced_pos_weight,
    multilabel_resampler,
    positive_rates,
    single_label_resampler,
)
from kitae.errors import ConfigError


def test_balanced_class_weights_match_sklearn():
    y = np.array([0] * 50 + [1] * 30 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(balanced_class_weights(y, 3), expected)


def test_pos_weight_is_negatives_over_positives():
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert balanced_pos_weight(y).tolist() == [1.0, 3.0, 1.0]  # (4-2)/2, (4-1)/1, no positives


@pytest.mark.parametrize("mode,size", [("downsample", 5), ("upsample", 50)])
def test_single_label_resampling_balances_and_redraws(mode, size):
    y = np.array([0] * 50 + [1] * 30 + [2] * 5)
    resample = single_label_resampler(y, 3, mode)
    first = resample(0, np.random.default_rng([1, 0, 1]))
    assert np.bincount(y[first]).tolist() == [size] * 3
    again = resample(0, np.random.default_rng([1, 0, 1]))
    other_epoch = resample(1, np.random.default_rng([1, 1, 1]))
    assert first.tolist() == again.tolist() and first.tolist() != other_epoch.tolist()


def test_multilabel_resampling_reaches_the_promised_rates():
    rng = np.random.default_rng(0)
    y = np.zeros((1000, 3), dtype=int)
    y[:100, 0] = 1  # 10% obscene-like
    y[50:80, 1] = 1
    y[900:905, 2] = 1
    rng.shuffle(y)
    labels = ["a", "b", "c"]
    empty = int((~y.astype(bool).any(axis=1)).sum())

    pool = multilabel_resampler(y, labels, drop_unlabelled=1.0)(0, rng)
    assert y[pool].any(axis=1).all() and len(pool) == 1000 - empty
    pool = multilabel_resampler(y, labels, drop_unlabelled=0.5)(0, rng)
    assert len(pool) == 1000 - round(0.5 * empty)
    pool = multilabel_resampler(y, labels, target_rate={"a": 0.5})(0, rng)
    assert positive_rates(y[pool], labels)["a"] == pytest.approx(0.5, abs=0.01)
    pool = multilabel_resampler(y, labels, upsample={"c": 3})(0, rng)
    assert y[pool, 2].sum() == 15 and len(pool) == 1010


def test_focal_loss_formula_and_gamma_zero_is_cross_entropy():
    from kitae.tasks.single_label import SingleLabelTask

    logits = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 0])

    def task(gamma):
        cfg = config_from_dict({"data": {"train": "x.jsonl"}, "model": {"name": "m"}, "output": "o",
                                "balance": {"loss": "focal", "focal_gamma": gamma}}, check_files=False)
        return SingleLabelTask(cfg, ["a", "b"])

    assert task(0.0).loss(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    p_true = torch.softmax(logits, -1)[torch.arange(3), targets]
    hand = (-(1 - p_true) ** 2 * torch.log(p_true)).mean()
    assert task(2.0).loss(logits, targets).item() == pytest.approx(hand.item())


def test_options_of_the_other_task_are_refused(tmp_path):
    from kitae.tasks.multi_label import MultiLabelTask
    from kitae.tasks.single_label import SingleLabelTask

    base = {"data": {"train": "x.jsonl"}, "model": {"name": "m"}, "output": "o"}
    with pytest.raises(ConfigError, match="multi_label"):
        SingleLabelTask(config_from_dict({**base, "balance": {"target_rate": {"a": 0.5}}}, check_files=False), ["a", "b"])
    with pytest.raises(ConfigError, match="single_label"):
        MultiLabelTask(config_from_dict({**base, "task": "multi_label", "balance": {"sampling": "upsample"}},
                                        check_files=False), ["a", "b"])
    with pytest.raises(ConfigError, match="unknown categories"):
        MultiLabelTask(config_from_dict({**base, "task": "multi_label", "balance": {"upsample": {"z": 2}}},
                                        check_files=False), ["a", "b"])


def test_min_positives_drops_rare_categories_with_a_warning(tmp_path, caplog):
    from kitae.api import prepare_data

    rows = [{"text": f"文{i}", "cats": (["common"] if i % 2 else []) + (["rare"] if i == 3 else [])}
            for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = config_from_dict({"task": "multi_label", "data": {"train": str(path), "label_field": "cats"},
                            "model": {"name": "m"}, "output": "o", "balance": {"min_positives": 5}})
    with caplog.at_level("WARNING"):
        task, examples = prepare_data(cfg)
    assert task.labels == ["common"]
    assert "rare (1)" in caplog.text
    assert all(e.target.shape == (1,) for e in examples["train"])


def test_resampling_touches_train_only(tiny_models, separable_data, tmp_path):
    rows = [json.loads(line) for line in separable_data["train"].read_text().splitlines()]
    # Make 天気 rare in train: 8 of its 40 rows kept.
    kept, seen = [], 0
    for row in rows:
        if row["label"] == "天気":
            seen += 1
            if seen > 8:
                continue
        kept.append(row)
    files = dict(separable_data, train=write_jsonl(tmp_path / "train.jsonl", kept))
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", training={"epochs": 2},
                      balance={"sampling": "upsample", "class_weights": "balanced"})
    result = kitae.train(config_from_dict(cfg), progress=False)
    report = json.loads((result.run_dir / "balance.json").read_text())
    assert report["rows_before"] == 88 and report["rows_after_epoch_1"] == 120
    assert report["rates_after_epoch_1"] == pytest.approx({"天気": 1 / 3, "料理": 1 / 3, "経済": 1 / 3}, abs=1e-6)
    assert result.metrics["dev"]["n"] == 30 and result.metrics["test"]["n"] == 45  # untouched


def test_multilabel_focal_loss_and_pos_weight_by_hand():
    from kitae.tasks.multi_label import MultiLabelTask

    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    base = {"task": "multi_label", "data": {"train": "x.jsonl"}, "model": {"name": "m"}, "output": "o"}

    task = MultiLabelTask(config_from_dict({**base, "balance": {"loss": "focal", "focal_gamma": 2.0}},
                                           check_files=False), ["a", "b"])
    p = torch.sigmoid(logits)
    p_true = torch.where(targets == 1, p, 1 - p)
    hand = (-(1 - p_true) ** 2 * torch.log(p_true)).mean()
    assert task.loss(logits, targets).item() == pytest.approx(hand.item(), rel=1e-6)

    weighted = MultiLabelTask(config_from_dict({**base, "balance": {"class_weights": "balanced"}},
                                               check_files=False), ["a", "b"])
    weighted.fit_train([np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0.0, 1.0]), np.array([0.0, 0.0])])
    assert weighted.pos_weight.tolist() == [3.0, 3.0]
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([3.0, 3.0]))
    assert weighted.loss(logits, targets).item() == pytest.approx(expected.item())
