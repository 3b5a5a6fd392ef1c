"""Fixtures: tiny models (Llama, GPT-NeoX, Gemma 3, BERT) with a locally built character-level
tokenizer, and small datasets written to tmp folders. Everything is built here, offline."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# float32 on every machine: dtype "auto" would pick bf16 autocast on CPUs with AMX / AVX512-BF16,
# and the tests' tolerances are float32's. test_precision.py turns it on where it tests bf16;
# KITAE_CPU_BF16=1 runs any test in bf16.
os.environ.setdefault("KITAE_CPU_BF16", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Three classes written with disjoint character sets: separable, so a tiny model must learn them.
CLASS_CHARS = {"天気": "雨晴雪風曇雷霧嵐", "料理": "肉魚米麺汁菜塩酢", "経済": "株円税金価銀貨資"}
FILLER = "のはがをにでとも"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]


def _all_chars(extra: str = "") -> list[str]:
    chars = set(FILLER + "".join(CLASS_CHARS.values()))
    chars |= set("こんにちは世界東京日本首都大きいですテキスト明今日曜" + "abcdefghijklmnopqrstuvwxyz0123456789 ")
    return sorted(chars | set(extra))


def build_tokenizer(kind: str, folder: Path, padding_side: str = "right", extra_chars: str = ""):
    """A character-level WordLevel tokenizer: decoders add <s> in front, encoders [CLS] ... [SEP]."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + _all_chars(extra_chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # One token per character ("." skips line breaks; tokenizers that know "\n" keep it too).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]" if "\n" in extra_chars else "."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters decode back to the text, without spaces between them
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        specials = dict(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        specials = dict(bos_token="<s>", eos_token="</s>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   padding_side=padding_side, **specials)
    fast.save_pretrained(folder)
    return fast


def build_tiny_model(arch: str, folder: Path, padding_side: str = "right", extra_chars: str = "",
                     **overrides) -> Path:
    """A tiny random model of `arch` with the character tokenizer; `overrides` go into its config."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer("encoder" if arch in ("bert", "deberta") else "decoder", folder, padding_side, extra_chars)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **overrides)
    if arch == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **ids)
        model = LlamaForCausalLM(config)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=256, rotary_pct=0.5,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **ids)
        model = GPTNeoXForCausalLM(config)
    elif arch == "gemma3":
        config = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                                  sliding_window=8, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, **ids)
        model = Gemma3ForCausalLM(config)
    elif arch in ("qwen2", "mistral"):
        from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

        config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                     "mistral": (MistralConfig, MistralForCausalLM)}[arch]
        config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=256,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **ids)
        model = model_class(config)
    elif arch == "deberta":
        from transformers import DebertaV2Config, DebertaV2Model

        config = DebertaV2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=256, relative_attention=True, position_buckets=16,
                                 pos_att_type=["p2c", "c2p"], **ids)
        model = DebertaV2Model(config)
    elif arch == "bert":
        config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=256, **ids)
        # Like the shared e5 encoder: no pretrained pooler, so kitae must train it from scratch.
        model = BertModel(config, add_pooling_layer=False)
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    models = {arch: build_tiny_model(arch, root / arch)
              for arch in ("llama", "gpt_neox", "gemma3", "qwen2", "mistral", "bert", "deberta")}
    # Gemma's real tokenizer pads on the left: cover that default too.
    models["llama_left"] = build_tiny_model("llama", root / "llama_left", padding_side="left")
    return models


def separable_rows(n_per_class: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label, chars in CLASS_CHARS.items():
        for _ in range(n_per_class):
            length = rng.randint(4, 14)
            text = "".join(rng.choice(chars) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(length))
            rows.append({"id": f"{label}-{len(rows)}", "text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def separable_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("separable")
    return {"train": write_jsonl(root / "train.jsonl", separable_rows(40, 1)),
            "dev": write_jsonl(root / "dev.jsonl", separable_rows(10, 2)),
            "test": write_jsonl(root / "test.jsonl", separable_rows(15, 3))}


def tiny_config(model_dir: Path, files: dict[str, Path], output: Path, **sections) -> dict:
    """A config dict for a tiny run; keyword sections are merged over the defaults."""
    config = {
        "task": "single_label",
        "data": {"train": str(files["train"]), "dev": str(files["dev"]), "test": str(files["test"])},
        "model": {"name": str(model_dir), "max_length": 32},
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
        "training": {"lr": 1e-2, "epochs": 3, "batch_size": 8, "seed": 7, "checkpoint_every_minutes": None},
        "output": str(output),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


class LiveServer:
    """An ASGI app served by kitae's own uvicorn setup (`serving.guards`: header deadlines, JSON
    400/408) on a free loopback port, in a thread: what a client on this machine really talks to."""

    def __init__(self, app, limits=None) -> None:
        import socket
        import threading

        import uvicorn

        from kitae.serving.guards import EdgeLimits, server_config

        limits = limits or EdgeLimits()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, limits, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def raw(self, data: bytes, wait: float = 5.0) -> bytes:
        """Send `data` as is and read until the server closes the connection (or `wait` passes)."""
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as sock:
            sock.sendall(data)
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                pass
        return b"".join(chunks)
