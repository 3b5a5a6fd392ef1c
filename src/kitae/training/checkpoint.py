"""Resumable training state, committed atomically.

```
RUN_DIR/checkpoints/
  state.json        the pointer: {"last": "last-7"} — replacing this one file is the commit
  last-7/           trainable.safetensors (trainable weights only: LoRA + head, or all for full),
                    training_state.pt (optimizer, scheduler, grad scaler, torch RNG: tensors and
                    plain values, loaded with weights_only=True), loop.json (LoopState, Python
                    and NumPy RNG)
  best-5/           trainable.safetensors + the selected epoch's dev outputs (dev_logits.npy for
                    classifiers, dev_outputs.json for generators; named by last-7/loop.json's
                    `best_checkpoint`)
```
A commit writes new folders beside the old ones, then replaces `state.json`, then removes the
folders nothing points to. A kill at any moment therefore leaves the previous commit or the new
one — never a loop state whose best weights were not written, or weights from one step with the
counters of another.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kitae.errors import RunDirError
from kitae.runs import follow_umask, write_json

logger = logging.getLogger(__name__)

POINTER = "state.json"
BEST_DEV_LOGITS = "dev_logits.npy"
BEST_DEV_OUTPUTS = "dev_outputs.json"
WEIGHTS = "trainable.safetensors"


@dataclass
class LoopState:
    """Where the loop is, at an optimizer-step boundary: enough to continue exactly there."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches_done: int = 0  # batches of that epoch already consumed
    global_step: int = 0  # optimizer updates so far
    best_metric: float | None = None
    best_epoch: int | None = None
    best_checkpoint: str | None = None  # folder holding the best epoch's weights and dev logits
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    stop_reason: str | None = None  # "early_stopping", or what a callback asked (e.g. "pruned")
    epoch_loss_sum: float = 0.0  # train loss of the epoch in progress, so a resumed epoch's
    epoch_loss_batches: int = 0  # mean covers the batches before the interruption too
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise RuntimeError(f"checkpoint does not match the model (missing {missing}, unexpected {extra})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


# --- RNG: as tensors and JSON, never pickled objects --------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every random generator the loop uses, in a form `torch.load(weights_only=True)` and JSON take."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the store ------------------------------------------------------------------------------------

@dataclass
class Resumed:
    loop: LoopState
    folder: Path
    world_size: int = 1  # how many processes wrote the checkpoint
    optimizer_state: dict[str, Any] | None = None  # when loading it was left to the caller


class CheckpointStore:
    """The checkpoints of one run: commit, load the last commit, find the best weights."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # reading ----------------------------------------------------------------------------------
    def last_folder(self) -> Path | None:
        pointer = self.root / POINTER
        if not pointer.is_file():
            if (self.root / "last" / "loop.json").is_file():
                raise RunDirError(f"{self.root}: a checkpoint from an earlier kitae version cannot be resumed; "
                                  "start the run afresh with --overwrite")
            return None
        return self.root / json.loads(pointer.read_text(encoding="utf-8"))["last"]

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: torch.amp.GradScaler | None, rank: int = 0, world_size: int = 1,
             seed: int = 0, defer_optimizer: bool = False) -> Resumed | None:
        """Restore the last commit into the model, optimizer, scheduler, scaler and RNGs.

        A checkpoint holds every rank's RNG streams (`rng_by_rank`, multi-process runs): the same
        world size takes its own rank's back and replays exactly; another world size re-seeds
        every rank from (seed, epoch, step, rank) — the batches are the same global batches, but
        dropout draws differ from an uninterrupted run.

        `defer_optimizer`: the optimizer state is returned in `Resumed.optimizer_state` instead of
        loaded (FSDP loads it after wrapping, into the shards). A checkpoint written under
        DeepSpeed holds none (the engine partitions the moments): AdamW's moments restart."""
        folder = self.last_folder()
        if folder is None:
            return None
        load_trainable_state(model, load_file(str(folder / WEIGHTS)))
        extra = torch.load(folder / "training_state.pt", weights_only=True)
        optimizer_state = extra["optimizer"]
        if optimizer_state is None:
            logger.warning("%s holds no optimizer state (written under DeepSpeed, whose engine partitions it): "
                           "the weights, schedule and counters resume, AdamW's moments restart", folder)
        elif not defer_optimizer:
            optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(extra["scheduler"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        loop = LoopState(**json.loads((folder / "loop.json").read_text(encoding="utf-8")))
        saved_world = int(extra.get("world_size", 1))
        if saved_world == world_size:
            set_rng_state(extra["rng_by_rank"][rank] if "rng_by_rank" in extra else extra["rng"])
        else:
            reseed(seed, loop.epoch, loop.global_step, rank)
        return Resumed(loop, folder, saved_world, optimizer_state if defer_optimizer else None)

    def best_folder(self, loop: LoopState) -> Path | None:
        return None if loop.best_checkpoint is None else self.root / loop.best_checkpoint

    # writing ----------------------------------------------------------------------------------
    def commit(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler | None, loop: LoopState, rng: dict[str, Any],
               best_dev_outputs: Any = None, new_best: bool = False,
               weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None,
               rng_by_rank: list[dict[str, Any]] | None = None, without_optimizer: bool = False) -> None:
        """Write `loop` (and, with `new_best`, the current weights and the dev outputs as the best
        ones, which `loop.best_checkpoint` is set to name) and switch the pointer to it in one
        rename. A multi-process run passes the gathered full `weights` and `optimizer_state` and
        every rank's RNG (`rng_by_rank`); `without_optimizer` (DeepSpeed, whose engine partitions
        the optimizer state) commits none."""
        self.root.mkdir(parents=True, exist_ok=True)
        number = 1 + max((_number(p.name) for p in self.root.iterdir()), default=0)
        weights = trainable_state(model) if weights is None else weights
        best = None
        if new_best:
            loop.best_checkpoint = f"best-{number}"
            partial = self._fresh(loop.best_checkpoint)
            save_file(weights, str(partial / WEIGHTS))
            if isinstance(best_dev_outputs, np.ndarray):
                with open(partial / BEST_DEV_LOGITS, "wb") as handle:
                    np.save(handle, best_dev_outputs)
            elif best_dev_outputs is not None:
                (partial / BEST_DEV_OUTPUTS).write_text(json.dumps(best_dev_outputs, ensure_ascii=False),
                                                        encoding="utf-8")
            best = self._publish(partial)
        partial = self._fresh(f"last-{number}")
        if best is not None:
            _link_or_copy(best / WEIGHTS, partial / WEIGHTS)  # the same weights: no second write
        else:
            save_file(weights, str(partial / WEIGHTS))
        if without_optimizer:
            optimizer_state = None
        elif optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        training_state = {"optimizer": optimizer_state,
                          "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng}
        if rng_by_rank is not None:
            training_state.update(world_size=len(rng_by_rank), rng_by_rank=rng_by_rank)
        torch.save(training_state, partial / "training_state.pt")
        (partial / "loop.json").write_text(json.dumps(asdict(loop), ensure_ascii=False), encoding="utf-8")
        last = self._publish(partial)
        write_json(self.root / POINTER, {"last": last.name})  # the commit
        for path in self.root.iterdir():  # folders no commit points to any more
            if path.is_dir() and path.name not in (last.name, loop.best_checkpoint):
                shutil.rmtree(path, ignore_errors=True)

    def _fresh(self, name: str) -> Path:
        folder = self.root / f"{name}.partial"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def _publish(self, partial: Path) -> Path:
        """Flush a written folder and give it its final name (still unreferenced until the commit)."""
        follow_umask(partial)
        for path in partial.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        final = partial.with_name(partial.name.removesuffix(".partial"))
        os.replace(partial, final)
        return final


def _number(name: str) -> int:
    match = re.fullmatch(r"(?:last|best)-(\d+)(?:\.partial)?", name)
    return int(match.group(1)) if match else 0


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def load_best_outputs(folder: Path) -> Any:
    """The dev outputs committed with a best checkpoint (logits array or JSON), or None."""
    folder = Path(folder)
    if (folder / BEST_DEV_LOGITS).is_file():
        return np.load(folder / BEST_DEV_LOGITS)
    if (folder / BEST_DEV_OUTPUTS).is_file():
        return json.loads((folder / BEST_DEV_OUTPUTS).read_text(encoding="utf-8"))
    return None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A checkpoint folder's trainable weights (e.g. the best epoch's), by parameter name."""
    return load_file(str(Path(folder) / WEIGHTS))


def load_weights(folder: Path, model: nn.Module) -> None:
    """Load a checkpoint folder's trainable weights (e.g. the best epoch's) into `model`."""
    load_trainable_state(model, read_weights(folder))


def reseed(seed: int, epoch: int, step: int, rank: int) -> None:
    """Fresh, reproducible RNG streams for a rank resuming a checkpoint of another world size
    (its saved streams belong to ranks that no longer exist)."""
    random.seed(hash((seed, epoch, step, rank)) & 0xFFFFFFFF)
    np.random.seed([seed, epoch, step, rank])
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0]))
