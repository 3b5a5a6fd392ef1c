"""Save a trained classifier or causal LM as a Hugging Face model folder, and load it back exactly.

LoRA runs save the PEFT adapter (`adapter_model.safetensors`, which also holds the trained head
and any freshly initialised module via `modules_to_save`) plus the classifier `config.json`
(id2label); full fine-tuning saves the whole `*ForSequenceClassification` model. The tokenizer
sits beside the weights, and `kitae_model.json` records what transformers' files do not: the
base model source, pooling, and max_length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from kitae.config import AdapterConfig, ModelConfig
from kitae.models.classifier import SequenceClassifier, choose_packing
from kitae.models.loading import is_encoder_config, load_for_classification, load_tokenizer
from kitae.models.precision import PrecisionPlan, fit_cpu_threads, plan_precision, probe_caps
from kitae.models.sources import ModelSource
from kitae.runs import follow_umask, read_json, write_json

META_FILE = "kitae_model.json"


def save_classifier(classifier: SequenceClassifier, tokenizer: Any, folder: Path, meta: dict[str, Any],
                    weights: dict[str, torch.Tensor] | None = None) -> None:
    """`weights`: the full trainable weights by the classifier's parameter names, when its own
    are sharded (FSDP); else the model's own tensors are saved."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_weights(classifier, folder, weights)
    if classifier.model is not classifier.hf_model:
        classifier.hf_model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / META_FILE, meta)
    follow_umask(folder)


def _save_weights(wrapper: Any, folder: Path, weights: dict[str, torch.Tensor] | None) -> None:
    """A kitae model's weights as transformers / PEFT save them: the whole model for full
    fine-tuning, the adapter (with the trained head and new modules) otherwise. The wrapper's
    parameters are named `model.` + the trained module's own names (a PeftModel, or the
    transformers model itself), which is what `state_dict=` takes."""
    kwargs: dict[str, Any] = {}
    if weights is not None:
        kwargs["state_dict"] = {name.removeprefix("model."): tensor for name, tensor in weights.items()}
    wrapper.model.save_pretrained(folder, safe_serialization=True, **kwargs)


def _saved(folder: Path, device: str, trust_remote_code: bool,
           ) -> tuple[dict[str, Any], ModelConfig, AdapterConfig, PrecisionPlan, Any]:
    """A saved model folder's kitae_model.json, model and adapter settings, the precision plan on
    this machine, and its tokenizer. `trust_remote_code` replaces whatever the folder records."""
    meta = read_json(folder / META_FILE)
    model_config = ModelConfig.model_validate({**meta["model"], "trust_remote_code": trust_remote_code})
    adapter = AdapterConfig.model_validate(meta["adapter"])
    caps = probe_caps(device)
    # A QLoRA adapter also runs on a plain (non-4-bit) base, e.g. on a CPU.
    adapter_type = adapter.type if adapter.type != "qlora" or caps.bitsandbytes_installed else "lora"
    plan = plan_precision(caps, model_config.dtype, model_config.attn_implementation, adapter_type)
    return meta, model_config, adapter, plan, load_tokenizer(ModelSource(str(folder)), model_config)


def load_classifier(folder: Path, device: str = "auto", trust_remote_code: bool = False,
                    merge: bool = True) -> tuple[SequenceClassifier, Any, dict[str, Any], PrecisionPlan]:
    """(classifier in eval mode, tokenizer, meta, precision plan) from a saved model folder.

    `merge`: a LoRA / DoRA adapter is merged into the base weights (W + BA computed once: the
    forward is the plain model's, with no adapter layers), except on a 4-bit base. Packing is
    switched on where the model passes the packed-vs-unpacked check.
    `trust_remote_code` is the caller's decision alone: what the folder records is ignored, so a
    downloaded run cannot switch on the execution of code from the hub."""
    folder = Path(folder)
    meta, model_config, adapter, plan, tokenizer = _saved(folder, device, trust_remote_code)
    fit_cpu_threads(plan)
    id2label = {i: label for i, label in enumerate(meta["labels"])}
    exported = str(meta.get("export", {}).get("kind", ""))
    if exported.endswith("onnx"):
        from transformers import AutoConfig

        from kitae.models.onnx_backend import OnnxClassifier

        is_decoder = not is_encoder_config(AutoConfig.from_pretrained(folder))

        cpu_plan = plan_precision(probe_caps("cpu"), "float32", "sdpa", "full")
        onnx_model = OnnxClassifier(folder / "model.onnx", meta["pooling"], is_decoder, plan.device)
        return onnx_model, tokenizer, meta, cpu_plan  # type: ignore[return-value]
    if adapter.type == "full" or exported.startswith("merged"):
        hf_model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=plan.weights_dtype, attn_implementation=plan.attn_implementation,
            trust_remote_code=model_config.trust_remote_code,
        ).to(plan.device)
        model = hf_model
    else:
        from peft import PeftModel

        base = ModelSource(meta["base_model"]["path"], meta["base_model"].get("gguf_file"),
                           meta["base_model"].get("revision"))
        loaded = load_for_classification(base, model_config, plan, id2label, tokenizer.pad_token_id)
        hf_model = loaded.model
        model = PeftModel.from_pretrained(hf_model, folder)
        if merge and not plan.load_in_4bit:
            model = hf_model = model.merge_and_unload()
    classifier = SequenceClassifier(model, hf_model, meta["pooling"], not is_encoder_config(hf_model.config))
    classifier.packing, _ = choose_packing(classifier, meta.get("packing", "auto"))
    classifier.eval()
    return classifier, tokenizer, meta, plan


def save_causal_lm(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any],
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    """A causal LM: the PEFT adapter (LoRA weights or the soft prompt) or the full model, with the
    tokenizer and kitae_model.json (`weights` as in `save_classifier`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_weights(model, folder, weights)
    tokenizer.save_pretrained(folder)
    write_json(folder / META_FILE, meta)
    follow_umask(folder)


def load_causal_lm(folder: Path, device: str = "auto", trust_remote_code: bool = False,
                   ) -> tuple[Any, Any, dict[str, Any], PrecisionPlan]:
    """(CausalLM in eval mode, tokenizer, meta, precision plan) from a saved causal-LM folder;
    `trust_remote_code` is the caller's decision alone (see load_classifier)."""
    from transformers import AutoModelForCausalLM

    from kitae.models.causal_lm import CausalLM
    from kitae.models.loading import load_for_causal_lm

    folder = Path(folder)
    meta, model_config, adapter, plan, tokenizer = _saved(folder, device, trust_remote_code)
    if adapter.type == "full":
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=plan.weights_dtype, attn_implementation=plan.attn_implementation,
            trust_remote_code=model_config.trust_remote_code).to(plan.device)
        model = hf_model
    else:
        from peft import PeftModel

        base = ModelSource(meta["base_model"]["path"], meta["base_model"].get("gguf_file"),
                           meta["base_model"].get("revision"))
        hf_model = load_for_causal_lm(base, model_config, plan)
        model = PeftModel.from_pretrained(hf_model, folder)
    lm = CausalLM(model, hf_model, prompt_tuning=adapter.type == "prompt_tuning")
    lm.eval()
    return lm, tokenizer, meta, plan
