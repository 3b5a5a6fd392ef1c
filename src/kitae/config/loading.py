"""From YAML (or a mapping) to the task's run config, and back; error messages that name the key.

A YAML file (plus `--set key=value` overrides) becomes one of the per-task configs
(kitae.config.tasks), chosen by `task`; nothing deeper in kitae reads raw dicts. A key another task
has is refused with the task(s) it belongs to; a key no task has keeps the "unknown key" message
with a "did you mean".

Relative paths of *inputs* (data files, a local model folder) are resolved against the folder of
the config file, so an example runs from any working directory; `output` is relative to the
current directory, like any output path on a command line.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from kitae.config.hints import did_you_mean
from kitae.config.sections import Section
from kitae.config.tasks import DEFAULT_TASK, SECTION_ORDER, TASK_CONFIGS, AnyRunConfig, RunConfig
from kitae.errors import ConfigError


@cache
def _union() -> TypeAdapter[Any]:
    return TypeAdapter(AnyRunConfig)


def read_yaml_mapping(path: Path, what: str, shape: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, or one ConfigError: missing, not YAML, or `shape`
    (what the mapping should look like) when it holds something else."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {shape}")
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply `key.sub=value` overrides, validate, and check input files exist."""
    path = Path(path)
    raw = read_yaml_mapping(path, "config", "the config must be a mapping of sections (data:, model:, ...)")
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw, base_dir=path.parent, source=str(path))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (1e-4, true, [a, b])."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. training.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value


def config_from_dict(raw: dict[str, Any], base_dir: Path = Path("."), source: str = "config",
                     check_files: bool = True) -> RunConfig:
    """Validate a config mapping; resolve input paths against `base_dir`; check they exist."""
    config = validate_config(raw, source)
    _resolve_inputs(config, base_dir)
    if not check_files:
        return config
    problems = []
    for name in ("train", "dev", "test", "split_file"):
        value = getattr(config.data, name)
        if value is not None and value.is_dir():
            problems.append(f"data.{name}: is a directory, not a file: {value}")
        elif value is not None and not value.is_file():
            problems.append(f"data.{name}: file not found: {value}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """The mapping as its task's run config (through the union on `task`), or a ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections (data:, model:, ...)")
    task = _task_name(raw, source)
    try:
        return _union().validate_python({**raw, "task": task})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, TASK_CONFIGS[task])) from None


def _task_name(raw: dict[str, Any], source: str) -> str:
    """The config's task (default single_label); an unknown one is the only error worth naming:
    which other keys are right depends on it."""
    task = raw.get("task", DEFAULT_TASK)
    if isinstance(task, str) and task in TASK_CONFIGS:
        return task
    names = list(TASK_CONFIGS)
    raise ConfigError(f"{source}: invalid config\n  task: unknown task '{task}'{did_you_mean(str(task), names)}; "
                      f"known: {', '.join(names)} (got {task!r})")


def task_config_class(task: str) -> type[RunConfig]:
    """The run config class of a task; a ConfigError names the known tasks."""
    if task not in TASK_CONFIGS:
        names = list(TASK_CONFIGS)
        raise ConfigError(f"unknown task '{task}'{did_you_mean(task, names)}; known: {', '.join(names)}")
    return TASK_CONFIGS[task]


def task_schema(task: str | None = None) -> dict[str, Any]:
    """The JSON schema of one task's config; without a task, the union of all (`task` picks one)."""
    if task is None:
        return _union().json_schema()
    return task_config_class(task).model_json_schema()


def _resolve_inputs(config: RunConfig, base_dir: Path) -> None:
    for name in ("train", "dev", "test", "split_file"):
        value = getattr(config.data, name)
        if value is not None and not value.is_absolute():
            setattr(config.data, name, (base_dir / value).resolve())
    # A local model folder (or .gguf file) named relative to the config file.
    local_model = base_dir / config.model.name
    if not Path(config.model.name).is_absolute() and local_model.exists():
        config.model.name = str(local_model.resolve())


# --- which task has which key ---------------------------------------------------------------------

def _section_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    if field is None:
        return None
    candidates = getattr(field.annotation, "__args__", (field.annotation,))
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


@cache
def task_keys(task: str) -> frozenset[str]:
    """Every key of a task's config as a dotted path: sections and the keys in them."""
    model = TASK_CONFIGS[task]
    keys = set()
    for name in model.model_fields:
        keys.add(name)
        section = _section_model(model, name)
        if section is not None and issubclass(section, Section):
            keys.update(f"{name}.{key}" for key in section.model_fields)
    return frozenset(keys)


@cache
def key_owners() -> dict[str, tuple[str, ...]]:
    """Dotted key -> the tasks whose config has it (registry order)."""
    owners: dict[str, list[str]] = {}
    for task in TASK_CONFIGS:
        for key in task_keys(task):
            owners.setdefault(key, []).append(task)
    return {key: tuple(tasks) for key, tasks in owners.items()}


@cache
def key_defaults() -> dict[str, Any]:
    """Dotted key of a section -> its default, over every task (required keys have none)."""
    defaults: dict[str, Any] = {}
    for model in TASK_CONFIGS.values():
        for name in model.model_fields:
            section = _section_model(model, name)
            if section is None or not issubclass(section, Section):
                continue
            for key, field in section.model_fields.items():
                if not field.is_required():
                    defaults[f"{name}.{key}"] = field.get_default(call_default_factory=True)
    return defaults


def foreign_keys(raw: dict[str, Any], task: str) -> list[str]:
    """The dotted keys of a config mapping that belong to other tasks, not to `task`."""
    keys, owners, found = task_keys(task), key_owners(), []
    for name, value in raw.items():
        if name not in keys and name in owners:
            found.append(name)
        elif name in keys and isinstance(value, dict):
            found += [f"{name}.{k}" for k in value if f"{name}.{k}" not in keys and f"{name}.{k}" in owners]
    return found


def without_foreign_keys(raw: dict[str, Any], task: str) -> dict[str, Any]:
    """A copy of the mapping without other tasks' keys: what a run directory of an older kitae,
    which wrote every task's keys at their defaults, means."""
    dropped = set(foreign_keys(raw, task))
    return {name: ({k: v for k, v in value.items() if f"{name}.{k}" not in dropped} if isinstance(value, dict)
                   else value)
            for name, value in raw.items() if name not in dropped}


def _belongs(key: str, task: str) -> str:
    tasks = key_owners()[key]
    named = tasks[0] if len(tasks) == 1 else f"{', '.join(tasks[:-1])} and {tasks[-1]}"
    return f"  {key}: belongs to task{'s' if len(tasks) > 1 else ''} {named}, not {task}"


# --- messages ---------------------------------------------------------------------------------------

def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem, each naming its key. `model`: the class validated (a task's run
    config: the errors came through the union, whose tag is the first part of each location)."""
    task = model.model_fields["task"].default if model is not None and issubclass(model, RunConfig) else None
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        if task is not None and loc[:1] == (task,):
            loc = loc[1:]
        path = ".".join(str(part) for part in loc)
        if err["type"] == "extra_forbidden":
            lines += _extra_key_lines(loc, err.get("input"), model, task)
        elif err["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {path or '(top level)'}: {msg}{shown}")
    return "\n".join(lines)


def _extra_key_lines(loc: tuple[Any, ...], value: Any, model: type[BaseModel] | None, task: str | None) -> list[str]:
    path = ".".join(str(part) for part in loc)
    if task is not None and path in key_owners():
        # A whole section of other tasks: name the keys written in it when every one is theirs.
        inner = [f"{path}.{k}" for k in value] if isinstance(value, dict) else []
        if inner and all(key in key_owners() for key in inner):
            return [_belongs(key, task) for key in inner]
        return [_belongs(path, task)]
    known = _fields_at(loc[:-1], model) if model is not None else []
    key = str(loc[-1])
    return [f"  {path}: unknown key{did_you_mean(key, known)}" + (f" (known: {', '.join(known)})" if known else "")]


def _fields_at(loc: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    current: type[BaseModel] | None = model
    for part in loc:
        current = _section_model(current, str(part))
        if current is None:
            return []
    return list(current.model_fields)


# --- run directories ---------------------------------------------------------------------------------

def read_saved_config(path: str | Path) -> RunConfig:
    """A run directory's resolved config.yaml (no file-existence checks: the data may have moved).
    Run directories of older kitae versions hold every task's keys; the other tasks' are dropped."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data:, model:, ...)")
    task = _task_name(raw, str(path))
    return validate_config(without_foreign_keys(raw, task), str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (written to the run directory), sections in
    the order a config reads best."""
    data = config.model_dump(mode="json")
    return {key: data[key] for key in sorted(data, key=lambda k: SECTION_ORDER.index(k)
                                              if k in SECTION_ORDER else len(SECTION_ORDER))}


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
