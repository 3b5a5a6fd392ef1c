"""kitae's Python API — what the CLI calls and what notebooks import.

    import kitae
    result = kitae.train("examples/quickstart.yaml")
    clf = kitae.load(result.run_dir)
    clf.predict(["明日は全国的に雨の予報です"])

`train` reads as the flow of one run: config → data → model → adapter → loop → selected model →
evaluation → run directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kitae import __version__
from kitae.config import RunConfig, config_to_dict, dump_yaml, load_config, read_saved_config
from kitae.data.batching import EncodedSplit, TrainBatches, encode_texts
from kitae.data.examples import Example, build_examples
from kitae.data.readers import read_rows
from kitae.data.splits import stratified_split
from kitae.data.templates import pair_as_text, render_text
from kitae.errors import ConfigError, DataError, RunDirError
from kitae.log import attach_run_log
from kitae.models.adapters import apply_adapter, count_parameters
from kitae.models.classifier import SequenceClassifier, find_head_name
from kitae.models.loading import load_for_classification, load_tokenizer
from kitae.models.persist import load_classifier, save_classifier
from kitae.models.precision import PrecisionPlan, plan_precision, probe_caps
from kitae.models.sources import resolve_source
from kitae.runs import (
    CHECKPOINT_DIR,
    MODEL_DIR,
    require_finished_run,
    run_status,
    update_run_info,
    write_json,
    write_jsonl,
    write_text_atomic,
)
from kitae.tasks import get_task_class
from kitae.tasks.base import Task
from kitae.training.callbacks import Callback, EpochLogger, HistoryWriter, ProgressBar
from kitae.training.checkpoint import load_best
from kitae.training.loop import Batching, fit, predict_logits

logger = logging.getLogger("kitae")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, dict[str, Any]]  # split -> metrics of the selected model
    best_epoch: int | None
    logits: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


# ---------------------------------------------------------------------------------------------
# train


def train(config: RunConfig | str | Path, *, overrides: tuple[str, ...] | list[str] = (),
          overwrite: bool = False, resume: bool = False, callbacks: list[Callback] | None = None,
          progress: bool | None = None) -> TrainResult:
    """Train, select on dev, evaluate on test, and write the run directory."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    # Read and check all data before touching the run directory: bad input must not cost the
    # user a previous run (--overwrite) or leave a half-made one.
    task, examples = prepare_data(config)
    # Likewise what the hardware cannot do (e.g. QLoRA without CUDA) is said before anything is written.
    plan = plan_precision(probe_caps(config.training.device), config.model.dtype,
                          config.model.attn_implementation, config.adapter.type)
    run_dir = _prepare_run_dir(config, overwrite=overwrite, resume=resume)
    detach_log = attach_run_log(run_dir / "train.log")
    started = time.time()
    update_run_info(run_dir, status="running", kitae_version=__version__, torch_version=torch.__version__,
                    task=config.task, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        result = _train(config, task, examples, plan, run_dir, resume, callbacks, progress)
    except KeyboardInterrupt:
        update_run_info(run_dir, status="interrupted")
        raise
    except BaseException as exc:
        from kitae.training.loop import TrainingInterrupted

        update_run_info(run_dir, status="interrupted" if isinstance(exc, TrainingInterrupted) else "failed")
        raise
    finally:
        detach_log()
    update_run_info(run_dir, status="finished", wall_seconds=round(time.time() - started, 1))
    return result


def prepare_data(config: RunConfig) -> tuple[Task, dict[str, list[Example]]]:
    """Rows -> label space -> examples -> splits; every input error surfaces here."""
    task_class = get_task_class(config.task)
    train_rows = read_rows(config.data.train)
    task = task_class(config, task_class.fit_labels(_expand(train_rows, config.data), config))
    train, dev, test = _load_splits(config, task, train_rows)
    examples = {name: split for name, split in (("train", train), ("dev", dev), ("test", test)) if split}
    task.fit_train([e.target for e in train])
    return task, examples


def _train(config: RunConfig, task: Task, examples: dict[str, list[Example]], plan: PrecisionPlan,
           run_dir: Path, resume: bool, callbacks: list[Callback] | None, progress: bool | None) -> TrainResult:
    training = config.training
    torch.manual_seed(training.seed)  # head and adapter initialisation
    labels = task.labels

    # 1. Data (read and checked before the run directory was touched).
    logger.info("data: %s examples; %d labels: %s",
                ", ".join(f"{name} {len(split)}" for name, split in examples.items()), len(labels),
                ", ".join(labels))

    # 2. Model: backbone -> adapter -> classifier with padding-safe pooling.
    logger.info("compute: %s", plan.describe())
    source = resolve_source(config.model.name, config.model.gguf_file, config.model.revision)
    tokenizer = load_tokenizer(source, config.model)
    id2label = dict(enumerate(labels))
    loaded = load_for_classification(source, config.model, plan, id2label, tokenizer.pad_token_id,
                                     task.problem_type)
    pooling = resolve_pooling(config.model.pooling, loaded.is_decoder, loaded.new_modules)
    model = apply_adapter(loaded.model, config.adapter, find_head_name(loaded.model), loaded.new_modules,
                          training.gradient_checkpointing)
    classifier = SequenceClassifier(model, loaded.model, pooling, loaded.is_decoder)
    trainable, total = count_parameters(classifier)
    logger.info("model: %s (%s, pooling %s, adapter %s): %s of %s parameters trainable (%.2f%%)",
                config.model.name, "decoder" if loaded.is_decoder else "encoder", pooling,
                config.adapter.type, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))

    # 3. Tokenise once.
    splits = {name: _encode(name, split, tokenizer, config.model.max_length,
                            _as_model_texts(config.data.text_fields, config.data.template, loaded.is_decoder,
                                            task.group_size), task.group_size)
              for name, split in examples.items()}
    batching = Batching(tokenizer.pad_token_id, tokenizer.padding_side)

    # 4. Train, selecting the best epoch on dev.
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    watchers: list[Callback] = [ProgressBar(disable=None if progress is None else not progress),
                                EpochLogger(training.select_metric), HistoryWriter(run_dir, training.select_metric)]
    sampler = TrainBatches(splits["train"].lengths, training.batch_size, training.seed,
                           training.group_by_length, resample=task.resampler(splits["train"].targets))
    if sampler.resample is not None:
        _report_balance(run_dir, task, splits["train"].targets, sampler)
    loop = fit(classifier, task, splits["train"], splits.get("dev"), training, plan, batching,
               checkpoint_dir, [*watchers, *(callbacks or [])], resume=resume, sampler=sampler)

    # 5. The selected model: fit what is chosen on dev (e.g. thresholds), evaluate dev and test
    #    once, save everything.
    load_best(checkpoint_dir / "best", classifier)
    metrics: dict[str, dict[str, Any]] = {}
    eval_batch = training.eval_batch_size or 2 * training.batch_size
    all_logits = {name: predict_logits(classifier, splits[name], eval_batch, plan, batching)
                  for name in ("dev", "test") if name in splits}
    task.fit_after_training(splits["dev"].targets if "dev" in splits else None, all_logits.get("dev"))
    for name, logits in all_logits.items():
        split = splits[name]
        metrics[name] = task.metrics(split.targets, logits)
        write_jsonl(run_dir / f"predictions_{name}.jsonl", task.prediction_records(split.ids, logits, split.targets))
        task.write_reports(run_dir, name, split.targets, logits)
    summary = {"selected_epoch": loop.best_epoch, "select_metric": training.select_metric,
               "epochs_run": len(loop.history), "stopped_early": loop.stopped_early,
               "train_seconds": round(loop.train_seconds, 2),
               "train_examples": len(splits["train"]), "truncated": {n: s.encoded.truncated for n, s in splits.items()}}
    write_json(run_dir / "metrics.json", {**metrics, "summary": summary})
    write_json(run_dir / "labels.json", {"task": config.task, "labels": labels})
    meta = {"task": config.task, "labels": labels, "pooling": pooling,
            "base_model": {"path": source.path, "gguf_file": source.gguf_file, "revision": source.revision},
            "model": config.model.model_dump(mode="json"), "adapter": config.adapter.model_dump(mode="json"),
            "data": {"template": config.data.template, "text_field": config.data.text_field,
                     "text_fields": config.data.text_fields,
                     "label_field": config.data.label_field, "id_field": config.data.id_field},
            "task_state": task.state(), "kitae_version": __version__}
    save_classifier(classifier, tokenizer, run_dir / MODEL_DIR, meta)
    write_card(run_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    _log_metrics(metrics)
    return TrainResult(run_dir, metrics, loop.best_epoch, all_logits)


def write_card(run_dir: Path) -> None:
    """README.md model card in the run directory and in model/ (which export and push ship)."""
    from kitae.card import build_card

    card = build_card(run_dir)
    write_text_atomic(run_dir / "README.md", card)
    write_text_atomic(run_dir / MODEL_DIR / "README.md", card)  # replaces PEFT's placeholder card
    for image in run_dir.glob("confusion_matrix_*.png"):
        shutil.copyfile(image, run_dir / MODEL_DIR / image.name)


def _report_balance(run_dir: Path, task: Task, targets: list[Any], sampler: TrainBatches) -> None:
    """Label rates of train before and after re-sampling (epoch 1's draw), logged and saved."""
    from kitae.data.balance import positive_rates

    y = np.stack(targets) if np.ndim(targets[0]) else np.asarray(targets)
    pool = np.concatenate(sampler.epoch(0))
    report = {"rows_before": int(len(y)), "rows_after_epoch_1": int(len(pool)),
              "rates_before": positive_rates(y, task.labels), "rates_after_epoch_1": positive_rates(y[pool], task.labels)}
    write_json(run_dir / "balance.json", report)
    logger.info("re-sampling train each epoch: %d rows -> %d; rates %s -> %s", report["rows_before"],
                report["rows_after_epoch_1"], report["rates_before"], report["rates_after_epoch_1"])


def resolve_pooling(requested: str, is_decoder: bool, new_modules: list[str]) -> str:
    """auto: the last real token for decoders; for encoders the model's own CLS pooler when it
    was pretrained, else the mean of real tokens (e5-style encoders ship no pooler, and a random
    pooler in front of the head trains worse: 0.94 vs 1.00 test accuracy on the quickstart data)."""
    if requested != "auto":
        return requested
    if is_decoder:
        return "last"
    fresh_pooler = any("pooler" in name.split(".") for name in new_modules)
    return "mean" if fresh_pooler else "cls"


def _prepare_run_dir(config: RunConfig, *, overwrite: bool, resume: bool) -> Path:
    run_dir = Path(config.output)
    status = run_status(run_dir)
    config_text = dump_yaml(config_to_dict(config))
    if resume:
        saved = run_dir / "config.yaml"
        if status is None or not saved.is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no run started here)")
        if status == "finished":
            raise RunDirError(f"{run_dir}: the run already finished; nothing to resume")
        if saved.read_text(encoding="utf-8") != config_text:
            raise ConfigError(f"{run_dir}: --resume needs the same config as the interrupted run "
                              f"(compare with {saved}); to start afresh use --overwrite")
        return run_dir
    if status is not None or (run_dir.exists() and any(run_dir.iterdir())):
        if not overwrite:
            what = "a finished run" if status == "finished" else f"a {status or 'non-kitae'} run"
            hint = " (continue it with --resume)" if status in ("running", "interrupted", "failed") else ""
            raise RunDirError(f"{run_dir}: already holds {what}{hint}; pass --overwrite to replace it")
        if status is None and not (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir}: exists and is not a kitae run; refusing to delete it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_text)
    return run_dir


def _load_splits(config: RunConfig, task: Task, train_rows: list) -> tuple[list[Example], list[Example] | None,
                                                                             list[Example] | None]:
    data = config.data

    def build(rows: list, name: str) -> list[Example] | None:
        return build_examples(_expand(rows, data), data, task.encode_target, name) if rows else None

    if data.split_file is not None:
        train_rows, dev_rows, test_rows = _rows_by_split_file(train_rows, data.split_file, data.id_field)
        return _subsets(config, task, build(train_rows, "train"), build(dev_rows, "dev"), build(test_rows, "test"))
    dev = build(read_rows(data.dev), "dev") if data.dev else None
    test = build(read_rows(data.test), "test") if data.test else None
    split = data.split
    if split is None and dev is None:
        from kitae.config import SplitConfig

        split = SplitConfig()  # the sound default: hold out 10% of train (stratified) to select on
        logger.info("no dev file: holding out %.0f%% of train as dev (seed %d)", 100 * split.dev, split.seed)
    if split is not None and data.from_preference:
        # Split whole pairs (chosen and rejected of one row never straddle splits); every pair
        # gives one example of each label, so there is nothing to stratify.
        fractions = [split.dev if dev is None else 0.0, split.test if test is None else 0.0]
        parts = stratified_split(train_rows, [0] * len(train_rows), fractions, split.seed, stratify=False)
        dev = dev if dev is not None else build(parts[1], "dev")
        test = test if test is not None else build(parts[2], "test")
        return _subsets(config, task, build(parts[0], "train"), dev, test)
    train = build(train_rows, "train")
    if split is not None:
        fractions = [split.dev if dev is None else 0.0, split.test if test is None else 0.0]
        train, dev_part, test_part = task.split(train, fractions, split.seed, split.stratify)
        dev = dev if dev is not None else (dev_part or None)
        test = test if test is not None else (test_part or None)
    return _subsets(config, task, train, dev, test)


def _expand(rows: list, data: Any) -> list:
    """Preference rows -> two rows each (chosen, rejected); other data is returned as it is."""
    if not data.from_preference:
        return rows
    from kitae.data.readers import Row

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
    import json

    try:
        ids = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=split_file, line=exc.lineno) from None
    if not isinstance(ids, dict) or not isinstance(ids.get("train"), list):
        raise DataError("expected an object with a list of ids under 'train' (and 'dev', 'test')", path=split_file)
    by_id = {}
    for row in rows:
        if id_field not in row.values:
            raise row.error("missing id column (data.split_file selects rows by id)", id_field)
        by_id[str(row.values[id_field])] = row
    parts = []
    for name in ("train", "dev", "test"):
        unknown = [i for i in ids.get(name, []) if str(i) not in by_id]
        if unknown:
            raise DataError(f"{len(unknown)} ids of '{name}' are not in {rows[0].path} "
                            f"(first: {unknown[0]!r})", path=split_file, field=name)
        parts.append([by_id[str(i)] for i in ids.get(name, [])])
    return parts[0], parts[1], parts[2]


def _subsets(config: RunConfig, task: Task, train: list[Example], dev: list[Example] | None,
             test: list[Example] | None) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
    data = config.data
    seed = config.training.seed
    if data.max_train_examples:
        train = _subset(task, train, data.max_train_examples, seed)
    if data.max_eval_examples:
        dev = dev and _subset(task, dev, data.max_eval_examples, seed)
        test = test and _subset(task, test, data.max_eval_examples, seed)
    return train, dev, test


def _subset(task: Task, examples: list[Example], size: int, seed: int) -> list[Example]:
    """A stratified subset of exactly `size` examples (all of them when there are fewer)."""
    if size >= len(examples):
        return examples
    return task.split(examples, [size / len(examples)], seed)[1]


def _as_model_texts(text_fields: list[str] | None, template: str | None, is_decoder: bool,
                    group_size: int = 1) -> Any:
    """What the model reads: text pairs stay pairs for encoders (the tokenizer's pair encoding)
    and become one string for decoders (the pair template); groups (reward: chosen, rejected)
    become their texts one after the other, each scored on its own."""
    def convert(texts: list[Any]) -> list[Any]:
        if not texts or not isinstance(texts[0], tuple):
            return texts  # single texts (also: a reward model scoring texts one by one)
        if group_size > 1:
            return [text for group in texts for text in group]
        if text_fields and is_decoder:
            return [pair_as_text(t, text_fields, template) for t in texts]
        return texts

    return convert


def _encode(name: str, examples: list[Example], tokenizer: Any, max_length: int, as_model_texts: Any,
            group_size: int = 1) -> EncodedSplit:
    encoded = encode_texts(tokenizer, as_model_texts([e.text for e in examples]), max_length)
    if encoded.truncated:
        logger.warning("%s: %d of %d texts are longer than model.max_length=%d tokens and were truncated",
                       name, encoded.truncated, len(examples), max_length)
    return EncodedSplit(name, [e.id for e in examples], encoded, [e.target for e in examples], group_size)


def _log_metrics(metrics: dict[str, dict[str, Any]]) -> None:
    for name, values in metrics.items():
        shown = [k for k in ("accuracy", "subset_accuracy", "micro_f1", "macro_f1") if k in values]
        logger.info("%s: %s", name, ", ".join(f"{k} {values[k]:.4f}" for k in shown))


# ---------------------------------------------------------------------------------------------
# load / predict / evaluate


@dataclass
class Prediction:
    label: Any  # single_label / pair: a label; multi_label: a list of labels; regression: the value(s)
    probabilities: dict[str, float]


class Classifier:
    """A trained run, loaded for inference: `kitae.load(run_dir)`."""

    def __init__(self, run_dir: Path, device: str = "auto", batch_size: int = 32) -> None:
        self.run_dir = require_finished_run(Path(run_dir))
        model, tokenizer, meta, plan = load_classifier(self.run_dir / MODEL_DIR, device)
        self.model, self.tokenizer, self.meta, self.plan = model, tokenizer, meta, plan
        saved = self.run_dir / "config.yaml"
        self.config = read_saved_config(saved) if saved.is_file() else None
        self.labels: list[str] = meta["labels"]
        self.batch_size = batch_size
        self._batching = Batching(tokenizer.pad_token_id, tokenizer.padding_side)
        self._task: Task | None = None

    @property
    def task(self) -> Task:
        if self._task is None:
            if self.config is None:
                raise RunDirError(f"{self.run_dir}: config.yaml is missing")
            self._task = get_task_class(self.meta["task"])(self.config, self.labels)
            self._task.load_state(self.meta.get("task_state", {}))
        return self._task

    def logits(self, texts: list[str] | list[tuple[str, str]], progress: bool = False) -> np.ndarray:
        """Raw logits (n, num_labels) for texts (or text pairs), exactly as the run computed them."""
        data = self.meta["data"]
        texts = list(texts)
        group = self.task.group_size if texts and isinstance(texts[0], tuple) else 1
        model_texts = _as_model_texts(data.get("text_fields"), data["template"], self.model.is_decoder, group)(texts)
        encoded = encode_texts(self.tokenizer, model_texts, self.meta["model"]["max_length"])
        split = EncodedSplit("input", [str(i) for i in range(len(texts))], encoded, None, group)
        return predict_logits(self.model, split, self.batch_size, self.plan, self._batching, progress)

    def predict(self, texts: list[str] | list[tuple[str, str]] | list[dict[str, Any]]) -> list[Prediction]:
        """Labels and probabilities. Give strings (pairs for task: pair), or dicts with the
        columns the run read."""
        if not texts:
            return []
        if isinstance(texts[0], dict):
            texts = [self._render(row) for row in texts]
        logits = self.logits(list(texts))
        probs = self.task.probabilities(logits)
        return [Prediction(decision, {label: float(v) for label, v in zip(self.labels, p)})
                for decision, p in zip(self.task.predicted_labels(logits), probs)]

    def _render(self, values: dict[str, Any]) -> str:
        from kitae.data.readers import Row

        data = self.meta["data"]
        return render_text(Row(values, Path("<input>"), 0), template=data["template"], text_field=data["text_field"],
                           text_fields=data.get("text_fields"))

    def _read(self, path: Path, require_labels: bool) -> tuple[list[Example], bool]:
        rows = read_rows(path)
        data = self.config.data if self.config else None
        label_columns = self.task.target_columns() if data is not None else []
        has_labels = data is not None and any(all(c in row.values for c in label_columns) for row in rows)
        if require_labels and not has_labels:
            raise DataError("no label column: evaluate needs labelled data", path=path,
                            field=data.label_field if data else "label")
        encode = self.task.encode_target if has_labels else (lambda row: None)
        return build_examples(rows, self.config.data, encode, Path(path).stem), has_labels

    def predict_file(self, path: str | Path, output: str | Path) -> int:
        """Predict every row of a data file; write JSONL or CSV (by suffix) with id, predicted,
        probabilities (and gold when the file has labels). Returns the number of rows."""
        try:
            examples, has_labels = self._read(Path(path), require_labels=False)
        except DataError as exc:
            if self.config is None or exc.field != self.config.data.label_field:
                raise
            # A gold column with labels the model does not know is no reason not to predict.
            logger.warning("ignoring the label column for predict: %s", exc)
            examples = build_examples(read_rows(path), self.config.data, lambda row: None, Path(path).stem)
            has_labels = False
        logits = self.logits([e.text for e in examples], progress=True)
        records = self.task.prediction_records([e.id for e in examples], logits,
                                               [e.target for e in examples] if has_labels else None)
        output = Path(output)
        if output.suffix.lower() in (".csv", ".tsv"):
            from kitae.runs import write_csv

            flat = [{k: v for k, v in r.items() if k != "probabilities"}
                    | {f"p_{label}": p for label, p in r["probabilities"].items()} for r in records]
            write_csv(output, flat)
        else:
            write_jsonl(output, records)
        return len(records)

    def evaluate_file(self, path: str | Path, output_dir: str | Path | None = None) -> dict[str, Any]:
        """Metrics, predictions and reports for a labelled file (written to output_dir, default
        RUN_DIR/eval-<file stem>)."""
        path = Path(path)
        examples, _ = self._read(path, require_labels=True)
        logits = self.logits([e.text for e in examples], progress=True)
        targets = [e.target for e in examples]
        metrics = self.task.metrics(targets, logits)
        out = Path(output_dir) if output_dir else self.run_dir / f"eval-{path.stem}"
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", {"file": str(path), **metrics})
        write_jsonl(out / "predictions.jsonl", self.task.prediction_records([e.id for e in examples], logits, targets))
        self.task.write_reports(out, "eval", targets, logits)
        return metrics


def load(run_dir: str | Path, device: str = "auto", batch_size: int = 32) -> Classifier:
    """Load a finished run for prediction."""
    return Classifier(Path(run_dir), device=device, batch_size=batch_size)
