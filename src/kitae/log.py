"""Logging: kitae logs under the "kitae" logger; a run also gets its own train.log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path


def attach_run_log(path: Path) -> Callable[[], None]:
    """Copy kitae's log records to `path` (appending, so a resumed run keeps its history)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("kitae")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)

    def detach() -> None:
        root.removeHandler(handler)
        handler.close()

    return detach
