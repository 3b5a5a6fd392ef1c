"""kitae.metrics against scikit-learn, the independent reference implementation."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from kitae.metrics import (
    METRIC_DIRECTIONS,
    accuracy,
    classification_report_rows,
    confusion_matrix,
    is_better,
    log_loss,
    plot_confusion_matrix,
    plot_history,
    precision_recall_f1,
    roc_auc,
    single_label_metrics,
)

ATOL = 1e-12


# --- hand-worked example -------------------------------------------------------------------
#
# 4 classes; class 2 is never predicted and class 3 appears in neither y_true nor y_pred.
#   y_true = [0, 0, 1, 1, 2, 2]
#   y_pred = [0, 1, 1, 1, 0, 0]
#   cm (rows true, cols pred) = [[1,1,0,0], [0,2,0,0], [2,0,0,0], [0,0,0,0]]
#   tp = [1,2,0,0], predicted = [3,3,0,0], support = [2,2,2,0]
#   precision = tp/predicted = [1/3, 2/3, 0 (0/0), 0 (0/0)]
#   recall    = tp/support   = [1/2, 1,   0,       0 (0/0)]
#   f1 = 2tp/(predicted+support) = [2/5, 4/5, 0, 0 (0/0)]
#   accuracy = 3/6 = 0.5 = micro P = micro R = micro F1
#   macro (over all 4): P = 1/4, R = 1.5/4 = 0.375, F1 = 1.2/4 = 0.3
#   weighted (2,2,2,0)/6: P = (1/3+2/3)/3 = 1/3, R = 1.5/3 = 0.5, F1 = 1.2/3 = 0.4
HAND_TRUE = np.array([0, 0, 1, 1, 2, 2])
HAND_PRED = np.array([0, 1, 1, 1, 0, 0])


def test_hand_example_counts_and_scores() -> None:
    cm = confusion_matrix(HAND_TRUE, HAND_PRED, 4)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]
    assert accuracy(HAND_TRUE, HAND_PRED) == 0.5

    p, r, f, s = precision_recall_f1(HAND_TRUE, HAND_PRED, 4, average=None)
    np.testing.assert_allclose(p, [1 / 3, 2 / 3, 0, 0], atol=ATOL)
    np.testing.assert_allclose(r, [1 / 2, 1, 0, 0], atol=ATOL)
    np.testing.assert_allclose(f, [2 / 5, 4 / 5, 0, 0], atol=ATOL)
    assert s.tolist() == [2, 2, 2, 0]

    expected = {
        "macro": (1 / 4, 0.375, 0.3),
        "micro": (0.5, 0.5, 0.5),
        "weighted": (1 / 3, 0.5, 0.4),
    }
    for average, (ep, er, ef) in expected.items():
        p, r, f, s = precision_recall_f1(HAND_TRUE, HAND_PRED, 4, average=average)
        assert (p, r, f) == pytest.approx((ep, er, ef), abs=ATOL)
        assert s == 6
        ref = skm.precision_recall_fscore_support(
            HAND_TRUE, HAND_PRED, labels=range(4), average=average, zero_division=0
        )
        assert (p, r, f) == pytest.approx(ref[:3], abs=ATOL)


def test_hand_example_auc_and_log_loss() -> None:
    # P(class 1) = [0.1, 0.4, 0.4, 0.8] for y = [0, 0, 1, 1].
    # (positive, negative) pairs: 0.4>0.1 -> 1, 0.4=0.4 -> 1/2, 0.8>0.1 -> 1, 0.8>0.4 -> 1
    #   AUC = 3.5 / 4 = 0.875
    # true-class probabilities = [0.9, 0.6, 0.4, 0.8]
    #   log loss = -(ln 0.9 + ln 0.6 + ln 0.4 + ln 0.8) / 4
    #            = (0.1053605 + 0.5108256 + 0.9162907 + 0.2231436) / 4 = 0.4389051
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.4, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    assert roc_auc(y, probs) == pytest.approx(0.875, abs=ATOL)
    assert log_loss(y, probs) == pytest.approx(0.4389051, abs=1e-7)
    assert roc_auc(y, probs) == pytest.approx(skm.roc_auc_score(y, p1), abs=ATOL)
    assert log_loss(y, probs) == pytest.approx(skm.log_loss(y, probs), abs=1e-12)


# --- random cases against scikit-learn -----------------------------------------------------


def _random_case(seed: int, n: int, n_classes: int, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering every class and probabilities that are right more often than chance.

    With ``tied`` the probabilities are small integers normalised per row, so many scores tie
    within each column while rows still sum to 1.
    """
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    rng.shuffle(y)
    if tied:
        weights = rng.integers(1, 4, size=(n, n_classes)).astype(np.float64)
        weights[np.arange(n), y] += rng.integers(0, 3, size=n)
    else:
        weights = rng.gamma(1.0, size=(n, n_classes))
        weights[np.arange(n), y] += rng.gamma(1.0, size=n)
    return y, weights / weights.sum(axis=1, keepdims=True)


def _skewed_predictions(seed: int, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions that never use the last two classes, so zero_division matters."""
    rng = np.random.default_rng(seed + 1000)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
    y_pred = np.minimum(y_pred, n_classes - 3) if n_classes > 3 else np.zeros_like(y_pred)
    return y_true, y_pred


CASES = [
    (0, 40, 2, False),
    (1, 41, 2, True),
    (2, 60, 3, False),
    (3, 57, 3, True),
    (4, 200, 9, False),
    (5, 150, 9, True),
]


@pytest.mark.parametrize(("seed", "n", "n_classes", "tied"), CASES)
def test_random_against_sklearn(seed: int, n: int, n_classes: int, tied: bool) -> None:
    y_true, probs = _random_case(seed, n, n_classes, tied)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, n_classes),
        skm.confusion_matrix(y_true, y_pred, labels=labels),
    )
    assert accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=ATOL)
    _check_prf(y_true, y_pred, n_classes)

    if n_classes == 2:
        ref_auc = skm.roc_auc_score(y_true, probs[:, 1])
    else:
        ref_auc = skm.roc_auc_score(
            y_true, probs, multi_class="ovr", average="macro", labels=labels
        )
    assert roc_auc(y_true, probs) == pytest.approx(ref_auc, abs=ATOL)
    assert log_loss(y_true, probs) == pytest.approx(
        skm.log_loss(y_true, probs, labels=labels), abs=1e-9
    )


@pytest.mark.parametrize("n_classes", [2, 3, 9])
def test_zero_division_against_sklearn(n_classes: int) -> None:
    for seed in range(3):
        y_true, y_pred = _skewed_predictions(seed, 50, n_classes)
        _check_prf(y_true, y_pred, n_classes)
        _check_report(y_true, y_pred, n_classes)
    # A class absent from both y_true and y_pred still counts in the macro average.
    _check_prf(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 5)
    _check_report(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 5)


def _check_prf(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> None:
    labels = list(range(n_classes))
    p, r, f, s = precision_recall_f1(y_true, y_pred, n_classes, average=None)
    rp, rr, rf, rs = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    np.testing.assert_allclose(p, rp, atol=ATOL)
    np.testing.assert_allclose(r, rr, atol=ATOL)
    np.testing.assert_allclose(f, rf, atol=ATOL)
    np.testing.assert_array_equal(s, rs)
    for average in ("macro", "micro", "weighted"):
        p, r, f, s = precision_recall_f1(y_true, y_pred, n_classes, average=average)
        ref = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        assert all(isinstance(v, float) for v in (p, r, f))
        assert (p, r, f) == pytest.approx(ref[:3], abs=ATOL)
        assert s == len(y_true)


def _check_report(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> None:
    names = [f"クラス{k}" for k in range(n_classes)]
    rows = classification_report_rows(y_true, y_pred, names)
    ref = skm.classification_report(
        y_true,
        y_pred,
        labels=list(range(n_classes)),
        target_names=names,
        output_dict=True,
        zero_division=0,
    )
    assert [row["label"] for row in rows] == [*names, "accuracy", "macro avg", "weighted avg"]
    for row in rows:
        if row["label"] == "accuracy":
            assert row["precision"] is None and row["recall"] is None
            assert row["f1"] == pytest.approx(ref["accuracy"], abs=ATOL)
            assert row["support"] == len(y_true)
            continue
        expected = ref[row["label"]]
        assert row["precision"] == pytest.approx(expected["precision"], abs=ATOL)
        assert row["recall"] == pytest.approx(expected["recall"], abs=ATOL)
        assert row["f1"] == pytest.approx(expected["f1-score"], abs=ATOL)
        assert row["support"] == int(expected["support"])
        assert isinstance(row["support"], int)


@pytest.mark.parametrize(("seed", "n", "n_classes", "tied"), CASES)
def test_classification_report_rows_against_sklearn(
    seed: int, n: int, n_classes: int, tied: bool
) -> None:
    y_true, probs = _random_case(seed, n, n_classes, tied)
    _check_report(y_true, probs.argmax(axis=1), n_classes)


# --- AUC edge cases ------------------------------------------------------------------------


def test_auc_nan_when_single_class() -> None:
    probs2 = np.array([[0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    assert math.isnan(roc_auc([1, 1, 1], probs2))
    assert math.isnan(roc_auc([0, 0, 0], probs2))
    probs3 = np.full((4, 3), 1 / 3)
    assert math.isnan(roc_auc([2, 2, 2, 2], probs3))
    assert isinstance(roc_auc([2, 2, 2, 2], probs3), float)


def test_auc_multiclass_skips_absent_classes() -> None:
    y_true, probs = _random_case(7, 80, 4, tied=True)
    y_true = np.where(y_true == 3, 0, y_true)  # class 3 now has no positives
    expected = np.mean([skm.roc_auc_score(y_true == k, probs[:, k]) for k in range(3)])
    assert roc_auc(y_true, probs) == pytest.approx(expected, abs=ATOL)


def test_auc_all_tied_is_half() -> None:
    probs = np.full((6, 3), 1 / 3)
    assert roc_auc([0, 1, 2, 0, 1, 2], probs) == pytest.approx(0.5, abs=ATOL)


# --- log loss clipping ---------------------------------------------------------------------


def test_log_loss_clips_like_sklearn() -> None:
    y = np.array([0, 1, 2, 1])
    probs = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    ours = log_loss(y, probs)
    assert math.isfinite(ours)
    assert ours == pytest.approx(skm.log_loss(y, probs, labels=[0, 1, 2]), abs=1e-9)

    probs32 = probs.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref32 = skm.log_loss(y, probs32, labels=[0, 1, 2])
    assert log_loss(y, probs32) == pytest.approx(ref32, rel=1e-5)


# --- single_label_metrics ------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n", "n_classes", "tied"), [CASES[1], CASES[4]])
def test_single_label_metrics(seed: int, n: int, n_classes: int, tied: bool) -> None:
    y_true, probs = _random_case(seed, n, n_classes, tied)
    names = ["スポーツ", "政治", "経済", "エンタメ", "科学", "国際", "社会", "天気", "文化"]
    names = names[:n_classes]
    m = single_label_metrics(y_true, probs, names)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    multilabel_only = {"subset_accuracy", "samples_f1", "macro_roc_auc", "hamming_loss",
                       "rmse", "mae", "r2", "pearson", "spearman", "pairwise_accuracy", "mean_margin"}
    scalar_keys = [k for k in METRIC_DIRECTIONS if k != "loss" and k not in multilabel_only]
    assert set(m) == {*scalar_keys, "n", "per_class", "confusion_matrix"}
    for key in scalar_keys:
        assert type(m[key]) is float, key
    assert type(m["n"]) is int and m["n"] == n

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=ATOL)
    for average in ("macro", "micro", "weighted"):
        ref = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        assert m[f"{average}_precision"] == pytest.approx(ref[0], abs=ATOL)
        assert m[f"{average}_recall"] == pytest.approx(ref[1], abs=ATOL)
        assert m[f"{average}_f1"] == pytest.approx(ref[2], abs=ATOL)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y_true, probs, labels=labels), abs=1e-9)
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()

    rp, rr, rf, rs = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    assert list(m["per_class"]) == names
    for k, name in enumerate(names):
        row = m["per_class"][name]
        assert row == pytest.approx(
            {"precision": rp[k], "recall": rr[k], "f1": rf[k], "support": rs[k]}, abs=ATOL
        )
        assert type(row["support"]) is int

    assert json.loads(json.dumps(m, ensure_ascii=False)) == m


def test_single_label_metrics_nan_auc_is_json_float() -> None:
    m = single_label_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]], ["負", "正"])
    assert type(m["roc_auc"]) is float and math.isnan(m["roc_auc"])
    assert "NaN" in json.dumps(m)


def test_single_label_metrics_rejects_wrong_names() -> None:
    with pytest.raises(ValueError):
        single_label_metrics([0, 1], [[0.5, 0.5], [0.1, 0.9]], ["a"])
    with pytest.raises(ValueError):
        single_label_metrics([0, 1], [[0.5, 0.5], [0.1, 0.9]], ["a", "a"])


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        precision_recall_f1([0, 1], [0, 1], 2, average="binary")


# --- is_better -----------------------------------------------------------------------------


def test_metric_directions() -> None:
    assert METRIC_DIRECTIONS["log_loss"] == "min"
    assert METRIC_DIRECTIONS["loss"] == "min"
    maximised = {k for k, v in METRIC_DIRECTIONS.items() if v == "max"}
    assert maximised == {
        "accuracy",
        "roc_auc",
        "subset_accuracy",
        "samples_f1",
        "macro_roc_auc",
        "r2",
        "pearson",
        "spearman",
        "pairwise_accuracy",
        "mean_margin",
        *(
            f"{a}_{m}"
            for a in ("macro", "micro", "weighted")
            for m in ("precision", "recall", "f1")
        ),
    }


def test_is_better() -> None:
    assert is_better("macro_f1", 0.8, 0.7)
    assert not is_better("macro_f1", 0.6, 0.7)
    assert not is_better("macro_f1", 0.7, 0.7)
    assert is_better("log_loss", 0.3, 0.4)
    assert not is_better("log_loss", 0.5, 0.4)
    assert is_better("loss", 0.1, 0.2)
    assert is_better("dev_loss", 0.1, 0.2)
    assert is_better("dev_macro_f1", 0.9, 0.2)
    assert is_better("accuracy", 0.0, None)
    assert is_better("loss", 100.0, None)
    assert not is_better("accuracy", float("nan"), 0.5)
    assert not is_better("roc_auc", float("nan"), None)
    assert is_better("roc_auc", 0.6, float("nan"))
    with pytest.raises(KeyError):
        is_better("bleu", 1.0, 0.0)


# --- plots ---------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_atomically(tmp_path) -> None:
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    plot_confusion_matrix(cm, ["スポーツ", "政治", "経済"], tmp_path / "cm.png", title="検証")
    plot_confusion_matrix(
        cm, ["スポーツ", "政治", "経済"], tmp_path / "cm_norm.png", normalize=True
    )
    history = [
        {"epoch": 1, "train_loss": 1.0, "dev_loss": 0.9, "dev_macro_f1": 0.5},
        {"epoch": 2, "train_loss": 0.6, "dev_loss": None, "dev_macro_f1": 0.6},
        {"epoch": 3, "train_loss": 0.4, "dev_loss": 0.7},
    ]
    plot_history(history, tmp_path / "history.png", ["dev_macro_f1", "dev_accuracy"])
    # Overwriting an existing file goes through the same rename.
    plot_history(history, tmp_path / "history.png", ["dev_macro_f1"])

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cm.png", "cm_norm.png", "history.png"]
    for name in files:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
