"""Problem types. Each module defines one `Task`; register it here and it is usable from a config.

The registry names classes without importing them: a task module (with torch) is imported when a
config names it, and the registry itself imports nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kitae.tasks.base import Task

TASKS: dict[str, str] = {
    "single_label": "kitae.tasks.single_label:SingleLabelTask",
    "multi_label": "kitae.tasks.multi_label:MultiLabelTask",
    "pair": "kitae.tasks.pair:PairTask",
    "regression": "kitae.tasks.regression:RegressionTask",
    "reward": "kitae.tasks.reward:RewardTask",
    "sft": "kitae.tasks.sft:SFTTask",
    "causal_lm": "kitae.tasks.causal_lm:CausalLMTask",
}


def get_task_class(name: str) -> type[Task]:
    import importlib

    module_name, class_name = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
