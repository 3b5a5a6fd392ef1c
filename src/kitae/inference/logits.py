"""Logits of a classifier for every example of an encoded split, batched by length."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kitae.data.batching import EncodedSplit, collate, collate_packed, eval_batches
from kitae.models.precision import PrecisionPlan


@dataclass
class Batching:
    """How token ids become tensors for this model (its pad token and padding side)."""

    pad_token_id: int
    padding_side: str

    def tensors(self, split: EncodedSplit, indices: np.ndarray, device: str,
                packed: bool = False) -> dict[str, torch.Tensor]:
        """The model inputs of these examples: padded rows, or `packed` several to a row; either
        way one output per token sequence, in the examples' order (a reward pair's two together)."""
        rows = split.rows(indices)
        types = split.encoded.token_type_ids
        ids = [split.encoded.input_ids[i] for i in rows]
        row_types = None if types is None else [types[i] for i in rows]
        if packed:
            batch = collate_packed(ids, self.pad_token_id, row_types)
        else:
            batch = collate(ids, self.pad_token_id, self.padding_side, row_types)
        return {k: v.to(device) for k, v in batch.items()}


def autocast(plan: PrecisionPlan) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision where the plan asks for it (bf16 on GPUs and on CPUs with bf16 matrix
    units, fp16 on older GPUs); nothing on float32. Training, evaluation, prediction, generation
    and serving all enter it from the same plan."""
    if plan.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device.split(":")[0], dtype=plan.autocast_dtype)


@torch.inference_mode()
def predict_logits(model: nn.Module, split: EncodedSplit, batch_size: int, plan: PrecisionPlan,
                   batching: Batching, progress: bool = False) -> np.ndarray:
    """Logits for every example of `split`, in the split's order (float32 numpy array of shape
    (examples, group_size x outputs)).

    Batches are longest first and filled to a token budget of `batch_size` x the longest
    example's tokens: no batch costs more than the first would as `batch_size` examples, and
    short texts go many to a batch. A model that packs (`model.packing`) gets packed rows."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    lengths = split.lengths * split.group_size
    budget = batch_size * int(lengths.max()) if len(lengths) else None
    batches = eval_batches(lengths, batch_size, budget)
    packed = getattr(model, "packing", None) is not None
    iterator: Any = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"predict {split.name}", unit="batch", dynamic_ncols=True)
    for indices in iterator:
        with autocast(plan):
            logits = model(**batching.tensors(split, indices, plan.device, packed)).float().view(len(indices), -1)
            logits = logits.cpu().numpy()
        if out is None:
            out = np.zeros((len(split), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    model.train(was_training)
    assert out is not None
    return out
