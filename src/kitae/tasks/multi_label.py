"""multi_label: any number of categories per text (toxicity categories, topics, tags).

Labels come either as one list column (`label_field: categories`, e.g. ["猥褻", "差別"]) or as one
yes/no column per category (`label_fields: [obscene, discriminatory, ...]` holding yes/no,
true/false or 1/0). Independent sigmoid outputs, binary cross-entropy; decision thresholds are 0.5
or tuned per category on dev (`evaluation.thresholds: tune`), stored with the model and applied by
predict. Metrics: per-category accuracy / P / R / F1 / ROC-AUC / support, micro / macro / samples
F1, subset accuracy, Hamming loss — with the tuned thresholds and at 0.5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from kitae.data.balance import Resampler, balanced_pos_weight, multilabel_resampler
from kitae.data.readers import Row
from kitae.errors import ConfigError, DataError
from kitae.metrics import label_cardinality_histogram, multilabel_metrics, tune_thresholds
from kitae.metrics.multilabel import binarize
from kitae.metrics.plots import plot_multilabel_confusion_grid
from kitae.runs import write_csv
from kitae.tasks.classification import ClassificationTask, focal_terms
from kitae.tasks.contract import Activation, Analysis, classifier_contract

if TYPE_CHECKING:
    from kitae.config import RunConfig

logger = logging.getLogger(__name__)

TRUE_VALUES = {"1", "yes", "y", "true", "t", "はい", "有", "あり"}
FALSE_VALUES = {"0", "no", "n", "false", "f", "いいえ", "無", "なし"}


def parse_flag(value: Any) -> bool | None:
    """yes/no, true/false, 1/0 (any case; bools and 0/1 numbers too) -> bool; None if unknown.

    >>> [parse_flag(v) for v in ["yes", "No", 1, 0.0, True, "はい", "maybe"]]
    [True, False, True, False, True, True, None]
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_VALUES:
        return True
    if text in FALSE_VALUES:
        return False
    return None


def _list_value(row: Row, field: str) -> list[str]:
    if field not in row.values:
        raise row.error("missing label column", field)
    value = row.values[field]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise row.error("empty label list (write [] for a text with no category)", field)
    if isinstance(value, str):
        # CSV cells: a JSON list, or labels separated by '|' or ','.
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise row.error(f"not a valid JSON list: {text!r}", field) from None
        else:
            value = [part for part in text.replace("|", ",").split(",")]
    if not isinstance(value, list | tuple):
        raise row.error(f"expected a list of labels, got {type(value).__name__} {value!r}", field)
    labels = [str(v).strip() for v in value]
    if any(not label for label in labels):
        raise row.error("empty label in the list", field)
    return labels


class MultiLabelTask(ClassificationTask):
    name = "multi_label"
    contract = classifier_contract("A multi-label text classifier", "multi_label_classification", Activation.SIGMOID,
                                   Analysis.CATEGORY_RATES, Analysis.COOCCURRENCE)
    report_metrics = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "weighted_f1",
                      "macro_precision", "macro_recall", "macro_roc_auc", "log_loss")

    @classmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        data = config.data
        if data.label_fields:
            if data.labels is not None and list(data.labels) != list(data.label_fields):
                raise DataError("data.labels must equal data.label_fields when both are given", path=rows[0].path)
            labels = list(data.label_fields)
        else:
            seen: set[str] = set()
            for row in rows:
                seen.update(_list_value(row, data.label_field))
            if data.labels is not None:
                extra = sorted(seen - set(data.labels))
                if extra:
                    raise DataError(f"labels {extra} are not in data.labels {data.labels}", path=rows[0].path,
                                    field=data.label_field)
                labels = list(data.labels)
            else:
                labels = sorted(seen)
        if not labels:
            raise DataError("no row has any label: multi_label needs at least one category",
                            path=rows[0].path, field=data.label_field)
        minimum = config.balance.min_positives
        if minimum:
            counting = cls(config, labels)
            positives = np.sum([counting.encode_target(row) for row in rows], axis=0)
            dropped = [f"{label} ({int(n)})" for label, n in zip(labels, positives) if n < minimum]
            labels = [label for label, n in zip(labels, positives) if n >= minimum]
            if dropped:
                logger.warning("balance.min_positives=%d: dropping categories with fewer positive rows in %s: %s",
                               minimum, rows[0].path, ", ".join(dropped))
            if not labels:
                raise DataError(f"balance.min_positives={minimum} drops every category", path=rows[0].path)
        return labels

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.index = {label: i for i, label in enumerate(labels)}
        self.pos_weight: torch.Tensor | None = None
        balance = config.balance
        # Categories named in the balance options must exist (min_positives may have dropped
        # some: those are skipped, having been warned about).
        for option in ("target_rate", "upsample", "class_weights"):
            value = getattr(balance, option)
            if isinstance(value, dict):
                unknown = sorted(set(value) - set(labels) - self._all_categories(config))
                if unknown:
                    raise ConfigError(f"balance.{option} names unknown categories {unknown}; categories: {labels}")
        requested = config.evaluation.thresholds
        if isinstance(requested, dict):
            unknown = sorted(set(requested) - set(labels))
            if unknown:
                raise DataError(f"evaluation.thresholds names unknown categories {unknown}; categories: {labels}")
            self.thresholds = np.array([requested.get(label, 0.5) for label in labels])
        else:
            self.thresholds = np.full(len(labels), 0.5 if requested == "tune" else float(requested))

    @staticmethod
    def _all_categories(config: RunConfig) -> set[str]:
        return set(config.data.label_fields or config.data.labels or [])

    def target_columns(self) -> list[str]:
        data = self.config.data
        return list(data.label_fields or [data.label_field])

    def encode_target(self, row: Row) -> np.ndarray:
        target = np.zeros(len(self.labels), dtype=np.float32)
        data = self.config.data
        if data.label_fields:
            for i, field in enumerate(self.labels):
                if field not in row.values:
                    raise row.error("missing category column", field)
                flag = parse_flag(row.values[field])
                if flag is None:
                    raise row.error(f"expected yes/no, true/false or 1/0, got {row.values[field]!r}", field)
                target[i] = float(flag)
            return target
        for label in _list_value(row, data.label_field):
            if label not in self.index:
                if self.config.balance.min_positives:
                    continue  # a category dropped for having too few positives (warned about)
                raise row.error(f"label '{label}' was not seen in train (categories: {', '.join(self.labels)})",
                                data.label_field)
            target[self.index[label]] = 1.0
        return target

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        from kitae.data.splits import iterative_stratified_split, stratified_split

        if not stratify:
            return stratified_split(items, [0] * len(items), fractions, seed, stratify=False)
        return iterative_stratified_split(items, np.stack([e.target for e in items]), fractions, seed)

    def collate_targets(self, targets: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(targets))

    def fit_train(self, targets: Sequence[np.ndarray]) -> None:
        spec = self.config.balance.class_weights
        if spec == "balanced":
            weights = balanced_pos_weight(np.stack(targets))
        elif isinstance(spec, dict):
            weights = np.array([spec.get(label, 1.0) for label in self.labels])
        else:
            return
        self.pos_weight = torch.tensor(weights, dtype=torch.float32)
        logger.info("pos_weight: %s", {label: round(float(w), 4) for label, w in zip(self.labels, weights)})

    def resampler(self, targets: Sequence[np.ndarray]) -> Resampler | None:
        balance = self.config.balance
        if not (balance.drop_unlabelled or balance.target_rate or balance.upsample):
            return None
        kept = set(self.labels)
        return multilabel_resampler(
            np.stack(targets), self.labels, balance.drop_unlabelled,
            {k: v for k, v in (balance.target_rate or {}).items() if k in kept},
            {k: v for k, v in (balance.upsample or {}).items() if k in kept})

    def _terms(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per (example, category): the binary cross-entropy, focal-scaled with balance.loss: focal."""
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight, reduction="none")
        if self.config.balance.loss != "focal":
            return bce
        p = torch.sigmoid(logits.float())
        return focal_terms(bce, p * targets + (1 - p) * (1 - targets), self.config.balance.focal_gamma)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._terms(logits, targets).mean()

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = self._terms(logits, targets)
        return terms.sum(), torch.tensor(float(terms.numel()))  # the mean is over every (example, label)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return torch.sigmoid(torch.from_numpy(logits).double()).numpy()

    def fit_after_training(self, dev_targets: Sequence[np.ndarray] | None, dev_logits: np.ndarray | None) -> None:
        if self.config.evaluation.thresholds != "tune":
            return
        if dev_targets is None or dev_logits is None:
            raise DataError("evaluation.thresholds: tune needs dev data (data.dev or data.split)")
        self.thresholds = tune_thresholds(np.stack(dev_targets).astype(int), self.probabilities(dev_logits))

    def state(self) -> dict[str, Any]:
        return {"thresholds": {label: float(t) for label, t in zip(self.labels, self.thresholds)}}

    def load_state(self, state: dict[str, Any]) -> None:
        if "thresholds" in state:
            self.thresholds = np.array([state["thresholds"][label] for label in self.labels])

    def metrics(self, targets: Sequence[np.ndarray], logits: np.ndarray) -> dict[str, Any]:
        y_true = np.stack(targets).astype(int)
        probs = self.probabilities(logits)
        metrics = multilabel_metrics(y_true, probs, self.labels, self.thresholds)
        metrics["loss"] = float(F.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).double(), torch.from_numpy(y_true).double()).item())
        if np.any(self.thresholds != 0.5):
            at_half = multilabel_metrics(y_true, probs, self.labels, 0.5)
            metrics["at_threshold_0.5"] = {k: v for k, v in at_half.items() if k != "thresholds"}
        metrics["label_count_histogram"] = {str(k): v for k, v in label_cardinality_histogram(y_true).items()}
        return metrics

    def undefined_metric(self, metric: str, targets: Sequence[np.ndarray]) -> str | None:
        y = np.stack(targets).astype(bool)
        if metric == "macro_roc_auc" and not np.any(y.any(axis=0) & ~y.all(axis=0)):
            return "ROC-AUC needs positives and negatives of a category, and no category has both"
        return None

    def collapse_warning(self, targets: Sequence[np.ndarray], logits: np.ndarray) -> str | None:
        predicted = binarize(self.probabilities(logits), self.thresholds)
        if np.stack(targets).any() and (predicted.all(axis=0) | ~predicted.any(axis=0)).all():
            return "every example gets the same categories (often: none)"
        return None

    def predicted_labels(self, logits: np.ndarray) -> list[list[str]]:
        predicted = binarize(self.probabilities(logits), self.thresholds)
        return [[label for label, on in zip(self.labels, row) if on] for row in predicted]

    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[np.ndarray] | None) -> list[dict[str, Any]]:
        probs = self.probabilities(logits)
        predicted = self.predicted_labels(logits)
        records = []
        for i, example_id in enumerate(ids):
            record: dict[str, Any] = {"id": example_id}
            if targets is not None:
                record["gold"] = [label for label, on in zip(self.labels, targets[i]) if on]
            record["predicted"] = predicted[i]
            record["probabilities"] = {label: round(float(p), 6) for label, p in zip(self.labels, probs[i])}
            records.append(record)
        return records

    def write_reports(self, run_dir: Path, split: str, targets: Sequence[np.ndarray], logits: np.ndarray) -> None:
        y_true = np.stack(targets).astype(int)
        metrics = multilabel_metrics(y_true, self.probabilities(logits), self.labels, self.thresholds)
        rows = [{"category": label, "threshold": round(float(t), 6), **values}
                for (label, values), t in zip(metrics["per_category"].items(), self.thresholds)]
        write_csv(run_dir / f"per_category_report_{split}.csv", rows)
        y_pred = binarize(self.probabilities(logits), self.thresholds)
        plot_multilabel_confusion_grid(y_true, y_pred, self.labels, run_dir / f"confusion_matrix_{split}.png",
                                       title=f"{split}: micro-F1 {metrics['micro_f1']:.3f}, "
                                             f"macro-F1 {metrics['macro_f1']:.3f}")
