"""task: pair — the tokenizer's own pair encoding for encoders, the pair template for decoders."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import CLASS_CHARS, FILLER, tiny_config, write_jsonl

import kitae
from kitae.config import config_from_dict
from kitae.data.batching import collate, encode_texts
from kitae.data.templates import pair_as_text


def pair_rows(n: int, seed: int) -> list[dict]:
    """The label is the topic of the hypothesis (text_b); the premise is filler."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(list(CLASS_CHARS))
        a = "".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8)))
        b = "".join(rng.choice(CLASS_CHARS[label]) if rng.random() < 0.7 else rng.choice(FILLER)
                    for _ in range(rng.randint(4, 10)))
        rows.append({"id": f"p{seed}-{i}", "text_a": a, "text_b": b, "label": label})
    return rows


def test_pair_encoding_matches_the_tokenizers_own(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    pairs = [("雨が降る", "晴れ"), ("株", "円と税と金")]
    encoded = encode_texts(tok, pairs, max_length=64)
    for (a, b), ids, types in zip(pairs, encoded.input_ids, encoded.token_type_ids):
        own = tok(a, b)
        assert ids == own["input_ids"] and types == own["token_type_ids"]
        assert 1 in types  # the second text is segment 1
    long = encode_texts(tok, [("雨" * 40, "晴" * 10)], max_length=20)
    assert long.truncated == 1 and len(long.input_ids[0]) == 20
    assert long.input_ids[0] == tok("雨" * 40, "晴" * 10, truncation="longest_first", max_length=20)["input_ids"]
    batch = collate(encoded.input_ids, tok.pad_token_id, "right", encoded.token_type_ids)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_pair_template_for_decoders():
    assert pair_as_text(("犬が走る", "動物が動く"), ["text_a", "text_b"], None) == "犬が走る\n動物が動く"


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {"train": write_jsonl(root / "train.jsonl", pair_rows(120, 1)),
            "dev": write_jsonl(root / "dev.jsonl", pair_rows(30, 2)),
            "test": write_jsonl(root / "test.jsonl", pair_rows(45, 3))}


@pytest.mark.parametrize("arch,adapter,lr", [("bert", "full", 5e-3), ("llama", "lora", 1e-2)])
def test_pair_task_trains_and_reloads(tiny_models, pair_files, tmp_path, arch, adapter, lr):
    cfg = tiny_config(tiny_models[arch], pair_files, tmp_path / "run", adapter={"type": adapter},
                      training={"lr": lr, "epochs": 3})
    cfg["task"] = "pair"
    if arch == "llama":
        cfg["data"]["template"] = "前提: {text_a}\n仮説: {text_b}"
    result = kitae.train(config_from_dict(cfg), progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.7, result.metrics["test"]
    clf = kitae.load(result.run_dir, batch_size=16, merge=False)  # the adapter as trained: exact
    rows = [json.loads(line) for line in pair_files["test"].read_text().splitlines()]
    np.testing.assert_array_equal(clf.logits([(r["text_a"], r["text_b"]) for r in rows]), result.logits["test"])
    assert clf.predict([{"text_a": rows[0]["text_a"], "text_b": rows[0]["text_b"]}])[0].label in clf.labels
