"""What a problem type supplies to the shared pipeline.

A task turns rows into targets, targets into a loss, logits into predictions and metrics, and
writes its own reports. Everything else — reading data, loading models, the training loop, the
run directory — is shared. Adding a problem type is one new module registering a `Task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kitae.config import RunConfig
from kitae.data.readers import Row


class Task(ABC):
    name: str
    problem_type = "single_label_classification"  # transformers' config.problem_type
    group_size = 1  # token sequences per example (reward: chosen and rejected)

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels

    # --- input ----------------------------------------------------------------------------
    def render(self, row: Row) -> Any:
        """The text of one row (a pair with data.text_fields); errors name file, line and field."""
        from kitae.data.templates import render_text

        data = self.config.data
        return render_text(row, template=data.template, text_field=data.text_field, text_fields=data.text_fields)

    def model_texts(self, texts: Sequence[Any], is_decoder: bool) -> tuple[list[Any], int]:
        """What the tokenizer encodes for these examples' texts, and how many sequences each
        example has (the group size: reward pairs are two)."""
        from kitae.data.templates import as_model_texts

        data = self.config.data
        return as_model_texts(list(texts), data.text_fields, data.template, is_decoder), 1

    # --- labels ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        """The output names, in order, from the training rows (or the config)."""

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    @abstractmethod
    def encode_target(self, row: Row) -> Any:
        """The target of one row; a clear error (file, line, field) when it is invalid."""

    def target_columns(self) -> list[str]:
        """Columns a file needs for evaluation (its targets)."""
        data = self.config.data
        return list(data.label_fields or [data.label_field])

    def stratify_key(self, target: Any) -> Hashable:
        return target

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        """Split examples into [rest, *one part per fraction], keeping target proportions."""
        from kitae.data.splits import stratified_split

        return stratified_split(items, [self.stratify_key(e.target) for e in items], fractions, seed, stratify)

    # --- state fitted after training (e.g. tuned thresholds), saved with the model ----------
    def fit_after_training(self, dev_targets: Sequence[Any] | None, dev_logits: np.ndarray | None) -> None:
        """Fit what is chosen on dev once the model is selected. Default: nothing."""
        return None

    def state(self) -> dict[str, Any]:
        return {}

    def undefined_metric(self, metric: str, targets: Sequence[Any]) -> str | None:
        """Why `metric` cannot be computed on examples with these targets (e.g. ROC-AUC on a dev
        set of one class), or None. Checked before training for training.select_metric."""
        return None

    def collapse_warning(self, targets: Sequence[Any], logits: np.ndarray) -> str | None:
        """A message when the selected model gives every dev example the same answer although
        dev has several — the model has learned nothing. Default: no check."""
        return None

    def load_state(self, state: dict[str, Any]) -> None:
        return None

    # --- training -------------------------------------------------------------------------
    def fit_train(self, targets: Sequence[Any]) -> None:
        """Learn what the loss needs from the train targets (e.g. class weights). Default: nothing."""
        return None

    def resampler(self, targets: Sequence[Any]) -> Any:
        """A per-epoch re-sampler of the train split (see kitae.data.balance), or None."""
        return None

    @abstractmethod
    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor: ...

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    # --- evaluation -----------------------------------------------------------------------
    @abstractmethod
    def probabilities(self, logits: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def metrics(self, targets: Sequence[Any], logits: np.ndarray) -> dict[str, Any]:
        """Flat scalar metrics (plus nested detail such as per_class) for one split."""

    @abstractmethod
    def predicted_labels(self, logits: np.ndarray) -> list[Any]:
        """The decision for each row: a label (single_label) or a list of labels (multi_label)."""

    @abstractmethod
    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[Any] | None) -> list[dict[str, Any]]: ...

    def write_reports(self, run_dir: Path, split: str, targets: Sequence[Any], logits: np.ndarray) -> None:
        """Task-specific files for one evaluated split (plots, reports). Optional."""
        return None
