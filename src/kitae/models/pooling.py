"""Padding-safe pooling: one vector per text from the backbone's hidden states.

Positions of the last real token are computed once, where a batch is built, from the attention
mask — never as `attention_mask.sum() - 1`, which points at padding under left padding. The same
explicit positions will later cover several examples packed into one row.
"""

from __future__ import annotations

import torch


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask == 1) token of each row; works for left and right padding.

    >>> last_token_positions(torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])).tolist()
    [1, 3]
    """
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, so a left-padded text sees the same positions
    (and gives the same logits) as the same text unpadded.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1, 2]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden[b, positions[b]] for every row b: (batch, seq, dim) -> (batch, dim)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens: (batch, seq, dim) -> (batch, dim)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def segment_mean_pool(hidden: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Packed rows: the mean of each sequence's token states, in sequence order.
    `segment_ids` (rows, width) holds each token's sequence index, -1 for padding.

    >>> hidden = torch.tensor([[[1.0], [3.0], [5.0]], [[7.0], [9.0], [0.0]]])
    >>> segment_mean_pool(hidden, torch.tensor([[0, 0, 1], [1, 2, -1]]), 3).tolist()
    [[2.0], [6.0], [9.0]]
    """
    flat, segments = hidden.reshape(-1, hidden.shape[-1]), segment_ids.reshape(-1)
    real = segments >= 0
    sums = hidden.new_zeros(num_segments, hidden.shape[-1]).index_add(0, segments[real], flat[real])
    counts = torch.bincount(segments[real], minlength=num_segments).clamp(min=1)
    return sums / counts.unsqueeze(-1).to(hidden.dtype)


def block_attention_mask(segment_ids: torch.Tensor, form: str, dtype: torch.dtype) -> torch.Tensor:
    """An encoder's attention mask for packed rows: each token sees the tokens of its own
    sequence only (the padding is one block of its own). `form` is what the model reads:
    "bool4d" (rows, 1, q, k) True = attend (SDPA), "additive4d" the same as 0 / -inf-like floats
    (eager attention)."""
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)
    if form == "bool4d":
        return same.unsqueeze(1)
    if form == "additive4d":
        zero = torch.zeros((), dtype=dtype, device=same.device)
        return torch.where(same, zero, torch.finfo(dtype).min).unsqueeze(1)
    raise ValueError(f"unknown packed attention mask form {form!r}")
