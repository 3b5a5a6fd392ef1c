"""The Optuna side of `kitae sweep` (method: optuna): a study in RDB storage that any number of
workers share, TPE sampling, median pruning after each epoch of a configuration's first seed.

A trial is one configuration; its seeds run inside it and its value is their mean dev metric.
Trial numbers come from the storage, so workers never run the same one; a worker holds a lock on
each trial it runs, so a trial left RUNNING by a killed worker is recognised (its lock is free)
and resumed — its run directories continue from their checkpoints — by whichever worker starts
next. The worker that ends the last trial selects and writes the results.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from kitae.errors import ConfigError, RunDirError
from kitae.runs import RunLock
from kitae.sweep.plan import ParameterRange, Sweep, describe, validate, validation_points
from kitae.sweep.trials import run_trial
from kitae.training.callbacks import Callback

logger = logging.getLogger("kitae")


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("method: optuna needs the optuna package: pip install 'kitae[sweep]'") from None
    return optuna


class OptunaPruning(Callback):
    """Reports the dev metric after every epoch to the trial; asks the run to stop when Optuna's
    pruner says the trial is worse than the median of earlier ones at that epoch."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.prune = False

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        value = row.get(f"dev_{self.metric}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        self.trial.report(float(value), step=int(row["epoch"]))
        self.prune = self.trial.should_prune()

    def stop_requested(self) -> str | None:
        return "pruned" if self.prune else None


def suggest(trial: Any, key: str, spec: Any) -> Any:
    if isinstance(spec, ParameterRange):
        if spec.type == "int":
            return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return trial.suggest_categorical(key, list(spec))


def _study(sweep: Sweep, worker: bool) -> Any:
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = sweep.config.storage or f"sqlite:///{(sweep.output / 'study.db').resolve()}"
    name = sweep.config.study_name or sweep.output.resolve().name
    # One process: reproducible draws from sampler_seed. Several workers: each its own draws (the
    # same seed everywhere would propose the same first configurations to every worker).
    sampler = optuna.samplers.TPESampler(seed=None if worker else sweep.config.sampler_seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if sweep.config.pruning
              else optuna.pruners.NopPruner())
    direction = "maximize" if sweep.direction == "max" else "minimize"
    for attempt in range(6):
        try:
            # Workers starting together race to create the schema and the study: a loser retries and loads it.
            with _creation_lock(sweep):
                engine: Any = storage
                if storage.startswith("sqlite:"):
                    # SQLite answers "database is locked" after 5 s by default; busy workers wait longer.
                    engine = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 120}})
                return optuna.create_study(study_name=name, storage=engine, sampler=sampler, pruner=pruner,
                                           direction=direction, load_if_exists=True)
        except Exception as exc:  # sqlalchemy's OperationalError / IntegrityError, without importing it here
            if attempt == 5 or type(exc).__module__.split(".")[0] != "sqlalchemy":
                raise
            logger.info("the study storage is busy (%s); retrying", type(exc).__name__)
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _creation_lock(sweep: Sweep) -> Any:
    """An exclusive lock (this machine) while the study is created or loaded."""
    import contextlib

    @contextlib.contextmanager
    def locked() -> Any:
        sweep.output.mkdir(parents=True, exist_ok=True)
        with (sweep.output / ".study.lock").open("a") as handle:
            try:
                import fcntl
            except ImportError:  # Windows: the retries above are the guard
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    return locked()


def _trial_lock(sweep: Sweep, number: int) -> RunLock | None:
    """The lock of one trial, or None when another worker holds it."""
    folder = sweep.output / "trials" / ".locks" / f"{number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return RunLock(folder).acquire()
    except RunDirError:
        return None


def _run_configuration(sweep: Sweep, number: int, point: dict[str, Any], trial: Any | None,
                       progress: bool | None) -> tuple[str, float | None]:
    """Every seed of one configuration: ("complete", mean dev value) / ("pruned"|"failed", None)."""
    from kitae.catalog import summarize

    values = []
    for index, seed in enumerate(sweep.config.seeds):
        pruning = [OptunaPruning(trial, sweep.metric)] if trial is not None and sweep.config.pruning and index == 0 else []
        record = run_trial(sweep, number, point, seed, pruning, progress)
        if record.status in ("pruned", "failed"):
            return record.status, None
        value = summarize(record.run_dir).value(f"dev.{sweep.metric}")
        if value is None or math.isnan(float(value)):
            return "failed", None
        values.append(float(value))
    return "complete", statistics.mean(values)


def _tell(study: Any, number: int, status: str, value: float | None) -> None:
    optuna = require_optuna()
    state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
             "failed": optuna.trial.TrialState.FAIL}[status]
    study.tell(number, value if status == "complete" else None, state=state)


def run_optuna(sweep: Sweep, worker: bool = False, report_only: bool = False,
               progress: bool | None = False) -> list[tuple[int, dict[str, Any]]] | None:
    """Run trials until the study has `trials` of them; return the configurations to report,
    or None while other workers still run some (the last one reports)."""
    optuna = require_optuna()
    study = _study(sweep, worker)
    total = sweep.config.trials or 1
    if not report_only:
        validate(sweep, validation_points(sweep.config.space))
        _resume_stale(study, sweep, total, progress)
        while True:
            trial = study.ask()
            if trial.number >= total:
                # The study has all its trials (counted by the storage): this one is not run.
                trial.set_user_attr("kitae", "not run: the study already had its trials")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            lock = _trial_lock(sweep, trial.number)
            assert lock is not None  # a fresh trial number is this worker's alone
            try:
                point = {key: suggest(trial, key, spec) for key, spec in sweep.config.space.items()}
                trial.set_user_attr("point", point)
                logger.info("optuna trial %d: %s", trial.number, describe(point))
                status, value = _run_configuration(sweep, trial.number, point, trial, progress)
                _tell(study, trial.number, status, value)
            finally:
                lock.release()
    trials = [t for t in study.get_trials(deepcopy=False) if t.number < total]
    if len(trials) < total or any(t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                                  optuna.trial.TrialState.FAIL) for t in trials):
        logger.info("other workers still run trials of %s: the last one writes the results", sweep.path)
        return None
    _plot_importance(study, sweep)
    return [(t.number, t.user_attrs.get("point", t.params)) for t in sorted(trials, key=lambda t: t.number)]


def _resume_stale(study: Any, sweep: Sweep, total: int, progress: bool | None) -> None:
    """Trials left RUNNING by a killed worker (nobody holds their lock): finish them."""
    optuna = require_optuna()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number >= total:
            continue
        lock = _trial_lock(sweep, trial.number)
        if lock is None:
            continue  # a live worker runs it
        try:
            point = trial.user_attrs.get("point") or {key: trial.params[key] for key in sweep.config.space}
            logger.info("resuming optuna trial %d (its worker stopped): %s", trial.number, describe(point))
            status, value = _run_configuration(sweep, trial.number, point, None, progress)
            _tell(study, trial.number, status, value)
        finally:
            lock.release()


def _plot_importance(study: Any, sweep: Sweep) -> None:
    """Optuna's parameter importances (fANOVA) as a bar chart, when there is enough to tell."""
    optuna = require_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    varied = [k for k, spec in sweep.config.space.items() if isinstance(spec, ParameterRange) or len(spec) > 1]
    if len(complete) < 2 or not varied:
        return
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. every trial drew the same values
        logger.info("no parameter importances: %s", exc)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kitae.metrics.plots import save_figure
    from kitae.runs import write_json

    write_json(sweep.output / "param_importances.json", dict(importances))
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"what moves dev {sweep.metric}")
    fig.tight_layout()
    save_figure(fig, Path(sweep.output) / "sweep_importance.png")
    plt.close(fig)

