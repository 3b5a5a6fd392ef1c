"""Turn a data row into the text the model reads: one column, or a template over several."""

from __future__ import annotations

import string
from typing import Any

from kitae.data.readers import Row
from kitae.errors import DataError


def template_fields(template: str) -> list[str]:
    """The column names a format-string template uses.

    >>> template_fields("タイトル: {title}\\n本文: {body}")
    ['title', 'body']
    """
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render_text(row: Row, *, template: str | None, text_field: str,
                text_fields: list[str] | None = None) -> str | tuple[str, str]:
    """The text of one row — or, with `text_fields`, the (first, second) text pair; errors name
    the file, line and field (missing column, empty text)."""
    if text_fields:
        first, second = (render_text(row, template=None, text_field=field) for field in text_fields)
        return first, second
    if template is None:
        value = row.values.get(text_field)
        if text_field not in row.values:
            raise row.error(f"missing column (columns here: {', '.join(map(str, row.values))})", text_field)
        text = "" if value is None else str(value)
        if not text.strip():
            raise row.error("empty text", text_field)
        return text
    values = {}
    for field in template_fields(template):
        if field not in row.values:
            raise row.error(f"missing column used by the template "
                            f"(columns here: {', '.join(map(str, row.values))})", field)
        value = row.values[field]
        values[field] = "" if value is None else value
    text = template.format(**values)
    if not text.strip() or all(not str(v).strip() for v in values.values()):
        raise row.error("empty text: every column the template uses is empty",
                        ",".join(template_fields(template)))
    return text


def pair_as_text(pair: tuple[str, str], text_fields: list[str], template: str | None) -> str:
    """A text pair as one string, for decoders (no pair encoding): the template over the two
    columns, or the two texts on two lines.

    >>> pair_as_text(("犬が走る", "動物が動く"), ["text_a", "text_b"], "前提: {text_a}\\n仮説: {text_b}")
    '前提: 犬が走る\\n仮説: 動物が動く'
    """
    if template is None:
        return f"{pair[0]}\n{pair[1]}"
    return template.format(**dict(zip(text_fields, pair)))


def as_model_texts(texts: list[Any], text_fields: list[str] | None, template: str | None,
                   is_decoder: bool) -> list[Any]:
    """What the model reads: text pairs stay pairs for encoders (the tokenizer's pair encoding)
    and become one string for decoders (the pair template).

    >>> as_model_texts([("犬", "猫")], ["a", "b"], None, is_decoder=True)
    ['犬\\n猫']
    >>> as_model_texts([("犬", "猫")], ["a", "b"], None, is_decoder=False)
    [('犬', '猫')]
    """
    pairs = bool(text_fields) and len(text_fields) > 1  # type: ignore[arg-type]
    for text in texts:
        if pairs and not (isinstance(text, tuple) and len(text) == len(text_fields)):  # type: ignore[arg-type]
            raise DataError(f"this run reads text pairs ({', '.join(text_fields)}): give pairs, or rows "  # type: ignore[arg-type]
                            f"with those columns, not {type(text).__name__} {str(text)[:40]!r}")
        if not pairs and not isinstance(text, str):
            raise DataError(f"this run reads single texts: give strings (or rows with its columns), not "
                            f"{type(text).__name__} {str(text)[:40]!r}")
    if pairs and is_decoder:
        return [pair_as_text(t, text_fields, template) for t in texts]  # type: ignore[arg-type]
    return texts
