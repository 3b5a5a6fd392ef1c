"""Tokenise once, then build padded batches with explicit pooling positions.

Batches come from a sampler kitae owns: the order of every epoch is a pure function of
(seed, epoch), so a resumed run replays exactly the batches an uninterrupted run would see, and
length grouping (texts of similar length together) removes most of the padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kitae.models.pooling import last_token_positions


@dataclass
class Encoded:
    """Token ids of every example of a split (no padding), and how many were truncated."""

    input_ids: list[list[int]]
    truncated: int
    token_type_ids: list[list[int]] | None = None  # segment ids of text pairs, where the model uses them
    truncated_rows: list[bool] | None = None  # which rows were cut to max_length

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids])


@dataclass
class EncodedSplit:
    """One split, ready for the loop: ids, token ids and task targets (None when unlabelled).

    With `group_size` > 1 each example is that many consecutive token sequences (reward
    modelling: chosen then rejected), scored separately and batched together.
    """

    name: str
    ids: list[str]
    encoded: Encoded
    targets: list[Any] | None
    group_size: int = 1
    batching: Any = None  # kitae.inference.logits.Batching: the pad token and side of the tokenizer

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def truncated(self) -> int:
        return self.encoded.truncated

    @property
    def lengths(self) -> np.ndarray:
        """Per example: the longest of its sequences (what padding a batch costs)."""
        return self.encoded.lengths.reshape(len(self.ids), self.group_size).max(axis=1)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The token-sequence rows of the given examples."""
        if self.group_size == 1:
            return indices
        return (indices[:, None] * self.group_size + np.arange(self.group_size)).ravel()


def encode_texts(tokenizer, texts: Sequence[str] | Sequence[tuple[str, str]], max_length: int,
                 chunk_size: int = 1024) -> Encoded:
    """Token ids of texts (or text pairs, as the tokenizer's pair encoding), truncated to max_length."""
    if texts and isinstance(texts[0], tuple):
        return _encode_pairs(tokenizer, texts, max_length, chunk_size)
    ids: list[list[int]] = []
    cut: list[bool] = []
    for start in range(0, len(texts), chunk_size):
        chunk = list(texts[start:start + chunk_size])
        full = tokenizer(chunk, truncation=False, add_special_tokens=True)["input_ids"]
        for row in full:
            cut.append(len(row) > max_length)
            if cut[-1]:
                # Keep the special tokens the tokenizer adds at the end (e.g. BERT's [SEP]).
                tail = _special_suffix(tokenizer, row)
                row = row[: max_length - len(tail)] + tail
            ids.append(row)
    return Encoded(ids, sum(cut), truncated_rows=cut)


def _encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, chunk_size: int) -> Encoded:
    ids: list[list[int]] = []
    types: list[list[int]] = []
    cut: list[bool] = []
    for start in range(0, len(pairs), chunk_size):
        chunk = list(pairs[start:start + chunk_size])
        first, second = [p[0] for p in chunk], [p[1] for p in chunk]
        full = tokenizer(first, second, truncation=False)
        for i, row in enumerate(full["input_ids"]):
            row_types = full["token_type_ids"][i] if "token_type_ids" in full else None
            cut.append(len(row) > max_length)
            if cut[-1]:
                # Trim the longer text first, keeping both texts' special tokens.
                again = tokenizer(first[i], second[i], truncation="longest_first", max_length=max_length)
                row, row_types = again["input_ids"], again.get("token_type_ids")
            ids.append(row)
            if row_types is not None:
                types.append(row_types)
    return Encoded(ids, sum(cut), types if len(types) == len(ids) else None, cut)


def _special_suffix(tokenizer, row: list[int]) -> list[int]:
    special = set(tokenizer.all_special_ids)
    tail: list[int] = []
    for token in reversed(row):
        if token not in special or len(tail) >= 2:
            break
        tail.insert(0, token)
    return tail


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, megabatch_factor: int = 50) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one training epoch.

    Shuffled with (seed, epoch); with `group_by_length`, sorted by length inside megabatches of
    `megabatch_factor` batches, then the batch order is shuffled again (as transformers'
    LengthGroupedSampler, but reproducible per epoch).

    >>> [b.tolist() for b in epoch_batches(np.array([5, 1, 4, 2]), 2, seed=0, epoch=0)]
    [[3, 1], [0, 2]]
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        megabatch = batch_size * megabatch_factor
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in np.array_split(order, max(1, int(np.ceil(len(order) / megabatch))))
        ])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class TrainBatches:
    """The batches of every training epoch, a pure function of (seed, epoch).

    `resample(epoch, rng)` may return the example indices an epoch uses (with repeats for
    up-sampling, a subset for down-sampling); it is redrawn every epoch from the same seed, so
    multi-epoch training sees fresh samples and a resumed run replays the same ones.
    """

    lengths: np.ndarray
    batch_size: int
    seed: int
    group_by_length: bool = True
    resample: Callable[[int, np.random.Generator], np.ndarray] | None = None

    def epoch(self, epoch: int) -> list[np.ndarray]:
        if self.resample is None:
            return epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_by_length)
        pool = np.asarray(self.resample(epoch, np.random.default_rng([self.seed, epoch, 1])))
        batches = epoch_batches(self.lengths[pool], self.batch_size, self.seed, epoch, self.group_by_length)
        return [pool[b] for b in batches]

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.epoch(epoch))


def eval_batches(lengths: np.ndarray, batch_size: int, token_budget: int | None = None) -> list[np.ndarray]:
    """Batches for inference, longest first (the caller writes results back by index).

    With a `token_budget`, a batch takes as many examples as fit it, counted padded (examples x
    the batch's longest): short texts go many to a batch, long ones few, and no batch costs more
    than the budget (an example longer than it goes alone). Without one: `batch_size` each.

    >>> [b.tolist() for b in eval_batches(np.array([2, 9, 3, 8, 2]), 2)]
    [[1, 3], [2, 0], [4]]
    >>> [b.tolist() for b in eval_batches(np.array([2, 9, 3, 8, 2]), 2, token_budget=18)]
    [[1, 3], [2, 0, 4]]
    """
    order = np.argsort(-lengths, kind="stable")
    if token_budget is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # sorted: the first is the longest
        size = max(1, token_budget // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


def collate(input_ids: Sequence[list[int]], pad_token_id: int, padding_side: str = "right",
            token_type_ids: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest row; `pool_positions` = index of each row's last real token."""
    width = max(len(row) for row in input_ids)
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    types = torch.zeros((len(input_ids), width), dtype=torch.long) if token_type_ids is not None else None
    for b, row in enumerate(input_ids):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        mask[b, span] = 1
        if types is not None:
            types[b, span] = torch.tensor(token_type_ids[b])
    batch = {"input_ids": ids, "attention_mask": mask, "pool_positions": last_token_positions(mask)}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def collate_packed(input_ids: Sequence[list[int]], pad_token_id: int,
                   token_type_ids: Sequence[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Several sequences per row, no padding between them: the sequences of one batch packed
    best-fit into rows as wide as the longest of them (so a row's attention costs no more than
    that sequence's alone), then right-padded to the fullest row.

    Returns `input_ids`, `position_ids` restarting at 0 for every sequence (and for the padding
    at a row's end, a segment of its own), `segment_ids` (the sequence each token belongs to,
    -1 for padding), and for each sequence in input order its row (`pool_rows`) and last token
    (`pool_positions`); `token_type_ids` for pairs.

    >>> batch = collate_packed([[5, 6, 7], [8], [9, 4]], pad_token_id=0)
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
    ([[5, 6, 7], [9, 4, 8]], [[0, 1, 2], [0, 1, 0]])
    >>> batch["segment_ids"].tolist(), batch["pool_rows"].tolist(), batch["pool_positions"].tolist()
    ([[0, 0, 0], [2, 2, 1]], [0, 1, 1], [2, 2, 1])
    """
    from kitae.data.packing import pack

    lengths = [len(row) for row in input_ids]
    rows = pack(lengths, max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long) if token_type_ids is not None else None
    pool_rows = torch.zeros(len(input_ids), dtype=torch.long)
    pool_positions = torch.zeros(len(input_ids), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            end = start + lengths[i]
            ids[r, start:end] = torch.tensor(input_ids[i])
            positions[r, start:end] = torch.arange(lengths[i])
            segments[r, start:end] = i
            if types is not None:
                types[r, start:end] = torch.tensor(token_type_ids[i])
            pool_rows[i], pool_positions[i] = r, end - 1
            start = end
        positions[r, start:] = torch.arange(width - start)
    batch = {"input_ids": ids, "position_ids": positions, "segment_ids": segments,
             "pool_rows": pool_rows, "pool_positions": pool_positions}
    if types is not None:
        batch["token_type_ids"] = types
    return batch
