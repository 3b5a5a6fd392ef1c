"""Experiment trackers as callbacks: MLflow, TensorBoard, Weights & Biases (`tracking.report_to`).

Each logs the run's settings (the resolved config, as dotted keys), every logging step's loss,
learning rate, throughput and memory (the rows of steps.csv), every epoch's dev metrics, the final
metrics of the selected model, and — MLflow — the run's plots, metrics and model card as
artifacts. A resumed run continues the same tracked run: its id is kept in run.json.

MLflow defaults to a local SQLite store, `sqlite:///<current directory>/mlflow.db`, which
`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows (MLflow 3 no longer accepts a bare
./mlruns folder); `tracking.mlflow_uri` names a server instead. TensorBoard writes event files to
RUN_DIR/tensorboard/.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

from kitae.catalog import flatten
from kitae.config import RunConfig, config_to_dict
from kitae.credentials import strip_credentials
from kitae.errors import ConfigError
from kitae.runs import run_info, update_run_info
from kitae.training.callbacks import Callback

logger = logging.getLogger("kitae")

EXTRAS = {"mlflow": ("mlflow", "kitae[tracking]"), "tensorboard": ("tensorboard", "kitae[tracking]"),
          "wandb": ("wandb", "wandb")}


def check_trackers(report_to: list[str]) -> None:
    """Refuse, before anything is written, a tracker whose package is not installed."""
    for name in report_to:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking.report_to: {name} needs the {module} package: pip install '{extra}'")


def make_trackers(config: RunConfig, run_dir: Path) -> list[Callback]:
    classes = {"mlflow": MLflowTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    return [classes[name](config, run_dir) for name in config.tracking.report_to]


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}


class Tracker(Callback):
    """What the three trackers share: which values go where; subclasses write them."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.started = False

    # the tracker's own writing --------------------------------------------------------------
    def start(self, resumed_step: int) -> None: ...
    def log(self, values: dict[str, float], step: int) -> None: ...
    def finish(self, status: str) -> None: ...

    def params(self) -> dict[str, str]:
        # The tracker is often a shared server: no credentials of a URI in what it is sent.
        return {k: str(v) for k, v in flatten(strip_credentials(config_to_dict(self.config))).items()}

    def remember(self, key: str, value: str) -> None:
        """Keep an id in run.json (a resumed run continues the same tracked run)."""
        tracking = dict((run_info(self.run_dir) or {}).get("tracking", {}))
        tracking[key] = value
        update_run_info(self.run_dir, tracking=tracking)

    def recalled(self, key: str) -> str | None:
        return (run_info(self.run_dir) or {}).get("tracking", {}).get(key)

    # callback events ------------------------------------------------------------------------
    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.start(int(info.get("global_step", 0)))
        self.started = True

    def log_step(self, row: dict[str, Any]) -> None:
        """A logging step's row of steps.csv (from MemoryMonitor): loss, lr, throughput, memory."""
        step = int(row["step"])
        values = _scalars({k: v for k, v in row.items() if k not in ("step", "epoch")}, "train/")
        self.log(values, step)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        values = _scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, "epoch/")
        self.log(values, int(row["epoch"]))

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        final: dict[str, float] = {}
        for split in ("dev", "test"):
            final.update(_scalars(metrics.get(split, {}), f"final/{split}_"))
        self.log(final, int(metrics.get("summary", {}).get("epochs_run", 0)))
        self.artifacts(run_dir)
        status = (run_info(run_dir) or {}).get("status", "finished")
        self.finish(status)

    def on_run_stopped(self, status: str) -> None:
        if self.started:
            self.finish(status)

    def artifacts(self, run_dir: Path) -> None: ...


class MLflowTracker(Tracker):
    def start(self, resumed_step: int) -> None:
        import mlflow

        tracking = self.config.tracking
        mlflow.set_tracking_uri(tracking.mlflow_uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}")
        mlflow.set_experiment(tracking.experiment or "kitae")
        previous = self.recalled("mlflow_run_id")
        if previous:
            self.run = mlflow.start_run(run_id=previous)
            logger.info("MLflow: continuing run %s", previous)
            return
        self.run = mlflow.start_run(run_name=tracking.run_name or self.run_dir.name)
        self.remember("mlflow_run_id", self.run.info.run_id)
        mlflow.log_params(self.params())
        mlflow.set_tags({"kitae.task": self.config.task, "kitae.run_dir": self.run_dir.name})
        logger.info("MLflow: run %s in %s", self.run.info.run_id, mlflow.get_tracking_uri())

    def log(self, values: dict[str, float], step: int) -> None:
        import mlflow

        if values:
            mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def artifacts(self, run_dir: Path) -> None:
        import mlflow

        for pattern in ("*.png", "metrics.json", "history.csv", "steps.csv", "README.md", "config.yaml"):
            for path in sorted(run_dir.glob(pattern)):
                mlflow.log_artifact(str(path))

    def finish(self, status: str) -> None:
        import mlflow

        mlflow.end_run(status={"finished": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}.get(status,
                                                                                                      "FAILED"))


class TensorBoardTracker(Tracker):
    def start(self, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops what was logged after its checkpoint before logging again.
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                    purge_step=resumed_step + 1 if resumed_step else None)
        if not resumed_step:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.params().items()), 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, status: str) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """Weights & Biases (set WANDB_MODE=offline to log without an account; not exercised by
    kitae's tests, which run offline without wandb installed)."""

    def start(self, resumed_step: int) -> None:
        import wandb

        tracking = self.config.tracking
        previous = self.recalled("wandb_run_id")
        self.run = wandb.init(project=tracking.experiment or "kitae", name=tracking.run_name or self.run_dir.name,
                              id=previous, resume="allow" if previous else None, dir=str(self.run_dir),
                              config=self.params())
        if not previous:
            self.remember("wandb_run_id", self.run.id)

    def log(self, values: dict[str, float], step: int) -> None:
        if values:
            self.run.log(values)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "pruned") else 1)
