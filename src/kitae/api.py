"""kitae's Python API — what the CLI calls and what notebooks import: `train`, and (from
kitae.predictor) `load` -> `Classifier`.

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
from kitae.config import RunConfig, config_to_dict, dump_yaml, load_config
from kitae.data.batching import EncodedSplit, TrainBatches, encode_texts
from kitae.data.examples import Example
from kitae.data.prepare import prepare_data
from kitae.errors import ConfigError, RunDirError
from kitae.log import attach_run_log
from kitae.models.adapters import apply_adapter, count_parameters
from kitae.models.classifier import SequenceClassifier, find_head_name
from kitae.models.loading import load_for_classification, load_tokenizer
from kitae.models.persist import save_classifier
from kitae.models.precision import PrecisionPlan, plan_precision, probe_caps
from kitae.models.sources import resolve_source
from kitae.predictor import Classifier, Prediction, load
from kitae.runs import (
    CHECKPOINT_DIR,
    MODEL_DIR,
    run_status,
    update_run_info,
    write_json,
    write_jsonl,
    write_text_atomic,
)
from kitae.tasks.base import Task
from kitae.training.callbacks import Callback, EpochLogger, HistoryWriter, ProgressBar
from kitae.training.checkpoint import BEST_DEV_LOGITS, load_best
from kitae.training.loop import Batching, fit, predict_logits

__all__ = ["Classifier", "Prediction", "TrainResult", "load", "prepare_data", "train"]

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
    splits = {name: _encode(name, split, tokenizer, task, loaded.is_decoder)
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
    best_dev = checkpoint_dir / "best" / BEST_DEV_LOGITS
    all_logits = {name: np.load(best_dev) if name == "dev" and best_dev.is_file()
                  else predict_logits(classifier, splits[name], eval_batch, plan, batching)
                  for name in ("dev", "test") if name in splits}
    task.fit_after_training(splits["dev"].targets if "dev" in splits else None, all_logits.get("dev"))
    warnings = []
    if "dev" in all_logits and (collapse := task.collapse_warning(splits["dev"].targets, all_logits["dev"])):
        warnings.append(f"dev: {collapse}: the model has not learned the task. A lower training.lr often helps "
                        f"(LoRA on encoders about 5e-4, full fine-tuning 1e-5 to 5e-5), or class weights "
                        f"(balance.class_weights) when one class dominates.")
        logger.warning(warnings[-1])
    for name, logits in all_logits.items():
        split = splits[name]
        metrics[name] = task.metrics(split.targets, logits)
        write_jsonl(run_dir / f"predictions_{name}.jsonl", task.prediction_records(split.ids, logits, split.targets))
        task.write_reports(run_dir, name, split.targets, logits)
    summary = {"selected_epoch": loop.best_epoch, "select_metric": training.select_metric,
               "epochs_run": len(loop.history), "stopped_early": loop.stopped_early,
               "train_seconds": round(loop.train_seconds, 2),
               "train_examples": len(splits["train"]), "truncated": {n: s.encoded.truncated for n, s in splits.items()},
               "warnings": warnings}
    write_json(run_dir / "metrics.json", {**metrics, "summary": summary})
    write_json(run_dir / "labels.json", {"task": config.task, "labels": labels})
    meta = {"task": config.task, "labels": labels, "pooling": pooling,
            "base_model": {"path": source.path, "gguf_file": source.gguf_file, "revision": source.revision},
            "model": config.model.model_dump(mode="json"), "adapter": config.adapter.model_dump(mode="json"),
            "data": {"template": config.data.template, "text_field": config.data.text_field,
                     "text_fields": config.data.text_fields, "prompt_field": config.data.prompt_field,
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


def _encode(name: str, examples: list[Example], tokenizer: Any, task: Task, is_decoder: bool) -> EncodedSplit:
    texts, group_size = task.model_texts([e.text for e in examples], is_decoder)
    config = task.config
    encoded = encode_texts(tokenizer, texts, config.model.max_length)
    if encoded.truncated:
        logger.warning("%s: %d of %d texts are longer than model.max_length=%d tokens and were truncated",
                       name, encoded.truncated, len(texts), config.model.max_length)
    return EncodedSplit(name, [e.id for e in examples], encoded, [e.target for e in examples], group_size)


def _log_metrics(metrics: dict[str, dict[str, Any]]) -> None:
    for name, values in metrics.items():
        shown = [k for k in ("accuracy", "subset_accuracy", "micro_f1", "macro_f1", "rmse", "pearson", "spearman",
                             "pairwise_accuracy", "mean_margin") if k in values]
        logger.info("%s: %s", name, ", ".join(f"{k} {values[k]:.4f}" for k in shown))


