"""The shared implementation of the causal-LM tasks (sft, causal_lm): a `*ForCausalLM` model with
LoRA / DoRA / QLoRA, a soft prompt or full fine-tuning; batches of token rows (packed or not)
with a loss mask; evaluation by the mean token loss (and perplexity) of a split, and — for sft
— by generating an answer to every prompt and scoring it against the gold answers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from kitae.data.batching import eval_batches
from kitae.data.packing import LMSplit, collate_masked, collate_rows
from kitae.data.readers import Row
from kitae.inference.logits import autocast
from kitae.tasks.base import Batch, Task

if TYPE_CHECKING:
    from kitae.config import RunConfig
    from kitae.models.causal_lm import CausalLM
    from kitae.models.loading import Backbone
    from kitae.models.precision import PrecisionPlan

logger = logging.getLogger("kitae")


class GenerativeTask(Task):

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.tokenizer: Any = None
        self.eos_token_ids: list[int] = []

    @classmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        return []

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        from kitae.data.splits import stratified_split

        return stratified_split(items, [0] * len(items), fractions, seed, stratify=False)

    # --- model and batches ------------------------------------------------------------------
    def build_model(self, backbone: Backbone, plan: PrecisionPlan) -> nn.Module:
        from kitae.models.adapters import apply_lm_adapter, count_parameters
        from kitae.models.causal_lm import CausalLM
        from kitae.models.loading import load_for_causal_lm
        from kitae.models.precision import apply_kernels

        config = self.config
        if plan.kernels == "unsloth":
            from kitae.models.adapters import load_with_unsloth

            model, hf_model = load_with_unsloth(backbone.source, config.model, config.adapter, plan,
                                                config.training.gradient_checkpointing, config.training.seed)
            self._add_model_eos(hf_model)
            return CausalLM(model, hf_model)
        hf_model = load_for_causal_lm(backbone.source, config.model, plan)
        apply_kernels(hf_model, plan)
        self._add_model_eos(hf_model)
        model = apply_lm_adapter(hf_model, config.adapter, backbone.source.path, config.training.gradient_checkpointing,
                                 config.training.sparse_dropout, config.training.lean_lora)
        lm = CausalLM(model, hf_model, prompt_tuning=config.adapter.type == "prompt_tuning")
        trainable, total = count_parameters(lm)
        logger.info("model: %s (causal LM, adapter %s): %s of %s parameters trainable (%.2f%%)",
                    config.model.name, config.adapter.type, f"{trainable:,}", f"{total:,}",
                    100 * trainable / max(total, 1))
        return lm

    def _add_model_eos(self, hf_model: Any) -> None:
        """The model's own end-of-sequence ids (generation_config may list several) stop generation too."""
        generation = getattr(hf_model, "generation_config", None)
        ids = getattr(generation, "eos_token_id", None)
        for token in [ids] if isinstance(ids, int) else list(ids or []):
            if token not in self.eos_token_ids:
                self.eos_token_ids.append(int(token))

    def batch(self, split: LMSplit, indices: np.ndarray, device: str) -> Batch:
        rows = [split.row_segments(int(i)) for i in indices]
        if self.config.adapter.type == "prompt_tuning":
            inputs = collate_masked([row[0] for row in rows], split.pad_token_id)
        else:
            inputs = collate_rows(rows, split.pad_token_id)
        tokens = sum(len(ids) for row in rows for ids, _ in row)
        return Batch({k: v.to(device) for k, v in inputs.items()}, sum(len(row) for row in rows), tokens)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(**batch.inputs)

    def batch_loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # Through forward (not token_loss) so a DDP / FSDP wrapper sees the call.
        total, tokens = model(**batch.inputs, reduction="sum")
        return total, tokens.detach().float().cpu()

    # --- evaluation -----------------------------------------------------------------------
    def evaluation_generates(self, final: bool) -> bool:
        """Whether an evaluation generates text (sft at the end, and every epoch when asked)."""
        return False

    def mean_loss(self, model: CausalLM, split: LMSplit, plan: PrecisionPlan, batch_size: int) -> float:
        """The mean token loss over a split (every labelled token counts once)."""
        total, count = self.loss_sum(model, split, plan, batch_size)
        return total / count if count else float("nan")

    @torch.inference_mode()
    def loss_sum(self, model: CausalLM, split: LMSplit, plan: PrecisionPlan, batch_size: int) -> tuple[float, int]:
        """(summed token loss, labelled tokens) of a split: what a streamed evaluation adds up."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for indices in eval_batches(split.lengths, batch_size):
            batch = self.batch(split, indices, plan.device)
            with autocast(plan):
                loss_sum, tokens = model.token_loss(**batch.inputs)
            total += float(loss_sum)
            count += int(tokens)
        model.train(was_training)
        return total, count

    def evaluate(self, model: nn.Module, split: LMSplit, plan: PrecisionPlan, batch_size: int,
                 final: bool = True) -> dict[str, Any]:
        outputs: dict[str, Any] = {"loss": self.mean_loss(model, split, plan, batch_size), "generations": None}
        if self.evaluation_generates(final):
            outputs["generations"] = self.generate(model, split, plan)
        return outputs

    def generate(self, model: nn.Module, split: LMSplit, plan: PrecisionPlan) -> list[str]:
        from kitae.inference.generate import generate

        prompts = [ids[:length] for (ids, _), length in zip(split.examples, split.prompt_lengths)]
        settings = self.config.generation
        batch_size = settings.batch_size or self.config.training.eval_batch_size or self.config.training.batch_size
        from kitae.training.distributed import is_main_process

        return generate(model.generator, self.tokenizer, prompts, settings, plan, self.eos_token_ids, batch_size,
                        progress=len(prompts) > batch_size and is_main_process(), desc=f"generate {split.name}")

    def outputs_are_final(self, outputs: dict[str, Any]) -> bool:
        return not self.evaluation_generates(final=True) or outputs.get("generations") is not None

    def metrics(self, targets: Sequence[Any], outputs: dict[str, Any]) -> dict[str, Any]:
        loss = float(outputs["loss"])
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf")}

    def write_outputs(self, run_dir: Path, name: str, split: LMSplit, outputs: dict[str, Any]) -> None:
        return None

    # --- persistence ------------------------------------------------------------------------
    def save_model(self, model: nn.Module, backbone: Backbone, folder: Path, meta: dict[str, Any],
                   weights: dict[str, torch.Tensor] | None = None) -> None:
        from kitae.models.persist import save_causal_lm

        save_causal_lm(model, backbone.tokenizer, folder, {**meta, **self.generator_meta()}, weights)

    def generator_meta(self) -> dict[str, Any]:
        """What a loaded generator needs besides the config: how prompts are written and what stops."""
        return {"eos_token_ids": self.eos_token_ids, "generation": self.config.generation.model_dump(mode="json")}

    def load_state(self, state: dict[str, Any]) -> None:
        return None
