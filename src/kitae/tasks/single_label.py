"""single_label: one class per text (topic, sentiment, toxic / non-toxic...).

Softmax over classes, cross-entropy loss; metrics: accuracy, macro / micro / weighted P/R/F1,
per-class report, ROC-AUC (binary, or one-vs-rest macro), log loss, confusion matrix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from kitae.data.balance import Resampler, balanced_class_weights, single_label_resampler
from kitae.data.readers import Row
from kitae.errors import ConfigError, DataError
from kitae.metrics import classification_report_rows, single_label_metrics
from kitae.metrics.plots import plot_confusion_matrix
from kitae.runs import write_csv
from kitae.tasks.classification import ClassificationTask, focal_terms
from kitae.tasks.contract import Activation, Analysis, classifier_contract

if TYPE_CHECKING:
    from kitae.config import RunConfig

logger = logging.getLogger(__name__)


def _label_text(row: Row, field: str) -> str:
    """The label of a row as text (1, 1.0 and "1" are the same label "1"); errors for a missing
    or empty label and for values that are not one label (a list, a dict, true/false)."""
    if field not in row.values:
        raise row.error("missing label column", field)
    value = row.values[field]
    if isinstance(value, list | dict):
        raise row.error(f"expected one label, got a {type(value).__name__} ({json.dumps(value, ensure_ascii=False)[:60]}); "
                        "several labels per text are task: multi_label", field)
    if isinstance(value, bool):
        raise row.error(f"expected a label, got the JSON boolean {str(value).lower()}; write it as a string "
                        f"(\"{str(value).lower()}\") if it is one", field)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a parquet/CSV float column is the label "1"
    text = "" if value is None else str(value).strip()
    if not text:
        raise row.error("empty label", field)
    return text


def _is_numeral(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class SingleLabelTask(ClassificationTask):
    name = "single_label"
    contract = classifier_contract("A single-label text classifier", "single_label_classification",
                                   Activation.SOFTMAX, Analysis.CLASS_SHARES)
    report_metrics = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "micro_f1", "weighted_f1",
                      "roc_auc", "log_loss")

    @classmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        field = config.data.label_field
        seen: set[str] = set()
        first_number: Row | None = None  # a JSON number label, and a text label that is no numeral:
        first_text: Row | None = None    # both in one column is a data error, not two classes
        for row in rows:
            label = _label_text(row, field)
            if isinstance(row.values[field], int | float):
                first_number = first_number or row
            elif not _is_numeral(label):
                first_text = first_text or row
            if first_number is not None and first_text is not None:
                later, earlier = sorted((first_number, first_text), key=lambda r: r.line, reverse=True)
                raise later.error(
                    f"the label column mixes numbers and text ({first_number.values[field]!r} on line "
                    f"{first_number.line}, {first_text.values[field]!r} on line {first_text.line}); "
                    "write every label the same way", field)
            seen.add(label)
        if config.data.labels is not None:
            extra = sorted(seen - set(config.data.labels))
            if extra:
                raise DataError(f"labels {extra} are not in data.labels {config.data.labels}",
                                path=rows[0].path, field=field)
            labels = list(config.data.labels)
        else:
            labels = sorted(seen)
        if len(labels) < 2:
            raise DataError(f"single_label needs at least 2 classes; train has only {labels}",
                            path=rows[0].path, field=field)
        return labels

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.label_to_index = {label: index for index, label in enumerate(labels)}
        self.class_weights: torch.Tensor | None = None
        balance = config.balance
        if isinstance(balance.class_weights, dict):
            unknown = sorted(set(balance.class_weights) - set(labels))
            if unknown:
                raise ConfigError(f"balance.class_weights names unknown labels {unknown}; labels: {labels}")

    def fit_train(self, targets: Sequence[int]) -> None:
        spec = self.config.balance.class_weights
        if spec == "balanced":
            weights = balanced_class_weights(np.asarray(targets), len(self.labels))
        elif isinstance(spec, dict):
            weights = np.array([spec.get(label, 1.0) for label in self.labels])
        else:
            return
        self.class_weights = torch.tensor(weights, dtype=torch.float32)
        logger.info("class weights: %s", {label: round(float(w), 4) for label, w in zip(self.labels, weights)})

    def resampler(self, targets: Sequence[int]) -> Resampler | None:
        mode = self.config.balance.sampling
        return None if mode == "none" else single_label_resampler(np.asarray(targets), len(self.labels), mode)

    def target_columns(self) -> list[str]:
        return [self.config.data.label_field]

    def encode_target(self, row: Row) -> int:
        field = self.config.data.label_field
        label = _label_text(row, field)
        if label not in self.label_to_index:
            raise row.error(f"label '{label}' was not seen in train (train labels: {', '.join(self.labels)})", field)
        return self.label_to_index[label]

    def collate_targets(self, targets: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(targets), dtype=torch.long)

    def _weight(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(logits.device)

    def _focal_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per example: the focal-scaled (class-weighted, smoothed) cross-entropy."""
        ce = F.cross_entropy(logits.float(), targets, weight=self._weight(logits), reduction="none",
                             label_smoothing=self.config.training.label_smoothing)
        p_true = torch.softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
        return focal_terms(ce, p_true, self.config.balance.focal_gamma)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.config.balance.loss == "focal":
            return self._focal_terms(logits, targets).mean()
        return F.cross_entropy(logits.float(), targets, weight=self._weight(logits),
                               label_smoothing=self.config.training.label_smoothing)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.balance.loss == "focal":
            return self._focal_terms(logits, targets).sum(), torch.tensor(float(len(targets)))
        weight = self._weight(logits)
        smoothing = self.config.training.label_smoothing
        # A class-weighted mean divides by the targets' summed weights, not the example count.
        total = F.cross_entropy(logits.float(), targets, weight=weight, reduction="sum", label_smoothing=smoothing)
        count = torch.tensor(float(len(targets))) if weight is None else weight[targets].sum().detach().cpu()
        return total, count

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()

    def metrics(self, targets: Sequence[int], logits: np.ndarray) -> dict[str, Any]:
        metrics = single_label_metrics(np.asarray(targets), self.probabilities(logits), self.labels)
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits).double(),
                                                torch.as_tensor(np.asarray(targets))).item())
        return metrics

    def undefined_metric(self, metric: str, targets: Sequence[int]) -> str | None:
        classes = sorted(set(targets))
        if metric == "roc_auc" and len(classes) < 2:
            return f"ROC-AUC needs two classes, and every example is '{self.labels[classes[0]]}'"
        return None

    def collapse_warning(self, targets: Sequence[int], logits: np.ndarray) -> str | None:
        predicted = set(logits.argmax(axis=-1).tolist())
        if len(predicted) == 1 and len(set(targets)) > 1:
            return f"every example is predicted '{self.labels[predicted.pop()]}'"
        return None

    def predicted_labels(self, logits: np.ndarray) -> list[str]:
        return [self.labels[int(i)] for i in logits.argmax(axis=-1)]

    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[int] | None) -> list[dict[str, Any]]:
        probs = self.probabilities(logits)
        records = []
        for i, example_id in enumerate(ids):
            record: dict[str, Any] = {"id": example_id}
            if targets is not None:
                record["gold"] = self.labels[targets[i]]
            record["predicted"] = self.labels[int(probs[i].argmax())]
            record["probabilities"] = {label: round(float(p), 6) for label, p in zip(self.labels, probs[i])}
            records.append(record)
        return records

    def write_reports(self, run_dir: Path, split: str, targets: Sequence[int], logits: np.ndarray) -> None:
        y_true = np.asarray(targets)
        y_pred = logits.argmax(axis=-1)
        metrics = single_label_metrics(y_true, self.probabilities(logits), self.labels)
        matrix = np.asarray(metrics["confusion_matrix"])
        write_csv(run_dir / f"confusion_matrix_{split}.csv",
                  [{"gold \\ predicted": label, **dict(zip(self.labels, map(int, row)))}
                   for label, row in zip(self.labels, matrix)])
        plot_confusion_matrix(matrix, self.labels, run_dir / f"confusion_matrix_{split}.png",
                              title=f"{split}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
        write_csv(run_dir / f"classification_report_{split}.csv",
                  classification_report_rows(y_true, y_pred, self.labels))
