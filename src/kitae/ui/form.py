"""The run form, generated from the chosen task's config schema: one field per key of that task
(its type, default, choices, bounds and description in English and Japanese), form values -> the
config mapping -> YAML, and validation through `config_from_dict` — the function `kitae config
check` runs, so the page shows the same messages. The page asks for another task's form when its
task changes (`/api/schema?task=...`)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from kitae.config import (
    DEFAULT_TASK,
    SECTION_ORDER,
    TASK_CONFIGS,
    config_from_dict,
    dump_yaml,
    key_defaults,
    task_config_class,
)
from kitae.errors import ConfigError
from kitae.ui.i18n import DESCRIPTIONS_JA, SECTION_TITLES

# Input paths a form may name relative to the folder `kitae ui` was started in.
INPUT_PATHS = ("data.train", "data.dev", "data.test", "data.split_file")
ALWAYS_WRITTEN = ("task",)  # written even at their default: a config reads better with them


@lru_cache(maxsize=len(TASK_CONFIGS))
def form_fields(task: str = DEFAULT_TASK) -> list[dict[str, Any]]:
    """Every key of the task's config as a form field, in schema order (sections as a config
    reads best): path, section, kind (bool, int, float, choice, text, path, yaml), default,
    choices, bounds, required, description (en, ja)."""
    schema = task_config_class(task).model_json_schema()
    defs = schema["$defs"]
    order = {key: i for i, key in enumerate(SECTION_ORDER)}
    properties = dict(sorted(schema["properties"].items(), key=lambda item: order.get(item[0], len(order))))
    fields: list[dict[str, Any]] = []

    def walk(properties: dict[str, Any], required: list[str], prefix: str) -> None:
        for key, prop in properties.items():
            path = f"{prefix}{key}"
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
            if ref:
                sub = defs[ref.split("/")[-1]]
                walk(sub["properties"], sub.get("required", []), f"{path}.")
                continue
            fields.append(_field(path, prefix.rstrip("."), prop, key in required))

    walk(properties, schema.get("required", []), "")
    return fields


def _task_of(values: dict[str, Any]) -> str:
    """The task whose form the values fill (an unknown task: the default's, and validation names it)."""
    task = values.get("task")
    return task if isinstance(task, str) and task in TASK_CONFIGS else DEFAULT_TASK


def _field(path: str, section: str, prop: dict[str, Any], required: bool) -> dict[str, Any]:
    options = [a for a in prop.get("anyOf", [prop]) if a.get("type") != "null"]
    nullable = len(options) < len(prop.get("anyOf", [prop]))
    field: dict[str, Any] = {"path": path, "section": section, "key": path.rsplit(".", 1)[-1],
                             "required": required, "nullable": nullable,
                             "default": prop.get("default"),
                             "description": {"en": prop.get("description", ""), "ja": DESCRIPTIONS_JA.get(path, "")}}
    single = options[0] if len(options) == 1 else None
    if path == "task":  # one value in a task's schema: offer every task of the registry
        field.update(kind="choice", choices=list(TASK_CONFIGS))
    elif single is not None and "enum" in single:
        field.update(kind="choice", choices=list(single["enum"]))
    elif single is not None and single.get("type") == "boolean":
        field["kind"] = "bool"
    elif single is not None and single.get("type") in ("integer", "number"):
        field["kind"] = "int" if single["type"] == "integer" else "float"
        field["bounds"] = {k: single[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
                           if k in single}
    elif single is not None and single.get("type") == "string":
        field["kind"] = "path" if single.get("format") == "path" else "text"
    else:  # lists, mappings and unions (e.g. 0.5 | 'tune' | {category: t}): written as YAML
        field["kind"] = "yaml"
    if field["kind"] == "yaml" and field["default"] is not None:
        field["default_text"] = _yaml_inline(field["default"])
    return field


def sections(task: str = DEFAULT_TASK) -> list[dict[str, Any]]:
    """The task form's sections in order, with their titles in English and Japanese."""
    seen = list(dict.fromkeys(f["section"] for f in form_fields(task)))
    return [{"section": s, "title": SECTION_TITLES.get(s, {"en": s, "ja": s})} for s in seen]


def _yaml_inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


# --- values <-> config ------------------------------------------------------------------------

def _coerce(field: dict[str, Any], value: Any) -> Any:
    """A form value as the YAML value it stands for; a value that does not parse stays text, so
    validation names the field exactly as `kitae config check` would for the same YAML."""
    kind = field["kind"]
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if value is None:
        return None
    if kind == "bool":
        if isinstance(value, str):
            return {"true": True, "false": False}.get(value.lower(), value)
        return value
    if kind in ("int", "float") and isinstance(value, str):
        parsed = yaml.safe_load(value) if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value) else float(value)
        return parsed if isinstance(parsed, int | float) and not isinstance(parsed, bool) else value
    if kind == "yaml" and isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def values_to_config(values: dict[str, Any]) -> dict[str, Any]:
    """Form values (dotted path -> what the field holds) as a config mapping: keys left at their
    default (or empty) are left out, as in a hand-written config."""
    config: dict[str, Any] = {}
    for field in form_fields(_task_of(values)):  # values of another task's keys are left out
        if field["path"] not in values:
            continue
        value = _coerce(field, values[field["path"]])
        if value is None or (value == field["default"] and field["path"] not in ALWAYS_WRITTEN):
            continue
        node = config
        *parents, last = field["path"].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def config_to_values(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A config mapping as form values (every key of its task: its value or its default), and the
    keys of the mapping the form has no field for (which `kitae config check` would refuse).
    Another task's key at its default is what older versions wrote into every run directory: not
    reported."""
    from kitae.catalog import flatten

    flat = flatten(config)
    fields = form_fields(_task_of(config))
    known = {f["path"] for f in fields}
    defaults = key_defaults()
    values: dict[str, Any] = {}
    for field in fields:
        value = flat.get(field["path"], field["default"])
        if field["kind"] == "yaml":
            value = "" if value is None else _yaml_inline(value)
        elif value is None:
            value = ""
        elif field["kind"] in ("int", "float", "text", "path", "choice") and not isinstance(value, str):
            value = str(value) if field["kind"] != "choice" else value
        values[field["path"]] = value
    # Sections given as empty mappings ({}) flatten to themselves; they hold no unknown key.
    unknown = [k for k in flat if k not in known and not (isinstance(flat[k], dict) and not flat[k])
               and not (k in defaults and flat[k] == defaults[k])]
    return values, unknown


def yaml_to_values(text: str, base_dir: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """A YAML config as form values; with `base_dir`, relative input paths become absolute (the
    form names inputs relative to where `kitae ui` runs, a config file relative to its folder)."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of sections (data:, model:, ...)")
    if base_dir is not None:
        raw = absolute_inputs(raw, base_dir)
    return config_to_values(raw)


def absolute_inputs(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of a config mapping with relative input files and a relative local model folder
    made absolute against `base_dir` (as `kitae train` resolves them against the config's folder)."""
    import copy

    raw = copy.deepcopy(raw)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in (p.split(".", 1)[1] for p in INPUT_PATHS):
        if isinstance(data.get(key), str) and data[key] and not Path(data[key]).is_absolute():
            data[key] = str((base_dir / data[key]).resolve())
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    name = model.get("name")
    if isinstance(name, str) and name and not Path(name).is_absolute() and (base_dir / name).exists():
        model["name"] = str((base_dir / name).resolve())
    return raw


def to_yaml(config: dict[str, Any]) -> str:
    return dump_yaml(config)


def check(values: dict[str, Any], base_dir: Path, source: str = "form") -> dict[str, Any]:
    """Validate form values as `kitae config check` validates a file: the YAML they make, the
    message config check prints ("" when valid), and that message split per field."""
    config = values_to_config(values)
    text = to_yaml(config)
    try:
        config_from_dict(config, base_dir=base_dir, source=source)
    except ConfigError as exc:
        message = str(exc)
        return {"yaml": text, "valid": False, "message": message,
                "errors": split_errors(message, source, _task_of(values))}
    return {"yaml": text, "valid": True, "message": "", "errors": []}


_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*)(?:\.\d+)?: (.*)$", re.S)


def split_errors(message: str, source: str, task: str = DEFAULT_TASK) -> list[dict[str, str]]:
    """A config error message as [{field, message}]: each line `  data.train: ...` of a
    validation error, or each `data.train: ...` part of a file problem; what names no field of
    the task's form goes under field "" (shown at the top of the form)."""
    known = {f["path"] for f in form_fields(task)}
    lines = message.splitlines()
    if lines and lines[0] == f"{source}: invalid config":
        parts = [line.strip() for line in lines[1:]]
    else:
        parts = [p.strip() for p in message.removeprefix(f"{source}: ").split("; ")]
    errors = []
    for part in parts:
        text = part.removeprefix("(top level): ")
        match = _FIELD.match(text)
        field = match.group(1) if match else ""
        while field and field not in known and "." in field:  # data.split.dev.x -> data.split.dev
            field = field.rsplit(".", 1)[0]
        errors.append({"field": field if field in known else "", "message": part})
    return errors
