"""The classifier kitae trains: a Hugging Face `*ForSequenceClassification` model (so its weights
and head live under the standard names and an export loads in plain transformers and vLLM),
optionally wrapped by PEFT, run with padding-safe pooling.

- `last` (decoders): the backbone's hidden state at the last real token, through the model's own
  head (`score`). Equal to transformers' own pooling, but from explicit positions, and with
  position ids counted over real tokens so left padding gives the same logits as right padding.
- `cls` (encoders): the model's own forward (its pooler and classifier), unchanged.
- `mean`: the mean of real tokens' hidden states, through the model's head.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel

from kitae.models.pooling import gather_positions, mean_pool, position_ids_from_mask

HEAD_NAMES = ("score", "classifier")


def find_head_name(model: PreTrainedModel) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")


class SequenceClassifier(nn.Module):
    def __init__(self, model: nn.Module, hf_model: PreTrainedModel, pooling: str, is_decoder: bool) -> None:
        """`model` is what trains (a PeftModel or `hf_model` itself); `hf_model` is the
        underlying transformers model, which PEFT modifies in place."""
        super().__init__()
        self.model = model
        self.hf_model = hf_model
        self.pooling = pooling
        self.is_decoder = is_decoder
        self.head_name = find_head_name(hf_model)
        backbone = getattr(hf_model, hf_model.base_model_prefix)
        self._backbone_takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.hf_model, self.hf_model.base_model_prefix)

    @property
    def head(self) -> nn.Module:
        return getattr(self.hf_model, self.head_name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_positions: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, num_labels)."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if self.pooling == "cls":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        if self.is_decoder and self._backbone_takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               **kwargs).last_hidden_state
        if self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            if pool_positions is None:
                from kitae.models.pooling import last_token_positions

                pool_positions = last_token_positions(attention_mask)
            pooled = gather_positions(hidden, pool_positions)
        # The head is applied to one vector per text (transformers applies it to every position
        # and then gathers: same numbers, seq_len times the work).
        return self.head(pooled.to(self._head_dtype()))

    def _head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype
