"""Read tabular data files (.jsonl, .json, .csv, .tsv, .parquet) into rows that remember where they came from.

Every row carries its file and line number, so any later error ("empty text", "unknown label")
can name the exact place to fix. Text files are decoded with the run's `data.encoding` (UTF-8 by
default; a UTF-8 byte order mark is always accepted); a file that does not decode is one clear
error naming its line and, when it can tell, the encoding to set instead.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitae.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_CHUNK_BYTES = 1 << 16
# Parquet rows become Python dicts one batch at a time (pyarrow's default batch is 65,536 rows).
_PARQUET_BATCH_ROWS = 1024
# Checked before decoding: a UTF-16/32 file read with a byte-oriented codec decodes to garbage
# (latin-1) or fails on the first byte, neither of which tells the user what to set.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_CP932_HINT = "it looks like Shift-JIS / CP932 (Excel's Japanese CSV): set data.encoding: cp932"


@dataclass(frozen=True)
class Row:
    """One record of a data file and where it is: the 1-based line where the record starts; for
    parquet and for a .json array of objects, the 1-based row number (reported as the "line")."""

    values: dict[str, Any]
    path: Path
    line: int

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)


def read_rows(path: str | Path, encoding: str = "utf-8") -> list[Row]:
    """Read every record of a data file; the format follows the suffix.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"text": "こんにちは", "label": "挨拶"}\\n', encoding="utf-8")
    >>> read_rows(p)[0].values["label"]
    '挨拶'
    """
    return list(iter_rows(path, encoding))


def iter_rows(path: str | Path, encoding: str = "utf-8") -> Iterator[Row]:
    """Stream the records of a data file one by one (memory does not grow with the file, except for
    a .json array, which is parsed whole). Raises DataError "the file holds no rows" at the end
    when the file yields nothing.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
    >>> _ = p.write_text("text,label\\n晴れ,天気\\n\\n円高,経済\\n", encoding="utf-8")
    >>> [(row.line, row.values["label"]) for row in iter_rows(p)]
    [(2, '天気'), (4, '経済')]
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _checked(path, _parquet_rows(path))
    # Read as utf-8-sig so a byte order mark never leaks into the first column name or value.
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    return _checked(path, _text_rows(path, suffix, codec, encoding))


def iter_chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    """Rows in lists of `size` (the last one shorter): streaming in chunks.

    >>> [len(c) for c in iter_chunks(iter(range(5)), 2)]
    [2, 2, 1]
    """
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_rows(path: str | Path) -> int | None:
    """A cheap row count for a progress bar: the non-blank lines of a .jsonl file (counted on bytes,
    in any ASCII-compatible encoding), the metadata of a parquet file; None for other formats,
    where counting would mean parsing the file (CSV/TSV cells may span lines, .json may be an array)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as parquet:
                return parquet.metadata.num_rows
        if suffix == ".jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
    except OSError as exc:
        raise _os_error(path, exc) from None
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataError(f"cannot read parquet: {exc}", path=path) from None
    return None


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError("is a directory, not a data file", path=path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("not a regular file", path=path)
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"unsupported file type '{path.suffix}' (use .jsonl, .json, .csv, .tsv or .parquet)",
                        path=path)


def _os_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot read: {exc.strerror or exc}", path=path)


def _checked(path: Path, rows: Iterator[Row]) -> Iterator[Row]:
    """Turn OS errors into DataErrors naming the file, and an empty file into an error."""
    empty = True
    try:
        for row in rows:
            empty = False
            yield row
    except OSError as exc:
        raise _os_error(path, exc) from None
    if empty:
        raise DataError("the file holds no rows", path=path)


def _text_rows(path: Path, suffix: str, codec: str, encoding: str) -> Iterator[Row]:
    with path.open("rb") as handle:
        start = handle.read(4)
    wide = next((name for bom, name in _WIDE_BOMS if start.startswith(bom)), None)
    if wide and not _is_wide(codec):
        raise DataError(f"this file is {wide.upper()} (it starts with a {wide.upper()} byte order mark): "
                        f"set data.encoding: {wide}", path=path)
    try:
        # newline="": lines keep their ends, so csv sees quoted line breaks as they are.
        with path.open(encoding=codec, newline="") as handle:
            if suffix == ".jsonl":
                yield from _jsonl_rows(path, handle)
            elif suffix == ".json":
                yield from _json_rows(path, handle)
            else:
                yield from _delimited_rows(path, handle, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, codec, encoding, exc) from None


def _jsonl_rows(path: Path, lines: Iterable[str], first_line: int = 1) -> Iterator[Row]:
    for line_number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg} at character {exc.pos + 1})",
                            path=path, line=line_number) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object per line, got {type(value).__name__}",
                            path=path, line=line_number)
        yield Row(value, path, line_number)


def _json_rows(path: Path, lines: Iterator[str]) -> Iterator[Row]:
    """A .json file: a JSON array of objects when it starts with '[', else JSON Lines."""
    blank = 0
    for first in lines:
        if first.strip():
            break
        blank += 1
    else:
        return
    if not first.lstrip().startswith("["):
        yield from _jsonl_rows(path, itertools.chain([first], lines), first_line=blank + 1)
        return
    try:
        values = json.loads(first + "".join(lines))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg}, column {exc.colno})", path=path,
                        line=blank + exc.lineno) from None
    for number, value in enumerate(values, start=1):
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object for each element of the array, got "
                            f"{type(value).__name__} (element {number})", path=path, line=number)
        yield Row(value, path, number)


def _delimited_rows(path: Path, lines: Iterable[str], delimiter: str) -> Iterator[Row]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return  # an empty file: "the file holds no rows"
        if not header:
            raise DataError("no header row", path=path, line=1)
        # Empty names (Excel's trailing commas) may repeat: no config can name those columns.
        duplicate = next((name for name in header if name and header.count(name) > 1), None)
        if duplicate is not None:
            raise DataError("the header names this column more than once", path=path, line=1, field=duplicate)
        # A record starts on the line after the previous one ended (reader.line_num counts
        # physical lines, including those inside quoted cells and blank ones).
        start = reader.line_num + 1
        for record in reader:
            if record:  # [] is a blank line
                if len(record) != len(header):
                    raise DataError(f"{len(record)} cells, but the header has {len(header)} columns "
                                    f"({_preview(header)})", path=path, line=start)
                yield Row(dict(zip(header, record)), path, start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"not valid CSV ({exc})", path=path, line=reader.line_num) from None


def _preview(names: list[str], shown: int = 5) -> str:
    return ", ".join(names if len(names) <= shown + 1 else [*names[:shown], "..."])


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    number = 0
    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for record in batch.to_pylist():
                    number += 1
                    yield Row(record, path, number)
    except OSError:
        raise  # _checked names the file
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataError(f"cannot read parquet: {exc}", path=path) from None


def _decode_error(path: Path, codec: str, encoding: str, exc: UnicodeDecodeError) -> DataError:
    """The text reader decodes ahead in chunks, so its error does not say which line is at fault:
    decode the file again to find it, and check whether the file is CP932 instead."""
    line, byte = _first_undecodable(path, codec) or (None, exc.object[exc.start])
    name = "UTF-8" if codec == "utf-8-sig" else encoding
    message = f"not valid {name} (byte 0x{byte:02x})"
    # A UTF-16/32 file decodes as CP932 too (its NULs are valid): the hint is for byte-oriented codecs.
    if not _is_wide(codec) and codecs.lookup(codec).name != "cp932" and _first_undecodable(path, "cp932") is None:
        message += f"; {_CP932_HINT}"
    return DataError(message, path=path, line=line)


def _is_wide(codec: str) -> bool:
    return codecs.lookup(codec).name.startswith(("utf-16", "utf-32"))


def _first_undecodable(path: Path, codec: str) -> tuple[int, int] | None:
    """(line, first byte) of the first sequence of the file `codec` cannot decode, or None when
    the whole file decodes. Streams the file; a failing chunk is re-decoded byte by byte."""
    decoder = codecs.getincrementaldecoder(codec)()
    line = 1
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            state = decoder.getstate()
            try:
                line += decoder.decode(chunk).count("\n")
                continue
            except UnicodeDecodeError:
                decoder.setstate(state)
            for index in range(len(chunk)):
                try:
                    line += decoder.decode(chunk[index:index + 1]).count("\n")
                except UnicodeDecodeError as exc:
                    return line, exc.object[exc.start]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # the file ends inside a character
            return line, exc.object[exc.start]
    return None
