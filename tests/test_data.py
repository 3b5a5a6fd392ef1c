"""Readers, templates, splits and batching."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kitae.data.batching import collate, encode_texts, epoch_batches
from kitae.data.readers import read_rows
from kitae.data.splits import stratified_split, stratified_subset
from kitae.data.templates import render_text, template_fields

ROWS = [{"id": "a", "title": "台風", "body": "上陸の恐れ", "label": "天気"},
        {"id": "b", "title": "株価", "body": "続伸", "label": "経済"}]


def test_all_formats_read_the_same_rows(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    header = "id,title,body,label\n"
    (tmp_path / "d.csv").write_text(header + "".join(",".join(r.values()) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "d.tsv").write_text(header.replace(",", "\t") + "".join("\t".join(r.values()) + "\n" for r in ROWS),
                                    encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for suffix in ("jsonl", "csv", "tsv", "parquet"):
        rows = read_rows(tmp_path / f"d.{suffix}")
        assert [r.values for r in rows] == ROWS, suffix
        assert [r.line for r in rows] == ([1, 2] if suffix in ("jsonl", "parquet") else [2, 3])


def test_csv_line_numbers_count_multiline_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"一行目\n二行目",天気\n株,経済\n', encoding="utf-8")
    assert [r.line for r in read_rows(path)] == [2, 4]


def test_template_renders_columns():
    from pathlib import Path

    from kitae.data.readers import Row

    row = Row(ROWS[0], Path("x.jsonl"), 1)
    assert template_fields("タイトル: {title}\n本文: {body}") == ["title", "body"]
    assert render_text(row, template="タイトル: {title}\n本文: {body}", text_field="text") == "タイトル: 台風\n本文: 上陸の恐れ"
    assert render_text(row, template=None, text_field="title") == "台風"


@pytest.mark.parametrize("n,fractions", [(100, [0.1, 0.1]), (737, [0.1]), (45, [0.2, 0.0])])
def test_stratified_split_sizes_and_proportions(n, fractions):
    keys = [i % 3 if i % 7 else 3 for i in range(n)]
    parts = stratified_split(list(range(n)), keys, fractions, seed=1)
    assert sorted(sum(parts, [])) == list(range(n))  # a partition
    for part, fraction in zip(parts[1:], fractions):
        assert len(part) == round(n * fraction)
        for key, count in Counter(keys).items():
            assert abs(sum(keys[i] == key for i in part) - count * fraction) <= 1
    assert parts == stratified_split(list(range(n)), keys, fractions, seed=1)  # reproducible


def test_stratified_subset_exact_size():
    keys = [i % 9 for i in range(737)]
    assert len(stratified_subset(list(range(737)), keys, 90, seed=0)) == 90


def test_epoch_batches_reproducible_and_cover_all():
    lengths = np.random.default_rng(0).integers(1, 50, size=103)
    a = epoch_batches(lengths, 8, seed=3, epoch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, 8, seed=3, epoch=1)]
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, 8, seed=3, epoch=2)]


def test_length_grouping_reduces_padding():
    lengths = np.random.default_rng(0).integers(2, 120, size=800)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = padded(epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=True))
    plain = padded(epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=False))
    assert grouped < 0.7 * plain


def test_collate_positions_left_and_right():
    right = collate([[5, 6, 7], [8]], pad_token_id=0, padding_side="right")
    left = collate([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert right["pool_positions"].tolist() == [2, 0]
    assert left["pool_positions"].tolist() == [2, 2]
    assert torch.equal(left["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))


def test_truncation_keeps_final_special_token(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    encoded = encode_texts(tok, ["雨" * 50, "晴れ"], max_length=10)
    assert encoded.truncated == 1
    assert len(encoded.input_ids[0]) == 10 and encoded.input_ids[0][-1] == tok.sep_token_id
    assert encoded.input_ids[1] == tok("晴れ")["input_ids"]
