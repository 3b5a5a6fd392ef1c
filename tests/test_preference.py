"""Preference data (chosen / rejected) as single-label examples: two per pair, never split apart."""

from __future__ import annotations

import random

import pytest
from conftest import CLASS_CHARS, FILLER, write_jsonl

from kitae.api import prepare_data
from kitae.config import config_from_dict
from kitae.errors import DataError


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good, bad = CLASS_CHARS["料理"], CLASS_CHARS["経済"]
    return [{"id": f"pref{i}",
             "chosen": "".join(rng.choice(good + FILLER) for _ in range(8)),
             "rejected": "".join(rng.choice(bad + FILLER) for _ in range(8))} for i in range(n)]


def test_each_pair_becomes_two_examples_in_the_same_split(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", preference_rows(50, 1))
    cfg = config_from_dict({"data": {"train": str(path), "from_preference": True,
                                     "split": {"dev": 0.2, "test": 0.2, "seed": 3}},
                            "model": {"name": "m"}, "output": "o"})
    task, examples = prepare_data(cfg)
    assert task.labels == ["rejected", "chosen"]
    sizes = {name: len(split) for name, split in examples.items()}
    assert sizes == {"train": 60, "dev": 20, "test": 20}
    pair_split = {}
    for name, split in examples.items():
        for example in split:
            pair = example.id.rsplit("-", 1)[0]
            assert pair_split.setdefault(pair, name) == name  # no pair straddles two splits
        assert sum(e.target for e in split) == len(split) // 2  # half chosen (1), half rejected (0)
    first = next(e for e in examples["train"] if e.id.endswith("-chosen"))
    assert first.text == next(r for r in preference_rows(50, 1) if r["id"] == first.id[:-7])["chosen"]


def test_from_preference_with_a_prompt_makes_prompt_response_pairs(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"問{i}", "chosen": f"良{i}", "rejected": f"悪{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    cfg = config_from_dict({"data": {"train": str(path), "from_preference": True, "prompt_field": "prompt",
                                     "split": {"dev": 0.2, "test": 0.0}},
                            "model": {"name": "m"}, "output": "o"})
    task, examples = prepare_data(cfg)
    texts = {e.id: e.text for split in examples.values() for e in split}
    assert texts["p3-chosen"] == ("問3", "良3") and texts["p3-rejected"] == ("問3", "悪3")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "chosen": "良", "rejected": "悪"}])
    cfg.data.train = bad
    with pytest.raises(DataError, match=r"line 1, field 'prompt': missing column"):
        prepare_data(cfg)


def test_subsets_of_preference_data_keep_whole_pairs(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", preference_rows(50, 1))
    cfg = config_from_dict({"data": {"train": str(path), "from_preference": True, "max_train_examples": 7,
                                     "max_eval_examples": 3, "split": {"dev": 0.2, "test": 0.2, "seed": 3}},
                            "model": {"name": "m"}, "output": "o"})
    _, examples = prepare_data(cfg)
    for name, pairs in (("train", 7), ("dev", 3), ("test", 3)):
        split = examples[name]
        ids = [e.id.rsplit("-", 1)[0] for e in split]
        assert len(split) == 2 * pairs and len(set(ids)) == pairs  # both halves of every pair
