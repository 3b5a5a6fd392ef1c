"""Seeded, stratified splits and subsets of examples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def stratified_split(items: Sequence[T], keys: Sequence[Hashable], fractions: Sequence[float],
                     seed: int, stratify: bool = True) -> list[list[T]]:
    """Split `items` into len(fractions)+1 parts: the rest first, then one part per fraction.

    Within each stratum (key) the items are shuffled with `seed`; part sizes are round(n * f)
    overall, shared out over strata by largest remainder, so every part keeps the label
    proportions and has exactly the size asked for.

    >>> rest, dev = stratified_split(list(range(10)), ["a"] * 5 + ["b"] * 5, [0.2], seed=0)
    >>> len(rest), len(dev)
    (8, 2)
    """
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(keys if stratify else [0] * len(items)):
        groups[key].append(index)
    strata = sorted(groups, key=str)
    sizes = np.array([len(groups[k]) for k in strata])
    counts = np.zeros((len(strata), len(fractions)), dtype=int)
    for j, fraction in enumerate(fractions):
        exact = sizes * fraction
        counts[:, j] = np.floor(exact).astype(int)
        remainder = round(len(items) * fraction) - counts[:, j].sum()
        # Largest fractional parts first; a stratum never gives more than it has.
        for k in np.argsort(-(exact - counts[:, j]), kind="stable"):
            if remainder <= 0:
                break
            if counts[k].sum() < sizes[k]:
                counts[k, j] += 1
                remainder -= 1
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for k, key in enumerate(strata):
        indices = np.array(groups[key])
        rng.shuffle(indices)
        start = 0
        for j in range(len(fractions)):
            parts[j + 1].extend(indices[start:start + counts[k, j]].tolist())
            start += counts[k, j]
        parts[0].extend(indices[start:].tolist())
    return [[items[i] for i in sorted(part)] for part in parts]


def stratified_subset(items: Sequence[T], keys: Sequence[Hashable], size: int, seed: int) -> list[T]:
    """A stratified random subset of `size` items (all of them when size >= len(items))."""
    if size >= len(items):
        return list(items)
    _, subset = stratified_split(items, keys, [size / len(items)], seed=seed)
    return subset
