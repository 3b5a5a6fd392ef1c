"""Turn a data row into the text the model reads: one column, or a template over several."""

from __future__ import annotations

import string

from kitae.data.readers import Row


def template_fields(template: str) -> list[str]:
    """The column names a format-string template uses.

    >>> template_fields("タイトル: {title}\\n本文: {body}")
    ['title', 'body']
    """
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render_text(row: Row, *, template: str | None, text_field: str) -> str:
    """The text of one row; errors name the file, line and field (missing column, empty text)."""
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
