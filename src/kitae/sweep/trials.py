"""A sweep's trials: one ordinary run per configuration and seed, collected into mean ± std
per configuration, the selection on dev, and the tables and plots."""


from __future__ import annotations

import gc
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitae.runs import COMPLETE, RunLock, run_status, write_csv, write_text_atomic
from kitae.sweep.plan import Sweep, describe

logger = logging.getLogger("kitae")

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


def format_mean_std(values: list[float]) -> str:
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
        test = format_mean_std(r.test) if r is selected else "(not evaluated)"
        seconds = f"{statistics.mean(r.train_seconds):.1f}" if r.train_seconds else ""
        speed = f"{statistics.mean(r.samples_per_second):.1f}" if r.samples_per_second else ""
        cells = [f"{mark}{r.number}{mark}", *(f"`{r.point.get(k)!r}`" for k in keys), f"{mark}{format_mean_std(r.dev)}{mark}",
                 test, seconds, speed, r.status]
        lines.append("| " + " | ".join(cells) + " |")
    if selected is not None:
        lines += ["", f"Selected: configuration {selected.number} ({describe(selected.point)}): dev {sweep.metric} "
                  f"{format_mean_std(selected.dev)}, test {sweep.metric} {format_mean_std(selected.test)} over seeds {sweep.config.seeds}."]
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
