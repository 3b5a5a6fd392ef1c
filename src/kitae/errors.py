"""The errors kitae raises for bad input: each one names the file, line and field at fault.

The CLI prints them as one message (no traceback); Python callers can catch `KitaeError`.
"""

from __future__ import annotations


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once a resumable checkpoint has been written. (Here, not in
    kitae.training: the CLI catches it without importing torch.)"""


class KitaeError(Exception):
    """Base class: an error caused by the user's input, shown without a traceback."""


class ConfigError(KitaeError):
    """The YAML config (or a --set override) is invalid."""


class DataError(KitaeError):
    """A data file is missing or malformed: the message names the file, line and field."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            if field is not None:
                where += f", field '{field}'"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.field = field


class RunDirError(KitaeError):
    """The run directory is missing, unfinished, or already holds a finished run."""
