"""Callbacks: how the progress bar, the history file, memory logging and (later) trackers, sweeps
and a web UI watch a run without touching the loop."""

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


class ProgressBar(Callback):
    """A tqdm bar per epoch with running loss, learning rate and throughput."""

    def __init__(self, disable: bool | None = None) -> None:
        self.disable = disable
        self.bar = None

    def on_epoch_begin(self, epoch: int, num_batches: int, batches_done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=num_batches, initial=batches_done, desc=f"epoch {epoch + 1}",
                        unit="batch", dynamic_ncols=True, disable=self.disable, leave=True)
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
        self.bar.set_postfix(loss=f"{self.loss_sum / self.loss_count:.4f}", lr=f"{step['lr']:.2e}",
                             ex_s=f"{self.examples / elapsed:.1f}", tok_s=f"{self.tokens / elapsed:.0f}",
                             refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def memory_snapshot() -> dict[str, float]:
    """Resident memory of this process and, on CUDA, peak allocated memory (GiB)."""
    snapshot = {"rss_gib": round(psutil.Process(os.getpid()).memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        snapshot["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return snapshot


class EpochLogger(Callback):
    """One log line per epoch with the dev metrics and memory."""

    def on_train_begin(self, info: dict[str, Any]) -> None:
        logger.info("training: %s", ", ".join(f"{k}={v}" for k, v in info.items()))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        logger.info("epoch %s: %s", row.get("epoch"), shown)


class HistoryWriter(Callback):
    """history.csv and history.png, rewritten (atomically) after every epoch."""

    def __init__(self, run_dir: Path, select_metric: str) -> None:
        self.run_dir = Path(run_dir)
        self.select_metric = select_metric
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.rows = list(info.get("history", []))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        from kitae.metrics.plots import plot_history
        from kitae.runs import write_csv

        self.rows.append(row)
        write_csv(self.run_dir / "history.csv", self.rows)
        metrics = [m for m in (f"dev_{self.select_metric}", "dev_accuracy") if m != "dev_loss"]
        plot_history(self.rows, self.run_dir / "history.png", metrics=list(dict.fromkeys(metrics)))
