"""Problem types. Each module defines one `Task`; its run config (kitae.config.tasks) declares its
keys, metrics and where the implementation lives, and registers it.

The registry itself imports no torch: a task module (with torch) is imported when a run needs it,
so loading and checking a config stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kitae.config.tasks import TASK_CONFIGS

if TYPE_CHECKING:
    from kitae.tasks.base import Task

# name -> "module:Class" of the implementation.
TASKS: dict[str, str] = {name: config.implementation for name, config in TASK_CONFIGS.items()}


def get_task_class(name: str) -> type[Task]:
    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
