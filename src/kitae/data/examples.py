"""Examples: the text, target and id of every row, built once per split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kitae.config import DataConfig
from kitae.data.readers import Row
from kitae.data.templates import render_text


@dataclass(frozen=True)
class Example:
    id: str
    text: Any  # a string; a (first, second) pair; reward: (chosen, rejected), each maybe (prompt, response)
    target: Any  # task-defined: a class index for single_label
    row: Row


def build_examples(rows: list[Row], data: DataConfig, encode_target: Callable[[Row], Any],
                   split: str, render: Callable[[Row], Any] | None = None,
                   unique_ids: bool = True) -> list[Example]:
    """Render text (with `render`, default: the data section's text_field / template /
    text_fields) and encode the target of every row; ids default to '<split>-<line>'. With
    `unique_ids`, a repeated id gets '#<line>' appended (streaming callers pass False: remembering
    every id would grow with the file)."""
    examples = []
    seen_ids: set[str] = set()
    for row in rows:
        text = (render(row) if render is not None else
                render_text(row, template=data.template, text_field=data.text_field, text_fields=data.pair_fields()))
        raw_id = row.values.get(data.id_field)
        example_id = f"{split}-{row.line}" if raw_id is None or raw_id == "" else str(raw_id)
        if unique_ids:
            if example_id in seen_ids:
                example_id = f"{example_id}#{row.line}"
            seen_ids.add(example_id)
        examples.append(Example(example_id, text, encode_target(row), row))
    return examples
