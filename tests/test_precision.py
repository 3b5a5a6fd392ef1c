"""Device / dtype / attention / QLoRA selection, tested on CPU by handing in GPU capabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kitae.errors import ConfigError
from kitae.models.precision import DeviceCaps, plan_precision, probe_caps

AMPERE = DeviceCaps("cuda", bf16=True, fp16=True, flash_attn_installed=True, bitsandbytes_installed=True)
TURING = DeviceCaps("cuda", bf16=False, fp16=True)
CPU = DeviceCaps("cpu")


@pytest.mark.parametrize("caps,adapter,weights,autocast,attn", [
    (CPU, "lora", torch.float32, None, "sdpa"),
    (CPU, "full", torch.float32, None, "sdpa"),
    (AMPERE, "lora", torch.bfloat16, torch.bfloat16, "flash_attention_2"),
    (AMPERE, "full", torch.float32, torch.bfloat16, "flash_attention_2"),  # fp32 master weights
    (AMPERE, "qlora", torch.bfloat16, torch.bfloat16, "flash_attention_2"),
    (TURING, "lora", torch.float32, torch.float16, "sdpa"),  # no bf16, no flash-attn installed
    (DeviceCaps("cuda", bf16=True, fp16=True), "lora", torch.bfloat16, torch.bfloat16, "sdpa"),
])
def test_auto_plan(caps, adapter, weights, autocast, attn):
    plan = plan_precision(caps, "auto", "auto", adapter)
    assert (plan.weights_dtype, plan.autocast_dtype, plan.attn_implementation) == (weights, autocast, attn)
    assert plan.load_in_4bit == (adapter == "qlora")


def test_explicit_float32_on_gpu_turns_off_flash_attention():
    plan = plan_precision(AMPERE, "float32", "auto", "lora")
    assert plan.weights_dtype == torch.float32 and plan.autocast_dtype is None and plan.attn_implementation == "sdpa"


def test_qlora_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        plan_precision(CPU, "auto", "auto", "qlora")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        plan_precision(DeviceCaps("cuda", bf16=True), "auto", "auto", "qlora")


def test_flash_attention_requested_without_package():
    with pytest.raises(ConfigError, match="flash-attn"):
        plan_precision(TURING, "auto", "flash_attention_2", "lora")


def test_this_machine():
    caps = probe_caps("auto")
    if not torch.cuda.is_available():
        assert caps.device in ("cpu", "mps")
        assert plan_precision(caps).weights_dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown device"):
        probe_caps("tpu")


def test_liger_kernels_only_on_a_cuda_gpu_with_liger_installed():
    with_liger = DeviceCaps("cuda", bf16=True, fp16=True, liger_installed=True)
    plan = plan_precision(with_liger, "auto", "auto", "lora", kernels="liger")
    assert plan.kernels == "liger" and "liger kernels" in plan.describe()
    for caps, reason in ((CPU, "this machine has cpu"), (AMPERE, "without liger-kernel")):
        with pytest.raises(ConfigError, match=f"training.kernels: liger needs a CUDA GPU.*{reason}"):
            plan_precision(caps, "auto", "auto", "lora", kernels="liger")
    assert plan_precision(CPU, "auto", "auto", "lora").kernels == "none"
    with_unsloth = DeviceCaps("cuda", bf16=True, fp16=True, unsloth_installed=True)
    assert plan_precision(with_unsloth, "auto", "auto", "lora", kernels="unsloth").kernels == "unsloth"
    with pytest.raises(ConfigError, match="training.kernels: unsloth needs a CUDA GPU.*without unsloth"):
        plan_precision(AMPERE, "auto", "auto", "lora", kernels="unsloth")


def test_kernels_auto_is_liger_for_the_llama_family_where_liger_runs():
    from types import SimpleNamespace

    from kitae.config import TrainingConfig
    from kitae.models.precision import apply_kernels, kernels_for

    assert TrainingConfig().kernels == "auto"
    with_liger = DeviceCaps("cuda", bf16=True, fp16=True, liger_installed=True)
    auto = plan_precision(with_liger, "auto", "auto", "lora", kernels="auto")
    assert (auto.kernels, auto.kernels_auto) == ("liger", True) and "liger kernels (auto)" in auto.describe()
    assert [kernels_for(t, auto) for t in ("llama", "mistral", "qwen2", "qwen3")] == ["liger"] * 4
    assert [kernels_for(t, auto) for t in ("gemma3_text", "gpt_neox", "bert")] == ["none"] * 3
    # Nothing to patch, and nothing refused, where Liger cannot run.
    for caps in (CPU, AMPERE):
        plan = plan_precision(caps, "auto", "auto", "lora", kernels="auto")
        assert (plan.kernels, plan.kernels_auto, kernels_for("llama", plan)) == ("none", False, "none")
        assert apply_kernels(SimpleNamespace(config=SimpleNamespace(model_type="llama")), plan) == "none"
    # Auto leaves a Gemma alone on the GPU too (an explicit "liger" would patch it).
    assert apply_kernels(SimpleNamespace(config=SimpleNamespace(model_type="gemma3_text")), auto) == "none"


def test_unsloth_is_for_causal_lm_lora():
    from kitae.config import config_from_dict

    base = {"data": {"train": "t.jsonl"}, "model": {"name": "m"}, "output": "o", "training": {"kernels": "unsloth"}}
    with pytest.raises(ConfigError, match="unsloth is for task sft and causal_lm"):
        config_from_dict(base, check_files=False)
    with pytest.raises(ConfigError, match="unsloth trains LoRA"):
        config_from_dict({**base, "task": "sft", "adapter": {"type": "full"}}, check_files=False)
    assert config_from_dict({**base, "task": "sft"}, check_files=False).training.kernels == "unsloth"


def test_kernels_are_checked_before_the_run_directory(tmp_path, tiny_models, separable_data):
    import yaml
    from conftest import tiny_config
    from typer.testing import CliRunner

    from kitae.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", training={"kernels": "liger"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2 and "training.kernels: liger needs a CUDA GPU" in result.output
    assert not (tmp_path / "run").exists()


def test_cpu_threads_fit_physical_cores_of_the_usable_cpus(monkeypatch):
    import os

    import psutil
    import torch

    from kitae.models.precision import fit_cpu_threads, plan_precision, probe_caps

    plan = plan_precision(probe_caps("cpu"))
    before = torch.get_num_threads()
    try:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.delenv(var, raising=False)
        torch.set_num_threads(8)
        # 8 usable logical CPUs, 2 hyper-threads per core: 4 threads.
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else 8)
        assert fit_cpu_threads(plan) == 4
        # An explicit OMP_NUM_THREADS is the user's choice.
        torch.set_num_threads(8)
        monkeypatch.setenv("OMP_NUM_THREADS", "8")
        assert fit_cpu_threads(plan) == 8
    finally:
        torch.set_num_threads(before)


# --- bf16 on CPUs with bf16 matrix units ---------------------------------------------------------
AMX_CPU = DeviceCaps("cpu", bf16=True, bf16_matmul="amx_bf16")


@pytest.mark.parametrize("caps,dtype,adapter,weights,autocast", [
    (AMX_CPU, "auto", "lora", torch.float32, torch.bfloat16),  # float32 master weights, bf16 matmuls
    (AMX_CPU, "auto", "full", torch.float32, torch.bfloat16),
    (AMX_CPU, "float32", "lora", torch.float32, None),  # an explicit float32 is float32 everywhere
    (CPU, "auto", "lora", torch.float32, None),  # no bf16 units: float32
    (CPU, "bfloat16", "lora", torch.bfloat16, torch.bfloat16),  # the user's choice, even where slow
])
def test_cpu_plan_follows_the_bf16_units(caps, dtype, adapter, weights, autocast):
    plan = plan_precision(caps, dtype, "auto", adapter)
    assert (plan.weights_dtype, plan.autocast_dtype, plan.attn_implementation) == (weights, autocast, "sdpa")
    if dtype == "auto":  # the log and metrics.json say what ran and why
        assert ("autocast bfloat16 (auto: bf16 matmuls on amx_bf16)" in plan.describe()) == caps.bf16
        assert ("no amx_bf16 / avx512_bf16 units" in plan.describe()) == (not caps.bf16)


def test_cpu_bf16_units_are_detected_not_assumed(monkeypatch):
    from kitae.models import precision

    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    for features, unit in (({"avx2": True, "amx_bf16": True, "amx_tile": True}, "amx_bf16"),
                           ({"avx512_f": True, "avx512_bf16": True}, "avx512_bf16"),
                           ({"avx2": True, "avx512_f": True, "amx_bf16": False}, "")):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda features=features: features)
        assert precision.cpu_bf16_unit() == unit
        assert probe_caps("cpu") == DeviceCaps("cpu", bf16=bool(unit), bf16_matmul=unit)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision.cpu_bf16_unit() == ""  # a torch without oneDNN runs no fast bf16 matmul
    for value, bf16 in (("0", False), ("1", True)):
        monkeypatch.setenv(precision.CPU_BF16_ENV, value)
        assert probe_caps("cpu").bf16 is bf16
    # torch without get_capabilities: /proc/cpuinfo's flags.
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    cpuinfo = Path("/proc/cpuinfo")
    assert precision._cpu_features() == (precision.cpuinfo_flags(cpuinfo.read_text()) if cpuinfo.exists() else set())
    assert precision.cpuinfo_flags("processor : 0\nflags\t\t: fpu avx512_bf16\n\nflags : other") == {"fpu", "avx512_bf16"}


def test_the_head_and_the_loss_stay_float32_under_bf16_autocast(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from kitae.models.classifier import SequenceClassifier

    hf = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=3)
    hf.score.to(torch.bfloat16)
    classifier = SequenceClassifier(hf, hf, "last", is_decoder=True)  # makes the head float32
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        return lambda module, args, out: seen.update({name: out.dtype})  # returns None: output kept

    hf.model.layers[0].mlp.down_proj.register_forward_hook(record("backbone"))
    hf.score.register_forward_hook(record("head"))
    ids = torch.tensor([[5, 9, 12, 7], [6, 8, 0, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = classifier(input_ids=ids, attention_mask=(ids > 0).long())
        assert torch.is_autocast_enabled("cpu")  # the head turned it off for itself only
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 2]))
    assert seen == {"backbone": torch.bfloat16, "head": torch.float32}  # autocast is on, but not in the head
    assert logits.dtype == loss.dtype == torch.float32
    loss.backward()
    assert hf.score.weight.dtype == hf.score.weight.grad.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")

    # From several threads at once (a server's): each thread's autocast state is its own.
    from concurrent.futures import ThreadPoolExecutor

    def forward_in_bf16(_: int) -> tuple[torch.dtype, bool]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = classifier(input_ids=ids, attention_mask=(ids > 0).long())
            return out.dtype, torch.is_autocast_enabled("cpu")

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(forward_in_bf16, range(16))) == {(torch.float32, True)}


def test_bf16_autocast_matches_float32(tiny_models, separable_data, tmp_path, monkeypatch):
    """dtype auto with bf16 units (forced here: this CPU may have none) trains and predicts under
    bf16 autocast. Predicted in bf16 or float32: the same labels, probabilities within 0.01
    (measured 0.002); trained in bf16 or float32: the same labels, probabilities within 0.1
    (measured 0.04)."""
    from conftest import tiny_config

    import kitae
    from kitae.config import config_from_dict
    from kitae.metrics import plots

    monkeypatch.setattr(plots, "save_figure", lambda fig, path: None)  # half the runs' time; not tested here
    monkeypatch.setenv("KITAE_CPU_BF16", "1")
    texts = [json.loads(line)["text"] for line in separable_data["test"].read_text(encoding="utf-8").splitlines()]
    results = {}
    for dtype in ("auto", "float32"):
        cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / dtype, model={"dtype": dtype},
                          training={"epochs": 2})
        results[dtype] = kitae.train(config_from_dict(cfg), progress=False, evaluate_test=dtype == "float32")
    run = results["auto"].run_dir
    precision = {d: json.loads((r.run_dir / "metrics.json").read_text())["summary"]["precision"]
                 for d, r in results.items()}
    assert "autocast bfloat16" in precision["auto"] and "autocast" not in precision["float32"]
    assert "autocast bfloat16" in (run / "train.log").read_text(encoding="utf-8")
    # The bf16-trained model predicted in bf16 (its plan: auto) and in float32 (units hidden).
    bf16 = kitae.load(run)
    assert bf16.plan.autocast_dtype == torch.bfloat16
    bf16_probs = bf16.predict_proba(texts)
    monkeypatch.setenv("KITAE_CPU_BF16", "0")
    f32 = kitae.load(run)
    assert f32.plan.autocast_dtype is None
    f32_probs = f32.predict_proba(texts)
    assert (bf16_probs.argmax(-1) == f32_probs.argmax(-1)).all()
    assert np.abs(bf16_probs - f32_probs).max() < 0.01
    float32_run = torch.softmax(torch.from_numpy(results["float32"].logits["test"]).double(), -1).numpy()
    assert (float32_run.argmax(-1) == f32_probs.argmax(-1)).all()
    assert np.abs(float32_run - f32_probs).max() < 0.1
    # An engine export's parity check (float32, 1e-4) compares kitae in float32, not in bf16.
    from kitae.export import export_run

    monkeypatch.setenv("KITAE_CPU_BF16", "1")
    export_run(run, tmp_path / "vllm", engine="vllm")
    assert json.loads((tmp_path / "vllm" / "parity.json").read_text())["passed"]
