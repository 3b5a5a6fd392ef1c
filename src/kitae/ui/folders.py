"""Which files `kitae ui` may read or name: only those that resolve (symlinks followed) inside the
folders it was started for — its working folder, the runs folder, any `--data-root`, and the
examples it ships. A config submitted through the page is held to the same folders for every path
it names, and cannot turn on `trust_remote_code` unless the UI was started with
`--allow-remote-code`. Refusals name the field and the folders, never a byte of the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kitae.errors import KitaeError

# The config keys that name files or folders kitae reads (output is held to the runs folder by jobs).
DATA_PATHS = ("data.train", "data.dev", "data.test", "data.split_file")


@dataclass(frozen=True)
class Folders:
    roots: tuple[Path, ...]
    allow_remote_code: bool = False

    @classmethod
    def of(cls, *folders: Path | None, allow_remote_code: bool = False) -> Folders:
        roots = tuple(dict.fromkeys(Path(f).resolve() for f in folders if f is not None))
        return cls(roots, allow_remote_code)

    def describe(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    def contains(self, path: Path) -> bool:
        resolved = Path(path).resolve()
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def require(self, path: str | Path, field: str) -> Path:
        """`path` resolved, or one error naming `field` (the file is not opened)."""
        resolved = Path(path).expanduser().resolve()
        if not self.contains(resolved):
            raise KitaeError(f"{field}: {path} is outside the folders kitae ui may read ({self.describe()}); "
                             "start kitae ui with --data-root FOLDER to allow another folder")
        return resolved

    def config_problems(self, config: dict[str, Any]) -> list[dict[str, str]]:
        """What a submitted config (paths already absolute) names outside the folders, or turns on
        without permission: [{field, message}] as the form shows them."""
        problems = []
        for field, value in _named_paths(config):
            try:
                self.require(value, field)
            except KitaeError as exc:
                problems.append({"field": field, "message": str(exc)})
        model = config.get("model") if isinstance(config.get("model"), dict) else {}
        if model.get("trust_remote_code") and not self.allow_remote_code:
            problems.append({"field": "model.trust_remote_code",
                             "message": "model.trust_remote_code: runs code shipped with the model; a config from "
                                        "the page may turn it on only if kitae ui was started with "
                                        "--allow-remote-code"})
        return problems

    def check_config(self, config: dict[str, Any]) -> None:
        problems = self.config_problems(config)
        if problems:
            raise KitaeError("; ".join(p["message"] for p in problems))


def _named_paths(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, path) for every local path a config mapping names: data files, a local model
    folder or .gguf file, and a file or sqlite tracking store."""
    found = []
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    for field in DATA_PATHS:
        value = data.get(field.split(".", 1)[1])
        if isinstance(value, str | Path) and str(value):
            found.append((field, str(value)))
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    name = model.get("name")
    if isinstance(name, str) and _is_local(name):
        found.append(("model.name", name))
    tracking = config.get("tracking") if isinstance(config.get("tracking"), dict) else {}
    uri = tracking.get("mlflow_uri")
    if isinstance(uri, str) and (store := _local_store(uri)) is not None:
        found.append(("tracking.mlflow_uri", store))
    return found


def _is_local(name: str) -> bool:
    """A model name that is a path rather than a hub id or a packaged model.

    >>> _is_local("rinna/japanese-gpt-neox-3.6b"), _is_local("pypi:gemma-3-270m"), _is_local("/m/x")
    (False, False, True)
    >>> _is_local("./models/x"), _is_local("~/m"), _is_local("a/b/c"), _is_local("gpt2")
    (True, True, True, False)
    """
    if name.startswith("pypi:"):
        return False
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()


def _local_store(uri: str) -> str | None:
    """The local path of a file or sqlite MLflow store; None for a server.

    >>> _local_store("sqlite:////tmp/x/mlflow.db"), _local_store("file:///etc/x"), _local_store("https://h")
    ('/tmp/x/mlflow.db', '/etc/x', None)
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https", "databricks"):
        return None
    if parsed.scheme == "sqlite":
        return uri.removeprefix("sqlite:///")
    if parsed.scheme == "file":
        return parsed.path
    return uri if parsed.scheme == "" else None
