"""regression: one or more real-valued targets per text (a 0-5 similarity, a rating, a score).

Targets come from `label_field` (one) or `label_fields` (several); MSE loss, optionally on
z-scored targets (`data.normalize_targets`: the train mean / std are stored with the model and
predictions mapped back). Metrics: RMSE, MAE, R², Pearson, Spearman (averaged over targets, and per
target). The model is transformers' *ForSequenceClassification with problem_type "regression", so
an export loads as a regression model in plain transformers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from kitae.data.readers import Row
from kitae.metrics import regression_metrics
from kitae.runs import write_csv
from kitae.tasks.classification import ClassificationTask
from kitae.tasks.contract import Activation, Analysis, classifier_contract

if TYPE_CHECKING:
    from kitae.config import RunConfig


class RegressionTask(ClassificationTask):
    name = "regression"
    # The head's outputs are z-scores when data.normalize_targets: VALUES maps them back.
    contract = classifier_contract("A regression model", "regression", Activation.VALUES, Analysis.TARGET_STATS)
    report_metrics = ("rmse", "mae", "r2", "pearson", "spearman")

    @classmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        return list(config.data.label_fields or [config.data.label_field])

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.mean = np.zeros(len(labels))
        self.std = np.ones(len(labels))

    def target_columns(self) -> list[str]:
        data = self.config.data
        return list(data.label_fields or [data.label_field])

    def encode_target(self, row: Row) -> np.ndarray:
        values = []
        for field in self.labels:
            if field not in row.values:
                raise row.error("missing target column", field)
            value = row.values[field]
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise row.error(f"expected a number, got {value!r}", field) from None
            if not math.isfinite(number):
                raise row.error(f"expected a finite number, got {value!r}", field)
            values.append(number)
        return np.array(values, dtype=np.float64)

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        from kitae.data.splits import stratified_split

        # Stratify on quintiles of the first target, so every part spans the whole range.
        first = np.array([e.target[0] for e in items])
        bins = np.unique(np.quantile(first, [0.2, 0.4, 0.6, 0.8]))
        return stratified_split(items, np.digitize(first, bins).tolist(), fractions, seed, stratify)

    def fit_train(self, targets: Sequence[np.ndarray]) -> None:
        if self.config.data.normalize_targets:
            y = np.stack(targets)
            self.mean, self.std = y.mean(axis=0), np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        if "mean" in state:
            self.mean, self.std = np.array(state["mean"]), np.array(state["std"])

    def collate_targets(self, targets: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy((np.stack(targets) - self.mean) / self.std).float()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float(), targets)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.mse_loss(logits.float(), targets, reduction="sum"), torch.tensor(float(targets.numel()))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The predicted values, in the targets' own scale."""
        return logits.astype(np.float64) * self.std + self.mean

    def metrics(self, targets: Sequence[np.ndarray], logits: np.ndarray) -> dict[str, Any]:
        y = np.stack(targets)
        metrics = regression_metrics(y, self.probabilities(logits), self.labels)
        metrics["loss"] = float(np.mean(((logits - (y - self.mean) / self.std)) ** 2))
        return metrics

    def undefined_metric(self, metric: str, targets: Sequence[np.ndarray]) -> str | None:
        y = np.stack(targets)
        constant = [name for name, column in zip(self.labels, y.T) if np.ptp(column) == 0]
        if metric in ("pearson", "spearman", "r2") and constant:
            return f"{metric} needs targets that vary, and '{constant[0]}' is {y[0, self.labels.index(constant[0])]:g} everywhere"
        return None

    def predicted_labels(self, logits: np.ndarray) -> list[Any]:
        values = self.probabilities(logits)
        return [float(v[0]) if len(self.labels) == 1 else dict(zip(self.labels, map(float, v))) for v in values]

    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[np.ndarray] | None) -> list[dict[str, Any]]:
        predicted = self.predicted_labels(logits)
        records = []
        for i, example_id in enumerate(ids):
            record: dict[str, Any] = {"id": example_id}
            if targets is not None:
                gold = targets[i]
                record["gold"] = float(gold[0]) if len(self.labels) == 1 else dict(zip(self.labels, map(float, gold)))
            record["predicted"] = predicted[i]
            records.append(record)
        return records

    def write_reports(self, run_dir: Path, split: str, targets: Sequence[np.ndarray], logits: np.ndarray) -> None:
        from kitae.metrics.plots import plot_regression_scatter

        y = np.stack(targets)
        values = self.probabilities(logits)
        metrics = regression_metrics(y, values, self.labels)
        write_csv(run_dir / f"regression_report_{split}.csv",
                  [{"target": name, **m} for name, m in metrics["per_target"].items()])
        plot_regression_scatter(y, values, self.labels, run_dir / f"scatter_{split}.png",
                                title=f"{split}: Pearson {metrics['pearson']:.3f}, RMSE {metrics['rmse']:.3f}")
