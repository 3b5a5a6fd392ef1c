"""Credentials never leave the machine in what kitae writes for others: a URI's `user:password@`
is dropped from exported configs, model cards and the parameters sent to trackers."""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def strip_credentials(value: Any) -> Any:
    """`value` with the user info of every URI in it removed (mappings and lists walked).

    >>> strip_credentials("https://alice:s3cret@mlflow.example.org:5000/path")
    'https://mlflow.example.org:5000/path'
    >>> strip_credentials({"tracking": {"mlflow_uri": "postgresql://u:p@db/mlflow"}, "n": 3})
    {'tracking': {'mlflow_uri': 'postgresql://db/mlflow'}, 'n': 3}
    >>> strip_credentials(["sqlite:///runs/mlflow.db", "user@example.org"])
    ['sqlite:///runs/mlflow.db', 'user@example.org']
    """
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>", value)
    if isinstance(value, dict):
        return {k: strip_credentials(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(strip_credentials(v) for v in value)
    return value
