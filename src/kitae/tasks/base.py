"""What a problem type supplies to the shared pipeline: the seam every task implements.

A task decides everything problem-specific, and nothing else is:

- config: its keys, rules and defaults, the metrics `training.select_metric` may name and the
  default one live in its run config (kitae.config.tasks: torch-free, so a config validates without
  importing this module); the metrics it reports headline first (`report_metrics`: the CLI table,
  the log and the card);
- data: how a row becomes a text and a target (`render`, `fit_labels`, `encode_target`), how
  examples are split;
- model: which model it builds on the backbone (`build_model`) and how it is saved;
- batches: how a split is tokenised (`encode`), how a batch is built (`batch`) and its loss
  computed (`batch_loss`);
- contract: what the rest of kitae asks of it instead of its name (`contract`, see
  kitae.tasks.contract);
- evaluation: what a model outputs on a split (`evaluate`: logits, or generations), the metrics of
  those outputs (`metrics`), and the files they become (`write_outputs`).

The loop, checkpoints, run directory and CLI are shared. Classification tasks share one
implementation of these hooks (`kitae.tasks.classification`); causal-LM tasks another
(`kitae.tasks.generative`). Adding a problem type is one module plus one line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from kitae.data.readers import Row
from kitae.tasks.contract import TaskContract

if TYPE_CHECKING:
    from kitae.config import RunConfig
    from kitae.data.examples import Example
    from kitae.models.loading import Backbone
    from kitae.models.precision import PrecisionPlan


@dataclass
class Batch:
    """One training batch: the tensors the task's `batch_loss` reads, and what it holds (for
    progress and throughput)."""

    inputs: dict[str, torch.Tensor]
    examples: int
    tokens: int


class Task(ABC):
    name: ClassVar[str]
    # The few metrics that tables, logs and the model card show, most important first (the
    # metrics training.select_metric may name are the run config's `metric_names`).
    report_metrics: ClassVar[tuple[str, ...]]
    # What the rest of kitae asks instead of the task's name (kitae.tasks.contract): whether a
    # loaded run predicts or generates, the export's problem type and activation, the card's
    # pipeline tag and summary, the data analysis offered. Every task declares its own.
    contract: ClassVar[TaskContract]

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels

    # --- data -----------------------------------------------------------------------------
    def render(self, row: Row) -> Any:
        """The text of one row (a pair with data.text_fields); errors name file, line and field."""
        from kitae.data.templates import render_text

        data = self.config.data
        return render_text(row, template=data.template, text_field=data.text_field, text_fields=data.pair_fields())

    @classmethod
    @abstractmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        """The output names, in order, from the training rows (or the config)."""

    @abstractmethod
    def encode_target(self, row: Row) -> Any:
        """The target of one row; a clear error (file, line, field) when it is invalid."""

    @abstractmethod
    def target_columns(self) -> list[str]:
        """Columns a file needs for evaluation (its targets)."""

    def stratify_key(self, target: Any) -> Hashable:
        return target

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        """Split examples into [rest, *one part per fraction], keeping target proportions."""
        from kitae.data.splits import stratified_split

        return stratified_split(items, [self.stratify_key(e.target) for e in items], fractions, seed, stratify)

    def undefined_metric(self, metric: str, targets: Sequence[Any]) -> str | None:
        """Why `metric` cannot be computed on examples with these targets (e.g. ROC-AUC on a dev
        set of one class), or None. Checked before training for training.select_metric."""
        return None

    def fit_train(self, targets: Sequence[Any]) -> None:
        """Learn what the loss needs from the train targets (e.g. class weights). Default: nothing."""
        return None

    def resampler(self, targets: Sequence[Any]) -> Any:
        """A per-epoch re-sampler of the train split (see kitae.data.balance), or None."""
        return None

    # --- model and batches ------------------------------------------------------------------
    @abstractmethod
    def encode(self, name: str, examples: list[Example], backbone: Backbone) -> Any:
        """Tokenise one split, before any model is loaded (so bad input is found early). The
        result has `len()`, `lengths` (per item, what batching by length sorts on), `ids`,
        `targets` and `truncated` (how many inputs were cut to model.max_length)."""

    @abstractmethod
    def build_model(self, backbone: Backbone, plan: PrecisionPlan) -> nn.Module:
        """The model to train (adapters applied), on plan.device; logs what it built."""

    @abstractmethod
    def batch(self, split: Any, indices: Any, device: str) -> Batch:
        """The training batch of these items of an encoded split."""

    @abstractmethod
    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar loss of one batch (called under the plan's autocast)."""

    def batch_loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, weight) of one batch, its mean being sum / weight: what lets several
        processes, each holding part of a global batch, add up that batch's exact mean (weight:
        examples, summed class weights or labelled tokens). Default: the batch mean is a plain
        mean over examples."""
        count = torch.tensor(float(batch.examples))
        return self.batch_loss(model, batch) * batch.examples, count

    # --- evaluation -----------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: nn.Module, split: Any, plan: PrecisionPlan, batch_size: int,
                 final: bool = True) -> Any:
        """What the model outputs on a split: logits for classifiers, generations for SFT.
        `final` is False for the per-epoch dev evaluation, which a task may keep cheaper."""

    def outputs_are_final(self, outputs: Any) -> bool:
        """Whether per-epoch outputs are what the final evaluation would compute (then the
        selected epoch's dev outputs are reused instead of a second pass over dev)."""
        return True

    @abstractmethod
    def metrics(self, targets: Sequence[Any], outputs: Any) -> dict[str, Any]:
        """Flat scalar metrics (plus nested detail such as per_class) of one split's outputs."""

    def fit_after_training(self, dev_targets: Sequence[Any] | None, dev_outputs: Any | None) -> None:
        """Fit what is chosen on dev once the model is selected (e.g. thresholds). Default: nothing."""
        return None

    def collapse_warning(self, targets: Sequence[Any], outputs: Any) -> str | None:
        """A message when the selected model gives every dev example the same answer although
        dev has several — the model has learned nothing. Default: no check."""
        return None

    @abstractmethod
    def write_outputs(self, run_dir: Path, name: str, split: Any, outputs: Any) -> None:
        """predictions_{name}.jsonl and the task's reports and plots for one evaluated split."""

    # --- persistence ------------------------------------------------------------------------
    @abstractmethod
    def save_model(self, model: nn.Module, backbone: Backbone, folder: Path, meta: dict[str, Any],
                   weights: dict[str, torch.Tensor] | None = None) -> None:
        """The trained model as a Hugging Face folder, with `meta` (+ the task's own entries) in
        kitae_model.json. `weights`: the full trainable weights by parameter name, where the
        model's own are sharded (FSDP)."""

    def state(self) -> dict[str, Any]:
        """What the task fitted (thresholds, target normalisation), saved with the model."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None
