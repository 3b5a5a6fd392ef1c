"""Device, dtype and attention kernel, chosen from what the hardware can do — never by guessing.

The choice is a pure function of `DeviceCaps`, so the GPU paths (bf16, fp16, flash attention,
4-bit QLoRA) are tested on CPU by handing it the capabilities of a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kitae.errors import ConfigError

# The CPU units that run bf16 matmuls natively (oneDNN uses them for torch's bf16 matmuls):
# Intel AMX (Sapphire Rapids+) and AVX512-BF16 (Cooper Lake, AMD Zen 4+). Without one, a bf16
# matmul is converted to float32 lanes and is slower than float32 itself (measured on an AVX2
# EPYC: 0.6-1.4 GFLOP/s in bf16 against 27-31 in float32, one thread).
CPU_BF16_UNITS = ("amx_bf16", "avx512_bf16")
# Overrides the detection ("0": no bf16 units, e.g. to keep a test suite in float32 on every
# machine; "1": as if the units were there, to exercise the bf16 path where they are not).
CPU_BF16_ENV = "KITAE_CPU_BF16"


@dataclass(frozen=True)
class DeviceCaps:
    device: str  # "cpu", "cuda", "cuda:1", "mps"
    # bf16 computed natively: a GPU with bf16 tensor cores (Ampere+), a CPU with bf16 matrix units.
    bf16: bool = False
    fp16: bool = False
    flash_attn_installed: bool = False
    bitsandbytes_installed: bool = False
    liger_installed: bool = False
    unsloth_installed: bool = False
    bf16_matmul: str = ""  # what runs the bf16 matmuls ("amx_bf16", "avx512_bf16", "cuda"), "" none

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
    why: str = ""  # why this compute dtype (for "auto", or a slow explicit one): the log, metrics.json

    def describe(self) -> str:
        amp = f", autocast {str(self.autocast_dtype).removeprefix('torch.')}" if self.autocast_dtype else ""
        quant = ", 4-bit base" if self.load_in_4bit else ""
        kernels = f", {self.kernels} kernels{' (auto)' if self.kernels_auto else ''}" if self.kernels != "none" else ""
        why = f" ({self.why})" if self.why else ""
        return (f"{self.device}, weights {str(self.weights_dtype).removeprefix('torch.')}{amp}{why}, "
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
        # Without emulation: pre-Ampere GPUs "support" bf16 only emulated, slower than fp16.
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return DeviceCaps(
            requested_device,
            bf16=native_bf16,
            bf16_matmul="cuda" if native_bf16 else "",
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
    unit = cpu_bf16_unit()
    return DeviceCaps("cpu", bf16=bool(unit), bf16_matmul=unit)


def cpu_bf16_unit() -> str:
    """The first of CPU_BF16_UNITS this CPU has and torch can use (its oneDNN build runs the bf16
    matmuls), or "". Read from torch's own CPUID probe where torch has one, else /proc/cpuinfo's
    flags; KITAE_CPU_BF16=0 / 1 overrides."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return "" if override == "0" else f"{CPU_BF16_ENV}=1"
    if not torch.backends.mkldnn.is_available():
        return ""
    features = _cpu_features()
    return next((unit for unit in CPU_BF16_UNITS if unit in features), "")


def _cpu_features() -> set[str]:
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if get_capabilities is not None:
        return {name for name, value in get_capabilities().items() if value is True}
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return set()


def cpuinfo_flags(cpuinfo: str) -> set[str]:
    r"""The feature flags of the first CPU in a /proc/cpuinfo text.

    >>> sorted(cpuinfo_flags("model name : X\nflags : fpu avx2 amx_bf16\n"))
    ['amx_bf16', 'avx2', 'fpu']
    """
    line = next((line for line in cpuinfo.splitlines() if line.split(":", 1)[0].strip() == "flags"), "")
    return set(line.partition(":")[2].split())


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def plan_precision(caps: DeviceCaps, dtype: str = "auto", attn: str = "auto",
                   adapter_type: str = "lora", kernels: str = "none") -> PrecisionPlan:
    """Pick weights/autocast dtypes and the attention kernel for a device.

    - CPU with bf16 matrix units (AMX-BF16, AVX512-BF16; `cpu_bf16_unit`): float32 master
      weights with bf16 autocast (measured on an AMX Xeon, one thread: a 2048² matmul at
      950 GFLOP/s in bf16 against 134 in float32). Other CPUs: float32 (there a bf16 matmul is
      converted in software and slower than float32).
    - GPU with bf16 (Ampere+): LoRA keeps frozen base weights in bf16; full fine-tuning keeps
      float32 master weights and autocasts to bf16 (pure-bf16 AdamW updates lose precision).
    - Older GPU: float32 weights with fp16 autocast (and a grad scaler in the loop).
    - flash_attention_2 only when installed and computing in 16 bits; else PyTorch SDPA.
    - kernels "liger" (Liger's Triton RMSNorm / RoPE / SwiGLU) only on a CUDA GPU with
      liger-kernel installed, "unsloth" only on a CUDA GPU with unsloth installed; refused
      elsewhere. "auto" is liger where it could run (and `apply_kernels` then patches the Llama
      family only), else none.

    >>> plan_precision(DeviceCaps("cpu")).autocast_dtype is None
    True
    >>> amx = plan_precision(DeviceCaps("cpu", bf16=True, bf16_matmul="amx_bf16"))
    >>> amx.weights_dtype, amx.autocast_dtype
    (torch.float32, torch.bfloat16)
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
    compute, why = _compute_dtype(caps, dtype)
    if compute == torch.float32:
        weights, autocast = torch.float32, None
    elif compute == torch.float16 or adapter_type == "full" or (caps.kind == "cpu" and dtype == "auto"):
        # fp16 weights overflow in training; full fine-tuning wants fp32 master weights; on a CPU
        # "auto" keeps float32 weights (the residual stream, norms and LoRA's frozen base stay
        # float32; only autocast's matmuls run in bf16), so it changes the numbers least.
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
                         kernels_auto and kernels != "none", why)


def _compute_dtype(caps: DeviceCaps, dtype: str) -> tuple[torch.dtype, str]:
    """(the dtype the matmuls run in, why: for "auto", and where the user's choice is slow)."""
    units = " / ".join(CPU_BF16_UNITS)
    if dtype != "auto":  # the user's choice, even where it is slow: said so
        slow = caps.kind == "cpu" and (dtype == "float16" or (dtype == "bfloat16" and not caps.bf16))
        return _DTYPES[dtype], f"no native {dtype} matmuls on this CPU: slower than float32" if slow else ""
    if caps.kind in ("cuda", "cpu") and caps.bf16:
        return torch.bfloat16, f"auto: bf16 matmuls on {caps.bf16_matmul or caps.kind}"
    if caps.kind in ("cuda", "mps") and caps.fp16:
        return torch.float16, "auto: no native bf16"
    if caps.kind == "cpu":
        return torch.float32, f"auto: this CPU has no {units} units"
    return torch.float32, "auto"


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
