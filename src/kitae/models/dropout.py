"""LoRA dropout drawn sparsely: the same Bernoulli mask, a twentieth of the random numbers.

PEFT applies dropout to the input of every LoRA layer. On a CPU, drawing one random number per
element is what that costs: in a training step of Gemma 3 270M + LoRA (126 layers, p = 0.05),
`bernoulli_` took 14% of the time (bench/RESULTS.md, profile). `SparseDropout` draws only the
positions of the dropped elements instead: a Poisson(n·λ) count of uniform positions, with
λ = -ln(1 - p). By Poisson thinning, the number of times each element is hit is an independent
Poisson(λ), so each element is dropped independently with probability 1 - e^-λ = p — exactly the
distribution of `nn.Dropout(p)`, from about p·n random numbers. It follows the torch RNG, so a
seeded run (and a resumed one) replays the same masks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Above this rate the positions cost about as much as the mask: keep torch's dropout.
SPARSE_MAX_P = 0.2


class SparseDropout(nn.Dropout):
    """`nn.Dropout(p)` with the mask drawn as positions (see the module docstring). On CUDA, where
    random numbers are cheap, and for p > 0.2 it is torch's own dropout.

    >>> torch.manual_seed(0) and None
    >>> y = SparseDropout(0.1).train()(torch.ones(1000, 1000))
    >>> round(float((y == 0).float().mean()), 3), round(float(y.max()), 4)
    (0.1, 1.1111)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p > SPARSE_MAX_P or x.device.type == "cuda":
            return super().forward(x)
        n = x.numel()
        rate = torch.tensor(n * -math.log1p(-self.p), dtype=torch.float64)
        dropped = torch.randint(0, n, (int(torch.poisson(rate).item()),), device=x.device)
        return (x * (1.0 / (1.0 - self.p))).reshape(-1).index_fill(0, dropped, 0.0).view_as(x)


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
