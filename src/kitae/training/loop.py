"""The training loop: epochs, dev evaluation, best-epoch selection, early stopping, checkpoints,
resume. Readable top to bottom in `fit`; everything task-specific comes from the `Task`.

Reproducibility: the batches of an epoch are a pure function of (seed, epoch); a checkpoint
(taken only at optimizer-step boundaries) holds the trainable weights, optimizer, scheduler, grad
scaler, RNG state and loop counters. Each optimizer step and each epoch end is one atomic change
(signals wait until it is whole; the checkpoint is committed by replacing one pointer file), so
a resumed run replays exactly what an uninterrupted one does and ends with the same metrics,
wherever it was interrupted — Ctrl-C, SIGTERM or a hard kill.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from kitae.config import TrainingConfig
from kitae.data.batching import TrainBatches
from kitae.errors import KitaeError, TrainingInterrupted
from kitae.inference.logits import autocast
from kitae.metrics import is_better
from kitae.models.precision import PrecisionPlan
from kitae.tasks.base import Task
from kitae.training.callbacks import Callback, memory_snapshot
from kitae.training.checkpoint import CheckpointStore, LoopState, rng_state
from kitae.training.distributed import Distributed, current, evaluate, max_over_ranks

logger = logging.getLogger(__name__)


class OutOfMemory(KitaeError):
    """A batch did not fit in memory: which one, and the largest that did."""

    def __init__(self, epoch: int, batch_index: int, batch: Any, largest: tuple[int, int],
                 training: TrainingConfig) -> None:
        fitted = (f"the largest batch that fitted had {largest[0]} examples, {largest[1]} tokens"
                  if largest[1] else "no batch fitted yet")
        super().__init__(
            f"out of memory in epoch {epoch + 1}, batch {batch_index + 1} ({batch.examples} examples, "
            f"{batch.tokens} tokens); {fitted}. Lower training.batch_size (now {training.batch_size}; keep the "
            f"effective batch with training.grad_accum) or model.max_length, or set "
            f"training.gradient_checkpointing: true")


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def fit(model: nn.Module, task: Task, train: Any, dev: Any | None, training: TrainingConfig, plan: PrecisionPlan,
        checkpoint_dir: Path, callbacks: Sequence[Callback] = (), resume: bool = False,
        sampler: TrainBatches | None = None) -> LoopState:
    """Train `model` on the task's encoded `train` split, evaluating `dev` after every epoch;
    return the loop state (history, best epoch; the best weights are in
    `CheckpointStore(checkpoint_dir).best_folder(state)`, None when no epoch had a defined dev
    metric). `sampler` defaults to shuffled, length-grouped batches of the whole train split.

    `state` always describes the last optimizer-step boundary, which the weights in memory match:
    it changes only inside `interrupts.deferred()` blocks, together with the weights (optimizer
    step) or the checkpoint (epoch end), so Ctrl-C or SIGTERM can never separate the two.

    On several processes (`kitae.training.distributed`) `sampler` yields global batches of
    batch_size x world_size, each rank trains on its slice, and `state` counts global batches:
    a checkpoint does not depend on the world size.
    """
    device = plan.device
    dist = current()
    world_size = dist.world_size if dist is not None else 1
    sampler = sampler or TrainBatches(train.lengths, training.batch_size * world_size, training.seed,
                                      training.group_by_length)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(model, training, plan)
    # Re-sampling may change the number of batches from epoch to epoch: the schedule spans the
    # updates every epoch really has, so the learning rate decays exactly to its end.
    total_updates = sum(math.ceil(sampler.num_batches(epoch) / training.grad_accum)
                        for epoch in range(training.epochs))
    scheduler = get_scheduler(
        "constant_with_warmup" if training.scheduler == "constant" else training.scheduler,
        optimizer, num_warmup_steps=round(training.warmup_ratio * total_updates),
        num_training_steps=total_updates,
    )
    scaler = make_grad_scaler(plan)
    store = CheckpointStore(checkpoint_dir)

    state = LoopState()
    # Under FSDP the optimizer's parameters are replaced by their shards when wrapped: its state
    # is loaded after that (into the shards), not before.
    defer_optimizer = dist is not None and dist.kind == "FSDP"
    resumed = (store.load(model, optimizer, scheduler, scaler, rank=dist.rank if dist else 0,
                          world_size=world_size, seed=training.seed, defer_optimizer=defer_optimizer)
               if resume else None)
    if resumed is not None:
        state = resumed.loop
        logger.info("resumed from %s: epoch %d, batch %d, update %d", resumed.folder, state.epoch + 1,
                    state.batches_done, state.global_step)
        if resumed.world_size != world_size:
            logger.info("the checkpoint was written by %d processes, this run has %d: the same global batches "
                        "follow, with random generators re-seeded (not a bit-exact replay)",
                        resumed.world_size, world_size)
    elif resume:
        logger.info("no checkpoint found in %s: starting from the beginning", checkpoint_dir)
    raw_model = model  # evaluation and checkpoints read the module itself, not a DDP / FSDP wrapper
    if dist is not None:
        def probe_loss() -> torch.Tensor:
            with autocast(plan):
                return task.batch_loss(raw_model, task.batch(train, sampler.epoch(0)[0][:1], device))

        model, optimizer = dist.prepare(model, optimizer, probe_loss, training, loss_scaling=scaler is not None)
        if resumed is not None and resumed.optimizer_state is not None:
            dist.load_full_optimizer_state(model, optimizer, resumed.optimizer_state)

    info = {"examples": len(train), "epochs": training.epochs, "batch_size": training.batch_size,
            "grad_accum": training.grad_accum,
            **({"processes": world_size} if dist is not None else {}),
            "effective_batch_size": sampler.batch_size * training.grad_accum, "updates": total_updates,
            "trainable_parameters": sum(p.numel() for p in trainable), "precision": plan.describe(),
            "history": state.history, "global_step": state.global_step}
    for cb in callbacks:
        cb.on_train_begin(info)

    boundary_rng = rng_state()  # the RNG at the boundary `state` describes
    largest = (0, 0)  # (examples, tokens) of the largest batch that fitted in memory
    last_save = time.monotonic()
    clock = time.monotonic()

    def commit(**best: Any) -> None:
        if dist is None:
            store.commit(model, optimizer, scheduler, scaler, state, boundary_rng, **best)
            return
        _commit_on_main(dist, store, raw_model, optimizer, scheduler, scaler, state, boundary_rng, **best)

    with Interrupts(agreed=dist is not None) as interrupts:
        try:
            while state.epoch < training.epochs and not state.stopped_early:
                batches = sampler.epoch(state.epoch)
                for cb in callbacks:
                    cb.on_epoch_begin(state.epoch, len(batches), state.batches_done)
                model.train()
                optimizer.zero_grad(set_to_none=True)
                pending_loss, pending_batches = 0.0, 0  # batches since the boundary
                for batch_index in range(state.batches_done, len(batches)):
                    is_boundary = (batch_index + 1) % training.grad_accum == 0 or batch_index + 1 == len(batches)
                    indices = batches[batch_index] if dist is None else dist.rank_slice(batches[batch_index])
                    # An uneven last global batch may leave this rank nothing: it still runs one
                    # example, at zero loss, to join the gradient all-reduce.
                    idle = len(indices) == 0
                    batch = task.batch(train, batches[batch_index][:1] if idle else indices, device)
                    try:
                        if dist is None:
                            with autocast(plan):
                                loss = task.batch_loss(model, batch)
                            scaled = loss / training.grad_accum
                            (scaler.scale(scaled) if scaler else scaled).backward()
                            loss_value = loss.item()
                        else:
                            with dist.no_sync(model, sync=is_boundary):
                                with autocast(plan):
                                    loss_sum, weight = task.batch_loss_sum(model, batch)
                                if idle:
                                    loss_sum, weight = loss_sum * 0.0, weight * 0.0
                                share, loss_value, _ = dist.global_mean_share(loss_sum, weight,
                                                                              0 if idle else batch.tokens)
                                dist.backward(scaler.scale(share) if scaler else share, training.grad_accum,
                                              sync=is_boundary)
                    except (torch.OutOfMemoryError, RuntimeError) as exc:
                        if not _is_out_of_memory(exc):
                            raise
                        raise OutOfMemory(state.epoch, batch_index, batch, largest, training) from None
                    if batch.tokens > largest[1] and not idle:
                        largest = (batch.examples, batch.tokens)
                    pending_loss += loss_value
                    pending_batches += 1

                    if is_boundary:
                        with interrupts.deferred():
                            if dist is None:
                                _optimizer_step(optimizer, scheduler, scaler, trainable, training.max_grad_norm)
                            else:
                                _optimizer_step(optimizer, scheduler, scaler, trainable, training.max_grad_norm,
                                                clip_grad_norm=lambda norm: dist.clip_grad_norm(model, norm))
                            state.global_step += 1
                            state.batches_done = batch_index + 1
                            state.epoch_loss_sum += pending_loss
                            state.epoch_loss_batches += pending_batches
                            pending_loss, pending_batches = 0.0, 0
                            boundary_rng = rng_state()
                    step = {"epoch": state.epoch, "batch": batch_index + 1, "global_step": state.global_step,
                            "boundary": is_boundary,
                            "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                            "examples": 0 if idle else batch.examples, "tokens": 0 if idle else batch.tokens}
                    for cb in callbacks:
                        cb.on_step_end(step)
                    due = is_boundary and batch_index + 1 < len(batches) and _checkpoint_due(
                        training, state.global_step, last_save)
                    if dist is not None and is_boundary:
                        # Every rank stops, or checkpoints, at the same step: a signal or a
                        # timer seen by one rank is agreed on here.
                        stop, due = dist.agree([interrupts.pending, due])
                        if stop:
                            raise KeyboardInterrupt
                    if due:
                        with interrupts.deferred():
                            state.train_seconds += time.monotonic() - clock
                            clock = time.monotonic()
                            commit()
                        last_save = time.monotonic()

                # The epoch's end: evaluate, then commit the next state (and the best weights)
                # in one step. An interruption before the commit replays the epoch end on resume.
                trained = time.monotonic() - clock  # training time only, evaluation excluded
                outputs, row, improved = _end_of_epoch(raw_model, task, dev, state, training, plan,
                                                       state.train_seconds + trained, dist)
                with interrupts.deferred():
                    state = _next_epoch_state(state, row, improved, training, trained)
                    boundary_rng = rng_state()
                    commit(new_best=improved, best_dev_outputs=outputs)
                clock = last_save = time.monotonic()
                for cb in callbacks:
                    cb.on_epoch_end(row)
                reason = next((r for cb in callbacks if (r := cb.stop_requested())), None)
                if dist is not None:
                    reason = dist.from_main(reason)  # callbacks (a sweep's pruner) run on rank 0
                    if dist.agree([interrupts.pending])[0]:
                        raise KeyboardInterrupt
                if reason is not None and state.epoch < training.epochs and not state.stopped_early:
                    # A callback ends training (a sweep's pruner): committed, so a resume stops too.
                    logger.info("stopping after epoch %d: %s", state.epoch, reason)
                    with interrupts.deferred():
                        state = replace(state, stopped_early=True, stop_reason=reason)
                        commit()
        except KeyboardInterrupt:
            with interrupts.deferred():
                state.train_seconds += time.monotonic() - clock
                commit()
                interrupts.pending = False  # a second Ctrl-C while saving changes nothing
            logger.warning("interrupted: checkpoint saved at epoch %d, batch %d", state.epoch + 1, state.batches_done)
            raise TrainingInterrupted(
                f"training interrupted at epoch {state.epoch + 1}, batch {state.batches_done}; "
                "run the same command with --resume to continue"
            ) from None
    summary = {"best_epoch": state.best_epoch, "best_metric": state.best_metric, "train_seconds": state.train_seconds}
    for cb in callbacks:
        cb.on_train_end(summary)
    return state


def _end_of_epoch(model: nn.Module, task: Task, dev: Any | None, state: LoopState, training: TrainingConfig,
                  plan: PrecisionPlan, seconds: float,
                  dist: Distributed | None = None) -> tuple[Any, dict[str, Any], bool]:
    """Evaluate on dev: (dev outputs, the history row, whether this epoch is the best so far).
    Changes nothing: the caller commits the result."""
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "train_loss": state.epoch_loss_sum / max(state.epoch_loss_batches, 1),
    }
    outputs = None
    if dev is None:
        improved = True  # no dev data: the last epoch is the selected one
    else:
        outputs = evaluate(task, model, dev, plan, training.eval_batch_size or 2 * training.batch_size,
                           final=False, dist=dist)
        metrics = task.metrics(dev.targets, outputs)
        row.update({f"dev_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        current = metrics[training.select_metric]
        if math.isnan(current):
            logger.warning("epoch %d: dev %s is undefined (NaN); this epoch cannot be selected",
                           state.epoch + 1, training.select_metric)
        improved = is_better(training.select_metric, current, state.best_metric)
    row["seconds"] = round(seconds, 2)
    row.update(max_over_ranks(memory_snapshot(), dist))
    return outputs, row, improved


def _next_epoch_state(state: LoopState, row: dict[str, Any], improved: bool, training: TrainingConfig,
                      seconds: float) -> LoopState:
    """The loop state after an epoch's end (a new object: the old one stays valid until the commit)."""
    new = replace(state, epoch=state.epoch + 1, batches_done=0, epoch_loss_sum=0.0, epoch_loss_batches=0,
                  history=[*state.history, row], train_seconds=state.train_seconds + seconds)
    if improved:
        new.best_metric = row.get(f"dev_{training.select_metric}")
        new.best_epoch = row["epoch"]
        new.epochs_without_improvement = 0
    else:
        new.epochs_without_improvement += 1
        patience = training.early_stopping_patience
        if patience is not None and new.epochs_without_improvement >= patience:
            logger.info("early stopping: no dev %s improvement for %d epochs", training.select_metric, patience)
            new.stopped_early = True
            new.stop_reason = "early_stopping"
    return new


def _make_optimizer(model: torch.nn.Module, training: TrainingConfig, plan: PrecisionPlan) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # Biases and norm weights are not decayed (standard practice, as in transformers' Trainer).
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": training.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CUDA and CPU: on a CPU 4.7x faster than
    # the per-parameter loop for Gemma 3 270M's 252 LoRA matrices); MPS keeps the default path.
    fused = plan.device.startswith(("cuda", "cpu"))
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=training.lr, fused=fused or None)


def _optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                    trainable: list[torch.nn.Parameter], max_grad_norm: float | None,
                    clip_grad_norm: Callable[[float], Any] | None = None) -> None:
    """`clip_grad_norm`: how a wrapped model clips (FSDP computes the norm over shards)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        if clip_grad_norm is not None:
            clip_grad_norm(max_grad_norm)
        else:
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


def make_grad_scaler(plan: PrecisionPlan) -> torch.amp.GradScaler | None:
    """fp16 autocast needs loss scaling (its gradients underflow); bf16 and float32 do not."""
    if plan.autocast_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(plan.device.split(":")[0])


class Interrupts:
    """Ctrl-C and SIGTERM (`kill PID`) as KeyboardInterrupt — except inside `deferred()` blocks,
    where the signal waits until the block ends. A block holds a change that must happen whole:
    an optimizer step with its counters, a checkpoint commit. (Signals only work in the main
    thread; elsewhere this does nothing.)

    `agreed=True` (several processes): a signal never interrupts by itself, it only sets
    `pending`; the loop agrees on it with the other ranks at the next optimizer-step boundary, so
    every rank stops at the same step."""

    def __init__(self, agreed: bool = False) -> None:
        self.depth = 0
        self.pending = False
        self.agreed = agreed
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self.previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.depth or self.agreed:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending and not self.agreed:
            self.pending = False
            raise KeyboardInterrupt


def _commit_on_main(dist: Distributed, store: CheckpointStore, model: nn.Module, optimizer: Any, scheduler: Any,
                    scaler: Any, state: LoopState, rng: dict[str, Any], **best: Any) -> None:
    """A checkpoint of a multi-process run: the full state gathered (collectively: every rank
    calls this), written by rank 0 alone with every rank's RNG; the others wait, then learn the
    name of the best folder rank 0 wrote."""
    weights = dist.full_trainable_state(model)
    optimizer_state = dist.full_optimizer_state(optimizer)
    rng_by_rank = dist.gather_objects(rng)
    if dist.is_main:
        store.commit(model, optimizer, scheduler, scaler, state, rng, weights=weights,
                     optimizer_state=optimizer_state, rng_by_rank=rng_by_rank,
                     without_optimizer=dist.kind == "DEEPSPEED", **best)
    state.best_checkpoint = dist.from_main(state.best_checkpoint)
