"""Single-label classification metrics, implemented with numpy only.

Conventions follow :mod:`sklearn.metrics` (the tests use scikit-learn as the reference):

- ``y_true`` / ``y_pred`` are integer class indices in ``[0, n_classes)``.
- ``probs`` is a float array of shape ``(n, n_classes)`` whose rows sum to 1.
- Undefined ratios (for example the precision of a class that is never predicted) are 0,
  like scikit-learn's ``zero_division=0``; undefined AUC is ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "METRIC_DIRECTIONS",
    "accuracy",
    "binary_roc_auc",
    "classification_report_rows",
    "confusion_matrix",
    "is_better",
    "log_loss",
    "precision_recall_f1",
    "roc_auc",
    "single_label_metrics",
]

_AVERAGES = (None, "macro", "micro", "weighted")

METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "max",
    "macro_precision": "max",
    "macro_recall": "max",
    "macro_f1": "max",
    "micro_precision": "max",
    "micro_recall": "max",
    "micro_f1": "max",
    "weighted_precision": "max",
    "weighted_recall": "max",
    "weighted_f1": "max",
    "roc_auc": "max",
    "log_loss": "min",
    "loss": "min",
    # Reward models (kitae.tasks.reward).
    "pairwise_accuracy": "max",
    "mean_margin": "max",
    # Regression (kitae.metrics.regression).
    "rmse": "min",
    "mae": "min",
    "r2": "max",
    "pearson": "max",
    "spearman": "max",
    # Multi-label only (kitae.metrics.multilabel).
    "subset_accuracy": "max",
    "samples_f1": "max",
    "macro_roc_auc": "max",
    "hamming_loss": "min",
}
"""Whether a larger (``"max"``) or smaller (``"min"``) value of each scalar metric is better."""

# History and checkpoint code names metrics by split ("dev_macro_f1"); is_better accepts those.
_SPLIT_PREFIXES = ("dev_", "eval_", "val_", "valid_", "validation_", "test_", "train_")


def _as_labels(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, rejecting non-integral values."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")


def _check_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different lengths: {t.size} != {p.size}")
    return t, p


def _check_probs(y_true: ArrayLike, probs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, "y_true")
    p = np.asarray(probs)
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, n_classes), got {p.shape}")
    if p.shape[0] != t.size:
        raise ValueError(f"y_true and probs have different lengths: {t.size} != {p.shape[0]}")
    _check_range(t, p.shape[1], "y_true")
    return t, p


def _check_range(y: np.ndarray, n_classes: int, name: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} holds class indices outside [0, {n_classes}): "
            f"min {int(y.min())}, max {int(y.max())}"
        )


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with 0 where ``den == 0`` (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """Confusion matrix with true classes as rows and predicted classes as columns.

    ``cm[i, j]`` counts examples of true class ``i`` predicted as class ``j``.

    >>> confusion_matrix([0, 1, 1, 2], [0, 1, 0, 2], n_classes=3).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    t, p = _check_pair(y_true, y_pred)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    _check_range(t, n_classes, "y_true")
    _check_range(p, n_classes, "y_pred")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of examples whose prediction equals the true class (``nan`` when empty).

    >>> accuracy([0, 1, 1, 2], [0, 1, 0, 2])
    0.75
    """
    t, p = _check_pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def precision_recall_f1(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    n_classes: int,
    average: str | None = None,
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float, np.ndarray | int]:
    """Precision, recall, F1 and support, like scikit-learn's ``precision_recall_fscore_support``.

    Same numbers as ``precision_recall_fscore_support(y_true, y_pred,
    labels=range(n_classes), average=average, zero_division=0)``: a ratio whose
    denominator is 0 counts as 0, and ``"macro"`` averages over all ``n_classes``,
    including classes absent from both ``y_true`` and ``y_pred``.

    With ``average=None`` returns per-class float arrays ``(precision, recall, f1)`` and
    the int64 ``support`` array (true examples per class). With ``"macro"``, ``"micro"`` or
    ``"weighted"`` (weighted by support) returns three floats and the total support as int.

    >>> p, r, f, s = precision_recall_f1([0, 0, 1, 2], [0, 1, 1, 1], 3)
    >>> p.tolist(), r.tolist(), s.tolist()
    ([1.0, 0.3333333333333333, 0.0], [0.5, 1.0, 0.0], [2, 1, 1])
    >>> precision_recall_f1([0, 0, 1, 2], [0, 1, 1, 1], 3, average="micro")
    (0.5, 0.5, 0.5, 4)
    """
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm)
    pred_sum = cm.sum(axis=0)
    true_sum = cm.sum(axis=1)

    if average == "micro":
        tp = tp.sum(keepdims=True)
        pred_sum = pred_sum.sum(keepdims=True)
        true_sum = true_sum.sum(keepdims=True)

    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    # F1 from counts, 2tp / (2tp + fp + fn), so it is 0 rather than nan when P = R = 0.
    f1 = _divide(2 * tp, true_sum + pred_sum)

    if average is None:
        return precision, recall, f1, true_sum

    total = int(cm.sum())
    if average == "weighted":
        if total == 0:
            return 0.0, 0.0, 0.0, 0
        weights = true_sum / total
        return (
            float(np.dot(weights, precision)),
            float(np.dot(weights, recall)),
            float(np.dot(weights, f1)),
            total,
        )
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1)), total


def _rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties get average ranks)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: last rank of the group minus half its span.
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse.ravel()][positive].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def binary_roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for the positive class ``y_true == 1``.

    ``y_true`` holds 0/1 (or bool) labels and ``scores`` one score per example, higher meaning
    more likely positive. Ties are scored 1/2, so the value equals scikit-learn's
    ``roc_auc_score(y_true, scores)``; ``nan`` when ``y_true`` holds a single class, where
    scikit-learn warns or raises instead.

    >>> binary_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8])
    0.875
    >>> binary_roc_auc([1, 1], [0.7, 0.4])
    nan
    """
    t = _as_labels(y_true, "y_true")
    s = np.asarray(scores)
    if s.dtype.kind not in "biuf":
        raise TypeError(f"scores must be numeric, got dtype {s.dtype}")
    if s.shape != t.shape:
        raise ValueError(f"y_true and scores have different shapes: {t.shape} != {s.shape}")
    _check_range(t, 2, "y_true")
    return _rank_auc(t == 1, s)


def roc_auc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Area under the ROC curve.

    Binary (``probs.shape[1] == 2``): the AUC of ``probs[:, 1]`` for class 1.
    Multi-class: the unweighted mean of the one-vs-rest AUCs of ``probs[:, k]`` for class ``k``,
    taken over the classes that have both positives and negatives in ``y_true``; classes absent
    from ``y_true`` are skipped (scikit-learn's ``roc_auc_score(multi_class="ovr")`` raises in
    that case instead; otherwise the numbers are the same). Returns ``nan`` when the AUC is
    undefined, i.e. ``y_true`` holds a single class. Ties are scored 1/2, as in scikit-learn.

    >>> roc_auc([0, 0, 1, 1], [[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.2, 0.8]])
    0.875
    >>> roc_auc([1, 1], [[0.3, 0.7], [0.6, 0.4]])
    nan
    """
    t, p = _check_probs(y_true, probs)
    n_classes = p.shape[1]
    if n_classes == 2:
        return _rank_auc(t == 1, p[:, 1])
    aucs = [_rank_auc(t == k, p[:, k]) for k in range(n_classes)]
    defined = [a for a in aucs if not math.isnan(a)]
    if not defined:
        return float("nan")
    return float(np.mean(defined))


def log_loss(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class (natural log; ``nan`` when empty).

    Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps = np.finfo(probs.dtype).eps``
    and not renormalised, as scikit-learn 1.9 ``log_loss`` does, so a 0 probability on the
    true class costs ``-log(eps)`` (about 36 for float64) instead of infinity.

    >>> round(log_loss([0, 1], [[0.8, 0.2], [0.4, 0.6]]), 6)
    0.366985
    """
    t, p = _check_probs(y_true, probs)
    if t.size == 0:
        return float("nan")
    eps = np.finfo(p.dtype).eps
    p_true = np.clip(p[np.arange(t.size), t], eps, 1 - eps)
    return float(-np.mean(np.log(p_true)))


def single_label_metrics(
    y_true: ArrayLike, probs: ArrayLike, label_names: Sequence[str]
) -> dict[str, Any]:
    """All single-label metrics as a flat, JSON-serialisable dict.

    Predictions are ``argmax(probs, axis=1)``. Keys: ``accuracy``, ``{macro,micro,weighted}_
    {precision,recall,f1}``, ``roc_auc``, ``log_loss`` (floats), ``n`` (int), ``per_class``
    (label name -> ``{"precision", "recall", "f1", "support"}``) and ``confusion_matrix``
    (nested list of ints, rows = true). Values are plain Python ``float``/``int``; an undefined
    AUC stays ``float("nan")``.

    >>> m = single_label_metrics([0, 1, 1], [[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], ["負", "正"])
    >>> round(m["accuracy"], 4), m["n"], m["confusion_matrix"]
    (0.6667, 3, [[1, 0], [1, 1]])
    >>> m["per_class"]["正"]
    {'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666, 'support': 2}
    """
    t, p = _check_probs(y_true, probs)
    n_classes = p.shape[1]
    names = list(label_names)
    if len(names) != n_classes:
        raise ValueError(f"got {len(names)} label names for {n_classes} probability columns")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique: {names}")
    y_pred = np.argmax(p, axis=1)

    out: dict[str, Any] = {"accuracy": accuracy(t, y_pred)}
    for avg in ("macro", "micro", "weighted"):
        prec, rec, f1, _ = precision_recall_f1(t, y_pred, n_classes, average=avg)
        out[f"{avg}_precision"] = prec
        out[f"{avg}_recall"] = rec
        out[f"{avg}_f1"] = f1
    out["roc_auc"] = roc_auc(t, p)
    out["log_loss"] = log_loss(t, p)
    out["n"] = int(t.size)

    prec, rec, f1, support = precision_recall_f1(t, y_pred, n_classes, average=None)
    out["per_class"] = {
        name: {
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    }
    out["confusion_matrix"] = confusion_matrix(t, y_pred, n_classes).tolist()
    return out


def classification_report_rows(
    y_true: ArrayLike, y_pred: ArrayLike, label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of a classification report, ready for ``csv.DictWriter``.

    One row per class, then ``accuracy`` (precision and recall ``None``, ``f1`` = accuracy),
    ``macro avg`` and ``weighted avg``; each row has keys ``label``, ``precision``, ``recall``,
    ``f1``, ``support``. The numbers equal scikit-learn's ``classification_report(...,
    labels=range(n_classes), output_dict=True, zero_division=0)``.

    >>> rows = classification_report_rows([0, 1, 1], [0, 1, 0], ["負", "正"])
    >>> [r["label"] for r in rows]
    ['負', '正', 'accuracy', 'macro avg', 'weighted avg']
    >>> rows[2]
    {'label': 'accuracy', 'precision': None, 'recall': None, 'f1': 0.6666666666666666, 'support': 3}
    """
    names = list(label_names)
    n_classes = len(names)
    t, p = _check_pair(y_true, y_pred)
    prec, rec, f1, support = precision_recall_f1(t, p, n_classes, average=None)
    rows: list[dict[str, Any]] = [
        {
            "label": name,
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    ]
    n = int(t.size)
    rows.append(
        {"label": "accuracy", "precision": None, "recall": None, "f1": accuracy(t, p), "support": n}
    )
    for avg in ("macro", "weighted"):
        a_prec, a_rec, a_f1, _ = precision_recall_f1(t, p, n_classes, average=avg)
        rows.append(
            {"label": f"{avg} avg", "precision": a_prec, "recall": a_rec, "f1": a_f1, "support": n}
        )
    return rows


def _direction(metric: str) -> str:
    from kitae.metrics.generation import GENERATION_DIRECTIONS

    directions = {**METRIC_DIRECTIONS, **GENERATION_DIRECTIONS}
    if metric in directions:
        return directions[metric]
    for prefix in _SPLIT_PREFIXES:
        if metric.startswith(prefix) and metric[len(prefix) :] in directions:
            return directions[metric[len(prefix) :]]
    raise KeyError(
        f"unknown metric {metric!r}; expected one of {sorted(METRIC_DIRECTIONS)}, "
        f"optionally prefixed by a split such as 'dev_'"
    )


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` strictly improves on ``best`` for ``metric``.

    ``metric`` is a key of :data:`METRIC_DIRECTIONS`, optionally prefixed by a split name
    (``"dev_macro_f1"``, ``"eval_loss"``). ``best=None`` (nothing yet) or a ``nan`` best gives
    ``True``; a ``nan`` new value gives ``False``. Ties are not improvements.

    >>> is_better("macro_f1", 0.8, 0.7), is_better("dev_loss", 0.5, 0.4)
    (True, False)
    >>> is_better("log_loss", 1.0, None), is_better("accuracy", float("nan"), 0.1)
    (True, False)
    """
    direction = _direction(metric)
    if math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new > best if direction == "max" else new < best
