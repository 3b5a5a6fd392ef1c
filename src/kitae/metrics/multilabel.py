"""Multi-label classification metrics and per-category threshold tuning, with numpy only.

Conventions follow :mod:`sklearn.metrics` (the tests use scikit-learn as the reference):

- ``y_true`` / ``y_pred`` are 0/1 (or bool) indicator arrays of shape ``(n, k)``: example ``i``
  carries category ``j`` when ``y[i, j] == 1``; any number of categories, including none.
- ``probs`` is a float array of shape ``(n, k)`` of independent (sigmoid) probabilities; rows
  need not sum to 1.
- ``thresholds`` is one float for every category or an array of ``k`` floats; a category is
  predicted when its probability is ``>=`` its threshold.
- Undefined ratios are 0, like scikit-learn's ``zero_division=0``; undefined AUC is ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from kitae.metrics.classification import _divide, binary_roc_auc

__all__ = [
    "binarize",
    "label_cardinality_histogram",
    "label_cooccurrence",
    "multilabel_confusion_matrix",
    "multilabel_metrics",
    "per_category_metrics",
    "tune_thresholds",
]

DEFAULT_THRESHOLD = 0.5


def _as_indicator(y: ArrayLike, name: str) -> np.ndarray:
    """Return ``y`` as a 2-D int64 array of 0/1, rejecting anything else."""
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, k), got {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold 0/1 indicators, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int64)


def _as_probs(probs: ArrayLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return ``probs`` as a 2-D float array of values in [0, 1], keeping float32 as float32."""
    p = np.asarray(probs)
    if p.dtype.kind in "biu":
        p = p.astype(np.float64)
    elif p.dtype.kind != "f":
        raise TypeError(f"probs must be numeric, got dtype {p.dtype}")
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, k), got {p.shape}")
    if shape is not None and p.shape != shape:
        raise ValueError(f"probs has shape {p.shape}, expected {shape} like y_true")
    # Logits passed by mistake would otherwise give plausible-looking but wrong metrics.
    if p.size and not (np.all(p >= 0) and np.all(p <= 1)):
        raise ValueError("probs must be probabilities in [0, 1]; apply a sigmoid to logits first")
    return p


def _as_thresholds(thresholds: float | ArrayLike, k: int) -> np.ndarray:
    """Return ``thresholds`` as a float64 array of length ``k``."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(k, float(thr))
    elif thr.shape != (k,):
        raise ValueError(f"thresholds must be a float or {k} floats, got shape {thr.shape}")
    if np.any(np.isnan(thr)):
        raise ValueError("thresholds must not be nan")
    return thr


def _check_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = _as_indicator(y_true, "y_true")
    p = _as_indicator(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {t.shape} != {p.shape}")
    return t, p


def _check_names(label_names: Sequence[str], k: int) -> list[str]:
    names = list(label_names)
    if len(names) != k:
        raise ValueError(f"got {len(names)} label names for {k} probability columns")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique: {names}")
    return names


def _mean(values: np.ndarray, axis: int | None = None) -> Any:
    """``np.mean`` that returns ``nan`` for no values without numpy's RuntimeWarning."""
    if values.shape[0] == 0:
        return np.full(values.shape[1:], np.nan) if axis == 0 else float("nan")
    return np.mean(values, axis=axis)


def binarize(probs: ArrayLike, thresholds: float | ArrayLike = DEFAULT_THRESHOLD) -> np.ndarray:
    """0/1 predictions: category ``j`` is predicted when ``probs[:, j] >= thresholds[j]``.

    ``thresholds`` is one float for all categories or an array with one float per category.

    >>> binarize([[0.9, 0.2, 0.5], [0.4, 0.7, 0.1]]).tolist()
    [[1, 0, 1], [0, 1, 0]]
    >>> binarize([[0.9, 0.2, 0.5], [0.4, 0.7, 0.1]], [0.95, 0.1, 0.5]).tolist()
    [[0, 1, 1], [0, 1, 0]]
    """
    p = _as_probs(probs)
    thr = _as_thresholds(thresholds, p.shape[1])
    return (p >= thr).astype(np.int64)


def multilabel_confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """One 2x2 confusion matrix per category, shape ``(k, 2, 2)``.

    ``cm[j]`` is ``[[tn, fp], [fn, tp]]`` for category ``j``: rows are true no/yes, columns
    predicted no/yes, as in scikit-learn's ``multilabel_confusion_matrix``.

    >>> multilabel_confusion_matrix([[1, 0], [1, 1], [0, 0]], [[1, 1], [0, 1], [0, 0]]).tolist()
    [[[1, 0], [1, 1]], [[1, 1], [0, 1]]]
    """
    t, p = _check_pair(y_true, y_pred)
    tp = (t & p).sum(axis=0)
    fp = ((1 - t) & p).sum(axis=0)
    fn = (t & (1 - p)).sum(axis=0)
    tn = t.shape[0] - tp - fp - fn
    return np.stack([np.stack([tn, fp], axis=1), np.stack([fn, tp], axis=1)], axis=1).astype(
        np.int64
    )


def _prf(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-category precision, recall, F1, true positives, support and predicted positives."""
    tp = (t & p).sum(axis=0)
    support = t.sum(axis=0)
    predicted = p.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    # F1 from counts, 2tp / (2tp + fp + fn), so it is 0 rather than nan when P = R = 0.
    f1 = _divide(2 * tp, support + predicted)
    return precision, recall, f1, tp, support, predicted


def per_category_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, probs: ArrayLike
) -> list[dict[str, Any]]:
    """Binary metrics of each category, in column order.

    Each dict has ``accuracy``, ``precision``, ``recall``, ``f1`` (0 when undefined, like
    scikit-learn's ``zero_division=0``), ``roc_auc`` of ``probs[:, j]`` (``nan`` when the
    category has a single class in ``y_true``), ``support`` (true positives plus false
    negatives, i.e. examples carrying the category) and ``predicted_positives``. Values are
    plain ``float``/``int``.

    >>> rows = per_category_metrics([[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0.8, 0.6], [0.3, 0.1]])
    >>> list(rows[0])
    ['accuracy', 'precision', 'recall', 'f1', 'roc_auc', 'support', 'predicted_positives']
    >>> rows[0]["f1"], rows[0]["roc_auc"], rows[0]["support"], rows[0]["predicted_positives"]
    (1.0, 1.0, 1, 1)
    >>> rows[1]["accuracy"], rows[1]["precision"], rows[1]["roc_auc"]
    (0.5, 0.0, nan)
    """
    t, pred = _check_pair(y_true, y_pred)
    p = _as_probs(probs, t.shape)
    precision, recall, f1, _, support, predicted = _prf(t, pred)
    acc = _mean(t == pred, axis=0)
    return [
        {
            "accuracy": float(acc[j]),
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "roc_auc": float(binary_roc_auc(t[:, j], p[:, j])),
            "support": int(support[j]),
            "predicted_positives": int(predicted[j]),
        }
        for j in range(t.shape[1])
    ]


def _log_loss(t: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy over all cells, clipped like scikit-learn's ``log_loss``."""
    if t.size == 0:
        return float("nan")
    eps = np.finfo(p.dtype).eps
    # 1 - p is taken before clipping, as scikit-learn does with its two-column expansion.
    p_true = np.clip(np.where(t == 1, p, 1 - p), eps, 1 - eps)
    return float(-np.mean(np.log(p_true.astype(np.float64))))


def multilabel_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    label_names: Sequence[str],
    thresholds: float | ArrayLike = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """All multi-label metrics as a flat, JSON-serialisable dict.

    Predictions are :func:`binarize` ``(probs, thresholds)``. Keys, matching scikit-learn with
    ``zero_division=0``: ``{micro,macro}_{precision,recall,f1}``, ``weighted_f1`` (weighted by
    support), ``samples_f1`` (F1 of each example's label set, averaged over examples),
    ``subset_accuracy`` (whole label set right), ``hamming_loss`` (wrong cells / all cells),
    ``macro_roc_auc`` (mean over categories whose AUC is defined; ``nan`` if none),
    ``log_loss`` (mean binary cross-entropy over all cells, probabilities clipped to
    ``[eps, 1 - eps]``), ``n`` (int), ``per_category`` (label name -> the dict of
    :func:`per_category_metrics`) and ``thresholds`` (label name -> threshold used). Values are
    plain Python ``float``/``int``; undefined values stay ``float("nan")``.

    >>> m = multilabel_metrics([[1, 0], [1, 1], [0, 0]],
    ...                        [[0.9, 0.6], [0.4, 0.8], [0.2, 0.3]], ["猥褻", "差別"])
    >>> round(m["micro_f1"], 4), round(m["subset_accuracy"], 4), round(m["hamming_loss"], 4)
    (0.6667, 0.3333, 0.3333)
    >>> m["per_category"]["差別"]["precision"], m["thresholds"]
    (0.5, {'猥褻': 0.5, '差別': 0.5})
    """
    t = _as_indicator(y_true, "y_true")
    p = _as_probs(probs, t.shape)
    n, k = t.shape
    names = _check_names(label_names, k)
    thr = _as_thresholds(thresholds, k)
    pred = binarize(p, thr)

    precision, recall, f1, tp, support, predicted = _prf(t, pred)
    out: dict[str, Any] = {
        "micro_precision": float(_divide(tp.sum(), predicted.sum())),
        "micro_recall": float(_divide(tp.sum(), support.sum())),
        "micro_f1": float(_divide(2 * tp.sum(), support.sum() + predicted.sum())),
        "macro_precision": float(_mean(precision)),
        "macro_recall": float(_mean(recall)),
        "macro_f1": float(_mean(f1)),
    }
    total = int(support.sum())
    out["weighted_f1"] = float(np.dot(support / total, f1)) if total else 0.0

    row_tp = (t & pred).sum(axis=1)
    out["samples_f1"] = float(_mean(_divide(2 * row_tp, t.sum(axis=1) + pred.sum(axis=1))))
    out["subset_accuracy"] = float(_mean(np.all(t == pred, axis=1)))
    out["hamming_loss"] = float(_mean((t != pred).ravel()))

    rows = per_category_metrics(t, pred, p)
    aucs = [row["roc_auc"] for row in rows if not math.isnan(row["roc_auc"])]
    out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["log_loss"] = _log_loss(t, p)
    out["n"] = int(n)
    out["per_category"] = dict(zip(names, rows))
    out["thresholds"] = {name: float(thr[j]) for j, name in enumerate(names)}
    return out


def _best_threshold(positive: np.ndarray, scores: np.ndarray, candidates: np.ndarray) -> float:
    """Candidate with the highest F1 for one category; ties go to the one closest to 0.5."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return DEFAULT_THRESHOLD
    # Predicted and true positives at threshold c: scores >= c, counted by binary search.
    predicted = scores.size - np.searchsorted(np.sort(scores), candidates, side="left")
    tp = n_pos - np.searchsorted(np.sort(scores[positive]), candidates, side="left")
    f1 = 2 * tp / (n_pos + predicted)
    tied = candidates[f1 == f1.max()]
    # Closest to the default first, so a flat optimum does not drift; then the lower one.
    order = np.lexsort((tied, np.abs(tied - DEFAULT_THRESHOLD)))
    return float(tied[order[0]])


def tune_thresholds(
    y_true: ArrayLike, probs: ArrayLike, grid: ArrayLike | None = None
) -> np.ndarray:
    """Per-category thresholds that maximise each category's F1 on ``(y_true, probs)``.

    Sigmoid outputs of a fine-tuned model are often not calibrated around 0.5, least of all
    for rare categories, where a lower threshold can lift F1 a lot. Each category is tuned
    independently: the candidates are its distinct predicted probabilities (every distinct
    prediction set is reachable that way) plus 0.5, or ``grid`` plus 0.5 when ``grid`` is
    given; 0.5 is always a candidate, so on this data no category's F1 is ever lower than
    with the default. Among equally good candidates the one closest to 0.5 wins (then the
    lower one). A category without positives in ``y_true`` keeps 0.5, since any threshold
    would give F1 = 0 there.

    Tune on the dev split and apply the result (for example via ``multilabel_metrics(...,
    thresholds=...)`` or :func:`binarize`) to test data and at prediction time; thresholds
    tuned on the test split overstate test F1.

    >>> y = [[1, 0], [1, 0], [0, 1], [0, 0]]
    >>> p = [[0.35, 0.9], [0.3, 0.2], [0.1, 0.8], [0.2, 0.1]]
    >>> tune_thresholds(y, p).tolist()
    [0.3, 0.5]
    """
    t = _as_indicator(y_true, "y_true")
    p = _as_probs(probs, t.shape)
    fixed = None
    if grid is not None:
        g = np.asarray(grid, dtype=np.float64)
        if g.ndim != 1 or g.size == 0 or np.any(np.isnan(g)):
            raise ValueError("grid must be a non-empty 1-D sequence of thresholds")
        fixed = np.union1d(g, [DEFAULT_THRESHOLD])
    out = np.full(t.shape[1], DEFAULT_THRESHOLD, dtype=np.float64)
    for j in range(t.shape[1]):
        # float64 throughout, so candidates compare with scores exactly as in binarize.
        scores = p[:, j].astype(np.float64)
        candidates = fixed
        if candidates is None:
            candidates = np.union1d(scores, [DEFAULT_THRESHOLD])
        out[j] = _best_threshold(t[:, j] == 1, scores, candidates)
    return out


def label_cardinality_histogram(y_true: ArrayLike) -> dict[int, int]:
    """How many examples carry 0, 1, 2, ... categories, from 0 up to the largest count seen.

    >>> label_cardinality_histogram([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    {0: 2, 1: 0, 2: 1, 3: 1}
    """
    t = _as_indicator(y_true, "y_true")
    counts = np.bincount(t.sum(axis=1))
    return {int(c): int(m) for c, m in enumerate(counts)}


def label_cooccurrence(y_true: ArrayLike) -> np.ndarray:
    """``(k, k)`` counts of examples carrying both category ``i`` and category ``j``.

    The diagonal is the number of examples carrying each category.

    >>> label_cooccurrence([[1, 0, 1], [0, 0, 0], [1, 1, 1]]).tolist()
    [[2, 1, 2], [1, 1, 1], [2, 1, 2]]
    """
    t = _as_indicator(y_true, "y_true")
    return (t.T @ t).astype(np.int64)
