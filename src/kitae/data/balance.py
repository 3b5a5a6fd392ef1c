"""Class-imbalance tools: loss weights and per-epoch re-sampling of the train split.

Re-samplers are functions `(epoch, rng) -> example indices`: the training sampler calls one at the
start of every epoch with an rng seeded by (seed, epoch), so each epoch draws a fresh sample
(multi-epoch training on re-sampled data — which a fixed pre-sampled dataset cannot give) and a
resumed run draws the same one again. Dev and test are never touched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Resampler = Callable[[int, np.random.Generator], np.ndarray]


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (k * count_c) (scikit-learn's 'balanced'); 1.0 for an absent class.

    >>> balanced_class_weights(np.array([0, 0, 0, 1]), 2).tolist()
    [0.6666666666666666, 2.0]
    """
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = np.ones(n_classes)
    present = counts > 0
    weights[present] = len(y) / (n_classes * counts[present])
    return weights


def balanced_pos_weight(y: np.ndarray) -> np.ndarray:
    """Per-category negatives / positives, the usual BCE pos_weight; 1.0 for a category without positives.

    >>> balanced_pos_weight(np.array([[1, 0], [0, 0], [0, 1], [0, 1]])).tolist()
    [3.0, 1.0]
    """
    positives = y.sum(axis=0).astype(float)
    weights = np.ones(y.shape[1])
    has = positives > 0
    weights[has] = (len(y) - positives[has]) / positives[has]
    return weights


def single_label_resampler(y: np.ndarray, n_classes: int, mode: str) -> Resampler:
    """'downsample': every class to the rarest class's count; 'upsample': every class to the
    commonest class's count (the extra rows drawn with replacement)."""
    groups = [np.flatnonzero(y == c) for c in range(n_classes)]
    groups = [g for g in groups if len(g)]
    target = min(map(len, groups)) if mode == "downsample" else max(map(len, groups))

    def resample(epoch: int, rng: np.random.Generator) -> np.ndarray:
        parts = []
        for group in groups:
            if len(group) >= target:
                parts.append(rng.choice(group, size=target, replace=False))
            else:
                parts.append(np.concatenate([group, rng.choice(group, size=target - len(group), replace=True)]))
        return np.sort(np.concatenate(parts))

    return resample


def multilabel_resampler(y: np.ndarray, labels: list[str], drop_unlabelled: float = 0.0,
                         target_rate: dict[str, float] | None = None,
                         upsample: dict[str, float] | None = None) -> Resampler:
    """Compose, in this order: drop a share of rows without any category; for each
    {category: rate}, drop rows without that category until its positive rate reaches rate;
    repeat rows with a category `factor` times (a fractional part is drawn at random)."""
    y = y.astype(bool)
    index = {label: i for i, label in enumerate(labels)}

    def resample(epoch: int, rng: np.random.Generator) -> np.ndarray:
        pool = np.arange(len(y))
        if drop_unlabelled > 0:
            empty = pool[~y[pool].any(axis=1)]
            drop = rng.choice(empty, size=round(drop_unlabelled * len(empty)), replace=False)
            pool = np.setdiff1d(pool, drop)
        for label, rate in (target_rate or {}).items():
            column = y[pool, index[label]]
            positives, negatives = pool[column], pool[~column]
            keep = min(len(negatives), int(round(len(positives) * (1 - rate) / rate)))
            pool = np.sort(np.concatenate([positives, rng.choice(negatives, size=keep, replace=False)]))
        for label, factor in (upsample or {}).items():
            rows = pool[y[pool, index[label]]]
            whole, fraction = int(factor) - 1, factor - int(factor)
            extra = [np.repeat(rows, whole)] if whole else []
            if fraction > 0:
                extra.append(rows[rng.random(len(rows)) < fraction])
            pool = np.sort(np.concatenate([pool, *extra]))
        return pool

    return resample


def positive_rates(y: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Share of rows carrying each category (multi_label) or class (single_label indices)."""
    if y.ndim == 1:
        counts = np.bincount(y, minlength=len(labels))
        return {label: round(float(c / max(len(y), 1)), 6) for label, c in zip(labels, counts)}
    return {label: round(float(r), 6) for label, r in zip(labels, y.mean(axis=0) if len(y) else np.zeros(len(labels)))}
