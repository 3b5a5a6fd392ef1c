"""The training loop: epochs, dev evaluation, best-epoch selection, early stopping, checkpoints,
resume. Readable top to bottom in `fit`; everything task-specific comes from the `Task`.

Reproducibility: the batches of an epoch are a pure function of (seed, epoch); a checkpoint
(taken only at optimizer-step boundaries) holds the trainable weights, optimizer, scheduler, RNG
state and loop counters. A resumed run therefore replays exactly what an uninterrupted one does,
and ends with the same metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_scheduler

from kitae.config import TrainingConfig
from kitae.data.batching import EncodedSplit, TrainBatches, collate, eval_batches
from kitae.metrics import is_better
from kitae.models.classifier import SequenceClassifier
from kitae.models.precision import PrecisionPlan
from kitae.tasks.base import Task
from kitae.training.callbacks import Callback, memory_snapshot
from kitae.training.checkpoint import (
    BEST_DEV_LOGITS,
    LoopState,
    find_checkpoint,
    load_checkpoint,
    rng_state,
    save_array,
    save_best,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass
class Batching:
    """How token ids become tensors for this model."""

    pad_token_id: int
    padding_side: str

    def tensors(self, split: EncodedSplit, indices: np.ndarray, device: str) -> dict[str, torch.Tensor]:
        rows = split.rows(indices)
        types = split.encoded.token_type_ids
        batch = collate([split.encoded.input_ids[i] for i in rows], self.pad_token_id, self.padding_side,
                        None if types is None else [types[i] for i in rows])
        return {k: v.to(device) for k, v in batch.items()}


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once a resumable checkpoint has been written."""


def fit(classifier: SequenceClassifier, task: Task, train: EncodedSplit, dev: EncodedSplit | None,
        training: TrainingConfig, plan: PrecisionPlan, batching: Batching, checkpoint_dir: Path,
        callbacks: Sequence[Callback] = (), resume: bool = False,
        sampler: TrainBatches | None = None) -> LoopState:
    """Train `classifier`; return the loop state (history, best epoch). The best weights are in
    `checkpoint_dir / "best"` when this returns. `sampler` defaults to shuffled, length-grouped
    batches of the whole train split."""
    device = plan.device
    sampler = sampler or TrainBatches(train.lengths, training.batch_size, training.seed,
                                      training.group_by_length)
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = _make_optimizer(classifier, training, plan)
    batches_per_epoch = sampler.num_batches()
    updates_per_epoch = math.ceil(batches_per_epoch / training.grad_accum)
    total_updates = updates_per_epoch * training.epochs
    scheduler = get_scheduler(
        "constant_with_warmup" if training.scheduler == "constant" else training.scheduler,
        optimizer, num_warmup_steps=round(training.warmup_ratio * total_updates),
        num_training_steps=total_updates,
    )
    scaler = torch.amp.GradScaler("cuda") if plan.autocast_dtype == torch.float16 and device.startswith("cuda") else None

    loop = LoopState()
    last_dir, best_dir = checkpoint_dir / "last", checkpoint_dir / "best"
    found = find_checkpoint(last_dir) if resume else None
    if found is not None:
        loop = load_checkpoint(found, classifier, optimizer, scheduler)
        logger.info("resumed from %s: epoch %d, batch %d, update %d", found, loop.epoch + 1,
                    loop.batches_done, loop.global_step)
    elif resume:
        logger.info("no checkpoint found in %s: starting from the beginning", last_dir)

    info = {"examples": len(train), "epochs": training.epochs, "batch_size": training.batch_size,
            "grad_accum": training.grad_accum, "updates": total_updates,
            "trainable_parameters": sum(p.numel() for p in trainable), "precision": plan.describe(),
            "history": loop.history}
    for cb in callbacks:
        cb.on_train_begin(info)

    # State at the last optimizer-step boundary: what an interruption saves.
    boundary_rng = rng_state()
    boundary_batches = loop.batches_done
    boundary_loss = (loop.epoch_loss_sum, loop.epoch_loss_batches)
    last_save = time.monotonic()

    def save_last(batches_done: int, rng: dict[str, Any], loss: tuple[float, int]) -> None:
        loop.batches_done = batches_done
        loop.epoch_loss_sum, loop.epoch_loss_batches = loss
        save_checkpoint(last_dir, classifier, optimizer, scheduler, loop, rng)

    epoch_started = time.monotonic()
    with _sigterm_as_interrupt():
        try:
            while loop.epoch < training.epochs and not loop.stopped_early:
                epoch_started = time.monotonic()
                batches = sampler.epoch(loop.epoch)
                for cb in callbacks:
                    cb.on_epoch_begin(loop.epoch, len(batches), loop.batches_done)
                classifier.train()
                optimizer.zero_grad(set_to_none=True)
                for batch_index in range(loop.batches_done, len(batches)):
                    indices = batches[batch_index]
                    inputs = batching.tensors(train, indices, device)
                    targets = task.collate_targets([train.targets[i] for i in indices]).to(device)
                    with _autocast(plan):
                        # (examples, group_size x outputs): a no-op unless examples are groups.
                        logits = classifier(**inputs).view(len(indices), -1)
                    loss = task.loss(logits, targets)
                    scaled = loss / training.grad_accum
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    loop.epoch_loss_sum += loss.item()
                    loop.epoch_loss_batches += 1

                    is_boundary = (batch_index + 1) % training.grad_accum == 0 or batch_index + 1 == len(batches)
                    if is_boundary:
                        _optimizer_step(optimizer, scheduler, scaler, trainable, training.max_grad_norm)
                        loop.global_step += 1
                        boundary_rng = rng_state()
                        boundary_batches = batch_index + 1
                        boundary_loss = (loop.epoch_loss_sum, loop.epoch_loss_batches)
                    step = {"epoch": loop.epoch, "batch": batch_index + 1, "global_step": loop.global_step,
                            "loss": loss.item(), "lr": scheduler.get_last_lr()[0], "examples": len(indices),
                            "tokens": int(inputs["attention_mask"].sum())}
                    for cb in callbacks:
                        cb.on_step_end(step)
                    if is_boundary and batch_index + 1 < len(batches) and _checkpoint_due(
                            training, loop.global_step, last_save):
                        save_last(boundary_batches, boundary_rng, boundary_loss)
                        last_save = time.monotonic()
                loop.train_seconds += time.monotonic() - epoch_started
                epoch_started = time.monotonic()

                row = _end_of_epoch(classifier, task, dev, loop, training, plan, batching, best_dir)
                for cb in callbacks:
                    cb.on_epoch_end(row)
                loop.epoch += 1
                boundary_rng, boundary_batches, boundary_loss = rng_state(), 0, (0.0, 0)
                save_last(0, boundary_rng, boundary_loss)
                last_save = time.monotonic()
        except KeyboardInterrupt:
            loop.train_seconds += time.monotonic() - epoch_started
            save_last(boundary_batches, boundary_rng, boundary_loss)
            logger.warning("interrupted: checkpoint saved at epoch %d, batch %d", loop.epoch + 1, boundary_batches)
            raise TrainingInterrupted(
                f"training interrupted at epoch {loop.epoch + 1}, batch {boundary_batches}; "
                "run the same command with --resume to continue"
            ) from None
    summary = {"best_epoch": loop.best_epoch, "best_metric": loop.best_metric, "train_seconds": loop.train_seconds}
    for cb in callbacks:
        cb.on_train_end(summary)
    return loop


def _end_of_epoch(classifier: SequenceClassifier, task: Task, dev: EncodedSplit | None, loop: LoopState,
                  training: TrainingConfig, plan: PrecisionPlan, batching: Batching, best_dir: Path) -> dict[str, Any]:
    """Evaluate on dev, record the history row, keep the best weights, decide early stopping."""
    row: dict[str, Any] = {
        "epoch": loop.epoch + 1,
        "step": loop.global_step,
        "train_loss": loop.epoch_loss_sum / max(loop.epoch_loss_batches, 1),
    }
    if dev is not None:
        logits = predict_logits(classifier, dev, training.eval_batch_size or 2 * training.batch_size,
                                plan, batching)
        metrics = task.metrics(dev.targets, logits)
        row.update({f"dev_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        current = metrics[training.select_metric]
    else:
        current = None  # no dev data: the last epoch is the selected one
    row["seconds"] = round(loop.train_seconds, 2)
    row.update(memory_snapshot())
    loop.history.append(row)
    loop.epoch_loss_sum, loop.epoch_loss_batches = 0.0, 0
    if current is None or is_better(training.select_metric, current, loop.best_metric):
        loop.best_metric, loop.best_epoch = current, loop.epoch + 1
        loop.epochs_without_improvement = 0
        save_best(best_dir, classifier)
        if dev is not None:
            # The selected model's dev logits: the final report reuses them instead of running
            # the whole dev set through the model a second time.
            save_array(best_dir / BEST_DEV_LOGITS, logits)
    else:
        loop.epochs_without_improvement += 1
        patience = training.early_stopping_patience
        if patience is not None and loop.epochs_without_improvement >= patience:
            logger.info("early stopping: no dev %s improvement for %d epochs", training.select_metric, patience)
            loop.stopped_early = True
    return row


@torch.inference_mode()
def predict_logits(classifier: SequenceClassifier, split: EncodedSplit, batch_size: int,
                   plan: PrecisionPlan, batching: Batching, progress: bool = False) -> np.ndarray:
    """Logits for every example of `split`, in the split's order (float32 numpy array)."""
    was_training = classifier.training
    classifier.eval()
    out: np.ndarray | None = None
    batches = eval_batches(split.lengths, batch_size)
    iterator: Any = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"predict {split.name}", unit="batch", dynamic_ncols=True)
    for indices in iterator:
        with _autocast(plan):
            logits = classifier(**batching.tensors(split, indices, plan.device)).float().view(len(indices), -1)
            logits = logits.cpu().numpy()
        if out is None:
            out = np.zeros((len(split), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits
    classifier.train(was_training)
    assert out is not None
    return out


def _make_optimizer(model: torch.nn.Module, training: TrainingConfig, plan: PrecisionPlan) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # Biases and norm weights are not decayed (standard practice, as in transformers' Trainer).
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": training.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused CUDA kernel updates all parameters in one launch; CPU uses the default path.
    fused = plan.device.startswith("cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=training.lr, fused=fused or None)


def _optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    trainable: list[torch.nn.Parameter], max_grad_norm: float | None) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _checkpoint_due(training: TrainingConfig, global_step: int, last_save: float) -> bool:
    if training.checkpoint_every_steps and global_step % training.checkpoint_every_steps == 0:
        return True
    minutes = training.checkpoint_every_minutes
    return minutes is not None and time.monotonic() - last_save >= minutes * 60


def _autocast(plan: PrecisionPlan) -> contextlib.AbstractContextManager[Any]:
    if plan.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device.split(":")[0], dtype=plan.autocast_dtype)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` checkpoints like Ctrl-C does (only in the main thread, where signals work)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
