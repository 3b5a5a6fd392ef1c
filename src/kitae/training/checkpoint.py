"""Resumable training state: trainable weights, optimizer, scheduler, RNG, and loop counters.

Only trainable parameters are saved (LoRA + head: megabytes, not the base model). A checkpoint
is written to a temporary folder and swapped in with renames, so a kill at any moment leaves
either the previous checkpoint or the new one — never a broken one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass
class LoopState:
    """Where the loop is: enough to continue exactly where it stopped."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches_done: int = 0  # batches of that epoch already consumed
    global_step: int = 0  # optimizer updates so far
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
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


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    loop: LoopState, rng: dict[str, Any]) -> None:
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(trainable_state(model), str(partial / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               partial / "optimizer.pt")
    (partial / "loop.json").write_text(json.dumps(asdict(loop), ensure_ascii=False), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (a kill between the two renames leaves it as `.old`)."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "loop.json").is_file():
            return candidate
    return None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> LoopState:
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    extra = torch.load(folder / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    return LoopState(**json.loads((folder / "loop.json").read_text(encoding="utf-8")))


BEST_DEV_LOGITS = "dev_logits.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def save_best(folder: Path, model: nn.Module) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "trainable.safetensors.tmp"
    save_file(trainable_state(model), str(tmp))
    os.replace(tmp, folder / "trainable.safetensors")


def load_best(folder: Path, model: nn.Module) -> None:
    load_trainable_state(model, load_file(str(Path(folder) / "trainable.safetensors")))
