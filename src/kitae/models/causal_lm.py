"""The causal LM kitae trains for sft and causal_lm: transformers' `*ForCausalLM`, optionally wrapped
by PEFT (LoRA / DoRA / QLoRA, or a prompt-tuning soft prompt), with a token loss computed only
where it is taken.

The loss applies the LM head to the positions that have a label, never to every position: with
Gemma's 262k-token vocabulary the full logits of a batch of 8 x 512 tokens are 4 GiB in float32,
while the response tokens of an SFT batch are typically a tenth of them. The numbers equal
transformers' own `labels=` loss (a test checks it).

Several examples may share a row (packing): their position ids restart at 0 and no attention
mask is passed, so transformers builds a block-diagonal causal mask (flash-attention uses the
same position ids as varlen boundaries): no token attends across examples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from kitae.data.instructions import IGNORE_INDEX


class CausalLM(nn.Module):
    def __init__(self, model: nn.Module, hf_model: PreTrainedModel, prompt_tuning: bool = False) -> None:
        """`model` is what trains (a PeftModel or `hf_model` itself); `hf_model` the underlying
        transformers model (PEFT's LoRA layers live inside it)."""
        super().__init__()
        self.model = model
        self.hf_model = hf_model
        self.prompt_tuning = prompt_tuning
        text_config = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config
        self._softcap = getattr(text_config, "final_logit_softcapping", None)
        self._logit_scale = getattr(text_config, "logit_scale", None)  # Cohere multiplies
        self._logits_scaling = getattr(text_config, "logits_scaling", None)  # Granite divides

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.hf_model, self.hf_model.base_model_prefix)

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The transformer block classes: FSDP's auto-wrap policy reads them from the model it wraps."""
        return getattr(self.hf_model, "_no_split_modules", None)

    @property
    def virtual_tokens(self) -> int:
        return self.model.active_peft_config.num_virtual_tokens if self.prompt_tuning else 0

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states (batch, tokens, hidden) of the input tokens (a soft prompt, when
        there is one, is prepended and its positions dropped again)."""
        if not self.prompt_tuning:
            return self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                 use_cache=False).last_hidden_state
        # As PEFT's own forward for prompt tuning: soft prompt embeddings in front of the input's.
        embeds = self.model.word_embeddings(input_ids)
        prompts = self.model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = torch.ones(input_ids.shape[0], prompts.shape[1], dtype=attention_mask.dtype,
                            device=attention_mask.device)
        hidden = self.backbone(inputs_embeds=torch.cat([prompts, embeds], dim=1),
                               attention_mask=torch.cat([prefix, attention_mask], dim=1),
                               use_cache=False).last_hidden_state
        return hidden[:, prompts.shape[1]:]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head (with the model's own logit scaling / soft-capping) on some hidden states."""
        logits = self.hf_model.get_output_embeddings()(hidden)
        if self._logit_scale is not None:
            logits = logits * self._logit_scale
        if self._logits_scaling is not None:
            logits = logits / self._logits_scaling
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def token_loss(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the token cross-entropies, number of tokens with a label): labels[t] is
        predicted from the tokens up to t - 1."""
        hidden = self.hidden_states(input_ids, position_ids, attention_mask)
        targets = labels[:, 1:]
        taken = targets != IGNORE_INDEX
        logits = self.logits(hidden[:, :-1][taken])
        loss = F.cross_entropy(logits.float(), targets[taken], reduction="sum")
        return loss, taken.sum()

    def forward(self, reduction: str = "mean", **inputs: Any) -> Any:
        """The mean token loss of a batch (input_ids, labels, position_ids or attention_mask);
        with reduction="sum", (summed token loss, labelled tokens)."""
        total, count = self.token_loss(**inputs)
        if reduction == "sum":
            return total, count
        return total / count.clamp(min=1)

    @property
    def generator(self) -> nn.Module:
        """What `.generate()` is called on (the PEFT model applies adapters and soft prompts)."""
        return self.model
