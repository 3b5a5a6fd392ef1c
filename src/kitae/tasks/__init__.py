"""Problem types. Each module defines one `Task`; register it here and it is usable from a config."""

from __future__ import annotations

from dataclasses import dataclass

from kitae.tasks.base import Task

_CLASSIFICATION = {"accuracy", "roc_auc", "log_loss", "loss"} | {
    f"{average}_{metric}" for average in ("macro", "micro", "weighted") for metric in ("precision", "recall", "f1")}
_MULTI_LABEL = (_CLASSIFICATION - {"accuracy", "roc_auc", "weighted_precision", "weighted_recall"}) | {
    "subset_accuracy", "samples_f1", "macro_roc_auc", "hamming_loss"}
_REGRESSION = {"rmse", "mae", "r2", "pearson", "spearman", "loss"}
_REWARD = {"pairwise_accuracy", "mean_margin", "loss"}


@dataclass(frozen=True)
class TaskEntry:
    path: str  # "module:Class", imported on use so `kitae config check` stays fast
    default_select_metric: str
    metrics: frozenset[str]  # what training.select_metric may name


TASKS: dict[str, TaskEntry] = {
    "single_label": TaskEntry("kitae.tasks.single_label:SingleLabelTask", "macro_f1", frozenset(_CLASSIFICATION)),
    "multi_label": TaskEntry("kitae.tasks.multi_label:MultiLabelTask", "macro_f1", frozenset(_MULTI_LABEL)),
    "pair": TaskEntry("kitae.tasks.pair:PairTask", "macro_f1", frozenset(_CLASSIFICATION)),
    "regression": TaskEntry("kitae.tasks.regression:RegressionTask", "rmse", frozenset(_REGRESSION)),
    "reward": TaskEntry("kitae.tasks.reward:RewardTask", "pairwise_accuracy", frozenset(_REWARD)),
}


def get_task_class(name: str) -> type[Task]:
    import importlib

    module_name, class_name = TASKS[name].path.split(":")
    return getattr(importlib.import_module(module_name), class_name)
