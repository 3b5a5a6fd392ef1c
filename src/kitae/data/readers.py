"""Read tabular data files (.jsonl, .csv, .tsv, .parquet) into rows that remember where they came from.

Every row carries its file and line number, so any later error ("empty text", "unknown label")
can name the exact place to fix.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitae.errors import DataError


@dataclass(frozen=True)
class Row:
    """One record of a data file and where it is (1-based line; for parquet, the row number)."""

    values: dict[str, Any]
    path: Path
    line: int

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)


def read_rows(path: str | Path) -> list[Row]:
    """Read every record of a data file; the format follows the suffix.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"text": "こんにちは", "label": "挨拶"}\\n', encoding="utf-8")
    >>> read_rows(p)[0].values["label"]
    '挨拶'
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(f"unsupported file type '{suffix}' (use .jsonl, .csv, .tsv or .parquet)", path=path)
    if not rows:
        raise DataError("the file holds no rows", path=path)
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
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
            rows.append(Row(value, path, line_number))
    return rows


def _read_delimited(path: Path, delimiter: str) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError("no header row", path=path, line=1)
        line_start = 2
        for record in reader:
            if None in record:
                raise DataError(f"more cells than the {len(reader.fieldnames)} header columns",
                                path=path, line=line_start)
            rows.append(Row(dict(record), path, line_start))
            line_start = reader.line_num + 1
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataError(f"cannot read parquet: {exc}", path=path) from None
    return [Row(record, path, index) for index, record in enumerate(table.to_pylist(), start=1)]
