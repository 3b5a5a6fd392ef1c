"""Evaluation metrics and plots for single-label text classification."""

from kitae.metrics.classification import (
    METRIC_DIRECTIONS,
    accuracy,
    classification_report_rows,
    confusion_matrix,
    is_better,
    log_loss,
    precision_recall_f1,
    roc_auc,
    single_label_metrics,
)
from kitae.metrics.plots import plot_confusion_matrix, plot_history

__all__ = [
    "METRIC_DIRECTIONS",
    "accuracy",
    "classification_report_rows",
    "confusion_matrix",
    "is_better",
    "log_loss",
    "plot_confusion_matrix",
    "plot_history",
    "precision_recall_f1",
    "roc_auc",
    "single_label_metrics",
]
