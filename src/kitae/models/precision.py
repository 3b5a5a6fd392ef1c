"""Device, dtype and attention kernel, chosen from what the hardware can do — never by guessing.

The choice is a pure function of `DeviceCaps`, so the GPU paths (bf16, fp16, flash attention,
4-bit QLoRA) are tested on CPU by handing it the capabilities of a GPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from kitae.errors import ConfigError


@dataclass(frozen=True)
class DeviceCaps:
    device: str  # "cpu", "cuda", "cuda:1", "mps"
    bf16: bool = False
    fp16: bool = False
    flash_attn_installed: bool = False
    bitsandbytes_installed: bool = False
    liger_installed: bool = False
    unsloth_installed: bool = False

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


@dataclass(frozen=True)
class PrecisionPlan:
    """How a run computes: weights dtype, autocast dtype (None = off), attention kernel."""

    device: str
    weights_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    attn_implementation: str
    load_in_4bit: bool = False
    kernels: str = "none"  # "liger": Triton kernels patched into the model (RMSNorm, RoPE, SwiGLU);
    # "unsloth": the model loaded and its LoRA applied by Unsloth (causal LMs)
    kernels_auto: bool = False  # chosen by kernels "auto": applied to the Llama family only

    def describe(self) -> str:
        amp = f", autocast {str(self.autocast_dtype).removeprefix('torch.')}" if self.autocast_dtype else ""
        quant = ", 4-bit base" if self.load_in_4bit else ""
        kernels = f", {self.kernels} kernels{' (auto)' if self.kernels_auto else ''}" if self.kernels != "none" else ""
        return (f"{self.device}, weights {str(self.weights_dtype).removeprefix('torch.')}{amp}, "
                f"attention {self.attn_implementation}{quant}{kernels}")


def probe_caps(requested_device: str = "auto") -> DeviceCaps:
    """The capabilities of the requested device on this machine."""
    if requested_device == "auto":
        if torch.cuda.is_available():
            requested_device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            requested_device = "mps"
        else:
            requested_device = "cpu"
    kind = requested_device.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"training.device: '{requested_device}' requested but no CUDA GPU is available")
        return DeviceCaps(
            requested_device,
            bf16=torch.cuda.is_bf16_supported(),
            fp16=True,
            flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
            bitsandbytes_installed=importlib.util.find_spec("bitsandbytes") is not None,
            liger_installed=importlib.util.find_spec("liger_kernel") is not None,
            unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        )
    if kind == "mps":
        return DeviceCaps(requested_device, fp16=True)
    if kind != "cpu":
        raise ConfigError(f"training.device: unknown device '{requested_device}' (auto, cpu, cuda, cuda:N, mps)")
    return DeviceCaps("cpu")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def plan_precision(caps: DeviceCaps, dtype: str = "auto", attn: str = "auto",
                   adapter_type: str = "lora", kernels: str = "none") -> PrecisionPlan:
    """Pick weights/autocast dtypes and the attention kernel for a device.

    - CPU: float32 (bf16 matmuls are emulated on most CPUs and far slower).
    - GPU with bf16 (Ampere+): LoRA keeps frozen base weights in bf16; full fine-tuning keeps
      float32 master weights and autocasts to bf16 (pure-bf16 AdamW updates lose precision).
    - Older GPU: float32 weights with fp16 autocast (and a grad scaler in the loop).
    - flash_attention_2 only when installed and computing in 16 bits; else PyTorch SDPA.
    - kernels "liger" (Liger's Triton RMSNorm / RoPE / SwiGLU) only on a CUDA GPU with
      liger-kernel installed, "unsloth" only on a CUDA GPU with unsloth installed; refused
      elsewhere. "auto" is liger where it could run (and `apply_kernels` then patches the Llama
      family only), else none.

    >>> plan_precision(DeviceCaps("cpu")).weights_dtype
    torch.float32
    >>> plan_precision(DeviceCaps("cuda", bf16=True, fp16=True)).autocast_dtype
    torch.bfloat16
    """
    load_in_4bit = adapter_type == "qlora"
    if load_in_4bit and (caps.kind != "cuda" or not caps.bitsandbytes_installed):
        raise ConfigError(
            "adapter.type: qlora needs a CUDA GPU and bitsandbytes (pip install 'kitae[gpu]'); "
            f"this machine has {caps.device}{'' if caps.kind != 'cuda' else ' without bitsandbytes'}. "
            "Use adapter.type: lora here."
        )
    if dtype == "auto":
        if caps.kind == "cuda" and caps.bf16:
            compute = torch.bfloat16
        elif caps.kind in ("cuda", "mps") and caps.fp16:
            compute = torch.float16
        else:
            compute = torch.float32
    else:
        compute = _DTYPES[dtype]
        if caps.kind == "cpu" and compute != torch.float32:
            # Allowed (the user asked), but slow on CPUs without native bf16.
            pass
    if compute == torch.float32:
        weights, autocast = torch.float32, None
    elif compute == torch.float16 or adapter_type == "full":
        # fp16 weights overflow in training; full fine-tuning wants fp32 master weights.
        weights, autocast = torch.float32, compute
    else:
        weights, autocast = compute, compute
    if caps.kind == "cpu":
        autocast = None if compute == torch.float32 else compute
    if attn == "auto":
        attn = "flash_attention_2" if (caps.kind == "cuda" and caps.flash_attn_installed
                                       and compute in (torch.bfloat16, torch.float16)) else "sdpa"
    elif attn == "flash_attention_2" and not caps.flash_attn_installed:
        raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash-attn package and a GPU")
    kernels_auto = kernels == "auto"
    if kernels_auto:
        kernels = "liger" if caps.kind == "cuda" and caps.liger_installed else "none"
    for name, package, installed in (("liger", "liger-kernel", caps.liger_installed),
                                     ("unsloth", "unsloth", caps.unsloth_installed)):
        if kernels == name and (caps.kind != "cuda" or not installed):
            raise ConfigError(f"training.kernels: {name} needs a CUDA GPU (its kernels are Triton) and "
                              f"pip install {package}; this machine has "
                              f"{caps.device}{f' without {package}' if caps.kind == 'cuda' else ''}. "
                              "Use training.kernels: none here.")
    return PrecisionPlan(caps.device, weights, autocast, attn, load_in_4bit, kernels,
                         kernels_auto and kernels != "none")


# What kernels "auto" patches: the Llama family (RMSNorm, RoPE, SwiGLU as Liger implements them).
# Others (Gemma's GeGLU and (1 + w) norm, GPT-NeoX's LayerNorm) need an explicit "liger".
LIGER_AUTO_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def kernels_for(model_type: str, plan: PrecisionPlan) -> str:
    """The kernels `apply_kernels` patches into a model of `model_type` under `plan`.

    >>> auto = PrecisionPlan("cuda:0", torch.bfloat16, torch.bfloat16, "sdpa", kernels="liger", kernels_auto=True)
    >>> kernels_for("llama", auto), kernels_for("gemma3_text", auto)
    ('liger', 'none')
    >>> kernels_for("gemma3_text", PrecisionPlan("cuda:0", torch.bfloat16, None, "sdpa", kernels="liger"))
    'liger'
    """
    if plan.kernels == "liger" and plan.kernels_auto and model_type not in LIGER_AUTO_MODEL_TYPES:
        return "none"
    return plan.kernels


def apply_kernels(model: Any, plan: PrecisionPlan) -> str:
    """Patch the plan's fused kernels into a loaded model (its modules; kitae computes its own
    loss, so Liger's fused linear cross-entropy is left out). Returns what was applied."""
    kernels = kernels_for(str(getattr(model.config, "model_type", "")), plan)
    if kernels != "liger":
        return kernels
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=False)
    return "liger"


def fit_cpu_threads(plan: PrecisionPlan) -> int:
    """On a CPU, one torch thread per physical core this process may use: hyper-threads share a
    core's FMA units (a second thread per core only adds contention), and a container's CPU set
    is often smaller than the machine. An explicit OMP_NUM_THREADS / MKL_NUM_THREADS is kept.
    Returns the thread count torch uses."""
    import os

    if plan.device != "cpu" or any(v in os.environ for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return torch.get_num_threads()
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    logical, physical = psutil.cpu_count(logical=True) or usable, psutil.cpu_count(logical=False) or usable
    threads = max(1, min(usable, usable * physical // max(logical, 1)))
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()
