"""Callbacks: how the progress bar, the history file, memory logging, trackers (MLflow,
TensorBoard), sweeps (pruning) and a web UI watch — and may stop — a run without touching the loop.

Events, in order: on_train_begin, then per epoch on_epoch_begin / on_step_end / on_epoch_end, then
on_train_end (training is over), and on_run_end once the run directory is complete (test
evaluated, model and card saved). After every epoch end the loop asks `stop_requested()`: a
callback returning a reason (a sweep's pruner returns "pruned") ends training like early stopping,
and the run's status becomes that reason.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil
import torch

logger = logging.getLogger(__name__)


class Callback:
    def on_train_begin(self, info: dict[str, Any]) -> None: ...
    def on_epoch_begin(self, epoch: int, num_batches: int, batches_done: int) -> None: ...
    def on_step_end(self, step: dict[str, Any]) -> None: ...
    def on_epoch_end(self, row: dict[str, Any]) -> None: ...
    def on_train_end(self, summary: dict[str, Any]) -> None: ...
    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        """The run directory is complete: `metrics` is its metrics.json."""

    def stop_requested(self) -> str | None:
        """A reason to stop training after this epoch (e.g. "pruned"), or None."""
        return None

    def on_run_stopped(self, status: str) -> None:
        """The run ended without completing: "interrupted" or "failed"."""


class ProgressBar(Callback):
    """A tqdm bar per epoch with running loss, learning rate and throughput. Where stderr is not
    a terminal (CI, nohup, a log file) it logs the same figures every 10% of the epoch instead;
    `disable=True` silences both."""

    def __init__(self, disable: bool | None = None) -> None:
        self.disable = disable
        self.bar = None

    def on_epoch_begin(self, epoch: int, num_batches: int, batches_done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=num_batches, initial=batches_done, desc=f"epoch {epoch + 1}",
                        unit="batch", dynamic_ncols=True, disable=self.disable, leave=True)
        self.log_every = max(1, num_batches // 10) if self.bar.disable and self.disable is None else 0
        self.epoch, self.num_batches = epoch, num_batches
        self.started = time.perf_counter()
        self.examples = 0
        self.tokens = 0
        self.loss_sum = 0.0
        self.loss_count = 0

    def on_step_end(self, step: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.examples += step["examples"]
        self.tokens += step["tokens"]
        self.loss_sum += step["loss"]
        self.loss_count += 1
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        figures = {"loss": f"{self.loss_sum / self.loss_count:.4f}", "lr": f"{step['lr']:.2e}",
                   "ex/s": f"{self.examples / elapsed:.1f}", "tok/s": f"{self.tokens / elapsed:.0f}"}
        self.bar.set_postfix(figures, refresh=False)
        self.bar.update(1)
        if self.log_every and (step["batch"] % self.log_every == 0 or step["batch"] == self.num_batches):
            logger.info("epoch %d: batch %d/%d, %s", self.epoch + 1, step["batch"], self.num_batches,
                        ", ".join(f"{k} {v}" for k, v in figures.items()))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def memory_snapshot() -> dict[str, float]:
    """Resident memory of this process and, on CUDA, allocated / reserved / peak allocated
    memory (GiB)."""
    snapshot = {"rss_gib": round(psutil.Process(os.getpid()).memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        snapshot["cuda_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
        snapshot["cuda_reserved_gib"] = round(torch.cuda.memory_reserved() / 2**30, 3)
        snapshot["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return snapshot


class MemoryMonitor(Callback):
    """Loss, learning rate, throughput and memory every `every` optimizer steps: in the log and in
    steps.csv (one row per logging step); the run's peaks and the largest batch that fitted go to
    the metrics.json summary (`summary()`)."""

    def __init__(self, run_dir: Path, every: int = 10, listeners: list[Any] | None = None) -> None:
        self.path = Path(run_dir) / "steps.csv"
        self.every = every
        self.listeners = list(listeners or [])  # called with every row (trackers log them too)
        self.peaks: dict[str, float] = {}
        self.largest_batch: dict[str, int] = {"examples": 0, "tokens": 0}
        self.window_tokens = 0
        self.window_losses: list[float] = []
        self.window_started = time.perf_counter()

    def on_train_begin(self, info: dict[str, Any]) -> None:
        if self.path.is_file():
            # A resumed run replays the steps after its checkpoint: drop their rows.
            import csv

            from kitae.runs import write_csv

            with self.path.open(encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= info.get("global_step", 0)]
            write_csv(self.path, rows)
            # The peaks of the steps before the interruption still count in the run's summary.
            for row in rows:
                for key, value in row.items():
                    if key.endswith("_gib") and value not in (None, ""):
                        self.peaks[key] = max(self.peaks.get(key, 0.0), float(value))

    def on_step_end(self, step: dict[str, Any]) -> None:
        self.window_tokens += step["tokens"]
        self.window_losses.append(step["loss"])
        if step["tokens"] > self.largest_batch["tokens"]:
            self.largest_batch = {"examples": step["examples"], "tokens": step["tokens"]}
        if step["global_step"] % self.every or not step.get("boundary", True):
            return
        snapshot = memory_snapshot()
        for key, value in snapshot.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        elapsed = max(time.perf_counter() - self.window_started, 1e-9)
        # The mean loss of the batches since the last logging step.
        loss = sum(self.window_losses) / len(self.window_losses)
        row = {"step": step["global_step"], "epoch": step["epoch"] + 1, "loss": round(loss, 5),
               "lr": step["lr"], "tokens_per_s": round(self.window_tokens / elapsed, 1), **snapshot}
        self.window_tokens, self.window_losses, self.window_started = 0, [], time.perf_counter()
        logger.info("step %d: loss %.4f, lr %.2e, %s tok/s, %s", row["step"], loss, step["lr"],
                    row["tokens_per_s"], ", ".join(f"{k} {v}" for k, v in snapshot.items()))
        new = not self.path.is_file()
        with self.path.open("a", encoding="utf-8") as handle:  # a log, appended like train.log
            if new:
                handle.write(",".join(row) + "\n")
            handle.write(",".join(str(v) for v in row.values()) + "\n")
        for listener in self.listeners:
            listener(row)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for key, value in memory_snapshot().items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)

    def summary(self) -> dict[str, Any]:
        """Peaks over the whole run (this process's own high-water mark included: evaluation
        after the last logging step may be the peak), and the largest batch trained here (None
        when this process trained no step, e.g. resumed after the last one)."""
        peaks = dict(self.peaks)
        own = process_peak_rss_gib()
        if own is not None:
            peaks["rss_gib"] = max(peaks.get("rss_gib", 0.0), own)
        if torch.cuda.is_available():
            peaks["cuda_peak_gib"] = max(peaks.get("cuda_peak_gib", 0.0),
                                         round(torch.cuda.max_memory_allocated() / 2**30, 3))
        return {"peak_rss_gib": peaks.get("rss_gib"), "cuda_peak_gib": peaks.get("cuda_peak_gib"),
                "largest_batch": self.largest_batch if self.largest_batch["tokens"] else None}


def process_peak_rss_gib() -> float | None:
    """This process's peak resident memory (the kernel's high-water mark), where the OS reports it."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    # Linux reports KiB, macOS bytes.
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 3)


class EpochLogger(Callback):
    """One log line per epoch with the dev metrics and memory."""

    def __init__(self, select_metric: str = "macro_f1", headline: str = "accuracy") -> None:
        self.select_metric, self.headline = select_metric, headline

    def on_train_begin(self, info: dict[str, Any]) -> None:
        logger.info("training: %s", ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("history", "global_step")))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        keys = ["train_loss", "dev_loss", f"dev_{self.select_metric}", f"dev_{self.headline}", "seconds", "rss_gib",
                "cuda_peak_gib"]
        shown = ", ".join(f"{k} {row[k]:.4g}" for k in dict.fromkeys(keys) if isinstance(row.get(k), float | int))
        logger.info("epoch %s: %s", row.get("epoch"), shown)


class HistoryWriter(Callback):
    """history.csv and history.png, rewritten (atomically) after every epoch."""

    def __init__(self, run_dir: Path, select_metric: str, headline: str = "accuracy") -> None:
        self.run_dir = Path(run_dir)
        self.select_metric, self.headline = select_metric, headline
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.rows = list(info.get("history", []))
        if self.rows:  # resumed: the files follow the committed history (a kill may have come between)
            self._write()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        from kitae.metrics.plots import plot_history
        from kitae.runs import write_csv

        write_csv(self.run_dir / "history.csv", self.rows)
        metrics = [m for m in (f"dev_{self.select_metric}", f"dev_{self.headline}") if m != "dev_loss"]
        plot_history(self.rows, self.run_dir / "history.png", metrics=list(dict.fromkeys(metrics)))


class ProgressFile(Callback):
    """progress.json in the run directory: where training is (epoch, batch, phase), a point per
    interval of loss, learning rate, throughput and memory, and the finished epochs' rows — so a
    web page or a script can watch a run from outside the process. Rewritten atomically, at most
    every `min_interval` seconds while training and at every epoch end and phase change."""

    FILE = "progress.json"
    MAX_POINTS = 1000  # past this the curve is thinned to every other point: the file stays small

    def __init__(self, run_dir: Path, min_interval: float = 1.0) -> None:
        self.path = Path(run_dir) / self.FILE
        self.min_interval = min_interval
        self.state: dict[str, Any] = {"phase": "starting", "started": time.time()}
        self.points: list[dict[str, Any]] = []
        self.epoch_rows: list[dict[str, Any]] = []
        self.last_write = 0.0
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_losses: list[float] = []
        self.window_examples = 0
        self.window_tokens = 0
        self.window_started = time.perf_counter()

    def on_train_begin(self, info: dict[str, Any]) -> None:
        step = info.get("global_step", 0)
        self.epoch_rows = list(info.get("history", []))
        if step and self.path.is_file():  # resumed: keep the curve up to the checkpoint
            try:
                from kitae.runs import read_json

                self.points = [p for p in read_json(self.path).get("steps", []) if p.get("step", 0) <= step]
            except (OSError, ValueError, AttributeError):
                self.points = []
        self.state.update(phase="training", epochs=info.get("epochs"), updates=info.get("updates"),
                          examples=info.get("examples"), batch_size=info.get("batch_size"), global_step=step)
        self._write()

    def on_epoch_begin(self, epoch: int, num_batches: int, batches_done: int) -> None:
        self.state.update(phase="training", epoch=epoch + 1, batch=batches_done, batches=num_batches)
        self._reset_window()

    def on_step_end(self, step: dict[str, Any]) -> None:
        self.window_losses.append(step["loss"])
        self.window_examples += step["examples"]
        self.window_tokens += step["tokens"]
        self.state.update(batch=step["batch"], global_step=step["global_step"])
        last_batch = step["batch"] == self.state.get("batches")
        if not last_batch and time.monotonic() - self.last_write < self.min_interval:
            return
        elapsed = max(time.perf_counter() - self.window_started, 1e-9)
        batches = self.state.get("batches") or 1
        self.points.append({"step": step["global_step"], "epoch": round(step["epoch"] + step["batch"] / batches, 4),
                            "loss": round(sum(self.window_losses) / len(self.window_losses), 5), "lr": step["lr"],
                            "examples_per_s": round(self.window_examples / elapsed, 2),
                            "tokens_per_s": round(self.window_tokens / elapsed, 1), **memory_snapshot()})
        if len(self.points) > self.MAX_POINTS:
            self.points = self.points[::2]
        self._reset_window()
        if last_batch:
            self.state["phase"] = "evaluating"  # dev evaluation follows the epoch's last batch
        self._write()

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.epoch_rows.append(row)
        self.state["phase"] = "training"
        self._write()

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.state["phase"] = "finishing"  # the selected model: test evaluation, saving, the card
        self._write()

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        self.state["phase"] = "finished"
        self._write()

    def on_run_stopped(self, status: str) -> None:
        self.state["phase"] = status
        self._write()

    def _write(self) -> None:
        from kitae.runs import write_json

        self.last_write = time.monotonic()
        now = time.time()
        document = {**self.state, "updated": now, "elapsed_seconds": round(now - self.state["started"], 1),
                    "steps": self.points, "epochs_done": self.epoch_rows}
        try:
            write_json(self.path, document)
        except OSError as exc:  # watching must never break training
            logger.debug("progress.json not written: %s", exc)
