"""kitae.metrics multi-label metrics and threshold tuning against scikit-learn."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from kitae.metrics import (
    METRIC_DIRECTIONS,
    binarize,
    binary_roc_auc,
    is_better,
    label_cardinality_histogram,
    label_cooccurrence,
    multilabel_confusion_matrix,
    multilabel_metrics,
    per_category_metrics,
    plot_multilabel_confusion_grid,
    tune_thresholds,
)

ATOL = 1e-12
NAMES7 = ["猥褻", "差別", "暴力", "誹謗中傷", "自傷", "犯罪", "スパム"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- hand-worked example -------------------------------------------------------------------
#
# 4 examples, 3 categories, threshold 0.5; the last example has no labels and no predictions.
#   y_true = [[1,0,1], [0,1,0], [1,1,0], [0,0,0]]
#   probs  = [[.9,.2,.4], [.6,.7,.1], [.3,.8,.2], [.1,.4,.05]]
#   y_pred = [[1,0,0], [1,1,0], [0,1,0], [0,0,0]]
# cat 0: true [1,0,1,0] pred [1,1,0,0]: tp 1 fp 1 fn 1 tn 1 -> P = R = F1 = acc = 1/2
#        AUC: positives .9,.3 vs negatives .6,.1 -> pairs won 3 of 4 = 0.75
# cat 1: true [0,1,1,0] pred [0,1,1,0]: tp 2 fp 0 fn 0 tn 2 -> P = R = F1 = acc = 1, AUC 1
# cat 2: true [1,0,0,0] pred [0,0,0,0]: tp 0 fp 0 fn 1 tn 3 -> P = 0 (0/0), R = F1 = 0,
#        acc 3/4, AUC 1 (.4 above .1, .2, .05)
# micro: tp 3, predicted 4, support 5 -> P = 3/4, R = 3/5, F1 = 6/9 = 2/3
# macro: P = R = F1 = (1/2 + 1 + 0) / 3 = 1/2; weighted F1 = (2*.5 + 2*1 + 1*0) / 5 = 3/5
# samples F1: rows 0-2 each 2*1/(2+1) = 2/3, row 3 has 0/0 -> 0; mean = 2/4 = 1/2
# subset accuracy: only row 3 matches -> 1/4; hamming loss: 3 wrong cells of 12 -> 1/4
# macro AUC = (0.75 + 1 + 1) / 3 = 11/12
# log loss: probabilities of the true cell value (p or 1 - p):
#   .9 .8 .4 / .4 .7 .9 / .3 .8 .8 / .9 .6 .95
#   -(3 ln .9 + 3 ln .8 + 2 ln .4 + ln .7 + ln .3 + ln .6 + ln .95) / 12 = 4.9408603 / 12
#   = 0.4117384
# tuned thresholds: cat 0 at .3 predicts {.9, .6, .3}: F1 = 4/5 (0.5 gives 1/2, .9 gives 2/3);
#   cat 1 is already perfect at 0.5 (so is .7; 0.5 is closer); cat 2 at .4 gives F1 = 1
HAND_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
HAND_PROBS = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1], [0.3, 0.8, 0.2], [0.1, 0.4, 0.05]])
HAND_NAMES = ["猥褻", "差別", "暴力"]


def test_hand_example() -> None:
    pred = binarize(HAND_PROBS, 0.5)
    assert pred.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    m = multilabel_metrics(HAND_TRUE, HAND_PROBS, HAND_NAMES)
    expected = {
        "micro_precision": 3 / 4,
        "micro_recall": 3 / 5,
        "micro_f1": 2 / 3,
        "macro_precision": 1 / 2,
        "macro_recall": 1 / 2,
        "macro_f1": 1 / 2,
        "weighted_f1": 3 / 5,
        "samples_f1": 1 / 2,
        "subset_accuracy": 1 / 4,
        "hamming_loss": 1 / 4,
        "macro_roc_auc": 11 / 12,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=ATOL), key
    assert m["log_loss"] == pytest.approx(0.4117384, abs=1e-7)
    assert m["n"] == 4
    assert m["thresholds"] == {"猥褻": 0.5, "差別": 0.5, "暴力": 0.5}

    rows = [m["per_category"][name] for name in HAND_NAMES]
    assert rows == per_category_metrics(HAND_TRUE, pred, HAND_PROBS)
    assert [r["accuracy"] for r in rows] == pytest.approx([0.5, 1.0, 0.75], abs=ATOL)
    assert [r["precision"] for r in rows] == pytest.approx([0.5, 1.0, 0.0], abs=ATOL)
    assert [r["recall"] for r in rows] == pytest.approx([0.5, 1.0, 0.0], abs=ATOL)
    assert [r["f1"] for r in rows] == pytest.approx([0.5, 1.0, 0.0], abs=ATOL)
    assert [r["roc_auc"] for r in rows] == pytest.approx([0.75, 1.0, 1.0], abs=ATOL)
    assert [r["support"] for r in rows] == [2, 2, 1]
    assert [r["predicted_positives"] for r in rows] == [2, 2, 0]

    assert multilabel_confusion_matrix(HAND_TRUE, pred).tolist() == [
        [[1, 1], [1, 1]],
        [[2, 0], [0, 2]],
        [[3, 0], [1, 0]],
    ]
    np.testing.assert_array_equal(tune_thresholds(HAND_TRUE, HAND_PROBS), [0.3, 0.5, 0.4])

    _check_against_sklearn(HAND_TRUE, HAND_PROBS, HAND_NAMES, 0.5)
    assert json.loads(json.dumps(m, ensure_ascii=False)) == m


# --- random cases against scikit-learn -----------------------------------------------------


def _random_case(seed: int, n: int, k: int, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indicators and informative sigmoid probabilities.

    Category 0 has no positives (but can be predicted), the last category is never predicted
    at 0.5 (all its probabilities are below 0.45). With ``tied`` probabilities are rounded to
    one decimal, so many scores tie.
    """
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.1, 0.5, k)
    rates[0] = 0.0
    y = (rng.random((n, k)) < rates).astype(np.int64)
    logits = rng.normal(size=(n, k)) + rng.uniform(0.5, 2.5, k) * (2 * y - 1)
    probs = 1 / (1 + np.exp(-logits))
    probs[:, -1] *= 0.45
    if tied:
        probs = np.round(probs, 1)
    return y, probs


def _check_against_sklearn(
    y: np.ndarray, probs: np.ndarray, names: list[str], thresholds: float | np.ndarray
) -> dict:
    m = multilabel_metrics(y, probs, names, thresholds)
    pred = (probs >= np.broadcast_to(thresholds, (probs.shape[1],))).astype(np.int64)
    np.testing.assert_array_equal(binarize(probs, thresholds), pred)

    for average in ("micro", "macro"):
        ref = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert m[f"{average}_precision"] == pytest.approx(ref[0], abs=ATOL)
        assert m[f"{average}_recall"] == pytest.approx(ref[1], abs=ATOL)
        assert m[f"{average}_f1"] == pytest.approx(ref[2], abs=ATOL)
    for average in ("weighted", "samples"):
        ref = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert m[f"{average}_f1"] == pytest.approx(ref[2], abs=ATOL)
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=ATOL)
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred), abs=ATOL)
    assert m["log_loss"] == pytest.approx(
        skm.log_loss(y.ravel(), probs.ravel(), labels=[0, 1]), abs=1e-12
    )

    mcm = skm.multilabel_confusion_matrix(y, pred)
    np.testing.assert_array_equal(multilabel_confusion_matrix(y, pred), mcm)
    rp, rr, rf, rs = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    aucs = []
    for j, name in enumerate(names):
        row = m["per_category"][name]
        tn, fp, fn, tp = mcm[j].ravel()
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(y[:, j], pred[:, j]), abs=ATOL)
        assert row["precision"] == pytest.approx(rp[j], abs=ATOL)
        assert row["recall"] == pytest.approx(rr[j], abs=ATOL)
        assert row["f1"] == pytest.approx(rf[j], abs=ATOL)
        assert row["support"] == rs[j] == tp + fn
        assert row["predicted_positives"] == tp + fp
        if 0 < y[:, j].sum() < len(y):
            ref_auc = skm.roc_auc_score(y[:, j], probs[:, j])
            assert row["roc_auc"] == pytest.approx(ref_auc, abs=ATOL)
            aucs.append(ref_auc)
        else:
            assert math.isnan(row["roc_auc"])
    if aucs:
        assert m["macro_roc_auc"] == pytest.approx(np.mean(aucs), abs=ATOL)
    else:
        assert math.isnan(m["macro_roc_auc"])
    return m


CASES = [(0, 60, 3, False), (1, 80, 3, True), (2, 150, 7, False), (3, 120, 7, True)]


@pytest.mark.parametrize(("seed", "n", "k", "tied"), CASES)
def test_random_against_sklearn(seed: int, n: int, k: int, tied: bool) -> None:
    y, probs = _random_case(seed, n, k, tied)
    names = NAMES7[:k]
    assert y[:, 0].sum() == 0 and binarize(probs)[:, -1].sum() == 0
    m = _check_against_sklearn(y, probs, names, 0.5)

    assert type(m["n"]) is int and m["n"] == n
    scalar_keys = [key for key in m if key not in ("n", "per_category", "thresholds")]
    for key in scalar_keys:
        assert type(m[key]) is float, key
    for row in m["per_category"].values():
        assert type(row["support"]) is int and type(row["predicted_positives"]) is int
    json.dumps(m, ensure_ascii=False)

    thresholds = np.random.default_rng(seed).uniform(0.2, 0.8, k)
    m = _check_against_sklearn(y, probs, names, thresholds)
    assert m["thresholds"] == dict(zip(names, thresholds.tolist()))


def test_log_loss_clips_like_sklearn() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0]])
    probs = np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    m = multilabel_metrics(y, probs, HAND_NAMES)
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(
        skm.log_loss(y.ravel(), probs.ravel(), labels=[0, 1]), abs=1e-9
    )
    probs32 = probs.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref32 = skm.log_loss(y.ravel(), probs32.ravel(), labels=[0, 1])
    assert multilabel_metrics(y, probs32, HAND_NAMES)["log_loss"] == pytest.approx(ref32, rel=1e-5)


def test_binary_roc_auc_matches_sklearn() -> None:
    y, probs = _random_case(4, 90, 3, tied=True)
    for j in (1, 2):
        assert binary_roc_auc(y[:, j], probs[:, j]) == pytest.approx(
            skm.roc_auc_score(y[:, j], probs[:, j]), abs=ATOL
        )
    assert math.isnan(binary_roc_auc(y[:, 0], probs[:, 0]))


# --- thresholds ----------------------------------------------------------------------------


def test_binarize_thresholds() -> None:
    probs = np.array([[0.5, 0.3, 0.0], [0.49, 0.31, 1.0]])
    assert binarize(probs).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert binarize(probs, [0.5, 0.31, 0.0]).tolist() == [[1, 0, 1], [0, 1, 1]]
    assert binarize(probs.astype(np.float32), 0.5).tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError):
        binarize(probs, [0.5, 0.5])
    with pytest.raises(ValueError):
        binarize(probs, float("nan"))


def _f1(y: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    # Column by column: scikit-learn reads a single-column indicator as binary, not multilabel.
    pred = binarize(probs, thresholds)
    return np.array([skm.f1_score(y[:, j], pred[:, j], zero_division=0) for j in range(y.shape[1])])


def test_tuning_fixes_a_poorly_calibrated_category() -> None:
    rng = np.random.default_rng(10)
    n = 60
    y = np.zeros((n, 3), dtype=np.int64)
    probs = np.empty((n, 3))
    # Category 0: every probability in 0.2-0.4, positives are the 12 highest -> F1 0 at 0.5.
    probs[:, 0] = rng.uniform(0.2, 0.4, n)
    y[np.argsort(probs[:, 0])[-12:], 0] = 1
    # Category 1: informative but noisy around 0.5. Category 2: no positives at all.
    y[:, 1] = rng.random(n) < 0.4
    probs[:, 1] = np.clip(0.5 + 0.3 * (2 * y[:, 1] - 1) + rng.normal(0, 0.25, n), 0, 1)
    probs[:, 2] = rng.uniform(0, 0.7, n)

    tuned = tune_thresholds(y, probs)
    assert tuned.dtype == np.float64 and tuned.shape == (3,)
    before, after = _f1(y, probs, 0.5), _f1(y, probs, tuned)
    assert before[0] == 0.0 and after[0] == pytest.approx(1.0)
    assert after[0] > before[0]
    assert np.all(after >= before - ATOL)
    assert 0.2 <= tuned[0] <= 0.4
    assert tuned[2] == 0.5

    m = multilabel_metrics(y, probs, HAND_NAMES, tuned)
    assert m["thresholds"] == dict(zip(HAND_NAMES, tuned.tolist()))
    assert m["per_category"]["猥褻"]["f1"] == pytest.approx(1.0)
    assert m["macro_f1"] >= multilabel_metrics(y, probs, HAND_NAMES)["macro_f1"]


@pytest.mark.parametrize(("seed", "n", "k", "tied"), CASES)
def test_tuning_is_the_brute_force_optimum(seed: int, n: int, k: int, tied: bool) -> None:
    y, probs = _random_case(seed, n, k, tied)
    tuned = tune_thresholds(y, probs)
    assert tuned[0] == 0.5  # category 0 has no positives
    after, before = _f1(y, probs, tuned), _f1(y, probs, 0.5)
    assert np.all(after >= before - ATOL)
    assert after[-1] > before[-1] == 0.0  # the never-predicted category gains
    for j in range(1, k):
        candidates = np.union1d(probs[:, j], [0.5])
        pos = y[:, j] == 1
        f1s = np.array(
            [
                2 * np.sum(pos & (probs[:, j] >= c)) / (pos.sum() + np.sum(probs[:, j] >= c))
                for c in candidates
            ]
        )
        best = candidates[np.isclose(f1s, f1s.max(), rtol=0, atol=ATOL)]
        assert tuned[j] in candidates
        assert after[j] == pytest.approx(f1s.max(), abs=ATOL)
        assert abs(tuned[j] - 0.5) == pytest.approx(np.min(np.abs(best - 0.5)), abs=ATOL)


def test_tuning_ties_and_grid() -> None:
    y = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    # Col 0: any threshold in (0.2, 0.8] is perfect; 0.5 is a candidate and wins the tie.
    # Col 1: perfect only in (0.2, 0.35]; 0.5 would miss the 0.35 positive.
    probs = np.array([[0.1, 0.1], [0.2, 0.2], [0.8, 0.35], [0.9, 0.9]])
    np.testing.assert_array_equal(tune_thresholds(y, probs), [0.5, 0.35])
    # With a grid the candidates are the grid plus 0.5.
    np.testing.assert_array_equal(tune_thresholds(y, probs, grid=[0.1, 0.3, 0.7]), [0.5, 0.3])
    np.testing.assert_array_equal(tune_thresholds(y, probs, grid=[0.9]), [0.5, 0.5])
    # Equally good and equally far from 0.5: the lower threshold.
    # Positives .8, .4, .1 (P = 3): at .75 F1 = 2/(3+1), at .5 2/(3+2), at .25 4/(3+5).
    y1 = np.array([[1], [0], [1], [0], [0], [1]])
    p1 = np.array([[0.8], [0.6], [0.4], [0.35], [0.3], [0.1]])
    assert _f1(y1, p1, 0.25)[0] == _f1(y1, p1, 0.75)[0] == 0.5 > _f1(y1, p1, 0.5)[0]
    np.testing.assert_array_equal(tune_thresholds(y1, p1, grid=[0.25, 0.75]), [0.25])
    with pytest.raises(ValueError):
        tune_thresholds(y, probs, grid=[])


def test_tuning_keeps_default_without_positives() -> None:
    y = np.zeros((5, 2), dtype=np.int64)
    y[:2, 1] = 1
    probs = np.array([[0.9, 0.3], [0.8, 0.3], [0.1, 0.2], [0.4, 0.1], [0.6, 0.1]])
    tuned = tune_thresholds(y, probs)
    assert tuned[0] == 0.5
    assert tuned[1] == pytest.approx(0.3)


# --- label statistics ----------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n", "k", "tied"), CASES[:3])
def test_cardinality_and_cooccurrence(seed: int, n: int, k: int, tied: bool) -> None:
    y, _ = _random_case(seed, n, k, tied)
    y[0] = 1  # one example with every label, so the histogram has a gap-free tail to k
    hist = label_cardinality_histogram(y)
    counts = [int(row.sum()) for row in y]
    assert hist == {c: counts.count(c) for c in range(max(counts) + 1)}
    assert sum(hist.values()) == n and max(hist) == k
    assert all(type(key) is int and type(v) is int for key, v in hist.items())

    co = label_cooccurrence(y)
    assert co.shape == (k, k) and co.dtype == np.int64
    for i in range(k):
        for j in range(k):
            assert co[i, j] == sum(1 for row in y if row[i] == 1 and row[j] == 1)
    np.testing.assert_array_equal(np.diag(co), y.sum(axis=0))
    np.testing.assert_array_equal(co, co.T)


def test_cardinality_with_bool_input() -> None:
    y = np.array([[True, False], [False, False], [True, True]])
    assert label_cardinality_histogram(y) == {0: 1, 1: 1, 2: 1}
    assert label_cooccurrence(y).tolist() == [[2, 1], [1, 1]]


# --- validation and metric names -----------------------------------------------------------


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE, HAND_PROBS, ["a", "b"])
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE, HAND_PROBS, ["a", "a", "b"])
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE * 2, HAND_PROBS, HAND_NAMES)
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE, HAND_PROBS * 3 - 1, HAND_NAMES)  # logits, not probs
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE[:3], HAND_PROBS, HAND_NAMES)
    with pytest.raises(ValueError):
        multilabel_metrics(HAND_TRUE[:, 0], HAND_PROBS[:, 0], HAND_NAMES[:1])
    with pytest.raises(ValueError):
        multilabel_confusion_matrix(HAND_TRUE, HAND_TRUE[:, :2])


def test_selectable_metric_names() -> None:
    assert METRIC_DIRECTIONS["hamming_loss"] == "min"
    for key in ("subset_accuracy", "samples_f1", "macro_roc_auc"):
        assert METRIC_DIRECTIONS[key] == "max"
    m = multilabel_metrics(HAND_TRUE, HAND_PROBS, HAND_NAMES)
    scalar_keys = {key for key in m if key not in ("n", "per_category", "thresholds")}
    assert scalar_keys <= set(METRIC_DIRECTIONS)
    assert is_better("dev_hamming_loss", 0.1, 0.2) and not is_better("dev_samples_f1", 0.1, 0.2)


# --- plot ----------------------------------------------------------------------------------


def test_confusion_grid_plot(tmp_path) -> None:
    y, probs = _random_case(5, 50, 7, tied=False)
    pred = binarize(probs)
    plot_multilabel_confusion_grid(y, pred, NAMES7, tmp_path / "grid.png", title="検証データ")
    # Overwriting an existing file goes through the same rename.
    plot_multilabel_confusion_grid(y[:, :3], pred[:, :3], NAMES7[:3], tmp_path / "grid.png")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    data = (tmp_path / "grid.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with pytest.raises(ValueError):
        plot_multilabel_confusion_grid(y, pred, NAMES7[:3], tmp_path / "bad.png")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
