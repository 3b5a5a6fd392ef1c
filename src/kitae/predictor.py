"""A trained classification run, loaded for inference: `kitae.load(run_dir)` -> `Classifier`
(sft and causal_lm runs load as a `kitae.generator.Generator`).

What predict, evaluate, export, push (and later a server or a UI) use: nothing re-parses the YAML
or re-reads the training data; everything comes from the run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kitae.config import read_saved_config
from kitae.data.batching import Encoded, EncodedSplit, encode_texts
from kitae.data.examples import build_examples
from kitae.data.readers import Row, count_rows, iter_chunks, iter_rows
from kitae.errors import DataError, KitaeError, RunDirError
from kitae.inference.loaded import LoadedRun
from kitae.inference.logits import Batching, predict_logits
from kitae.models.persist import load_classifier
from kitae.runs import (
    MODEL_DIR,
    atomic_text_file,
    check_output_file,
    check_writable_folder,
    is_evaluation,
    read_json,
    require_finished_run,
    write_json,
)
from kitae.tasks import TASKS, get_task_class
from kitae.tasks.classification import ClassificationTask
from kitae.tasks.contract import Capability

logger = logging.getLogger("kitae")

EXPORT_CONFIG = "kitae_config.yaml"  # in an export: the run's config, data paths reduced to file names
PREDICT_CHUNK_ROWS = 4096  # rows read, encoded and predicted at a time by predict_file / evaluate_file


@dataclass
class Prediction:
    """One text's prediction. `label` is the decision: a label (single_label, pair), a list of
    labels (multi_label), the value or values (regression), the score (reward). `probabilities`
    (per label) are a classifier's; `scores` (per output name) the real values a regression or
    reward model outputs — the other one is None, as scikit-learn keeps `predict_proba` and
    `decision_function` apart."""

    label: Any
    probabilities: dict[str, float] | None = None
    scores: dict[str, float] | None = None


@dataclass
class EncodedInputs:
    """Texts encoded for the model: `group_size` token sequences per text (reward groups are
    two), and per text whether any of its sequences was cut to max_length."""

    encoded: Encoded
    group_size: int
    truncated: list[bool]

    def __len__(self) -> int:
        return len(self.truncated)

    def lengths(self) -> list[int]:
        """Per text, its longest sequence (what it costs a padded batch)."""
        ids = self.encoded.input_ids
        return [max(len(ids[i * self.group_size + j]) for j in range(self.group_size)) for i in range(len(self))]

    def select(self, indices: Sequence[int]) -> EncodedInputs:
        """The inputs of the given texts, in that order."""
        rows = [i * self.group_size + j for i in indices for j in range(self.group_size)]
        types = self.encoded.token_type_ids
        flags = self.encoded.truncated_rows
        encoded = Encoded([self.encoded.input_ids[r] for r in rows], sum(self.truncated[i] for i in indices),
                          None if types is None else [types[r] for r in rows],
                          None if flags is None else [flags[r] for r in rows])
        return EncodedInputs(encoded, self.group_size, [self.truncated[i] for i in indices])


class Classifier(LoadedRun):
    """A trained classifier run (its task's capability: predict), loaded: `kitae.load(run_dir)`."""

    def __init__(self, run_dir: Path, device: str = "auto", batch_size: int = 32,
                 trust_remote_code: bool = False, merge: bool = True) -> None:
        from kitae.export import is_kitae_export

        if is_kitae_export(Path(run_dir)):  # an exported folder (merged, vllm, tei, onnx) serves too
            self.run_dir = Path(run_dir)
            model, tokenizer, meta, plan = load_classifier(self.run_dir, device, trust_remote_code, merge)
            saved = self.run_dir / EXPORT_CONFIG
        else:
            self.run_dir = require_finished_run(Path(run_dir))
            model, tokenizer, meta, plan = load_classifier(self.run_dir / MODEL_DIR, device, trust_remote_code, merge)
            saved = self.run_dir / "config.yaml"
        self.model, self.tokenizer, self.meta, self.plan = model, tokenizer, meta, plan
        self.config = read_saved_config(saved) if saved.is_file() else None
        self.labels: list[str] = meta["labels"]
        if meta.get("task") not in TASKS:
            raise RunDirError(f"{self.run_dir}: kitae_model.json names the task {meta.get('task')!r}, which this "
                              f"kitae does not have ({', '.join(TASKS)})")
        self.task_class = get_task_class(meta["task"])
        self.require(Capability.PREDICT)
        self.batch_size = batch_size
        self._batching = Batching(tokenizer.pad_token_id, tokenizer.padding_side)
        self._task: ClassificationTask | None = None

    def describe(self) -> str:
        return str(self.run_dir)

    @property
    def task(self) -> ClassificationTask:
        if self._task is None:
            if self.config is None:
                raise RunDirError(f"{self.run_dir}: config.yaml is missing")
            self._task = self.task_class(self.config, self.labels)
            self._task.load_state(self.meta.get("task_state", {}))
        return self._task

    def encode(self, texts: Sequence[Any]) -> EncodedInputs:
        """Token ids of texts (or pairs, or reward groups), exactly as the run encoded them:
        rendered by the task, truncated to the run's max_length."""
        texts = list(texts)
        model_texts, group = self.task.model_texts(texts, self.model.is_decoder)
        encoded = encode_texts(self.tokenizer, model_texts, self.meta["model"]["max_length"])
        cut = encoded.truncated_rows or [False] * len(encoded.input_ids)
        return EncodedInputs(encoded, group, [any(cut[i * group:(i + 1) * group]) for i in range(len(texts))])

    def logits_of(self, inputs: EncodedInputs, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Logits of encoded inputs (see `logits`)."""
        split = EncodedSplit("input", [str(i) for i in range(len(inputs))], inputs.encoded, None, inputs.group_size)
        return predict_logits(self.model, split, batch_size or self.batch_size, self.plan, self._batching, progress)

    def logits(self, texts: Sequence[Any], progress: bool = False) -> np.ndarray:
        """Raw logits (n, num_labels) for texts (or text pairs), exactly as the run computed them.
        Reward models: one score per text or (prompt, response) pair, or two per
        (chosen, rejected) group."""
        return self.logits_of(self.encode(texts), progress=progress)

    def predict(self, texts: Sequence[Any]) -> list[Prediction]:
        """Labels and probabilities (reward: scores). Give strings (pairs for text-pair runs,
        (prompt, response) for prompted reward models), or dicts with the columns the run read."""
        if not texts:
            return []
        return self.predictions(self.logits(self._texts(texts)))

    def predictions(self, logits: np.ndarray) -> list[Prediction]:
        """`Prediction`s from logits: the task's decisions (tuned thresholds included) and values."""
        values = self.task.probabilities(logits)
        predictions = []
        for decision, row in zip(self.task.predicted_labels(logits), values):
            named = {label: float(v) for label, v in zip(self.labels, row)}
            predictions.append(Prediction(decision, named, None) if self.task.outputs_probabilities
                               else Prediction(decision, None, named))
        return predictions

    def predict_proba(self, texts: Sequence[Any]) -> np.ndarray:
        """Probabilities (texts, labels) of a classifier (softmax; sigmoid for multi_label)."""
        if not self.task.outputs_probabilities:
            raise KitaeError(f"a {self.meta['task']} model outputs values, not probabilities: use decision_function")
        return self.task.probabilities(self.logits(self._texts(texts)))

    def decision_function(self, texts: Sequence[Any]) -> np.ndarray:
        """The model's real-valued outputs: logits of a classifier, values of a regression model
        (in target units), scores of a reward model."""
        logits = self.logits(self._texts(texts))
        return logits if self.task.outputs_probabilities else self.task.probabilities(logits)

    def _texts(self, texts: Sequence[Any]) -> list[Any]:
        texts = list(texts)
        return [self._render(row) for row in texts] if texts and isinstance(texts[0], dict) else texts

    def _render(self, values: dict[str, Any]) -> Any:
        return self.task.render(Row(values, Path("<input>"), 0))

    def _stream(self, path: Path, require_labels: bool, progress: bool,
                ) -> Iterator[tuple[list[str], np.ndarray, list[Any] | None]]:
        """(ids, logits, targets or None) for a data file, chunk by chunk in file order: read,
        render, encode, predict, forget — memory does not grow with the file. Targets come when
        the file has the label columns (decided on its first rows); with `require_labels` a row
        without a valid label is an error, else its target is None (predict still predicts it)."""
        if self.config is None:
            raise RunDirError(f"{self.run_dir}: config.yaml is missing")
        data = self.config.data
        label_columns = self.task.target_columns()
        has_labels: bool | None = None
        unlabelled = 0

        def target(row: Row) -> Any:
            nonlocal unlabelled
            if not has_labels:
                return None
            try:
                return self.task.encode_target(row)
            except DataError as exc:
                if require_labels or exc.field not in label_columns:
                    raise
                unlabelled += 1
                return None

        from tqdm.auto import tqdm

        with tqdm(total=count_rows(path), desc=f"predict {path.name}", unit="row", dynamic_ncols=True,
                  disable=not progress) as bar:
            for rows in iter_chunks(iter_rows(path, encoding=data.encoding), PREDICT_CHUNK_ROWS):
                if has_labels is None:
                    has_labels = all(c in row.values for row in rows for c in label_columns)
                    if require_labels and not has_labels:
                        row = next(r for r in rows if not all(c in r.values for c in label_columns))
                        raise row.error("no label column: evaluate needs labelled data",
                                        next(c for c in label_columns if c not in row.values))
                examples = build_examples(rows, data, target, path.stem, self.task.render, unique_ids=False)
                yield ([e.id for e in examples], self.logits([e.text for e in examples]),
                       [e.target for e in examples] if has_labels else None)
                bar.update(len(rows))
        if unlabelled:
            logger.warning("%s: %d rows have no valid label (gold is null for them)", path, unlabelled)

    def predict_file(self, path: str | Path, output: str | Path, overwrite: bool = False,
                     progress: bool = True) -> int:
        """Predict every row of a data file; write JSONL or CSV (by suffix) with id, predicted,
        probabilities (and gold when the file has labels). Streams: the output grows chunk by
        chunk in a temporary file, renamed to `output` at the end (an error leaves no output).
        Returns the number of rows."""
        path, output = Path(path), Path(output)
        check_output_file(output, path, overwrite)
        csv_out = output.suffix.lower() in (".csv", ".tsv")
        count = 0
        with atomic_text_file(output, newline="" if csv_out else None) as handle:
            writer = None
            for ids, logits, targets in self._stream(path, require_labels=False, progress=progress):
                records = self._records(ids, logits, targets)
                if csv_out:
                    flat = [_flat_record(r) for r in records]
                    if writer is None:
                        writer = csv.DictWriter(handle, fieldnames=list(flat[0]), lineterminator="\n",
                                                delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
                        writer.writeheader()
                    writer.writerows(flat)
                else:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                count += len(records)
        return count

    def _records(self, ids: list[str], logits: np.ndarray, targets: list[Any] | None) -> list[dict[str, Any]]:
        """Prediction records; rows whose gold label was unusable get `"gold": null`."""
        if targets is None or all(t is not None for t in targets):
            return self.task.prediction_records(ids, logits, targets)
        known = np.array([t is not None for t in targets])
        with_gold = iter(self.task.prediction_records([i for i, k in zip(ids, known) if k], logits[known],
                                                      [t for t in targets if t is not None]))
        records = self.task.prediction_records(ids, logits, None)
        return [next(with_gold) if k else {"id": r["id"], "gold": None, **{key: v for key, v in r.items() if key != "id"}}
                for r, k in zip(records, known)]

    def evaluate_file(self, path: str | Path, output_dir: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
        """Metrics, predictions and reports for a labelled file (written to output_dir, default
        RUN_DIR/eval-<file stem>). Streams like `predict_file`; only the logits and targets are
        kept for the metrics (a few numbers per row, never the texts)."""
        path = Path(path)
        out = Path(output_dir) if output_dir else self.run_dir / f"eval-{path.stem}"
        check_writable_folder(out, {"the evaluated file": path}, is_own=is_evaluation(out),
                              what="output folder")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        all_logits, targets = [], []
        try:
            with atomic_text_file(out / "predictions.jsonl") as handle:
                for ids, logits, chunk_targets in self._stream(path, require_labels=True, progress=progress):
                    assert chunk_targets is not None
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n"
                                      for r in self.task.prediction_records(ids, logits, chunk_targets))
                    all_logits.append(logits)
                    targets.extend(chunk_targets)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        logits = np.concatenate(all_logits)
        metrics = self.task.metrics(targets, logits)
        self.task.write_reports(out, "eval", targets, logits)
        write_json(out / "metrics.json", {"evaluated_run": self.run_dir.resolve().name, "file": str(path), **metrics})
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


def load(run_dir: str | Path, device: str = "auto", batch_size: int | None = None,
         trust_remote_code: bool = False, merge: bool = True) -> LoadedRun:
    """Load a finished run: a `kitae.inference.loaded.LoadedRun` whose capability its task declares
    (`loaded.capability`): a `Classifier` for the tasks that predict, a `kitae.generator.Generator`
    for those that generate. A classifier's LoRA adapter is merged into the weights for speed
    (`merge=False` keeps the adapter layers, e.g. to save the adapter again).
    `trust_remote_code=True` lets the base model run code from the hub; it is never taken from
    the run directory (which may come from anyone)."""
    from kitae.export import is_kitae_export

    if is_kitae_export(Path(run_dir)):
        meta = read_json(Path(run_dir) / "kitae_model.json")
        if _generates(meta.get("task")):
            raise RunDirError(f"{run_dir}: an exported causal LM loads with transformers / PEFT (its README says "
                              "how); kitae.load reads run directories and exported classifiers")
        return Classifier(Path(run_dir), device=device, batch_size=batch_size or 32,
                          trust_remote_code=trust_remote_code, merge=merge)
    run_dir = require_finished_run(Path(run_dir))
    task = read_json(run_dir / MODEL_DIR / "kitae_model.json").get("task", "single_label")
    if _generates(task):
        from kitae.generator import Generator

        return Generator.from_run(run_dir, device=device, batch_size=batch_size or 8,
                                  trust_remote_code=trust_remote_code)
    return Classifier(run_dir, device=device, batch_size=batch_size or 32, trust_remote_code=trust_remote_code,
                      merge=merge)


def _generates(task: Any) -> bool:
    """Whether runs of this task generate (an unknown task reaches the classifier, which names it)."""
    return task in TASKS and get_task_class(task).contract.generates
