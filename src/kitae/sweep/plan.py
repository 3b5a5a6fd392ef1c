"""What a sweep is: its file, the configurations it tries (grid, random draws, the space
Optuna samples) and their validation before the first trial."""


from __future__ import annotations

import copy
import itertools
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kitae.config import Section, config_from_dict, format_validation_error
from kitae.config.loading import read_yaml_mapping
from kitae.errors import ConfigError, KitaeError

logger = logging.getLogger("kitae")


class ParameterRange(Section):
    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value.")
    log: bool = Field(False, description="Draw on a log scale (learning rates).")
    type: Literal["float", "int"] = Field("float", description="float or int.")

    @model_validator(mode="after")
    def _ordered(self) -> ParameterRange:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SweepConfig(Section):
    base: Path = Field(description="The run config every trial starts from (relative to the sweep file).")
    method: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every combination of the listed values; random: `trials` draws; optuna: "
        "TPE sampling with median pruning, in RDB storage that several workers can share.")
    space: dict[str, list[Any] | ParameterRange] = Field(
        description="Dotted config keys (as --set takes them) -> a list of values, or a range {low, high, log, "
        "type} (random and optuna).")
    seeds: list[int] = Field(default_factory=lambda: [42], description="Seeds per configuration (training.seed).")
    select: str | None = Field(None, description="Split and metric to select on, e.g. dev.macro_f1 (default: dev + "
                               "the task's select_metric). Only dev can be selected on.")
    trials: int | None = Field(None, gt=0, description="random / optuna: how many configurations to try.")
    output: Path = Field(description="The sweep's folder (relative to the current directory).")
    set: dict[str, Any] = Field(default_factory=dict, description="Fixed overrides for every trial (dotted keys).")
    storage: str | None = Field(None, description="optuna: RDB storage URL (default sqlite:///OUTPUT/study.db; "
                                "a postgresql:// URL to share across machines).")
    study_name: str | None = Field(None, description="optuna: the study's name (default: the output folder's).")
    pruning: bool = Field(True, description="optuna: prune trials whose dev metric after an epoch is below the "
                          "median of earlier trials at that epoch.")
    sampler_seed: int = Field(0, description="random / optuna: seed of the configurations drawn.")

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space: name at least one key to vary")
        ranges = [k for k, v in self.space.items() if isinstance(v, ParameterRange)]
        if self.method == "grid" and ranges:
            raise ValueError(f"space.{ranges[0]}: a grid takes lists of values; ranges are for random and optuna")
        empty = [k for k, v in self.space.items() if isinstance(v, list) and not v]
        if empty:
            raise ValueError(f"space.{empty[0]}: an empty list")
        if self.method != "grid" and self.trials is None:
            raise ValueError(f"trials: {self.method} needs the number of configurations to try")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a non-empty list of distinct seeds")
        if self.select is not None and not self.select.startswith("dev."):
            raise ValueError(f"select: {self.select!r}: selection uses dev only (e.g. dev.macro_f1); test is "
                             "evaluated once, on the selected configuration")
        return self


@dataclass
class Sweep:
    """A sweep read and checked: its settings, the base config mapping and where it lives."""

    config: SweepConfig
    path: Path
    base_raw: dict[str, Any]
    base_dir: Path
    task: str
    metric: str  # the dev metric selected on
    direction: str  # "max" or "min"

    @property
    def output(self) -> Path:
        return self.config.output

    def trial_dir(self, number: int, seed: int) -> Path:
        return self.output / "trials" / f"{number:03d}-seed{seed}"

    def raw(self, point: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
        """The run config mapping of one trial."""
        raw = copy.deepcopy(self.base_raw)
        for key, value in {**self.config.set, **point, "training.seed": seed, "output": str(run_dir)}.items():
            _set(raw, key, value)
        return raw

    def run_config(self, point: dict[str, Any], seed: int, run_dir: Path, check_files: bool = True) -> Any:
        return config_from_dict(self.raw(point, seed, run_dir), base_dir=self.base_dir,
                                source=f"{self.path} (trial {describe(point)}, seed {seed})", check_files=check_files)


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a config mapping (sections created as needed)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file and its base config; check the selection metric against the task."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep", "a sweep is a mapping (base:, method:, space:, seeds:, output:)")
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), SweepConfig)) from None
    base = config.base if config.base.is_absolute() else path.parent / config.base
    if not base.is_file():
        raise ConfigError(f"{path}: base: config not found: {base}")
    base_raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    if not isinstance(base_raw, dict):
        raise ConfigError(f"{base}: the config must be a mapping of sections")
    from kitae.config import TASK_CONFIGS
    from kitae.metrics.classification import _direction

    task_name = str(base_raw.get("task", "single_label"))
    if task_name not in TASK_CONFIGS:
        raise ConfigError(f"{base}: unknown task {task_name!r}")
    task_config = TASK_CONFIGS[task_name]
    select = config.select or f"dev.{(base_raw.get('training') or {}).get('select_metric') or task_config.default_select_metric}"
    metric = select.removeprefix("dev.")
    if metric not in task_config.metric_names:
        raise ConfigError(f"{path}: select: {select!r} is not a {task_name} metric; known: "
                          f"{', '.join('dev.' + m for m in task_config.metric_names)}")
    return Sweep(config, path, base_raw, base.parent, task_name, metric, _direction(metric))


# --- the configurations ---------------------------------------------------------------------------

def grid_points(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the listed values, in the order the keys and values are written.

    >>> grid_points({"training.lr": [0.1, 0.2], "adapter.r": [8]})
    [{'training.lr': 0.1, 'adapter.r': 8}, {'training.lr': 0.2, 'adapter.r': 8}]
    """
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def random_points(space: dict[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """`trials` draws: a list's values uniformly, a range uniformly (or log-uniformly)."""
    rng = random.Random(seed)
    points = []
    for _ in range(trials):
        point = {}
        for key, spec in space.items():
            if isinstance(spec, list):
                point[key] = rng.choice(spec)
                continue
            low, high = (math.log(spec.low), math.log(spec.high)) if spec.log else (spec.low, spec.high)
            value = rng.uniform(low, high)
            value = math.exp(value) if spec.log else value
            point[key] = int(round(value)) if spec.type == "int" else float(f"{value:.6g}")
        points.append(point)
    return points


def validation_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """What is checked before an Optuna sweep starts: every listed value and both ends of every
    range, each beside the first value of the other keys."""
    first = {k: (v[0] if isinstance(v, list) else (int(v.low) if v.type == "int" else v.low)) for k, v in space.items()}
    points = [first]
    for key, spec in space.items():
        values = spec if isinstance(spec, list) else [spec.low, spec.high]
        for value in values:
            value = int(value) if isinstance(spec, ParameterRange) and spec.type == "int" else value
            points.append({**first, key: value})
    return points


def validate(sweep: Sweep, points: list[dict[str, Any]]) -> None:
    """Every point is a valid run config, and every distinct data section reads cleanly — one
    error naming the point, before any trial runs."""
    from kitae.data.prepare import prepare_data

    seen_data: set[str] = set()
    for point in points:
        config = sweep.run_config(point, sweep.config.seeds[0], sweep.trial_dir(0, sweep.config.seeds[0]))
        data_key = config.data.model_dump_json()
        if data_key in seen_data:
            continue
        seen_data.add(data_key)
        try:
            prepare_data(config)
        except KitaeError as exc:
            raise type(exc)(f"sweep {sweep.path}, configuration {describe(point)}: {exc}") from None


# --- running trials ------------------------------------------------------------------------------
