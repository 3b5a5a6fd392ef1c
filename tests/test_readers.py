"""Data readers: encodings, decode errors that name the line, .json arrays, CSV line numbers and
ragged rows, OS errors, streaming and row counts."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kitae.config import config_from_dict
from kitae.data.readers import count_rows, iter_rows, read_rows
from kitae.errors import ConfigError, DataError

# 「ソ」 and 「表」 end in the byte 0x5C ("\") in CP932: a reader splitting on ASCII would break them.
CP932_CSV = "text,label\n株価が続伸,経済\nソ,表\n"
CP932_ROWS = [{"text": "株価が続伸", "label": "経済"}, {"text": "ソ", "label": "表"}]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _error(path: Path, encoding: str = "utf-8") -> str:
    with pytest.raises(DataError) as info:
        read_rows(path, encoding=encoding)
    return str(info.value)


def test_cp932_csv_names_the_file_line_and_encoding_to_set(tmp_path):
    path = _write(tmp_path / "excel.csv", CP932_CSV.encode("cp932"))
    assert "ソ".encode("cp932")[-1:] == b"\\"
    message = _error(path)
    assert message.startswith(f"{path}, line 2: not valid UTF-8 (byte 0x")
    assert "Shift-JIS / CP932" in message and message.endswith("set data.encoding: cp932")
    rows = read_rows(path, encoding="cp932")
    assert [r.values for r in rows] == CP932_ROWS and [r.line for r in rows] == [2, 3]


def test_cp932_jsonl_names_the_line_and_reads_with_cp932(tmp_path):
    lines = ['{"text": "ascii only", "label": "a"}', "", *(json.dumps(r, ensure_ascii=False) for r in CP932_ROWS)]
    path = _write(tmp_path / "d.jsonl", "\n".join(lines).encode("cp932"))
    message = _error(path)
    assert f"{path}, line 3: not valid UTF-8" in message and "data.encoding: cp932" in message
    rows = read_rows(path, encoding="cp932")
    assert [r.values for r in rows][1:] == CP932_ROWS and [r.line for r in rows] == [1, 3, 4]


def test_utf8_bom_does_not_reach_the_header(tmp_path):
    path = _write(tmp_path / "bom.csv", "text,label\nA,x\n".encode("utf-8-sig"))
    assert [r.values for r in iter_rows(path, encoding="utf-8")] == [{"text": "A", "label": "x"}]
    assert [r.values for r in iter_rows(path, encoding="UTF8")] == [{"text": "A", "label": "x"}]
    path = _write(tmp_path / "bom.json", '[{"text": "A"}]'.encode("utf-8-sig"))  # an array after the BOM
    assert [r.values for r in iter_rows(path, encoding="utf-8")] == [{"text": "A"}]


def test_utf16_file_asks_for_utf16_and_reads_with_it(tmp_path):
    path = _write(tmp_path / "wide.tsv", "text\tlabel\n株価\t経済\n".encode("utf-16"))
    for encoding in ("utf-8", "cp932"):
        assert _error(path, encoding) == (f"{path}: this file is UTF-16 (it starts with a UTF-16 byte order "
                                          "mark): set data.encoding: utf-16")
    assert [r.values for r in read_rows(path, encoding="utf-16")] == [{"text": "株価", "label": "経済"}]


def test_utf16_decode_error_names_its_line_without_cp932_hint(tmp_path):
    data = "text,label\nA,x\nB,y\n".encode("utf-16")[:-1]  # ends inside a character
    message = _error(_write(tmp_path / "cut.csv", data), "utf-16")
    assert "line 3: not valid utf-16" in message and "cp932" not in message


def test_bad_byte_that_is_not_cp932_either_names_its_line_only(tmp_path):
    data = b"text,label\nA,x\ncaf\xe9,y\nB,z\n"  # Latin-1 "café"
    with pytest.raises(UnicodeDecodeError):
        data.decode("cp932")
    message = _error(_write(tmp_path / "latin.csv", data))
    assert message == f"{tmp_path / 'latin.csv'}, line 3: not valid UTF-8 (byte 0xe9)"
    assert [r.values["text"] for r in read_rows(tmp_path / "latin.csv", "latin-1")] == ["A", "café", "B"]


def test_json_array_is_read_as_rows(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n" + json.dumps(CP932_ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    rows = read_rows(path)
    assert [r.values for r in rows] == CP932_ROWS and [r.line for r in rows] == [1, 2]
    assert count_rows(path) is None
    path.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")  # .json may still be JSON Lines
    assert [r.line for r in read_rows(path)] == [1, 2]


def test_json_array_element_that_is_not_an_object_is_named_by_its_row(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a"}, {"text": "b"}, "c"]', encoding="utf-8")
    assert _error(path) == f"{path}, line 3: expected a JSON object for each element of the array, got str (element 3)"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]\n', encoding="utf-8")
    assert _error(path).startswith(f"{path}, line 4: not valid JSON")
    path.write_text("[]", encoding="utf-8")
    assert _error(path) == f"{path}: the file holds no rows"


def test_csv_line_numbers_after_blank_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nA,x\n\nB,y\n", encoding="utf-8")
    assert [r.line for r in read_rows(path)] == [2, 4]
    path.write_text('text,label\n\n"two\nlines",x\n\n\nC,z\n', encoding="utf-8")
    assert [(r.line, r.values["text"]) for r in read_rows(path)] == [(3, "two\nlines"), (7, "C")]


@pytest.mark.parametrize("record,cells", [("only-text", 1), ("A,x,extra", 3)])
def test_csv_ragged_row_names_its_line(tmp_path, record, cells):
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\nA,x\n\n{record}\n", encoding="utf-8")
    assert _error(path) == f"{path}, line 4: {cells} cells, but the header has 2 columns (text, label)"


def test_csv_header_problems(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\nA,x,B\n", encoding="utf-8")
    assert _error(path) == f"{path}, line 1, field 'text': the header names this column more than once"
    path.write_text("text,label,,\nA,x,,\n", encoding="utf-8")
    assert read_rows(path)[0].values == {"text": "A", "label": "x", "": ""}
    path.write_bytes(b"")
    assert _error(path) == f"{path}: the file holds no rows"
    path.write_text("text,label\n", encoding="utf-8")
    assert _error(path) == f"{path}: the file holds no rows"


def test_directory_is_not_a_data_file(tmp_path):
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    assert _error(folder) == f"{folder}: is a directory, not a data file"
    raw = {"data": {"train": "train.jsonl"}, "model": {"name": "m"}, "output": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match=r"data\.train: is a directory, not a file"):
        config_from_dict(raw, base_dir=tmp_path)


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "train.jsonl"
    if os.geteuid() == 0:  # root reads any file: /proc/self/mem opens, but reading offset 0 fails (EIO)
        path.symlink_to("/proc/self/mem")
    else:
        path.write_text('{"text": "a"}\n', encoding="utf-8")
        path.chmod(0)
    try:
        message = _error(path)
    finally:
        path.unlink()
    assert message.startswith(f"{path}: cannot read: ")


def test_iter_rows_streams(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "株価が続伸した" * 4, "label": "経済"}, ensure_ascii=False) + "\n"
    path.write_text(line * 200_000, encoding="utf-8")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rows = iter_rows(path)
        first = next(rows)
        peak = tracemalloc.get_traced_memory()[1]
        del rows
    finally:
        tracemalloc.stop()
    assert first.line == 1 and first.values["label"] == "経済"
    assert peak < size / 50, (peak, size)


def test_iter_rows_raises_no_rows_at_the_end(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    rows = iter_rows(path)
    with pytest.raises(DataError, match="the file holds no rows"):
        next(rows)


def test_count_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n{"a": 3}', encoding="utf-8")
    assert count_rows(path) == 3 == len(read_rows(path))
    (tmp_path / "d.csv").write_text("a\n1\n", encoding="utf-8")
    assert count_rows(tmp_path / "d.csv") is None


def test_parquet_streams_the_same_rows(tmp_path):
    records = [{"id": i, "text": f"文{i}", "label": "ab"[i % 2]} for i in range(2500)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=1000)
    rows = list(iter_rows(path))
    assert [r.values for r in rows] == pq.read_table(path).to_pylist() == records
    assert [r.line for r in rows] == list(range(1, 2501))
    assert count_rows(path) == 2500

    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": ["株価が続伸した" * 4] * 200_000, "label": ["経済"] * 200_000}), big,
                   row_group_size=20_000)
    tracemalloc.start()
    try:
        rows = iter_rows(big)
        first = next(rows)
        peak = tracemalloc.get_traced_memory()[1]
        del rows
    finally:
        tracemalloc.stop()
    assert first.values == {"text": "株価が続伸した" * 4, "label": "経済"}
    assert peak < 5_000_000, peak  # all 200,000 rows as dicts take over 50 MB


def test_encoding_is_validated_and_used_by_prepare(tmp_path):
    raw = {"data": {"train": "train.csv", "encoding": "nonsense"}, "model": {"name": "m"},
           "output": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match=r"data\.encoding: 'nonsense' is not a text encoding"):
        config_from_dict(raw, check_files=False)
    with pytest.raises(ConfigError, match=r"data\.encoding"):
        config_from_dict({**raw, "data": {**raw["data"], "encoding": "base64"}}, check_files=False)

    from kitae.data.prepare import prepare_data

    body = "".join(f"{text}{i},{label}\n" for i in range(10) for text, label in (("株価が続伸", "経済"), ("ソ表", "表")))
    _write(tmp_path / "train.csv", ("text,label\n" + body).encode("cp932"))
    config = config_from_dict({**raw, "data": {"train": "train.csv", "encoding": "cp932"}}, base_dir=tmp_path)
    task, examples = prepare_data(config)
    assert task.labels == ["経済", "表"]
    assert sum(len(split) for split in examples.values()) == 20
