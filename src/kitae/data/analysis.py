"""`kitae data analyze`: what the data looks like before training, per split.

Label rates (per class, or per category yes/no for multi_label), how many labels each example
has, which categories co-occur; target statistics for regression; and text lengths in characters
and in the model's tokens (text pairs and prompt + response as the model reads them) — with how
many texts `model.max_length` would truncate. Printed by the CLI; saved as CSV, JSON and PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kitae.config import RunConfig
from kitae.metrics import label_cardinality_histogram, label_cooccurrence
from kitae.metrics.plots import plot_cooccurrence, plot_label_rates, plot_length_histogram
from kitae.runs import write_csv, write_json
from kitae.tasks.contract import Analysis

logger = logging.getLogger(__name__)


def _length_stats(lengths: np.ndarray, limit: int | None) -> dict[str, Any]:
    stats: dict[str, Any] = {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())}
    for q in (50, 90, 95, 99):
        stats[f"p{q}"] = int(np.percentile(lengths, q))
    if limit is not None:
        stats["over_max_length"] = int((lengths > limit).sum())
    return stats


def file_config(source: str | Path, task: str = "single_label", text_field: str = "text",
                label_field: str = "label", model: str | None = None) -> RunConfig:
    """The config `kitae data analyze FILE` analyses a bare data file with: all of it as train."""
    from kitae.config import config_from_dict, task_config_class, task_keys

    data = {"train": str(source), "text_field": text_field, "label_field": label_field, "split": {"dev": 0.0}}
    task_config_class(task)  # an unknown task is named before its keys are looked up
    # The label column only for the tasks that have one (reward reads chosen / rejected).
    data = {key: value for key, value in data.items() if f"data.{key}" in task_keys(task)}
    raw = {"task": task, "data": data, "model": {"name": model or "none"}, "output": "unused"}
    return config_from_dict(raw, source=str(source))


def analyze(config: RunConfig, output_dir: str | Path, tokenize: bool = True) -> dict[str, Any]:
    """Analyse the splits a config selects; write the report to `output_dir`; return it."""
    from kitae.api import prepare_data

    output_dir = Path(output_dir)
    task, examples = prepare_data(config)
    offered = task.contract.analyses
    multi = Analysis.CATEGORY_RATES in offered  # targets are one yes/no per category
    has_rates = bool(offered & {Analysis.CLASS_SHARES, Analysis.CATEGORY_RATES})
    tokenizer, is_decoder = _tokenizer(config) if tokenize else (None, False)

    report: dict[str, Any] = {"task": config.task, "labels": task.labels, "splits": {}}
    rate_rows: list[dict[str, Any]] = []
    rates: dict[str, dict[str, float]] = {}
    token_lengths: dict[str, list[int]] = {}
    for name, split in examples.items():
        entry: dict[str, Any] = {"examples": len(split)}
        split_rates = _target_analyses(task, offered, name, split, entry, output_dir)
        rate_rows += split_rates
        if has_rates:
            rates[name] = {r["label"]: r["rate"] for r in split_rates}
        if task.contract.generates:
            _generation_lengths(task, name, split, config, tokenizer, entry, token_lengths)
        else:
            _model_text_lengths(task, name, split, config, tokenizer, is_decoder, entry, token_lengths)
        report["splits"][name] = entry

    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "summary.json", report)
    if has_rates:
        write_csv(output_dir / "label_rates.csv", rate_rows)
        plot_label_rates(rates, output_dir / "label_rates.png",
                         title="positive rate per category" if multi else "class share")
    if token_lengths:
        plot_length_histogram(token_lengths, config.model.max_length, output_dir / "token_lengths.png")
    return report


def _tokenizer(config: RunConfig) -> tuple[Any, bool]:
    """The run's tokenizer, and whether the model is a decoder (decoders read a text pair through
    the template, encoders as the tokenizer's pair)."""
    from transformers import AutoConfig

    from kitae.errors import KitaeError
    from kitae.models.loading import is_encoder_config, load_tokenizer
    from kitae.models.sources import resolve_source

    source = resolve_source(config.model.name, config.model.gguf_file, config.model.revision)
    tokenizer = load_tokenizer(source, config.model)
    try:
        is_decoder = not is_encoder_config(AutoConfig.from_pretrained(source.path, revision=source.revision))
    except (OSError, ValueError) as exc:
        raise KitaeError(f"model.name: cannot read the config of '{source.path}': {exc}") from None
    return tokenizer, is_decoder


def _target_analyses(task: Any, offered: frozenset[Analysis], name: str, split: list[Any], entry: dict[str, Any],
                     output_dir: Path) -> list[dict[str, Any]]:
    """The target analyses the task offers for one split, into `entry`; its label-rate rows."""
    rate_rows: list[dict[str, Any]] = []
    if Analysis.CATEGORY_RATES in offered:
        y = np.stack([e.target for e in split]).astype(int)
        positives = y.sum(axis=0)
        for label, count in zip(task.labels, positives):
            rate_rows.append({"split": name, "label": label, "yes": int(count), "no": int(len(y) - count),
                              "rate": round(float(count / len(y)), 6)})
        entry["label_count_histogram"] = label_cardinality_histogram(y)
    if Analysis.COOCCURRENCE in offered:
        y = np.stack([e.target for e in split]).astype(int)
        cooc = label_cooccurrence(y)
        write_csv(output_dir / f"cooccurrence_{name}.csv",
                  [{"": label, **dict(zip(task.labels, map(int, row)))} for label, row in zip(task.labels, cooc)])
        plot_cooccurrence(cooc, task.labels, output_dir / f"cooccurrence_{name}.png",
                          title=f"{name}: co-occurrence (diagonal = positives)")
        entry["cooccurrence"] = cooc.tolist()
    if Analysis.CLASS_SHARES in offered:
        counts = np.bincount(np.array([e.target for e in split]), minlength=len(task.labels))
        for label, count in zip(task.labels, counts):
            rate_rows.append({"split": name, "label": label, "count": int(count),
                              "rate": round(float(count / len(split)), 6)})
    if Analysis.TARGET_STATS in offered:
        values = np.stack([e.target for e in split]).astype(float)
        entry["targets"] = {label: {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
                                    "min": float(v.min()), "max": float(v.max())}
                            for label, v in zip(task.labels, values.T)}
    return rate_rows


def _model_text_lengths(task: Any, name: str, split: list[Any], config: RunConfig, tokenizer: Any, is_decoder: bool,
                        entry: dict[str, Any], token_lengths: dict[str, list[int]]) -> None:
    """Classifiers: lengths of what the model reads (a pair counts once, a reward pair as its two texts)."""
    texts, _ = task.model_texts([e.text for e in split], is_decoder)
    chars = np.array([sum(map(len, t)) if isinstance(t, tuple) else len(t) for t in texts])
    entry["characters"] = _length_stats(chars, None)
    if tokenizer is not None:
        from kitae.data.batching import encode_texts

        tokens = np.array([len(ids) for ids in encode_texts(tokenizer, texts, max_length=10**9).input_ids])
        entry["tokens"] = _length_stats(tokens, config.model.max_length)
        token_lengths[name] = tokens.tolist()


def _generation_lengths(task: Any, name: str, split: list[Any], config: RunConfig, tokenizer: Any,
                        entry: dict[str, Any], token_lengths: dict[str, list[int]]) -> None:
    """sft / causal_lm: characters of each example (prompt and response), and its tokens in the
    run's prompt format (prompt, response, and how many responses max_length would cut)."""
    def characters(text: Any) -> tuple[int, int]:
        if isinstance(text, str):
            return len(text), 0
        prompt = sum(len(user) for user, _ in text.turns) + len(text.system or "")
        return prompt, sum(len(answer or "") for _, answer in text.turns)

    counts = np.array([characters(e.text) for e in split])
    entry["characters"] = _length_stats(counts.sum(axis=1), None)
    prompted = Analysis.PROMPT_LENGTHS in task.contract.analyses
    if prompted:
        entry["prompt_characters"] = _length_stats(counts[:, 0], None)
        entry["response_characters"] = _length_stats(counts[:, 1], None)
    if tokenizer is None:
        return
    from kitae.models.loading import Backbone

    encoded = task.encode(name, split, Backbone(None, config.model, tokenizer, None))  # type: ignore[arg-type]
    if prompted:
        tokens = np.array([len(ids) for ids, _ in encoded.examples])
        entry["tokens"] = {**_length_stats(tokens, None), "over_max_length": encoded.truncated}
        entry["prompt_tokens"] = _length_stats(np.array(encoded.prompt_lengths), None)
    else:
        tokens = encoded.lengths
        entry["tokens"] = {**_length_stats(tokens, None), "rows": len(encoded)}
    token_lengths[name] = tokens.tolist()
