"""A leaner LoRA branch for training: the same function as PEFT's, less memory traffic.

PEFT computes each LoRA layer as `base(x) + B(A(dropout(x))) * scaling`. Two things in it cost a
lot on a CPU (bench/RESULTS.md, profile of a Gemma 3 270M + LoRA step):

- the dropout mask: one random number per input element, in all 126 LoRA layers (`bernoulli_`
  took 14% of the step). `SparseDropout` draws only the positions of the dropped elements: a
  Poisson(n·λ) count of uniform positions, λ = -ln(1 - p). By Poisson thinning the number of hits
  on each element is an independent Poisson(λ), so each element is dropped independently with
  probability 1 - e^-λ = p: exactly `nn.Dropout(p)`'s distribution, from about p·n random numbers.
- full-width elementwise passes: the dropout's rescale by 1/(1-p) over the input and the
  `* scaling` and `+` over the output. `lean_lora_forward` applies both factors to the r-wide
  intermediate instead (A is linear: A(c·x) = c·A(x)) and adds B's product inside the matmul
  (`addmm`), so the only full-width pass left is the masked copy of the input. (Keeping only the
  dropped positions and re-masking in the backward pass saved 16 % of the activations but cost
  13 % of the speed on a CPU: not done.)

Both follow the torch RNG, so a seeded (and a resumed) run replays the same masks. Inference
never sees them: eval mode is plain PEFT, and `kitae.load` merges the LoRA into the weights.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Above this rate the positions cost about as much as the mask: keep torch's dropout.
SPARSE_MAX_P = 0.2


def dropped_positions(numel: int, p: float, device: torch.device) -> torch.Tensor:
    """Flat indices of the elements a Bernoulli(p) dropout zeroes (with repeats; see the module
    docstring for why the distribution is exact)."""
    rate = torch.tensor(numel * -math.log1p(-p), dtype=torch.float64)
    return torch.randint(0, numel, (int(torch.poisson(rate).item()),), device=device)


class SparseDropout(nn.Dropout):
    """`nn.Dropout(p)` with the mask drawn as positions (see the module docstring). On CUDA, where
    random numbers are cheap, and for p > 0.2 it is torch's own dropout.

    >>> torch.manual_seed(0) and None
    >>> y = SparseDropout(0.1).train()(torch.ones(1000, 1000))
    >>> round(float((y == 0).float().mean()), 3), round(float(y.max()), 4)
    (0.1, 1.1111)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sparse_applies(x):
            return super().forward(x)
        return self.mask(x) * (1.0 / (1.0 - self.p))

    def sparse_applies(self, x: torch.Tensor) -> bool:
        return self.training and 0.0 < self.p <= SPARSE_MAX_P and x.device.type != "cuda"

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """x with the dropped elements zeroed, not rescaled (a copy: x itself is untouched)."""
        return _masked(x, dropped_positions(x.numel(), self.p, x.device))


def use_sparse_dropout(model: nn.Module) -> int:
    """Replace the `nn.Dropout` of every PEFT LoRA layer (`lora_dropout`) by `SparseDropout` with
    the same rate; the number replaced. State dicts are unchanged (dropout has no weights)."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = SparseDropout(dropout.p)
                replaced += 1
    return replaced


def lean_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT's `lora.Linear.forward` for the common case — training one vanilla adapter on a plain
    `nn.Linear` — with the scalings at rank r and the sum in the matmul; anything else (merged,
    disabled, DoRA, several adapters, mixed-batch kwargs) goes to PEFT's own forward."""
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] in self.lora_variant or active[0] not in self.lora_A
            or type(self.base_layer) is not nn.Linear or self.lora_B[active[0]].bias is not None):
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    lora_a, lora_b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
    result = self.base_layer(x)
    scale = self.scaling[name]
    hidden = x
    if dropout.training and isinstance(dropout, nn.Dropout) and dropout.p > 0.0:
        if isinstance(dropout, SparseDropout) and dropout.sparse_applies(x):
            hidden = _masked(x, dropped_positions(x.numel(), dropout.p, x.device))
            scale = scale / (1.0 - dropout.p)
        else:
            hidden = dropout(x)
    low = F.linear(hidden.to(lora_a.weight.dtype), lora_a.weight) * scale  # (..., r)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]).to(result.dtype),
                      lora_b.weight.t().to(result.dtype))
    return out.view(result.shape)


def _masked(x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of x with the elements at the flat positions `dropped` zeroed."""
    masked = x.clone(memory_format=torch.contiguous_format)
    masked.view(-1).index_fill_(0, dropped, 0.0)
    return masked


def use_lean_lora(model: nn.Module) -> int:
    """Give every PEFT `lora.Linear` of `model` `lean_lora_forward` (per instance: other models
    in the process keep PEFT's); the number of layers changed."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(lean_lora_forward, module)
            changed += 1
    return changed
