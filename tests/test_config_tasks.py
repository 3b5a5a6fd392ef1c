"""Per-task configs (no model, no torch needed): a key of another task is refused with one line
naming it and the task(s) it belongs to; each task's schema has its own keys; loading a config
imports no torch; run directories of the previous release still read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kitae.cli import app
from kitae.config import (
    TASK_CONFIGS,
    config_from_dict,
    config_to_dict,
    read_saved_config,
    task_keys,
    task_schema,
)
from kitae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"train": "t.jsonl"}, "model": {"name": "m"}, "output": "o"}


def _raw(task: str, section: str, key: str, value: object) -> dict:
    raw = {**BASE, "task": task, "data": dict(BASE["data"])}
    raw.setdefault(section, {})[key] = value
    return raw


@pytest.mark.parametrize("task, key, value, owners", [
    ("single_label", "data.instruction_field", "q", "task sft"),
    ("single_label", "generation.min_p", 0.1, "tasks sft and causal_lm"),
    ("single_label", "balance.drop_unlabelled", 0.5, "task multi_label"),
    ("single_label", "evaluation.thresholds", "tune", "task multi_label"),
    ("multi_label", "balance.sampling", "upsample", "tasks single_label and pair"),
    ("pair", "data.from_preference", True, "task single_label"),
    ("regression", "balance.focal_gamma", 1.0, "tasks single_label, multi_label and pair"),
    ("reward", "data.normalize_targets", True, "task regression"),
    ("sft", "data.label_fields", ["a"], "tasks multi_label and regression"),
    ("causal_lm", "evaluation.generate_each_epoch", True, "task sft"),
    ("causal_lm", "data.messages_field", "messages", "task sft"),
])
def test_a_key_of_another_task_is_one_error_naming_its_task(task, key, value, owners):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_raw(task, section, name, value), check_files=False)
    assert str(caught.value).splitlines() == ["config: invalid config", f"  {key}: belongs to {owners}, not {task}"]


def test_unknown_keys_keep_their_message():
    with pytest.raises(ConfigError, match=r"training\.lrr: unknown key \(did you mean 'lr'\?\)"):
        config_from_dict(_raw("single_label", "training", "lrr", 1e-4), check_files=False)
    with pytest.raises(ConfigError, match=r"data\.nonsense: unknown key \(known: train, "):
        config_from_dict(_raw("sft", "data", "nonsense", 1), check_files=False)
    with pytest.raises(ConfigError, match=r"task: unknown task 'multi_labl' \(did you mean 'multi_label'\?\)"):
        config_from_dict({**BASE, "task": "multi_labl"}, check_files=False)


def test_each_task_config_has_its_own_keys():
    for task, config_class in TASK_CONFIGS.items():
        config = config_from_dict({**BASE, "task": task}, check_files=False)
        assert type(config) is config_class and config.task == task
        assert config.training.select_metric == config_class.default_select_metric in config_class.metric_names
    keys = {task: task_keys(task) for task in TASK_CONFIGS}
    assert [t for t in TASK_CONFIGS if "generation" in keys[t]] == ["sft", "causal_lm"]
    assert [t for t in TASK_CONFIGS if "evaluation.thresholds" in keys[t]] == ["multi_label"]
    assert [t for t in TASK_CONFIGS if "balance" in keys[t]] == ["single_label", "multi_label", "pair"]
    assert [t for t in TASK_CONFIGS if "data.instruction_field" in keys[t]] == ["sft"]
    assert [t for t in TASK_CONFIGS if "data.from_preference" in keys[t]] == ["single_label"]
    # The keys every task has are the same for each.
    shared = set.intersection(*map(set, keys.values()))
    assert {"data.train", "data.template", "model.name", "training.lr", "tracking.report_to", "output"} <= shared


def test_config_check_exit_code(tmp_path):
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    raw = {"task": "single_label", "data": {"train": str(train)}, "model": {"name": "m"}, "output": "o"}
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(raw), encoding="utf-8")
    bad.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "instruction_field": "q"}}), encoding="utf-8")
    assert CliRunner().invoke(app, ["config", "check", str(good)]).exit_code == 0
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2 and "data.instruction_field: belongs to task sft, not single_label" in result.output
    result = CliRunner().invoke(app, ["config", "check", str(good), "--set", "generation.min_p=0.1"])
    assert result.exit_code == 2 and "generation.min_p: belongs to tasks sft and causal_lm" in result.output


def _schema_keys(schema: dict) -> set[str]:
    keys = set()
    for name, prop in schema["properties"].items():
        keys.add(name)
        ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
        if ref:
            keys.update(f"{name}.{k}" for k in schema["$defs"][ref.split("/")[-1]]["properties"])
    return keys


def test_config_schema_per_task():
    runner = CliRunner()
    schemas = {}
    for task in TASK_CONFIGS:
        result = runner.invoke(app, ["config", "schema", "--task", task])
        assert result.exit_code == 0, result.output
        schemas[task] = json.loads(result.output)
        assert _schema_keys(schemas[task]) == set(task_keys(task)), task
    assert "evaluation.thresholds" in _schema_keys(schemas["multi_label"])
    assert "evaluation.thresholds" not in _schema_keys(schemas["single_label"])
    assert "generation.top_p" in _schema_keys(schemas["causal_lm"]) - _schema_keys(schemas["regression"])
    # Without --task: every task's schema, `task` choosing among them.
    union = json.loads(runner.invoke(app, ["config", "schema"]).output)
    assert union == task_schema() and union["discriminator"]["propertyName"] == "task"
    assert set(union["discriminator"]["mapping"]) == set(TASK_CONFIGS) and len(union["oneOf"]) == len(TASK_CONFIGS)
    result = runner.invoke(app, ["config", "schema", "--task", "multi_labl"])
    assert result.exit_code == 2 and "did you mean 'multi_label'" in result.output


def test_loading_a_config_imports_no_torch():
    code = ("import sys; from kitae.config import load_config; "
            "config = load_config('examples/quickstart.yaml'); "
            "assert type(config).__name__ == 'SingleLabelConfig'; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    # `kitae config check` neither (its error handling included).
    code = ("import sys; from typer.testing import CliRunner; from kitae.cli import app; "
            "result = CliRunner().invoke(app, ['config', 'check', 'examples/quickstart.yaml']); "
            "assert result.exit_code == 0, result.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_a_run_directory_of_the_previous_release_still_reads(tmp_path):
    """kitae 0.1.0 wrote every task's keys into config.yaml (defaults where the task had none)."""
    saved = yaml.safe_load((ROOT / "tests" / "data" / "saved_config_0_1_0.yaml").read_text(encoding="utf-8"))
    for task, metric in (("single_label", "macro_f1"), ("multi_label", "macro_f1"), ("sft", "loss")):
        path = tmp_path / f"{task}.yaml"
        path.write_text(yaml.safe_dump({**saved, "task": task, "training": {**saved["training"], "select_metric": metric}}),
                        encoding="utf-8")
        config = read_saved_config(path)
        assert type(config) is TASK_CONFIGS[task] and config.model.max_length == 64
        assert set(config_to_dict(config)) <= set(task_keys(task))
    # What this release writes reads back the same.
    config = config_from_dict({**BASE, "task": "sft"}, check_files=False)
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)), encoding="utf-8")
    assert config_to_dict(read_saved_config(path)) == config_to_dict(config)
    assert list(config_to_dict(config)) == ["task", "data", "model", "adapter", "training", "evaluation",
                                            "generation", "tracking", "output"]


def test_the_registry_names_each_tasks_implementation():
    """Without importing them (torch): each task's module has its class."""
    import ast
    import importlib.util

    from kitae.tasks import TASKS

    assert list(TASKS) == list(TASK_CONFIGS)
    for task, path in TASKS.items():
        module, name = path.split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
        assert name in classes, path
        assert f'name = "{task}"' in ast.get_source_segment(source, classes[name]), path
