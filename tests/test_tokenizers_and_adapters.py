"""Japanese tokenizers (sentencepiece slow tokenizer as rinna uses, MeCab-based BERT) and adapter
variants (DoRA, full) through a real training run on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CLASS_CHARS, FILLER, tiny_config

import kitae
from kitae.config import config_from_dict


def _sentencepiece_gpt_neox(folder: Path, corpus: list[str]) -> Path:
    """A tiny GPT-NeoX whose tokenizer is a sentencepiece T5Tokenizer, like rinna's."""
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=40,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        minloglevel=2)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "extra_ids": 0, "pad_token": "<pad>", "unk_token": "<unk>",
        "eos_token": "</s>", "bos_token": "<s>", "do_lower_case": False}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(folder, use_fast=False)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    return folder


def test_sentencepiece_slow_tokenizer_trains(tmp_path, separable_data):
    corpus = [json.loads(line)["text"] for line in separable_data["train"].read_text().splitlines()]
    model_dir = _sentencepiece_gpt_neox(tmp_path / "sp-neox", corpus)
    cfg = tiny_config(model_dir, separable_data, tmp_path / "run",
                      model={"use_fast_tokenizer": False}, training={"epochs": 2})
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["accuracy"] > 0.6
    clf = kitae.load(result.run_dir)
    assert type(clf.tokenizer).__name__ == "T5Tokenizer"
    assert clf.tokenizer("雨")["input_ids"] == type(clf.tokenizer).from_pretrained(model_dir)("雨")["input_ids"]


def test_mecab_bert_tokenizer_trains(tmp_path, separable_data):
    pytest.importorskip("fugashi", reason="MeCab tokenizers need the extra: pip install -e '.[mecab]'")
    pytest.importorskip("unidic_lite", reason="MeCab tokenizers need the extra: pip install -e '.[mecab]'")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "mecab-bert"
    folder.mkdir()
    chars = sorted(set(FILLER + "".join(CLASS_CHARS.values())))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertJapaneseTokenizer", "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece", "mecab_kwargs": {"mecab_dic": "unidic_lite"},
        "do_lower_case": False}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ == "BertJapaneseTokenizer"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, pad_token_id=0)).save_pretrained(folder)
    cfg = tiny_config(folder, separable_data, tmp_path / "run", adapter={"type": "full"},
                      training={"lr": 5e-3, "epochs": 2})
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["accuracy"] > 0.6


def test_dora_trains_and_reloads(tiny_models, separable_data, tmp_path):
    cfg = tiny_config(tiny_models["llama"], separable_data, tmp_path / "run", adapter={"dora": True},
                      training={"epochs": 2})
    result = kitae.train(config_from_dict(cfg), progress=False)
    adapter = json.loads((result.run_dir / "model" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True
    assert result.metrics["test"]["accuracy"] > 0.6
    import numpy as np

    texts = [json.loads(line)["text"] for line in separable_data["test"].read_text().splitlines()]
    np.testing.assert_array_equal(kitae.load(result.run_dir, batch_size=16, merge=False).logits(texts),
                                  result.logits["test"])


def test_missing_pad_token_falls_back_to_eos(tiny_models, separable_data, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    cfg = tiny_config(folder, separable_data, tmp_path / "run", training={"epochs": 1})
    result = kitae.train(config_from_dict(cfg), progress=False)
    saved = json.loads((result.run_dir / "model" / "config.json").read_text())
    clf = kitae.load(result.run_dir)
    assert clf.tokenizer.pad_token == clf.tokenizer.eos_token == "</s>"
    assert saved["pad_token_id"] == clf.tokenizer.eos_token_id
