"""Evaluation metrics and plots: single-label, multi-label, regression."""

from kitae.metrics.classification import (
    METRIC_DIRECTIONS,
    accuracy,
    binary_roc_auc,
    classification_report_rows,
    confusion_matrix,
    is_better,
    log_loss,
    precision_recall_f1,
    roc_auc,
    single_label_metrics,
)
from kitae.metrics.multilabel import (
    binarize,
    label_cardinality_histogram,
    label_cooccurrence,
    multilabel_confusion_matrix,
    multilabel_metrics,
    per_category_metrics,
    tune_thresholds,
)
from kitae.metrics.plots import plot_confusion_matrix, plot_history, plot_multilabel_confusion_grid
from kitae.metrics.regression import mae, pearson, r2, regression_metrics, rmse, spearman

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
    # Multi-label.
    "binarize",
    "binary_roc_auc",
    "label_cardinality_histogram",
    "label_cooccurrence",
    "multilabel_confusion_matrix",
    "multilabel_metrics",
    "per_category_metrics",
    "plot_multilabel_confusion_grid",
    "tune_thresholds",
    # Regression.
    "mae",
    "pearson",
    "r2",
    "regression_metrics",
    "rmse",
    "spearman",
]
