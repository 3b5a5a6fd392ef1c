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

import logging
from pathlib import Path
from typing import Any

from kitae.errors import ConfigError
from kitae.runs import write_json
from kitae.sweep.plan import Sweep, describe, grid_points, load_sweep, random_points, validate
from kitae.sweep.trials import (
    ConfigurationResult,
    collect,
    format_mean_std,
    run_trial,
    select,
    write_results,
)

__all__ = ["ConfigurationResult", "Sweep", "describe", "load_sweep", "run_sweep"]

logger = logging.getLogger("kitae")

# --- the whole sweep ------------------------------------------------------------------------------

def run_sweep(path: str | Path, worker: bool = False, report_only: bool = False,
              progress: bool | None = False) -> tuple[list[ConfigurationResult], ConfigurationResult | None]:
    """Run (or resume, or with `worker` join) a sweep; then select, evaluate the selected
    configuration on test and write the tables. Returns every configuration and the selected one."""
    sweep = load_sweep(path)
    sweep.output.mkdir(parents=True, exist_ok=True)
    if sweep.config.method == "optuna":
        from kitae.sweep.optuna import run_optuna

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
                    sweep.metric, format_mean_std(selected.dev), format_mean_std(selected.test))
    write_results(sweep, results, selected)
    return results, selected
