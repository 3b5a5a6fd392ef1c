"""A trained run, loaded for inference: `kitae.load(run_dir)` -> `Classifier`.

What predict, evaluate, export, push (and later a server or a UI) use: nothing re-parses the YAML
or re-reads the training data; everything comes from the run directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kitae.config import read_saved_config
from kitae.data.batching import EncodedSplit, encode_texts
from kitae.data.examples import Example, build_examples
from kitae.data.readers import Row, read_rows
from kitae.errors import DataError, RunDirError
from kitae.models.persist import load_classifier
from kitae.runs import MODEL_DIR, require_finished_run, write_csv, write_json, write_jsonl
from kitae.tasks import get_task_class
from kitae.tasks.base import Task
from kitae.training.loop import Batching, predict_logits

logger = logging.getLogger("kitae")


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

    def logits(self, texts: Sequence[Any], progress: bool = False) -> np.ndarray:
        """Raw logits (n, num_labels) for texts (or text pairs), exactly as the run computed them.
        Reward models: one score per text or (prompt, response) pair, or two per
        (chosen, rejected) group."""
        texts = list(texts)
        model_texts, group = self.task.model_texts(texts, self.model.is_decoder)
        encoded = encode_texts(self.tokenizer, model_texts, self.meta["model"]["max_length"])
        split = EncodedSplit("input", [str(i) for i in range(len(texts))], encoded, None, group)
        return predict_logits(self.model, split, self.batch_size, self.plan, self._batching, progress)

    def predict(self, texts: Sequence[Any]) -> list[Prediction]:
        """Labels and probabilities (reward: scores). Give strings (pairs for text-pair runs,
        (prompt, response) for prompted reward models), or dicts with the columns the run read."""
        if not texts:
            return []
        if isinstance(texts[0], dict):
            texts = [self._render(row) for row in texts]
        logits = self.logits(list(texts))
        probs = self.task.probabilities(logits)
        return [Prediction(decision, {label: float(v) for label, v in zip(self.labels, p)})
                for decision, p in zip(self.task.predicted_labels(logits), probs)]

    def _render(self, values: dict[str, Any]) -> Any:
        return self.task.render(Row(values, Path("<input>"), 0))

    def _read(self, path: Path, require_labels: bool) -> tuple[list[Example], bool]:
        rows = read_rows(path)
        data = self.config.data if self.config else None
        label_columns = self.task.target_columns() if data is not None else []
        has_labels = data is not None and any(all(c in row.values for c in label_columns) for row in rows)
        if require_labels and not has_labels:
            raise DataError("no label column: evaluate needs labelled data", path=path,
                            field=data.label_field if data else "label")
        encode = self.task.encode_target if has_labels else (lambda row: None)
        return build_examples(rows, self.config.data, encode, Path(path).stem, self.task.render), has_labels

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
            examples = build_examples(read_rows(path), self.config.data, lambda row: None, Path(path).stem,
                                      self.task.render)
            has_labels = False
        logits = self.logits([e.text for e in examples], progress=True)
        records = self.task.prediction_records([e.id for e in examples], logits,
                                               [e.target for e in examples] if has_labels else None)
        output = Path(output)
        if output.suffix.lower() in (".csv", ".tsv"):
            write_csv(output, [_flat_record(r) for r in records])
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


def _flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: lists of labels joined with '|', per-label values as p_<label> columns."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probabilities":
            flat.update({f"p_{label}": p for label, p in value.items()})
        elif isinstance(value, list):
            flat[key] = "|".join(map(str, value))
        elif isinstance(value, dict):
            flat.update({f"{key}_{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat


def load(run_dir: str | Path, device: str = "auto", batch_size: int = 32) -> Classifier:
    """Load a finished run for prediction."""
    return Classifier(Path(run_dir), device=device, batch_size=batch_size)
