"""kitae's Python API — what the CLI calls and what notebooks import: `train`, and (from
kitae.predictor) `load` -> `Classifier`.

    import kitae
    result = kitae.train("examples/quickstart.yaml")
    clf = kitae.load(result.run_dir)
    clf.predict(["明日は全国的に雨の予報です"])

`train` reads as the flow of one run: config → data → model → adapter → loop → selected model →
evaluation → run directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kitae import __version__
from kitae.config import RunConfig, config_to_dict, dump_yaml, load_config
from kitae.data.batching import TrainBatches
from kitae.data.examples import Example
from kitae.data.prepare import prepare_data
from kitae.errors import ConfigError, KitaeError, RunDirError
from kitae.log import attach_run_log
from kitae.models.loading import Backbone, check_token_budget, load_backbone
from kitae.models.precision import PrecisionPlan, plan_precision, probe_caps
from kitae.models.sources import resolve_source
from kitae.predictor import Classifier, Prediction, load
from kitae.runs import (
    CHECKPOINT_DIR,
    COMPLETE,
    MODEL_DIR,
    RUN_FORMAT,
    Replacement,
    RunLock,
    check_writable_folder,
    is_kitae_run,
    read_json,
    run_info,
    run_status,
    update_run_info,
    write_json,
    write_text_atomic,
)
from kitae.tasks.base import Task
from kitae.training import distributed
from kitae.training.callbacks import (
    Callback,
    EpochLogger,
    HistoryWriter,
    MemoryMonitor,
    ProgressBar,
    ProgressFile,
)
from kitae.training.checkpoint import CheckpointStore, load_best_outputs, load_weights, read_weights
from kitae.training.loop import fit

__all__ = ["Classifier", "Prediction", "TrainResult", "evaluate_test", "load", "prepare_data", "train"]

logger = logging.getLogger("kitae")


@dataclass
class TrainResult:
    run_dir: Path
    task: str
    metrics: dict[str, dict[str, Any]]  # split -> metrics of the selected model
    best_epoch: int | None
    logits: dict[str, Any] = field(repr=False, default_factory=dict)  # split -> outputs (logits, generations)
    stop_reason: str | None = None  # "early_stopping", "pruned" (a sweep), or None


# ---------------------------------------------------------------------------------------------
# train


def train(config: RunConfig | str | Path, *, overrides: tuple[str, ...] | list[str] = (),
          overwrite: bool = False, resume: bool = False, callbacks: list[Callback] | None = None,
          progress: bool | None = None, evaluate_test: bool = True) -> TrainResult:
    """Train, select on dev, evaluate on test, and write the run directory.

    `overwrite` replaces a kitae run already in `config.output` — only a kitae run, never a folder
    holding the config or the data; the old run is kept aside until the new one has trained its
    first step, and put back if the new one fails before. `evaluate_test=False` leaves the test
    split unseen (a sweep's trials: selection never sees test; `evaluate_test_split` later)."""
    config_file = None if isinstance(config, RunConfig) else Path(config)
    if config_file is not None:
        config = load_config(config_file, overrides)
    assert isinstance(config, RunConfig)
    # Under `accelerate launch` every process runs this; one device each (cuda:<local_rank>).
    dist = distributed.setup(config.training.device)
    try:
        return _train_run(config, config_file, dist, overwrite, resume, callbacks, progress, evaluate_test)
    except BaseException:
        distributed.teardown(wait=False)  # another rank may be gone: no last barrier
        raise
    finally:
        distributed.teardown()


def _train_run(config: RunConfig, config_file: Path | None, dist: distributed.Distributed | None, overwrite: bool,
               resume: bool, callbacks: list[Callback] | None, progress: bool | None,
               evaluate_test: bool) -> TrainResult:
    main = dist is None or dist.is_main
    # Everything that can be checked is checked before the run directory is touched: the data,
    # what the hardware can do (e.g. QLoRA without CUDA), the model name, its tokenizer and config,
    # and the tokenised inputs (e.g. an SFT prompt longer than model.max_length). Every rank
    # checks, so a bad config fails alike (exit code 2) on each.
    task, examples = prepare_data(config)
    plan = plan_precision(probe_caps(dist.device if dist is not None else config.training.device), config.model.dtype,
                          config.model.attn_implementation, config.adapter.type, config.training.kernels)
    source = resolve_source(config.model.name, config.model.gguf_file, config.model.revision)
    backbone = load_backbone(source, config.model)
    check_token_budget(backbone.tokenizer, config.model.max_length, pair=bool(config.data.pair_fields()))
    splits = {name: task.encode(name, split, backbone) for name, split in examples.items()}
    from kitae.tracking import check_trackers, make_trackers

    check_trackers(config.tracking.report_to)

    if dist is None:
        run_dir, lock, replaced = _open_run_dir(config, _inputs(config, config_file), overwrite=overwrite,
                                                resume=resume)
    else:
        # Rank 0 alone opens (and locks) the run directory; its refusal is raised on every rank.
        opened = dist.run_on_main(lambda: _open_run_dir(config, _inputs(config, config_file),
                                                        overwrite=overwrite, resume=resume))
        run_dir, lock, replaced = opened if dist.is_main else (Path(config.output), None, None)
        if dist.is_main and not resume:
            # --resume compares config.yaml, which holds no world size: run.json records the one
            # the run started with (its global batch is batch_size x that).
            update_run_info(run_dir, world_size=dist.world_size)
    detach_log = attach_run_log(run_dir / "train.log") if main else (lambda: None)
    started = time.time()
    # A resumed run's wall time adds up over its sessions (a SIGKILLed session's time is not known).
    earlier_seconds = float((run_info(run_dir) or {}).get("wall_seconds") or 0.0) if resume else 0.0
    # Callbacks (progress, history, trackers, a sweep's pruner) watch rank 0; the loop shares
    # what they decide with the other ranks.
    watchers = list(callbacks or []) if main else []
    if replaced is not None:
        logger.info("the run it replaces is kept at %s until this one has trained its first step",
                    replaced.aside)
        watchers.insert(0, _DiscardReplacedRun(run_dir, replaced))
    if main:
        watchers += make_trackers(config, run_dir)
        watchers.append(ProgressFile(run_dir))  # progress.json: how `kitae ui` (or a script) watches the run
    try:
        result = _train(config, task, examples, splits, plan, backbone, run_dir, resume, watchers, progress,
                        evaluate_test)
    except BaseException as exc:
        from kitae.training.loop import TrainingInterrupted

        if not main:
            detach_log()
            raise
        interrupted = isinstance(exc, KeyboardInterrupt | TrainingInterrupted)
        update_run_info(run_dir, status="interrupted" if interrupted else "failed",
                        wall_seconds=round(earlier_seconds + time.time() - started, 1))
        for watcher in watchers:
            watcher.on_run_stopped("interrupted" if interrupted else "failed")
        if replaced is not None and not replaced.done:
            # Nothing was trained yet: the user gets the previous run back, untouched.
            detach_log()
            lock.release()
            replaced.restore()
            logger.warning("the new run failed before its first step; the previous run is back in %s", run_dir)
        raise
    finally:
        detach_log()
        if lock is not None:
            lock.release()
    if not main:
        return result
    status = result.stop_reason if result.stop_reason not in (None, "early_stopping") else "finished"
    update_run_info(run_dir, status=status, wall_seconds=round(earlier_seconds + time.time() - started, 1))
    metrics = read_json(run_dir / "metrics.json")
    for watcher in watchers:
        watcher.on_run_end(run_dir, metrics)
    return result


class _DiscardReplacedRun(Callback):
    """Deletes the run an --overwrite replaces, once the new run has trained its first step."""

    def __init__(self, run_dir: Path, replaced: Replacement) -> None:
        self.run_dir, self.replaced = run_dir, replaced

    def on_step_end(self, step: dict[str, Any]) -> None:
        if step["global_step"] >= 1 and not self.replaced.done:
            self.replaced.discard()
            update_run_info(self.run_dir, previous_run=None)


def _inputs(config: RunConfig, config_file: Path | None) -> dict[str, Path]:
    """The files a run reads: no output may be, or hold, one of them."""
    # The config file first: it is what a user most often keeps beside the output.
    inputs = {"the config file being run": config_file} if config_file is not None else {}
    inputs.update({f"data.{name}": getattr(config.data, name) for name in ("train", "dev", "test", "split_file")
                   if getattr(config.data, name) is not None})
    if Path(config.model.name).exists():
        inputs["model.name"] = Path(config.model.name)
    return inputs


def _train(config: RunConfig, task: Task, examples: dict[str, list[Example]], splits: dict[str, Any],
           plan: PrecisionPlan, backbone: Backbone, run_dir: Path, resume: bool, callbacks: list[Callback],
           progress: bool | None, evaluate_test: bool = True) -> TrainResult:
    training = config.training
    dist = distributed.current()
    main = dist is None or dist.is_main
    world_size = dist.world_size if dist is not None else 1
    torch.manual_seed(training.seed)  # head and adapter initialisation (the same on every rank)

    # 1. Data (read, checked and tokenised before the run directory was touched).
    logger.info("data: %s examples%s", ", ".join(f"{name} {len(split)}" for name, split in examples.items()),
                f"; {len(task.labels)} labels: {', '.join(task.labels)}" if task.labels else "")
    for name, split in splits.items():
        if split.truncated:
            logger.warning("%s: %d of %d inputs are longer than model.max_length=%d tokens and were truncated",
                           name, split.truncated, len(examples[name]), config.model.max_length)

    # 2. Model: the task builds it on the backbone (head or LM, adapter).
    from kitae.models.precision import fit_cpu_threads

    threads = fit_cpu_threads(plan)
    logger.info("compute: %s%s", plan.describe(), f", {threads} CPU threads" if plan.device == "cpu" else "")
    model = task.build_model(backbone, plan)
    if training.compile:
        # In place (nn.Module.compile): parameter names, checkpoints and saving stay the same.
        # Dynamic shapes: batches differ in length, and recompiling for each would cost more.
        model.backbone.compile(dynamic=True)
        logger.info("compile: torch.compile of the backbone (the first steps compile)")

    # 3. Train, selecting the best epoch on dev.
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    memory = MemoryMonitor(run_dir, training.log_every_steps,
                           listeners=[cb.log_step for cb in callbacks if hasattr(cb, "log_step")])
    watchers: list[Callback] = [ProgressBar(disable=None if progress is None else not progress),
                                EpochLogger(training.select_metric, task.report_metrics[0]),
                                HistoryWriter(run_dir, training.select_metric, task.report_metrics[0]), memory]
    if not main:
        watchers = []  # only rank 0 shows progress and writes history, steps and memory
    # training.batch_size is per device: the sampler draws global batches of batch_size x the
    # world size the run started with, each rank trains on its slice (training.distributed). A
    # run resumed on another world size keeps its global batches (and so its checkpoint's
    # counts): each device then takes global / world_size examples.
    started_world = int((run_info(run_dir) or {}).get("world_size") or 1) if resume else world_size
    global_batch = training.batch_size * started_world
    effective_batch_size = global_batch * training.grad_accum
    if dist is not None or started_world != world_size:
        per_device = f"{global_batch / world_size:g}"
        logger.info("effective batch size %d: batch_size %s per device x grad_accum %d x %d processes",
                    effective_batch_size, per_device, training.grad_accum, world_size)
        if started_world != world_size:
            logger.info("the run started on %d processes and resumes on %d: its global batches of %d are kept",
                        started_world, world_size, global_batch)
    sampler = TrainBatches(splits["train"].lengths, global_batch, training.seed,
                           training.group_by_length, resample=task.resampler(splits["train"].targets))
    if sampler.resample is not None and main:
        _report_balance(run_dir, task, splits["train"].targets, sampler)
    loop = fit(model, task, splits["train"], splits.get("dev"), training, plan, checkpoint_dir,
               [*watchers, *callbacks], resume=resume, sampler=sampler)

    # 4. The selected model: fit what is chosen on dev (e.g. thresholds), evaluate dev and test
    #    once, save everything.
    warnings = []
    best = CheckpointStore(checkpoint_dir).best_folder(loop)
    if best is not None:
        if dist is not None:
            dist.load_full_weights(model, read_weights(best))  # into the shards under FSDP
        else:
            load_weights(best, model)
    else:
        # Dev had the metric undefined (NaN) in every epoch: nothing to select on.
        warnings.append(f"dev {training.select_metric} was undefined (NaN) in every epoch, so no epoch could be "
                        f"selected on it: the model of the last epoch ({len(loop.history)}) is kept.")
        logger.warning(warnings[-1])
    diverged = next((row["epoch"] for row in loop.history if not np.isfinite(row["train_loss"])), None)
    if diverged is not None:
        warnings.append(f"the train loss became NaN or infinite in epoch {diverged}: training diverged. Lower "
                        f"training.lr (it is {training.lr:g}) and keep training.max_grad_norm set.")
        logger.warning(warnings[-1])
    eval_batch = training.eval_batch_size or 2 * training.batch_size
    outputs: dict[str, Any] = {}
    for name in ("dev", "test"):
        if name not in splits or (name == "test" and not evaluate_test):
            continue
        kept = load_best_outputs(best) if name == "dev" and best is not None else None
        outputs[name] = (kept if kept is not None and task.outputs_are_final(kept)
                         else distributed.evaluate(task, model, splits[name], plan, eval_batch, True, dist))
    task.fit_after_training(splits["dev"].targets if "dev" in splits else None, outputs.get("dev"))
    if "dev" in outputs and (collapse := task.collapse_warning(splits["dev"].targets, outputs["dev"])):
        warnings.append(f"dev: {collapse}: the model has not learned the task. A lower training.lr often helps "
                        f"(LoRA on encoders about 5e-4, full fine-tuning 1e-5 to 5e-5), or class weights "
                        f"(balance.class_weights) when one class dominates.")
        logger.warning(warnings[-1])
    metrics: dict[str, dict[str, Any]] = {}
    for name, split_outputs in outputs.items():
        metrics[name] = task.metrics(splits[name].targets, split_outputs)
        if main:
            task.write_outputs(run_dir, name, splits[name], split_outputs)
    memory_peaks = memory.summary()
    if dist is not None:
        # The largest peak over the ranks (collective): the rank nearest its memory limit.
        own = {key: memory_peaks[key] for key in ("peak_rss_gib", "cuda_peak_gib") if memory_peaks.get(key) is not None}
        memory_peaks.update(distributed.max_over_ranks(own, dist))
    summary = {"selected_epoch": loop.best_epoch if best is not None else len(loop.history), "select_metric": training.select_metric,
               "epochs_run": len(loop.history), "stopped_early": loop.stopped_early, "stop_reason": loop.stop_reason,
               "test": "evaluated" if "test" in outputs else
               ("not evaluated (selection must not see it)" if "test" in splits else "no test split"),
               "train_seconds": round(loop.train_seconds, 2),
               "train_examples": len(examples["train"]), "truncated": {n: s.truncated for n, s in splits.items()},
               "effective_batch_size": effective_batch_size, "world_size": world_size,
               "precision": plan.describe(), **memory_peaks, "warnings": warnings}
    # Sharded parameters (FSDP): the full trainable weights are gathered (every rank takes part)
    # for rank 0 to save; elsewhere rank 0 reads its own model.
    weights = dist.full_trainable_state(model) if dist is not None and dist.sharded_parameters else None
    if not main:
        # Rank 0 writes the run directory; the others wait for it (teardown's barrier).
        return TrainResult(run_dir, config.task, metrics, summary["selected_epoch"], outputs, loop.stop_reason)
    write_json(run_dir / "metrics.json", {**metrics, "summary": summary})
    # The capability too, so that what reads the run without torch (the UI) need not import the task.
    write_json(run_dir / "labels.json", {"task": config.task, "labels": task.labels,
                                         "capability": str(task.contract.capability)})
    source = backbone.source
    meta = {"task": config.task, "labels": task.labels,
            "base_model": {"path": source.path, "gguf_file": source.gguf_file, "revision": source.revision},
            "model": config.model.model_dump(mode="json"), "adapter": config.adapter.model_dump(mode="json"),
            "data": _input_keys(config),
            "task_state": task.state(), "kitae_version": __version__}
    task.save_model(model, backbone, run_dir / MODEL_DIR, meta, weights=weights)
    write_card(run_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    _log_metrics(task, metrics)
    return TrainResult(run_dir, config.task, metrics, summary["selected_epoch"], outputs, loop.stop_reason)


def _input_keys(config: RunConfig) -> dict[str, Any]:
    """How rows become inputs, saved with the model for predict, export and the card: every key,
    None where the task has none (the same keys for every task, as earlier versions wrote)."""
    data = config.data.model_dump(mode="json")
    return {key: data.get(key) for key in ("template", "text_field", "text_fields", "prompt_field",
                                           "label_field", "id_field")}


def evaluate_test(run_dir: str | Path, device: str = "auto", trust_remote_code: bool = False) -> dict[str, Any]:
    """Evaluate the test split of a complete run trained with `evaluate_test=False` (a sweep's
    selected configuration, once selection on dev is over): metrics.json gets `test`, the run
    gets predictions_test.jsonl, its reports and a card with the test metrics. Returns them."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    if "test" in metrics:
        return metrics["test"]
    loaded = load(run_dir, device=device, trust_remote_code=trust_remote_code)
    config, task = loaded.config, loaded.task
    _, examples = prepare_data(config)
    if "test" not in examples:
        raise KitaeError(f"{run_dir}: the run's config has no test split")
    backbone = Backbone(None, config.model, loaded.tokenizer, loaded.model.hf_model.config)  # type: ignore[arg-type]
    split = task.encode("test", examples["test"], backbone)
    eval_batch = config.training.eval_batch_size or 2 * config.training.batch_size
    outputs = task.evaluate(loaded.model, split, loaded.plan, eval_batch, final=True)
    metrics["test"] = task.metrics(split.targets, outputs)
    task.write_outputs(run_dir, "test", split, outputs)
    metrics["summary"]["test"] = "evaluated after selection on dev"
    write_json(run_dir / "metrics.json", metrics)
    write_card(run_dir)
    return metrics["test"]


def write_card(run_dir: Path) -> None:
    """README.md model card in the run directory and in model/ (which export and push ship)."""
    from kitae.card import build_card

    card = build_card(run_dir)
    write_text_atomic(run_dir / "README.md", card)
    write_text_atomic(run_dir / MODEL_DIR / "README.md", card)  # replaces PEFT's placeholder card
    for image in run_dir.glob("confusion_matrix_*.png"):
        shutil.copyfile(image, run_dir / MODEL_DIR / image.name)


def _report_balance(run_dir: Path, task: Task, targets: list[Any], sampler: TrainBatches) -> None:
    """Label rates of train before and after re-sampling (epoch 1's draw), logged and saved."""
    from kitae.data.balance import positive_rates

    y = np.stack(targets) if np.ndim(targets[0]) else np.asarray(targets)
    pool = np.concatenate(sampler.epoch(0))
    report = {"rows_before": int(len(y)), "rows_after_epoch_1": int(len(pool)),
              "rates_before": positive_rates(y, task.labels), "rates_after_epoch_1": positive_rates(y[pool], task.labels)}
    write_json(run_dir / "balance.json", report)
    logger.info("re-sampling train each epoch: %d rows -> %d; rates %s -> %s", report["rows_before"],
                report["rows_after_epoch_1"], report["rates_before"], report["rates_after_epoch_1"])


def _open_run_dir(config: RunConfig, inputs: dict[str, Path], *, overwrite: bool,
                  resume: bool) -> tuple[Path, RunLock, Replacement | None]:
    """Lock the run directory (creating it, or moving the run it replaces aside); return it, its
    lock, and the replaced run (None when nothing is replaced)."""
    run_dir = Path(config.output)
    config_text = dump_yaml(config_to_dict(config))
    if resume:
        if not is_kitae_run(run_dir):
            raise RunDirError(f"{run_dir}: nothing to resume (no kitae run here)")
        lock = RunLock(run_dir).acquire()
        status, saved = run_status(run_dir), run_dir / "config.yaml"
        problem: KitaeError | None = None
        if status in COMPLETE:
            problem = RunDirError(f"{run_dir}: the run already {status}; nothing to resume")
        elif not saved.is_file():
            problem = RunDirError(f"{run_dir}: nothing to resume (the run has no config.yaml)")
        elif saved.read_text(encoding="utf-8") != config_text:
            problem = ConfigError(f"{run_dir}: --resume needs the same config as the interrupted run "
                                  f"(compare with {saved}); to start afresh use --overwrite")
        if problem is not None:
            lock.release()
            raise problem
        return run_dir, lock, Replacement.recorded(run_dir)

    own = is_kitae_run(run_dir)
    check_writable_folder(run_dir, inputs, is_own=own, what="output")
    replaced = None
    if own:
        old_lock = RunLock(run_dir).acquire()  # refuses while another process trains there
        status = run_status(run_dir)
        if not overwrite or run_dir.resolve() == Path.cwd().resolve():
            old_lock.release()
            what = "a finished run" if status == "finished" else f"a {status} run"
            hint = " (continue it with --resume)" if status in ("running", "interrupted", "failed") else ""
            if run_dir.resolve() == Path.cwd().resolve():
                raise RunDirError(f"{run_dir}: is the current directory and holds {what}; choose another output")
            raise RunDirError(f"{run_dir}: already holds {what}{hint}; pass --overwrite to replace it")
        replaced = Replacement.move_aside(run_dir, old_lock)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    except BaseException as exc:
        if replaced is not None:
            replaced.restore()
        if isinstance(exc, OSError):
            raise RunDirError(f"output: cannot create {run_dir}: {exc.strerror}") from None
        raise
    update_run_info(run_dir, format=RUN_FORMAT, status="running", kitae_version=__version__,
                    torch_version=torch.__version__, task=config.task,
                    started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    previous_run=str(replaced.aside) if replaced is not None else None)
    write_text_atomic(run_dir / "config.yaml", config_text)
    return run_dir, lock, replaced


def _log_metrics(task: Task, metrics: dict[str, dict[str, Any]]) -> None:
    for name, values in metrics.items():
        shown = [k for k in task.report_metrics[:4] if isinstance(values.get(k), float | int)]
        logger.info("%s: %s", name, ", ".join(f"{k} {values[k]:.4f}" for k in shown))
