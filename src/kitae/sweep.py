"""`kitae sweep`: hyperparameter sweeps with several seeds, selection on dev only, and the selected
configuration evaluated on test once.

    base: examples/livedoor.yaml      # relative to the sweep file
    method: grid                      # grid | random | optuna
    space:                            # dotted keys, as --set takes them
      training.lr: [1.0e-4, 3.0e-4]   # a list: these values (grid: every combination)
      adapter.r: [8, 32]
      # training.lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # random / optuna: a range
    seeds: [1, 2, 3]                  # every configuration is trained once per seed
    select: dev.macro_f1              # default: dev + the task's select_metric
    trials: 20                        # random / optuna: how many configurations
    output: sweeps/lr

The flow, top to bottom in `run_sweep`: read the sweep and its base config → the configurations
(grid, random draws, or Optuna's TPE asking one at a time) → every configuration validated before
the first trial → for each configuration and seed an ordinary run directory
`OUTPUT/trials/<n>-seed<s>/`, trained with `evaluate_test=False` (selection never sees test) →
mean ± std of the dev metric per configuration → the best configuration → its runs evaluated on
test → `sweep_results.csv` / `.md` and plots. A trial that crashes is recorded as failed and the
sweep goes on; a killed sweep run again skips finished trials and resumes interrupted ones. The
seed sets `training.seed` (initialisation, order, dropout); the data subset and split stay fixed
unless the space names their seeds.

With `method: optuna` the study lives in RDB storage (`storage:`, default a SQLite file in
OUTPUT), so `kitae sweep SWEEP.yaml --worker` on several machines (or processes) pulls trials from
the same study; bad trials are pruned after an epoch by Optuna's median pruner (run status
`pruned`).
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from kitae.config import Section, config_from_dict, format_validation_error
from kitae.errors import ConfigError, KitaeError
from kitae.runs import COMPLETE, RunLock, run_status, write_csv, write_json, write_text_atomic

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
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep is a mapping (base:, method:, space:, seeds:, output:)")
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

@dataclass
class TrialRecord:
    number: int
    seed: int
    run_dir: Path
    status: str  # finished, pruned, failed, interrupted, skipped (not run)
    error: str | None = None


def run_trial(sweep: Sweep, number: int, point: dict[str, Any], seed: int, callbacks: list[Any] | None = None,
              progress: bool | None = False) -> TrialRecord:
    """One trial: an ordinary kitae run, test left unseen. A complete run is skipped (a resumed
    sweep); an interrupted or killed one is resumed; a crash is recorded, not raised."""
    from kitae.api import train

    run_dir = sweep.trial_dir(number, seed)
    status = run_status(run_dir)
    if status in COMPLETE:
        return TrialRecord(number, seed, run_dir, status)
    if status == "failed":
        return TrialRecord(number, seed, run_dir, "failed", _failure(run_dir))
    resume = status in ("interrupted", "running") and _unlocked(run_dir)
    config = sweep.run_config(point, seed, run_dir)
    logger.info("trial %d, seed %d: %s%s", number, seed, describe(point), " (resumed)" if resume else "")
    try:
        result = train(config, resume=resume, callbacks=list(callbacks or []), progress=progress, evaluate_test=False)
        status = "pruned" if result.stop_reason == "pruned" else "finished"
        error = None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the sweep goes on; the trial's run.json says failed
        from kitae.training.loop import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            raise
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        logger.warning("trial %d, seed %d failed: %s", number, seed, error)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "sweep_error.txt", error + "\n")
    finally:
        gc.collect()  # the trial's model and optimizer are unreachable now: free them before the next
        _empty_cuda_cache()
    return TrialRecord(number, seed, run_dir, status, error)


def _failure(run_dir: Path) -> str | None:
    path = run_dir / "sweep_error.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _unlocked(run_dir: Path) -> bool:
    """Whether no process works in a run directory (a 'running' status left by a killed run)."""
    from kitae.errors import RunDirError

    try:
        RunLock(run_dir).acquire().release()
    except RunDirError:
        return False
    return True


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- results -------------------------------------------------------------------------------------

@dataclass
class ConfigurationResult:
    number: int
    point: dict[str, Any]
    trials: list[TrialRecord] = field(default_factory=list)
    dev: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    samples_per_second: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.trials) and all(t.status == "finished" for t in self.trials)

    @property
    def status(self) -> str:
        statuses = {t.status for t in self.trials}
        return statuses.pop() if len(statuses) == 1 else "+".join(sorted(statuses))


def collect(sweep: Sweep, configurations: list[tuple[int, dict[str, Any]]]) -> list[ConfigurationResult]:
    """Every configuration's trials, read from their run directories."""
    from kitae.catalog import summarize

    results = []
    for number, point in configurations:
        result = ConfigurationResult(number, point)
        for seed in sweep.config.seeds:
            run_dir = sweep.trial_dir(number, seed)
            status = run_status(run_dir) or "not run"
            result.trials.append(TrialRecord(number, seed, run_dir, status, _failure(run_dir)))
            if status not in COMPLETE:
                continue
            summary = summarize(run_dir)
            value = summary.value(f"dev.{sweep.metric}")
            if value is not None:
                result.dev.append(float(value))
            test = summary.value(f"test.{sweep.metric}")
            if test is not None:
                result.test.append(float(test))
            seconds = summary.summary.get("train_seconds")
            if seconds:
                result.train_seconds.append(float(seconds))
                examples = summary.summary.get("train_examples", 0) * summary.summary.get("epochs_run", 0)
                result.samples_per_second.append(examples / float(seconds))
        results.append(result)
    return results


def select(results: list[ConfigurationResult], direction: str) -> ConfigurationResult | None:
    """The configuration with the best mean dev metric among those whose every seed finished
    (ties: the earlier one)."""
    candidates = [r for r in results if r.complete and r.dev and not any(math.isnan(v) for v in r.dev)]
    if not candidates:
        return None
    sign = 1 if direction == "max" else -1
    return max(candidates, key=lambda r: (sign * statistics.mean(r.dev), -r.number))


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float]) -> str:
    stats = mean_std(values)
    return "" if stats is None else f"{stats[0]:.4f} ± {stats[1]:.4f}"


def write_results(sweep: Sweep, results: list[ConfigurationResult], selected: ConfigurationResult | None) -> None:
    """sweep_results.csv / .md and a plot of the metric against each varied key."""
    keys = list(sweep.config.space)
    rows = []
    for r in results:
        dev, test = mean_std(r.dev), mean_std(r.test) if r is selected else None
        rows.append({"configuration": r.number, **{k: r.point.get(k) for k in keys},
                     f"dev_{sweep.metric}_mean": dev[0] if dev else None, f"dev_{sweep.metric}_std": dev[1] if dev else None,
                     "seeds": len(r.dev), f"test_{sweep.metric}_mean": test[0] if test else None,
                     f"test_{sweep.metric}_std": test[1] if test else None,
                     "train_seconds": statistics.mean(r.train_seconds) if r.train_seconds else None,
                     "samples_per_s": statistics.mean(r.samples_per_second) if r.samples_per_second else None,
                     "status": r.status, "selected": r is selected})
    write_csv(sweep.output / "sweep_results.csv", rows)
    lines = [f"# Sweep `{sweep.path.name}` ({sweep.config.method}, {len(results)} configurations x "
             f"{len(sweep.config.seeds)} seeds: {sweep.config.seeds})", "",
             f"Selected on dev `{sweep.metric}` ({'higher' if sweep.direction == 'max' else 'lower'} is better), mean "
             "over seeds; trials never saw test. Only the selected configuration was evaluated on test.", "",
             "| # | " + " | ".join(keys) + f" | dev {sweep.metric} | test {sweep.metric} | train s | samples/s | status |",
             "|---|" + "---|" * (len(keys) + 5)]
    for r in results:
        mark = "**" if r is selected else ""
        test = _fmt(r.test) if r is selected else "(not evaluated)"
        seconds = f"{statistics.mean(r.train_seconds):.1f}" if r.train_seconds else ""
        speed = f"{statistics.mean(r.samples_per_second):.1f}" if r.samples_per_second else ""
        cells = [f"{mark}{r.number}{mark}", *(f"`{r.point.get(k)!r}`" for k in keys), f"{mark}{_fmt(r.dev)}{mark}",
                 test, seconds, speed, r.status]
        lines.append("| " + " | ".join(cells) + " |")
    if selected is not None:
        lines += ["", f"Selected: configuration {selected.number} ({describe(selected.point)}): dev {sweep.metric} "
                  f"{_fmt(selected.dev)}, test {sweep.metric} {_fmt(selected.test)} over seeds {sweep.config.seeds}."]
    else:
        lines += ["", "No configuration finished every seed: nothing selected."]
    failed = [t for r in results for t in r.trials if t.status == "failed"]
    if failed:
        lines += ["", "Failed trials:"] + [f"- {t.run_dir.name}: {t.error or 'see its train.log'}" for t in failed]
    write_text_atomic(sweep.output / "sweep_results.md", "\n".join(lines) + "\n")
    _plot(sweep, results, selected)


def _plot(sweep: Sweep, results: list[ConfigurationResult], selected: ConfigurationResult | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kitae.metrics.plots import save_figure

    keys = list(sweep.config.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        done = [r for r in results if r.dev]
        values = [r.point.get(key) for r in done]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        labels = sorted({repr(v) for v in values}) if not numeric else None
        xs = values if numeric else [labels.index(repr(v)) for v in values]  # type: ignore[union-attr]
        means = [statistics.mean(r.dev) for r in done]
        stds = [statistics.stdev(r.dev) if len(r.dev) > 1 else 0.0 for r in done]
        ax.errorbar(xs, means, yerr=stds, fmt="o", capsize=3, alpha=0.8)
        if selected is not None and selected in done:
            i = done.index(selected)
            ax.plot([xs[i]], [means[i]], "*", markersize=14, color="tab:red", label="selected")
            ax.legend(loc="best", fontsize=8)
        if numeric and key.endswith("lr") and min(values) > 0:
            from matplotlib.ticker import FixedLocator, NullFormatter

            ax.set_xscale("log")
            # Ticks at the swept values only: log minor labels (3e-4, 4e-4) overlap.
            ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
            ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif numeric and len(set(values)) <= 8:
            ax.set_xticks(sorted(set(values)))
        if not numeric:
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels([label[:18] for label in labels], rotation=20, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(f"dev {sweep.metric} (mean ± std)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, sweep.output / "sweep_metric.png")
    plt.close(fig)


# --- the whole sweep ------------------------------------------------------------------------------

def run_sweep(path: str | Path, worker: bool = False, report_only: bool = False,
              progress: bool | None = False) -> tuple[list[ConfigurationResult], ConfigurationResult | None]:
    """Run (or resume, or with `worker` join) a sweep; then select, evaluate the selected
    configuration on test and write the tables. Returns every configuration and the selected one."""
    sweep = load_sweep(path)
    sweep.output.mkdir(parents=True, exist_ok=True)
    if sweep.config.method == "optuna":
        from kitae.sweep_optuna import run_optuna

        configurations = run_optuna(sweep, worker=worker, report_only=report_only, progress=progress)
        if configurations is None:  # other workers still have trials running: they finish the sweep
            return [], None
    else:
        if worker:
            raise ConfigError(f"{sweep.path}: --worker shares an Optuna study; method {sweep.config.method} runs in one "
                              "process (use method: optuna to spread trials over workers)")
        points = (grid_points(sweep.config.space) if sweep.config.method == "grid"  # type: ignore[arg-type]
                  else random_points(sweep.config.space, sweep.config.trials or 1, sweep.config.sampler_seed))
        configurations = list(enumerate(points, start=1))
        manifest = {"seeds": sweep.config.seeds, "set": sweep.config.set,
                    "configurations": [{"number": n, "point": p} for n, p in configurations]}
        _check_manifest(sweep, manifest)
        if not report_only:
            validate(sweep, points)
        # written only once every point is valid, so a sweep refused before its first trial can be fixed in place
        write_json(sweep.output / "configurations.json", manifest)
        if not report_only:
            for number, point in configurations:
                for seed in sweep.config.seeds:
                    run_trial(sweep, number, point, seed, progress=progress)
    return finish(sweep, configurations)


def _check_manifest(sweep: Sweep, manifest: dict[str, Any]) -> None:
    """A sweep run again must be the same sweep: its trial folders are numbered by configuration,
    so a changed space would pass other settings' results off as these."""
    import json

    path = sweep.output / "configurations.json"
    trials = sweep.output / "trials"
    if not path.is_file() or not (trials.is_dir() and any(trials.iterdir())):
        return  # no trial has run: nothing could be misattributed
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return
    if json.loads(json.dumps(manifest)) != previous:
        raise ConfigError(f"{sweep.path}: the space, seeds or set changed since the trials in {sweep.output} ran; "
                          "give the changed sweep a new output folder (its trials are numbered by configuration)")


def finish(sweep: Sweep, configurations: list[tuple[int, dict[str, Any]]],
           ) -> tuple[list[ConfigurationResult], ConfigurationResult | None]:
    """Select on dev, evaluate the selected configuration's runs on test, write the results."""
    from kitae.api import evaluate_test

    results = collect(sweep, configurations)
    selected = select(results, sweep.direction)
    if selected is not None:
        for trial in selected.trials:
            evaluate_test(trial.run_dir)
        results = collect(sweep, configurations)
        selected = next(r for r in results if r.number == selected.number)
        logger.info("selected configuration %d (%s): dev %s %s, test %s", selected.number, describe(selected.point),
                    sweep.metric, _fmt(selected.dev), _fmt(selected.test))
    write_results(sweep, results, selected)
    return results, selected
