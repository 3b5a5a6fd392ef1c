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

    Within each stratum (key) the items are shuffled with `seed` and cut by largest-remainder
    rounding, so every part keeps the label proportions and sizes add up exactly.

    >>> rest, dev = stratified_split(list(range(10)), ["a"] * 5 + ["b"] * 5, [0.2], seed=0)
    >>> len(rest), len(dev)
    (8, 2)
    """
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(keys if stratify else [0] * len(items)):
        groups[key].append(index)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for key in sorted(groups, key=str):
        indices = np.array(groups[key])
        rng.shuffle(indices)
        counts = _apportion(len(indices), fractions)
        start = 0
        for part_index, count in enumerate(counts, start=1):
            parts[part_index].extend(indices[start:start + count].tolist())
            start += count
        parts[0].extend(indices[start:].tolist())
    return [[items[i] for i in sorted(part)] for part in parts]


def _apportion(n: int, fractions: Sequence[float]) -> list[int]:
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    # Hand the rounding remainder to the largest fractional parts, so small classes still get a
    # dev example when the total asks for one.
    remainder = round(sum(exact)) - sum(counts)
    order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[:max(0, remainder)]:
        counts[i] += 1
    return counts


def stratified_subset(items: Sequence[T], keys: Sequence[Hashable], size: int, seed: int) -> list[T]:
    """A stratified random subset of `size` items (all of them when size >= len(items))."""
    if size >= len(items):
        return list(items)
    _, subset = stratified_split(items, keys, [size / len(items)], seed=seed)
    return subset
