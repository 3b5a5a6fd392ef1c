"""Problem types. Each module defines one `Task`; register it here and it is usable from a config."""

from __future__ import annotations

from kitae.tasks.base import Task

TASKS: dict[str, str] = {
    # name -> "module:Class", imported on use so `kitae config check` stays fast.
    "single_label": "kitae.tasks.single_label:SingleLabelTask",
    "multi_label": "kitae.tasks.multi_label:MultiLabelTask",
    "pair": "kitae.tasks.pair:PairTask",
}


def get_task_class(name: str) -> type[Task]:
    import importlib

    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
