"""The shared implementation of every task whose model maps a text (or a text pair, or a group of
texts) to one pooled vector of outputs: single_label, multi_label, pair, regression, reward.

The model is transformers' own `*ForSequenceClassification` (its head under the standard name),
with LoRA / DoRA / QLoRA or full fine-tuning, run through `SequenceClassifier`'s padding-safe
pooling. A subclass says only what is specific to it: targets, the loss over logits, how logits
become probabilities, decisions and metrics, and its reports.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from kitae.data.batching import EncodedSplit, encode_texts
from kitae.inference.logits import Batching, predict_logits
from kitae.runs import write_jsonl
from kitae.tasks.base import Batch, Task

if TYPE_CHECKING:
    from kitae.data.examples import Example
    from kitae.models.loading import Backbone
    from kitae.models.precision import PrecisionPlan

logger = logging.getLogger("kitae")


class ClassificationTask(Task):
    group_size: ClassVar[int] = 1  # token sequences per example (reward: chosen and rejected)
    packed = False  # batches packed several sequences to a row (set when the model is built)

    # --- input ----------------------------------------------------------------------------
    def model_texts(self, texts: Sequence[Any], is_decoder: bool) -> tuple[list[Any], int]:
        """What the tokenizer encodes for these examples' texts, and how many sequences each
        example has (the group size: reward pairs are two)."""
        from kitae.data.templates import as_model_texts

        data = self.config.data
        return as_model_texts(list(texts), data.text_fields, data.template, is_decoder), 1

    @property
    def outputs_probabilities(self) -> bool:
        """Whether `probabilities` are probabilities (classifiers) or real values (regression, reward)."""
        return self.contract.outputs_probabilities

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    # --- what a subclass defines --------------------------------------------------------------
    @abstractmethod
    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor: ...

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, weight) with `loss` = sum / weight (multi-process training adds them up over
        ranks). Default: `loss` is a plain mean over examples."""
        return self.loss(logits, targets) * len(logits), torch.tensor(float(len(logits)))

    @abstractmethod
    def probabilities(self, logits: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def predicted_labels(self, logits: np.ndarray) -> list[Any]:
        """The decision for each row: a label (single_label) or a list of labels (multi_label)."""

    @abstractmethod
    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[Any] | None) -> list[dict[str, Any]]: ...

    def write_reports(self, run_dir: Path, split: str, targets: Sequence[Any], logits: np.ndarray) -> None:
        """Task-specific files for one evaluated split (plots, reports). Optional."""
        return None

    # --- the Task seam ----------------------------------------------------------------------
    def encode(self, name: str, examples: list[Example], backbone: Backbone) -> EncodedSplit:
        tokenizer = backbone.tokenizer
        texts, group_size = self.model_texts([e.text for e in examples], backbone.is_decoder)
        encoded = encode_texts(tokenizer, texts, self.config.model.max_length)
        split = EncodedSplit(name, [e.id for e in examples], encoded, [e.target for e in examples], group_size)
        split.batching = Batching(tokenizer.pad_token_id, tokenizer.padding_side)
        return split

    def build_model(self, backbone: Backbone, plan: PrecisionPlan) -> nn.Module:
        from kitae.models.adapters import apply_adapter, count_parameters
        from kitae.models.classifier import SequenceClassifier, choose_packing, find_head_name
        from kitae.models.loading import load_for_classification
        from kitae.models.precision import apply_kernels

        config = self.config
        id2label = dict(enumerate(self.labels))
        loaded = load_for_classification(backbone.source, config.model, plan, id2label,
                                         backbone.tokenizer.pad_token_id, self.contract.problem_type)
        apply_kernels(loaded.model, plan)
        pooling = resolve_pooling(config.model.pooling, loaded.is_decoder, loaded.new_modules)
        model = apply_adapter(loaded.model, config.adapter, find_head_name(loaded.model), loaded.new_modules,
                              config.training.gradient_checkpointing, config.training.sparse_dropout,
                              config.training.lean_lora)
        classifier = SequenceClassifier(model, loaded.model, pooling, loaded.is_decoder)
        classifier.packing, why = choose_packing(classifier, config.training.packing)
        self.packed = classifier.packing is not None
        logger.info("packing: %s", why)
        trainable, total = count_parameters(classifier)
        logger.info("model: %s (%s, pooling %s, adapter %s): %s of %s parameters trainable (%.2f%%)",
                    config.model.name, "decoder" if loaded.is_decoder else "encoder", pooling,
                    config.adapter.type, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
        return classifier

    def batch(self, split: EncodedSplit, indices: np.ndarray, device: str) -> Batch:
        inputs = split.batching.tensors(split, indices, device, packed=self.packed)
        inputs["targets"] = self.collate_targets([split.targets[i] for i in indices]).to(device)
        real = inputs["segment_ids"] >= 0 if self.packed else inputs["attention_mask"]
        return Batch(inputs, len(indices), int(real.sum()))

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs = dict(batch.inputs)
        targets = inputs.pop("targets")
        # (examples, group_size x outputs): a no-op unless examples are groups.
        logits = model(**inputs).view(batch.examples, -1)
        return self.loss(logits, targets)

    def batch_loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(batch.inputs)
        targets = inputs.pop("targets")
        return self.loss_sum(model(**inputs).view(batch.examples, -1), targets)

    def evaluate(self, model: nn.Module, split: EncodedSplit, plan: PrecisionPlan, batch_size: int,
                 final: bool = True) -> np.ndarray:
        return predict_logits(model, split, batch_size, plan, split.batching)

    def write_outputs(self, run_dir: Path, name: str, split: EncodedSplit, outputs: np.ndarray) -> None:
        write_jsonl(run_dir / f"predictions_{name}.jsonl", self.prediction_records(split.ids, outputs, split.targets))
        self.write_reports(run_dir, name, split.targets, outputs)

    def save_model(self, model: nn.Module, backbone: Backbone, folder: Path, meta: dict[str, Any],
                   weights: dict[str, torch.Tensor] | None = None) -> None:
        from kitae.models.persist import save_classifier

        save_classifier(model, backbone.tokenizer, folder,
                        {**meta, "pooling": model.pooling, "packing": self.config.training.packing}, weights)


def focal_terms(losses: torch.Tensor, p_true: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal loss (Lin et al., 2017), the one implementation single_label and multi_label share:
    each loss term scaled by (1 - p_true)^gamma, so confidently right examples count less.

    >>> focal_terms(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 1.0]), 2.0).tolist()
    [0.25, 0.0]
    """
    return (1 - p_true) ** gamma * losses


def resolve_pooling(requested: str, is_decoder: bool, new_modules: list[str]) -> str:
    """auto: the last real token for decoders; for encoders the model's own CLS pooler when it
    was pretrained, else the mean of real tokens (e5-style encoders ship no pooler, and a random
    pooler in front of the head trains worse: 0.94 vs 1.00 test accuracy on the quickstart data)."""
    if requested != "auto":
        return requested
    if is_decoder:
        return "last"
    fresh_pooler = any("pooler" in name.split(".") for name in new_modules)
    return "mean" if fresh_pooler else "cls"
