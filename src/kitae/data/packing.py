"""Token rows for causal-LM training: examples with labels, optionally packed several to a row.

A row is a list of segments (input ids, labels); a batch concatenates each row's segments, with
position ids that restart at every segment and right padding as one more segment whose labels
are ignored. With no attention mask transformers reads the restarts as sequence boundaries
(block-diagonal causal attention), so packed examples never see each other and the loss of a
packed row equals the sum of its examples' losses.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kitae.data.instructions import IGNORE_INDEX

Segment = tuple[list[int], list[int]]  # (input ids, labels)


@dataclass
class LMSplit:
    """An encoded split for a causal LM: `rows` are what batches are drawn from (one example
    each, or several when packed); `examples` keep each example's own segment and prompt length
    for evaluation and generation."""

    name: str
    ids: list[str]
    examples: list[Segment]
    prompt_lengths: list[int]
    targets: list[Any] | None
    rows: list[list[int]] = field(default_factory=list)  # example indices per row
    truncated: int = 0
    pad_token_id: int = 0
    prompts: list[str] | None = None  # the prompt text of each example (prediction files)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = [[i] for i in range(len(self.examples))]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (what batching by length sorts on)."""
        return np.array([sum(len(self.examples[i][0]) for i in row) for row in self.rows])

    def row_segments(self, row: int) -> list[Segment]:
        return [self.examples[i] for i in self.rows[row]]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of items grouped into rows of at most `capacity` tokens,
    longest items first, each into the fullest row it still fits (deterministic).

    >>> pack([5, 3, 4, 2, 6], capacity=8)
    [[4, 3], [0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"an item of {size} tokens does not fit a row of {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (room - size, row))
        else:
            rows.append([index])
            bisect.insort(free, (capacity - size, len(rows) - 1))
    return rows


def collate_rows(rows: Sequence[Sequence[Segment]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids (restarting at every segment) of a batch of rows,
    right-padded to the longest row."""
    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for ids, row_labels in row:
            end = start + len(ids)
            input_ids[b, start:end] = torch.tensor(ids)
            labels[b, start:end] = torch.tensor(row_labels)
            positions[b, start:end] = torch.arange(len(ids))
            start = end
        positions[b, start:] = torch.arange(width - start)  # the padding: a segment of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def collate_masked(rows: Sequence[Segment], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded, with an attention mask (for soft prompts, which PEFT
    runs without position ids)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, row_labels) in enumerate(rows):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(ids)] = torch.tensor(row_labels)
        mask[b, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def chunk_stream(documents: Sequence[list[int]], row_length: int, prefix: Sequence[int] = ()) -> list[list[Segment]]:
    """Continued pre-training: documents one after another cut into rows of exactly
    `row_length` tokens (a row is closed early rather than end in a one-token piece, which would
    train nothing; the last row may be shorter). A document cut by a row's end continues
    in the next row; each piece is its own segment (no attention across documents), and a piece
    that continues a document starts with `prefix` — the tokens the tokenizer puts in front of a
    text (Gemma's <bos>: Gemma's predictions fall apart without it). Every token is trained on
    except the first of each piece and the prefix (nothing before them to predict them from).

    >>> [[ids for ids, _ in row] for row in chunk_stream([[1, 2, 3], [4, 5, 6, 7], [8, 9]], 4)]
    [[[1, 2, 3]], [[4, 5, 6, 7]], [[8, 9]]]
    >>> [[ids for ids, _ in row] for row in chunk_stream([[9, 1, 2, 3, 4, 5]], 4, prefix=[9])]
    [[[9, 1, 2, 3]], [[9, 4, 5]]]
    """
    prefix = list(prefix)
    if len(prefix) >= row_length - 1:
        raise ValueError(f"a row of {row_length} tokens leaves no room beside the {len(prefix)} prefix tokens")
    rows: list[list[Segment]] = []
    current: list[Segment] = []
    room = row_length
    for document in documents:
        position = 0
        while position < len(document):
            lead = prefix if position > 0 else []
            if room <= len(lead) + 1:  # no room for a useful piece: start the next row
                rows.append(current)
                current, room = [], row_length
            piece = document[position:position + room - len(lead)]
            ids = [*lead, *piece]
            current.append((ids, [IGNORE_INDEX] * (len(lead) + 1) + piece[1:]))
            position += len(piece)
            room -= len(ids)
            if room == 0:
                rows.append(current)
                current, room = [], row_length
    if current:
        rows.append(current)
    return rows
