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


def iterative_stratified_split(items: Sequence[T], targets: np.ndarray, fractions: Sequence[float],
                               seed: int) -> list[list[T]]:
    """Multi-label stratified split (iterative stratification, Sechidis et al. 2011).

    `targets` is an (n, k) 0/1 matrix. Parts are [rest, *one per fraction]. The rarest category
    is placed first, each of its examples going to the part that most lacks that category, so
    every part gets close to its share of every category — where a random split would often give
    a rare category no dev examples at all.

    >>> y = np.array([[1, 0]] * 4 + [[0, 1]] * 4 + [[0, 0]] * 2)
    >>> rest, dev = iterative_stratified_split(list(range(10)), y, [0.5], seed=0)
    >>> sorted(y[dev].sum(axis=0).tolist()), len(dev)
    ([2, 2], 5)
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets).astype(bool)
    n = len(items)
    ratios = np.array([1.0 - sum(fractions), *fractions])
    wanted = ratios * n  # examples each part still wants
    wanted_per_label = np.outer(ratios, targets.sum(axis=0)).astype(float)  # (parts, k)
    part_of = np.full(n, -1)
    remaining = np.ones(n, dtype=bool)

    def assign(example: int, candidates: np.ndarray) -> None:
        best = candidates[np.isclose(wanted[candidates], wanted[candidates].max())]
        part = int(rng.choice(best))
        part_of[example] = part
        remaining[example] = False
        wanted[part] -= 1
        wanted_per_label[part] -= targets[example]

    while remaining.any():
        left = targets[remaining].sum(axis=0)
        if not left.any():  # only examples without any category are left
            for example in rng.permutation(np.flatnonzero(remaining)):
                assign(int(example), np.arange(len(ratios)))
            break
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for example in rng.permutation(np.flatnonzero(remaining & targets[:, label])):
            need = wanted_per_label[:, label]
            assign(int(example), np.flatnonzero(np.isclose(need, need.max())))
    return [[items[i] for i in np.flatnonzero(part_of == part)] for part in range(len(ratios))]
