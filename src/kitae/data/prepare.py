"""From a config to the examples of every split: read rows, fix the label space, expand
preference pairs, split (a published split file, given dev/test files, or a seeded stratified
split), take subsets. Every input error surfaces here, before anything is written."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kitae.config import RunConfig, SplitConfig
from kitae.data.examples import Example, build_examples
from kitae.data.readers import Row, read_rows
from kitae.data.splits import stratified_split
from kitae.errors import DataError
from kitae.tasks import get_task_class
from kitae.tasks.base import Task

logger = logging.getLogger("kitae")


def prepare_data(config: RunConfig) -> tuple[Task, dict[str, list[Example]]]:
    """Rows -> label space -> examples -> splits; every input error surfaces here."""
    task_class = get_task_class(config.task)
    train_rows = read_rows(config.data.train, config.data.encoding)
    task = task_class(config, task_class.fit_labels(_expand(train_rows, config.data), config))
    train, dev, test = _load_splits(config, task, train_rows)
    examples = {name: split for name, split in (("train", train), ("dev", dev), ("test", test)) if split}
    _check_select_metric(config, task, dev)
    task.fit_train([e.target for e in train])
    return task, examples


def _check_select_metric(config: RunConfig, task: Task, dev: list[Example] | None) -> None:
    """Refuse a select metric the dev data cannot define (ROC-AUC on one class): every epoch's
    value would be NaN and no epoch could be selected."""
    metric = config.training.select_metric
    if not dev or (reason := task.undefined_metric(metric, [e.target for e in dev])) is None:
        return
    source = dev[0].row.path
    held_out = "" if config.data.dev else " (the dev part held out from it)"
    raise DataError(f"training.select_metric {metric} is undefined on dev{held_out}: {reason}; select on "
                    "another metric or use a dev set where it is defined", path=source)




def _load_splits(config: RunConfig, task: Task, train_rows: list) -> tuple[list[Example], list[Example] | None,
                                                                             list[Example] | None]:
    data = config.data

    def build(rows: list, name: str) -> list[Example] | None:
        return build_examples(_expand(rows, data), data, task.encode_target, name, task.render) if rows else None

    if data.split_file is not None or data.split_field is not None:
        if data.split_file is not None:
            train_rows, dev_rows, test_rows = _rows_by_split_file(train_rows, data.split_file, data.id_field)
        else:
            train_rows, dev_rows, test_rows = _rows_by_split_field(train_rows, data.split_field)
        return _subsets(config, task, build(train_rows, "train"), build(dev_rows, "dev"), build(test_rows, "test"))
    # Train first: its errors are reported before those of dev and test.
    train = None if data.from_preference_pairs() else build(train_rows, "train")
    dev = build(read_rows(data.dev, data.encoding), "dev") if data.dev else None
    test = build(read_rows(data.test, data.encoding), "test") if data.test else None
    split = data.split
    if split is None and dev is None:
        split = SplitConfig()  # the sound default: hold out 10% of train (stratified) to select on
        logger.info("no dev file: holding out %.0f%% of train as dev (seed %d)", 100 * split.dev, split.seed)
    if split is not None and data.from_preference_pairs():
        # Split whole pairs (chosen and rejected of one row never straddle splits); every pair
        # gives one example of each label, so there is nothing to stratify.
        fractions = [split.dev if dev is None else 0.0, split.test if test is None else 0.0]
        parts = stratified_split(train_rows, [0] * len(train_rows), fractions, split.seed, stratify=False)
        dev = dev if dev is not None else build(parts[1], "dev")
        test = test if test is not None else build(parts[2], "test")
        return _subsets(config, task, build(parts[0], "train"), dev, test)
    assert train is not None
    if split is not None:
        fractions = [split.dev if dev is None else 0.0, split.test if test is None else 0.0]
        train, dev_part, test_part = task.split(train, fractions, split.seed, split.stratify)
        dev = dev if dev is not None else (dev_part or None)
        test = test if test is not None else (test_part or None)
    return _subsets(config, task, train, dev, test)


def _expand(rows: list, data: Any) -> list:
    """Preference rows -> two rows each (chosen, rejected); other data is returned as it is.
    (Only a single_label config reads preference rows so: `data` then has the preference keys.)"""
    if not data.from_preference_pairs():
        return rows
    expanded = []
    for row in rows:
        for column, label in ((data.chosen_field, "chosen"), (data.rejected_field, "rejected")):
            if column not in row.values:
                raise row.error("missing column of preference data", column)
            values = {**row.values, data.text_field: row.values[column], data.label_field: label}
            if row.values.get(data.id_field) not in (None, ""):
                values[data.id_field] = f"{row.values[data.id_field]}-{label}"
            expanded.append(Row(values, row.path, row.line))
    return expanded


def _rows_by_split_file(rows: list, split_file: Path, id_field: str) -> tuple[list, list, list]:
    try:
        ids = json.loads(Path(split_file).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=split_file, line=exc.lineno) from None
    if not isinstance(ids, dict) or not isinstance(ids.get("train"), list):
        raise DataError("expected an object with a list of ids under 'train' (and 'dev', 'test')", path=split_file)
    listed: dict[str, str] = {}  # id -> the part that lists it
    for name in ("train", "dev", "test"):
        part = ids.get(name, [])
        if not isinstance(part, list):
            raise DataError(f"expected a list of ids, got {type(part).__name__}", path=split_file, field=name)
        for value in part:
            if str(value) in listed:
                where = "twice in it" if listed[str(value)] == name else f"in '{listed[str(value)]}' too"
                raise DataError(f"id {str(value)!r} is listed twice ({where}): an example in two parts, or "
                                "twice in one, would count twice", path=split_file, field=name)
            listed[str(value)] = name
    by_id: dict[str, Row] = {}
    for row in rows:
        if id_field not in row.values:
            raise row.error("missing id column (data.split_file selects rows by id)", id_field)
        key = str(row.values[id_field])
        if key in by_id:
            raise row.error(f"id {key!r} is also on line {by_id[key].line}: data.split_file selects rows by "
                            "id, so every id must be unique", id_field)
        by_id[key] = row
    parts = []
    for name in ("train", "dev", "test"):
        unknown = [i for i in ids.get(name, []) if str(i) not in by_id]
        if unknown:
            raise DataError(f"{len(unknown)} ids of '{name}' are not in {rows[0].path} "
                            f"(first: {unknown[0]!r})", path=split_file, field=name)
        parts.append([by_id[str(i)] for i in ids.get(name, [])])
    return parts[0], parts[1], parts[2]


SPLIT_NAMES = {"train": 0, "dev": 1, "valid": 1, "validation": 1, "val": 1, "test": 2}


def _rows_by_split_field(rows: list, field: str) -> tuple[list, list, list]:
    """Rows by the split a column names (train / dev, valid, validation / test)."""
    parts: tuple[list, list, list] = ([], [], [])
    for row in rows:
        if field not in row.values:
            raise row.error("missing split column (data.split_field)", field)
        name = str(row.values[field]).strip().lower()
        if name not in SPLIT_NAMES:
            raise row.error(f"unknown split {row.values[field]!r}: expected train, dev (or valid, validation) "
                            "or test", field)
        parts[SPLIT_NAMES[name]].append(row)
    if not parts[0]:
        raise DataError(f"no row is in split 'train' by column '{field}'", path=rows[0].path, field=field)
    return parts


def _subsets(config: RunConfig, task: Task, train: list[Example], dev: list[Example] | None,
             test: list[Example] | None) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
    data = config.data
    seed = data.subset_seed  # not training.seed: seeds of a sweep vary training, not the examples
    subset = _pair_subset if data.from_preference_pairs() else _subset
    if data.max_train_examples:
        train = subset(task, train, data.max_train_examples, seed)
    if data.max_eval_examples:
        dev = dev and subset(task, dev, data.max_eval_examples, seed)
        test = test and subset(task, test, data.max_eval_examples, seed)
    return train, dev, test


def _subset(task: Task, examples: list[Example], size: int, seed: int) -> list[Example]:
    """A stratified subset of exactly `size` examples (all of them when there are fewer)."""
    if size >= len(examples):
        return examples
    return task.split(examples, [size / len(examples)], seed)[1]


def _pair_subset(task: Task, examples: list[Example], size: int, seed: int) -> list[Example]:
    """Preference data: `size` whole rows (pairs), i.e. both examples of each chosen row."""
    rows = list(dict.fromkeys((e.row.path, e.row.line) for e in examples))
    if size >= len(rows):
        return examples
    kept = set(stratified_split(rows, [0] * len(rows), [size / len(rows)], seed, stratify=False)[1])
    return [e for e in examples if (e.row.path, e.row.line) in kept]
