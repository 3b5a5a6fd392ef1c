"""Adapters: LoRA / DoRA / QLoRA and prompt tuning through PEFT, or full fine-tuning.

The classification head — and any module the checkpoint did not have (e.g. a BERT pooler that
was never pretrained) — is trained in full and saved with the adapter (`modules_to_save`): the
classic PEFT pitfall is a head that is trained but lost on reload.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedModel

from kitae.config import AdapterConfig


def _prepare(hf_model: PreTrainedModel, adapter: AdapterConfig, gradient_checkpointing: bool) -> PreTrainedModel:
    """What every adapter type starts with: gradient checkpointing, every weight trainable for
    full fine-tuning, the 4-bit base made trainable for QLoRA."""
    if gradient_checkpointing:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf_model.config.use_cache = False
    if adapter.type == "full":
        for parameter in hf_model.parameters():
            parameter.requires_grad_(True)
    if adapter.type == "qlora":
        from peft import prepare_model_for_kbit_training

        hf_model = prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=gradient_checkpointing)
    return hf_model


def apply_adapter(hf_model: PreTrainedModel, adapter: AdapterConfig, head_name: str,
                  new_modules: list[str], gradient_checkpointing: bool = False,
                  sparse_dropout: bool = False, lean_lora: bool = False) -> nn.Module:
    """Return the module to train: a PeftModel for lora/qlora, the model itself for full.
    `sparse_dropout`, `lean_lora`: the training speed-ups of `kitae.models.lean_lora`."""
    hf_model = _prepare(hf_model, adapter, gradient_checkpointing)
    if adapter.type == "full":
        return hf_model

    from peft import LoraConfig, TaskType, get_peft_model

    fresh = sorted(set(new_modules) - {head_name})
    lora_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        use_dora=adapter.dora,
        modules_to_save=[head_name, *fresh],
        # Freshly initialised modules are trained in full; LoRA on a random frozen matrix is useless.
        exclude_modules=fresh or None,
    )
    return _speed_up(get_peft_model(hf_model, lora_config), sparse_dropout, lean_lora)


def _speed_up(peft_model: nn.Module, sparse_dropout: bool, lean_lora: bool) -> nn.Module:
    from kitae.models.lean_lora import use_lean_lora, use_sparse_dropout

    if sparse_dropout:
        use_sparse_dropout(peft_model)
    if lean_lora:
        use_lean_lora(peft_model)
    return peft_model


def apply_lm_adapter(hf_model: PreTrainedModel, adapter: AdapterConfig, tokenizer_path: str,
                     gradient_checkpointing: bool = False, sparse_dropout: bool = False,
                     lean_lora: bool = False) -> nn.Module:
    """The module to train for a causal LM: a PeftModel (LoRA / DoRA / QLoRA adapters on every
    linear layer, or a prompt-tuning soft prompt), or the model itself for full fine-tuning. The
    pretrained LM head stays as it is (PEFT's all-linear leaves it out)."""
    hf_model = _prepare(hf_model, adapter, gradient_checkpointing)
    if adapter.type == "full":
        return hf_model

    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if adapter.type == "prompt_tuning":
        init_text = adapter.prompt_tuning_init_text
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=adapter.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text, tokenizer_name_or_path=tokenizer_path if init_text else None,
        )
        return get_peft_model(hf_model, config)
    lora_config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=adapter.r, lora_alpha=adapter.alpha,
                             lora_dropout=adapter.dropout, target_modules=adapter.target_modules,
                             use_dora=adapter.dora)
    return _speed_up(get_peft_model(hf_model, lora_config), sparse_dropout, lean_lora)


# The projections Unsloth's fast LoRA path patches (it takes explicit names, not "all-linear").
UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_with_unsloth(source: Any, model_config: Any, adapter: AdapterConfig, plan: Any,
                      gradient_checkpointing: bool, seed: int) -> tuple[nn.Module, PreTrainedModel]:
    """(PeftModel, the transformers model inside it) loaded and LoRA-wrapped by Unsloth — its
    patched attention, RoPE, MLP and LoRA kernels. GPU only; not run on kitae's CPU test machines."""
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=source.path, max_seq_length=model_config.max_length, dtype=plan.weights_dtype,
        load_in_4bit=plan.load_in_4bit, trust_remote_code=model_config.trust_remote_code,
    )
    targets = UNSLOTH_TARGETS if adapter.target_modules == "all-linear" else list(adapter.target_modules)
    peft_model = FastLanguageModel.get_peft_model(
        model, r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, target_modules=targets,
        use_dora=adapter.dora, use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
    return peft_model, peft_model.get_base_model()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
