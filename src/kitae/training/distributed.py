"""Training on several processes (GPUs, nodes) through Hugging Face accelerate.

`accelerate launch` (torchrun underneath) starts one process per device; each runs the same
`kitae.train`. This module is the only place that knows: `setup()` returns a `Distributed` when
the launcher set WORLD_SIZE > 1 (else None, and accelerate is never imported), and the loop and
`api.train` ask it for the few things that differ:

- batches: the sampler builds *global* batches of batch_size x world_size (a pure function of
  seed and epoch, as on one process) and each rank trains on its contiguous slice
  (`rank_slice`), so 1 process x 8 and 2 x 4 see the same global batches, and the loop counts
  global batches and optimizer steps: a checkpoint does not depend on the world size;
- the loss: each rank's loss is its share of the global batch's mean (`global_mean_share`), so
  DDP's averaging over ranks gives exactly the global mean, the uneven last batch included; a
  rank with an empty slice still joins the gradient all-reduce with a zero loss;
- evaluation: classifiers' examples are split over the ranks and their logits gathered back by
  example index (`evaluate`), so no example is counted twice; every rank then holds the same
  outputs and takes the same decisions (best epoch, early stopping);
- writing: only rank 0 writes the run directory; the others wait at barriers;
- interruption: Ctrl-C / SIGTERM are agreed on at optimizer-step boundaries (`agree`), so
  every rank stops at the same step and rank 0 checkpoints.

Engines, chosen in accelerate's own config and all going through the same `prepare`:

- DDP: runs on CPU (gloo) in the test suite.
- FSDP (version 2, `fully_shard`): parameters sharded over the ranks. Evaluation runs the
  whole split on every rank in lockstep (a sharded forward is collective); checkpoints and the
  saved model hold the gathered full trainable weights and the full optimizer state, in the
  single-process format, so any world size and any engine resumes them; the best weights are
  loaded back into the shards. The test suite runs it on CPU (gloo) with the engine forced on
  (accelerate enables FSDP on accelerators only). FSDP version 1 is refused (its flat
  parameters would need a second code path; accelerate's `fsdp_version: 2` is the current one).
- DeepSpeed ZeRO 1 / 2: the engine steps the optimizer at accumulation boundaries and scales
  the loss by its own gradient_accumulation_steps, which kitae sets to training.grad_accum (as
  the micro-batch size to training.batch_size and the clipping to training.max_grad_norm, where
  the DeepSpeed config says "auto"). Its optimizer moments are partitioned inside the engine:
  checkpoints hold the full weights but not the moments, so a resume restarts AdamW's moments
  (logged). ZeRO-3 is refused (its partitioned parameters cannot be evaluated or saved by this
  code). DeepSpeed has not been run here: it needs GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Rank 0, or no launcher (what progress bars outside the loop ask)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass
class Distributed:
    """One process of a multi-process run: its rank, the world, and accelerate's Accelerator."""

    accelerator: Any
    rank: int
    world_size: int
    local_rank: int
    device: str
    wrapped: Any = field(default=None, repr=False)  # the model as accelerate prepared it (DDP, FSDP, ...)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def kind(self) -> str:
        """accelerate's distributed type: "MULTI_GPU" / "MULTI_CPU" (DDP), "FSDP", "DEEPSPEED"."""
        return str(self.accelerator.distributed_type).rsplit(".", 1)[-1]

    @property
    def sharded_parameters(self) -> bool:
        """Whether no rank holds the whole model (FSDP, DeepSpeed ZeRO-3): forwards are collective."""
        if self.kind == "FSDP":
            return True
        if self.kind == "DEEPSPEED":
            return self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return False

    # --- collectives ------------------------------------------------------------------------
    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a float tensor (on this process's device)."""
        values = values.detach().to(self.device, torch.float64 if self.device.startswith("cpu") else torch.float32)
        torch.distributed.all_reduce(values)
        return values

    def agree(self, flags: list[bool]) -> list[bool]:
        """Each flag true on any rank, on every rank (one all-reduce for all of them)."""
        totals = self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0 for flag in flags]))
        return [bool(v > 0) for v in totals.tolist()]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, action: Any) -> Any:
        """Run `action()` on rank 0 only, every rank waiting; its error is raised on every rank
        (same kind and message, so each exits alike). Returns its result on rank 0, None elsewhere."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except Exception as exc:  # re-raised below, on every rank
                error = exc
        problem = self.from_main(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        if problem is not None:
            kind, message = problem
            raise (kind(message) if _rebuildable(kind) else RuntimeError(message)) from None
        return result

    # --- batches and the loss ----------------------------------------------------------------
    def rank_slice(self, global_batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch (sizes differ by at most one; the
        uneven last batch may leave a rank an empty slice). Contiguous keeps length grouping."""
        return np.array_split(np.asarray(global_batch), self.world_size)[self.rank]

    def global_mean_share(self, loss_sum: torch.Tensor, weight: torch.Tensor,
                          tokens: int) -> tuple[torch.Tensor, float, int]:
        """(this rank's loss to back-propagate, the global batch's mean loss, its tokens).

        `loss_sum / weight` is the rank's own batch mean (weight: examples, class weights or
        labelled tokens). DDP averages gradients over ranks, so scaling by world_size / global
        weight makes the averaged gradient that of the global batch's mean loss."""
        totals = self.all_reduce_sum(torch.stack([loss_sum.detach().float().reshape(()).cpu(),
                                                  weight.detach().float().reshape(()).cpu(),
                                                  torch.tensor(float(tokens))]))
        global_sum, global_weight, global_tokens = (float(v) for v in totals)
        share = loss_sum * (self.world_size / max(global_weight, 1e-12))
        return share, global_sum / max(global_weight, 1e-12), int(global_tokens)

    # --- the model ------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                probe_loss: Callable[[], torch.Tensor] | None = None,
                training: Any = None, loss_scaling: bool = False) -> tuple[nn.Module, Any]:
        """The model and optimizer wrapped as accelerate's config says (DDP, FSDP, ZeRO).

        `probe_loss` (one small batch's loss) finds trainable parameters no loss reaches (e.g. a
        fresh BERT pooler under mean pooling): DDP then has to look for unused parameters every
        step, which it does only when there are some (the search costs a graph walk per step).
        `training` (the TrainingConfig) fills DeepSpeed's "auto" values; `loss_scaling`: kitae's
        fp16 grad scaler is on, which DeepSpeed's engine cannot take."""
        if self.kind == "DEEPSPEED" and training is not None:
            configure_deepspeed(self.accelerator, training, loss_scaling)
        if probe_loss is not None and self.kind in ("MULTI_GPU", "MULTI_CPU"):
            unused = unused_parameters(model, probe_loss)
            if unused:
                from accelerate.utils import DistributedDataParallelKwargs

                logger.debug("trainable parameters without a gradient: %s", ", ".join(unused[:5]))
                self.accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        if self.kind == "DEEPSPEED" and training is not None and \
                self.accelerator.gradient_accumulation_steps != training.grad_accum:
            from kitae.errors import ConfigError

            raise ConfigError(f"the DeepSpeed config sets gradient_accumulation_steps "
                              f"{self.accelerator.gradient_accumulation_steps}, training.grad_accum is "
                              f"{training.grad_accum}: make them agree (or write \"auto\" in the DeepSpeed config)")
        return self.wrapped, optimizer

    def eval_model(self, model: nn.Module) -> nn.Module:
        """What evaluation calls: the plain module where every rank holds all weights (a DDP
        forward may broadcast buffers, a collective the unequal evaluation shards would not
        match); the wrapper where parameters are sharded."""
        if self.sharded_parameters and self.wrapped is not None:
            return self.wrapped
        return model

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on micro-batches before a grad_accum boundary."""
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(model)

    def backward(self, share: torch.Tensor, grad_accum: int, sync: bool) -> None:
        """Back-propagate this rank's share of a micro-batch's loss (`global_mean_share`).
        DeepSpeed's engine divides by its gradient_accumulation_steps (set to `grad_accum` in
        `prepare`) and steps the optimizer itself when told the micro-batch ends an update."""
        if self.kind == "DEEPSPEED":
            self.accelerator.gradient_state._set_sync_gradients(sync)
            self.accelerator.backward(share)
        else:
            self.accelerator.backward(share / grad_accum)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> None:
        self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def reshard(self, model: nn.Module) -> None:
        """Back to sharded parameters under FSDP: a forward without backward (evaluation) leaves
        the units that do not reshard after forward (the root) holding whole, unsharded
        parameters, which are not the ones the optimizer and the state-dict helpers know."""
        if self.kind != "FSDP":
            return
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def full_trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The full, unsharded trainable weights (on rank 0; None elsewhere). Collective under
        FSDP / ZeRO-3 (all ranks call it); under DDP rank 0 already holds them."""
        from kitae.training.checkpoint import trainable_state

        if not self.sharded_parameters:
            return trainable_state(model) if self.is_main else None
        from torch.distributed.tensor import DTensor

        self.reshard(model)
        # FSDP 2 keeps the parameter names; each trainable DTensor is gathered on its own (every
        # rank, in the same order), so no rank ever holds the frozen base weights whole.
        full = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                tensor = p.full_tensor() if isinstance(p, DTensor) else p
                if self.is_main:
                    # A copy: FSDP frees its all-gather buffers (and an unsharded root's
                    # parameters) by resizing their storage, which a view would share.
                    full[name] = tensor.detach().to("cpu", copy=True).contiguous()
        return full if self.is_main else None

    def load_full_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Full trainable weights (a checkpoint's, on every rank) into the model: into each
        rank's shards under FSDP, a plain copy elsewhere."""
        from kitae.training.checkpoint import load_trainable_state

        if not self.sharded_parameters:
            load_trainable_state(model, weights)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        self.reshard(model)
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            raise RuntimeError(f"checkpoint does not match the model (missing {sorted(expected - set(weights))[:3]}, "
                               f"unexpected {sorted(set(weights) - expected)[:3]})")
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer's full state in the single-process format (parameters numbered in
        param-group order), so any world size and engine can load it: rank 0; None elsewhere,
        and None under DeepSpeed, whose moments are partitioned inside the engine."""
        if self.kind == "DEEPSPEED":
            return None
        if self.kind == "FSDP":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            self.reshard(self.wrapped)
            by_name = get_optimizer_state_dict(self.wrapped, getattr(optimizer, "optimizer", optimizer),
                                               options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return optimizer_state_by_index(by_name) if self.is_main else None
        return optimizer.state_dict() if self.is_main else None

    def load_full_optimizer_state(self, model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        """A checkpoint's full optimizer state (single-process format) into the prepared
        optimizer: under FSDP into each rank's shards of the moments."""
        if self.kind != "FSDP":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        self.reshard(model)
        inner = getattr(optimizer, "optimizer", optimizer)
        name_of = {id(p): name for name, p in model.named_parameters()}
        names = [name_of[id(p)] for group in inner.param_groups for p in group["params"]]
        set_optimizer_state_dict(model, inner, optimizer_state_by_name(state, names),
                                 options=StateDictOptions(full_state_dict=True))

    def close(self, wait: bool = True) -> None:
        if torch.distributed.is_initialized():
            if wait:
                self.barrier()
            torch.distributed.destroy_process_group()


def check_engine(accelerator: Any) -> None:
    """Refuse, before any work, the engines whose parameters this code cannot evaluate or save."""
    from kitae.errors import ConfigError

    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP" and int(getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) or 1) != 2:
        raise ConfigError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                          "(fully_shard; accelerate's current FSDP)")
    if kind == "DEEPSPEED" and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise ConfigError("DeepSpeed ZeRO-3 is not supported (its partitioned parameters cannot be evaluated or "
                          "saved here): use FSDP (fsdp_version: 2) to shard parameters, or ZeRO stage 1 or 2")


def configure_deepspeed(accelerator: Any, training: Any, loss_scaling: bool) -> None:
    """Fill the DeepSpeed config's "auto" values from kitae's training section (kitae has no
    dataloader for accelerate to read them from) and refuse what the engine cannot take."""
    from kitae.errors import ConfigError

    if loss_scaling:
        raise ConfigError("DeepSpeed with fp16 weights: kitae's loss scaling cannot drive DeepSpeed's engine; "
                          "use model.dtype bfloat16 (or float32)")
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
    if plugin.get_value("train_micro_batch_size_per_gpu") in (None, "auto"):
        ds_config["train_micro_batch_size_per_gpu"] = training.batch_size
    if plugin.get_value("gradient_clipping") in (None, "auto"):
        ds_config["gradient_clipping"] = training.max_grad_norm or 0.0
    accelerator.gradient_accumulation_steps = training.grad_accum  # "auto" reads it


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) in
    `Optimizer.state_dict()`'s format: parameters numbered 0.. in param-group order.

    >>> by_name = {"state": {"b": {"step": 1}}, "param_groups": [{"lr": 0.1, "params": ["a", "b"]}]}
    >>> optimizer_state_by_index(by_name)
    {'state': {1: {'step': 1}}, 'param_groups': [{'lr': 0.1, 'params': [0, 1]}]}
    """
    names = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of `optimizer_state_by_index`: `names` are the parameters in param-group order.

    >>> optimizer_state_by_name({"state": {1: {"step": 1}}, "param_groups": [{"params": [0, 1]}]}, ["a", "b"])
    {'state': {'b': {'step': 1}}, 'param_groups': [{'params': ['a', 'b']}]}
    """
    return {"state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}


_current: Distributed | None = None


def current() -> Distributed | None:
    """The run's Distributed, or None on a single process."""
    return _current


def setup(requested_device: str = "auto") -> Distributed | None:
    """Join the process group the launcher prepared (None on a single process: accelerate is
    not even imported). One device per process: cuda:<local_rank> on GPUs."""
    global _current
    if launched_world_size() <= 1:
        return None
    if _current is not None:
        return _current
    from accelerate import Accelerator

    # kitae's precision plan owns autocast and loss scaling; accelerate only wraps and syncs.
    # On a machine without CUDA accelerate joins the process group (gloo) only when told cpu=True.
    on_cpu = requested_device == "cpu" or (requested_device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=on_cpu, mixed_precision="no")
    if accelerator.num_processes != launched_world_size():
        from kitae.errors import ConfigError

        raise ConfigError(f"the launcher started {launched_world_size()} processes but accelerate joined "
                          f"{accelerator.num_processes} (training.device is {requested_device!r})")
    check_engine(accelerator)
    device = accelerator.device
    name = "cpu" if device.type == "cpu" else str(device)
    if device.type == "cuda" and device.index is None:
        name = f"cuda:{accelerator.local_process_index}"
    _current = Distributed(accelerator, accelerator.process_index, accelerator.num_processes,
                           accelerator.local_process_index, name)
    if not _current.is_main:
        # One voice: the other ranks' info lines would repeat rank 0's (errors still show).
        logging.getLogger("kitae").setLevel(logging.ERROR)
    return _current


def teardown(wait: bool = True) -> None:
    """Leave the process group (after a barrier, so no rank exits while rank 0 still writes)."""
    global _current
    if _current is not None:
        _current.close(wait)
        _current = None


# --- evaluation -----------------------------------------------------------------------------

def evaluate(task: Any, model: nn.Module, split: Any, plan: Any, batch_size: int, final: bool,
             dist: Distributed | None) -> Any:
    """`task.evaluate` over the ranks: each rank scores a share of the examples (strided over
    the length order, so shares cost alike) and the logits are gathered back by example index,
    every example exactly once. Generations (sft, causal_lm) and sharded parameters run the
    whole split on every rank instead — the same outputs everywhere, at the cost of redundant
    work: generation lengths differ per rank and a sharded forward needs every rank in step."""
    from kitae.data.batching import EncodedSplit

    if dist is None:
        return task.evaluate(model, split, plan, batch_size, final=final)
    evaluated = dist.eval_model(model)
    if not isinstance(split, EncodedSplit) or dist.sharded_parameters:
        return task.evaluate(evaluated, split, plan, batch_size, final=final)
    mine = np.argsort(-split.lengths, kind="stable")[dist.rank::dist.world_size]
    part = task.evaluate(evaluated, subset_split(split, mine), plan, batch_size, final=final) if len(mine) else None
    out: np.ndarray | None = None
    for indices, logits in dist.gather_objects((mine, part)):
        if logits is None:
            continue
        if out is None:
            out = np.zeros((len(split), logits.shape[-1]), dtype=logits.dtype)
        out[indices] = logits
    assert out is not None
    return out


def unused_parameters(model: nn.Module, probe_loss: Callable[[], torch.Tensor]) -> list[str]:
    """Trainable parameters one backward pass leaves without a gradient. Leaves no trace: the
    gradients are cleared and the random generators restored (a dropout draw must not shift
    the run)."""
    from kitae.training.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    try:
        probe_loss().backward()
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        set_rng_state(saved)
    return unused


def subset_split(split: Any, indices: np.ndarray) -> Any:
    """The examples `indices` of an encoded split, as a split of their own."""
    rows = split.rows(np.asarray(indices))
    encoded = split.encoded

    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in rows]

    part = replace(encoded, input_ids=pick(encoded.input_ids), token_type_ids=pick(encoded.token_type_ids),
                   truncated_rows=pick(encoded.truncated_rows),
                   truncated=sum(pick(encoded.truncated_rows) or []))
    return replace(split, ids=[split.ids[i] for i in indices], encoded=part,
                   targets=None if split.targets is None else [split.targets[i] for i in indices])


# --- RNG and memory across world sizes --------------------------------------------------------

def max_over_ranks(snapshot: dict[str, float], dist: Distributed | None) -> dict[str, float]:
    """A memory snapshot's largest value per key over the ranks (the rank nearest its limit)."""
    if dist is None:
        return snapshot
    merged: dict[str, float] = {}
    for part in dist.gather_objects(snapshot):
        for key, value in part.items():
            merged[key] = max(merged.get(key, value), value)
    return merged


def _rebuildable(kind: type) -> bool:
    """kitae's own errors (and builtins) take one message argument and can be raised again."""
    return issubclass(kind, Exception) and (kind.__module__.startswith("kitae") or kind.__module__ == "builtins")


@contextlib.contextmanager
def main_first(dist: Distributed | None) -> Iterator[None]:
    """Rank 0 runs the block before the others (e.g. it creates what they read)."""
    if dist is not None and not dist.is_main:
        dist.barrier()
    yield
    if dist is not None and dist.is_main:
        dist.barrier()
