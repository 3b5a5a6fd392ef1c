"""Run directories as a catalogue: find them, summarise them, compare them — for `kitae runs`,
sweeps and the web UI.

Reads only what every run directory has at its top: `run.json` (status, timings), `config.yaml`
(every setting) and `metrics.json` (the selected model's metrics). No model is loaded.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kitae.errors import KitaeError
from kitae.runs import CHECKPOINT_DIR, MODEL_DIR, is_kitae_run, read_json, run_info

# Settings a runs table shows by default (dotted config keys), beside task, model and adapter.
KEY_SETTINGS = ("training.lr", "training.epochs", "training.batch_size", "adapter.r", "model.max_length",
                "training.seed")


@dataclass
class RunSummary:
    path: Path
    status: str
    task: str
    model: str
    adapter: str
    config: dict[str, Any]  # flattened: dotted key -> value
    metrics: dict[str, dict[str, Any]]  # split -> scalar metrics of the selected model
    summary: dict[str, Any] = field(default_factory=dict)  # metrics.json's summary
    info: dict[str, Any] = field(default_factory=dict)  # run.json

    @property
    def name(self) -> str:
        return self.path.name

    def value(self, key: str) -> Any:
        """A column by name: status, task, model, adapter, name, a dotted config key
        (training.lr), a split metric (dev.macro_f1, test.accuracy), or a summary / run.json entry
        (train_seconds, wall_seconds, selected_epoch)."""
        if key in ("status", "task", "model", "adapter", "name"):
            return getattr(self, key)
        split, _, metric = key.partition(".")
        if split in self.metrics and metric:
            return self.metrics[split].get(metric)
        if key in self.config:
            return self.config[key]
        if key in self.summary:
            return self.summary[key]
        return self.info.get(key)


def find_runs(root: str | Path, max_depth: int = 5) -> list[Path]:
    """Run directories under `root` (itself included), sorted by path; model/ and checkpoint
    folders are not searched."""
    root = Path(root)
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if is_kitae_run(folder):
            found.append(folder)
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name not in (MODEL_DIR, CHECKPOINT_DIR) and not child.name.startswith("."):
                walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys.

    >>> flatten({"training": {"lr": 0.001, "epochs": 3}, "task": "sft"})
    {'training.lr': 0.001, 'training.epochs': 3, 'task': 'sft'}
    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def summarize(run_dir: str | Path) -> RunSummary:
    """What a run is and scored, from its run.json, config.yaml and metrics.json."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    if info is None:
        raise KitaeError(f"{run_dir}: not a kitae run directory (no run.json of kitae's)")
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    try:
        metrics_file = read_json(run_dir / "metrics.json")
    except (OSError, ValueError):
        metrics_file = {}
    metrics = {split: {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
               for split, values in metrics_file.items() if split != "summary" and isinstance(values, dict)}
    flat = flatten(config or {})
    return RunSummary(run_dir, info.get("status", "?"), config.get("task", info.get("task", "?")),
                      str(flat.get("model.name", "?")), str(flat.get("adapter.type", "?")), flat, metrics,
                      metrics_file.get("summary", {}), info)


def list_runs(root: str | Path, filters: Iterable[str] = (), sort: str | None = None,
              descending: bool = False) -> list[RunSummary]:
    """The runs under `root` that pass every filter (e.g. "task=sft", "status!=failed",
    "dev.macro_f1>=0.8", "adapter.r=16"), sorted by a column (missing values last)."""
    tests = [parse_filter(f) for f in filters]
    runs = [summarize(path) for path in find_runs(root)]
    runs = [run for run in runs if all(test(run) for test in tests)]
    if sort:
        present = [r for r in runs if _sortable(r.value(sort))]
        absent = [r for r in runs if not _sortable(r.value(sort))]
        present.sort(key=lambda r: _sort_key(r.value(sort)), reverse=descending)
        runs = present + absent
    return runs


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "!=": operator.ne, "=": operator.eq, ">": operator.gt, "<": operator.lt}
_FILTER = re.compile(r"^\s*([\w.\-]+)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")


def parse_filter(expression: str) -> Callable[[RunSummary], bool]:
    """A filter such as "task=sft", "status!=failed" or "dev.macro_f1>=0.8" as a predicate;
    numbers compare as numbers, anything else as text.

    >>> parse_filter("training.lr<=0.001")  # doctest: +ELLIPSIS
    <function ...>
    """
    match = _FILTER.match(expression)
    if match is None:
        raise KitaeError(f"--filter {expression!r}: expected KEY=VALUE, KEY!=VALUE, KEY>=NUMBER (e.g. task=sft, "
                         "dev.macro_f1>=0.8)")
    key, op, wanted = match.groups()
    compare = _OPERATORS["=" if op == "==" else op]
    number = _number(wanted)

    def test(run: RunSummary) -> bool:
        value = run.value(key)
        if value is None:
            return op == "!="
        if number is not None and _number(value) is not None:
            return compare(_number(value), number)
        if op in (">=", "<=", ">", "<"):
            return False
        return compare(str(value), wanted)

    return test


def runs_table(runs: list[RunSummary], root: Path, headlines: list[list[str]],
               extra: list[str]) -> tuple[list[str], list[list[Any]]]:
    """The columns of `kitae runs list` and each run's values: name, status, task, model, adapter,
    the key settings that differ between the runs (the rest is noise here), `extra`, each task's
    headline metric on dev and test, train seconds."""
    from kitae.models.sources import public_model_name

    differing = config_differences(runs)
    settings = [k for k in KEY_SETTINGS if k in differing] + list(extra)
    metrics = list(dict.fromkeys(m for names in headlines for m in names))
    metric_keys = [f"{s}.{m}" for s in ("dev", "test") for m in metrics]
    headers = ["run", "status", "task", "model", "adapter", *settings, *metric_keys, "train s"]
    rows = [[_run_name(run, root), run.status, run.task, public_model_name(run.model), run.adapter,
             *(run.value(k) for k in settings), *(run.value(k) for k in metric_keys), run.value("train_seconds")]
            for run in runs]
    return headers, rows


def run_record(run: RunSummary, root: Path, extra: list[str] = ()) -> dict[str, Any]:
    """One run as `kitae runs list --format json` prints it: full values, every split's metrics."""
    from kitae.models.sources import public_model_name

    return {"run": _run_name(run, root), "path": str(run.path.resolve()), "status": run.status, "task": run.task,
            "model": public_model_name(run.model), "adapter": run.adapter,
            "settings": {k: run.value(k) for k in (*KEY_SETTINGS, *extra)}, "metrics": run.metrics,
            "train_seconds": run.value("train_seconds"), "wall_seconds": run.info.get("wall_seconds"),
            "started": run.info.get("started")}


def _run_name(run: RunSummary, root: Path) -> str:
    return str(run.path.relative_to(root)) if run.path != Path(root) else run.name


def config_differences(runs: list[RunSummary]) -> dict[str, list[Any]]:
    """The config keys whose values differ between runs (paths of outputs excluded), with each
    run's value."""
    keys = sorted(set().union(*(run.config for run in runs))) if runs else []
    differences = {}
    for key in keys:
        if key == "output":
            continue
        values = [run.config.get(key) for run in runs]
        if any(v != values[0] for v in values[1:]):
            differences[key] = values
    return differences


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _sortable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _sort_key(value: Any) -> tuple[int, Any]:
    number = _number(value)
    return (0, number) if number is not None else (1, str(value))
