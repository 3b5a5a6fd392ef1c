"""Regression metrics with numpy only (the tests check them against scipy and scikit-learn)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {t.shape} != {p.shape}")
    return t, p


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error.

    >>> rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    1.1547005383792515
    """
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error.

    >>> mae([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    0.6666666666666666
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Coefficient of determination (1 - SS_res / SS_tot); nan for constant y_true.

    >>> r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    """
    t, p = _pair(y_true, y_pred)
    total = np.sum((t - t.mean()) ** 2)
    return float(1 - np.sum((t - p) ** 2) / total) if total > 0 else float("nan")


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; nan when either side is constant.

    >>> round(pearson([1, 2, 3, 4], [2, 4, 6, 9]), 6)
    0.994377
    """
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1  # ties share their mean rank
        start = end + 1
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson of average ranks, as scipy); nan when constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 1000])
    1.0
    """
    a, b = _pair(x, y)
    return pearson(_average_ranks(a), _average_ranks(b))


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike, names: list[str]) -> dict:
    """rmse, mae, r2, pearson, spearman — averaged over targets — plus `per_target` details.

    >>> regression_metrics([[1.0], [2.0], [3.0]], [[1.0], [2.0], [3.5]], ["score"])["mae"]
    0.16666666666666666
    """
    t, p = _pair(y_true, y_pred)
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    per_target = {}
    for j, name in enumerate(names):
        per_target[name] = {"rmse": rmse(t[:, j], p[:, j]), "mae": mae(t[:, j], p[:, j]), "r2": r2(t[:, j], p[:, j]),
                            "pearson": pearson(t[:, j], p[:, j]), "spearman": spearman(t[:, j], p[:, j])}
    metrics: dict = {key: float(np.mean([v[key] for v in per_target.values()]))
                     for key in ("rmse", "mae", "r2", "pearson", "spearman")}
    metrics["n"] = int(len(t))
    metrics["per_target"] = per_target
    return metrics
