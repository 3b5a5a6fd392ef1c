"""A trained sft / causal_lm run, loaded for generation: `kitae.load(run_dir)` -> `Generator`.

    gen = kitae.load("runs/jsquad-sft")
    gen.generate(["日本の首都はどこですか。"])                 # the run's prompt format and settings
    gen.generate(["..."], temperature=0.8, min_p=0.1, seed=1)   # any generation: key for one call
    gen.generate_file("questions.jsonl", "answers.jsonl")
    gen.evaluate_file("test.jsonl")                             # exact match, char F1, chrF, loss

A prompt is an instruction (a string), a row with the run's columns (instruction / input, the
template's columns, or chat messages), or a list of chat messages; `raw=True` (and every
causal_lm run) feeds the text as it is. Everything comes from the run directory: its config,
prompt format, stop tokens and `generation:` defaults. `Generator.from_base` wraps an untrained
base model the same way, for "before vs after" in one command each.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kitae.config import GenerationSettings, RunConfig, read_saved_config
from kitae.data.instructions import Conversation, leading_special_ids, read_conversation
from kitae.data.packing import LMSplit
from kitae.data.readers import Row, count_rows, iter_chunks, iter_rows
from kitae.errors import DataError, KitaeError
from kitae.inference.loaded import LoadedRun
from kitae.runs import (
    MODEL_DIR,
    atomic_text_file,
    check_writable_folder,
    is_evaluation,
    require_finished_run,
    write_json,
    write_jsonl,
)
from kitae.tasks import TASKS, get_task_class
from kitae.tasks.contract import Capability
from kitae.tasks.generative import GenerativeTask

logger = logging.getLogger("kitae")

GENERATE_CHUNK_ROWS = 256  # rows read, generated and written at a time by generate_file / evaluate_file


class Generator(LoadedRun):
    """A causal LM with its run's prompt format and generation settings (its task's capability:
    generate)."""

    def __init__(self, model: Any, tokenizer: Any, config: RunConfig, plan: Any, eos_token_ids: list[int],
                 prompt_format: str | None, settings: GenerationSettings, batch_size: int = 8,
                 source: str = "", run_dir: Path | None = None) -> None:
        self.model, self.tokenizer, self.config, self.plan = model, tokenizer, config, plan
        self.settings, self.batch_size, self.source, self.run_dir = settings, batch_size, source, run_dir
        self.task_class = get_task_class(config.task)
        self.require(Capability.GENERATE)
        task = self.task_class(config, [])
        assert isinstance(task, GenerativeTask)
        task.tokenizer, task.eos_token_ids = tokenizer, list(eos_token_ids)
        if prompt_format is not None:
            task.prompt_format = prompt_format
        self.task = task

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", batch_size: int = 8,
                 trust_remote_code: bool = False) -> Generator:
        from kitae.models.persist import load_causal_lm

        run_dir = require_finished_run(Path(run_dir))
        model, tokenizer, meta, plan = load_causal_lm(run_dir / MODEL_DIR, device, trust_remote_code)
        config = read_saved_config(run_dir / "config.yaml")
        return cls(model, tokenizer, config, plan, meta.get("eos_token_ids", []), meta.get("prompt_format"),
                   GenerationSettings.model_validate(meta.get("generation", {})), batch_size,
                   source=run_dir.resolve().name, run_dir=run_dir)

    @classmethod
    def from_base(cls, config: RunConfig, device: str | None = None, batch_size: int = 8) -> Generator:
        """The config's base model with no training (its prompt format and generation settings)."""
        from kitae.data.instructions import resolve_prompt_format
        from kitae.models.causal_lm import CausalLM
        from kitae.models.loading import load_backbone, load_for_causal_lm
        from kitae.models.precision import plan_precision, probe_caps
        from kitae.models.sources import public_model_name, resolve_source

        if not get_task_class(config.task).contract.generates:
            generators = ", ".join(name for name in TASKS if get_task_class(name).contract.generates)
            raise KitaeError(f"--model evaluates a base causal LM: the config's task must be one that generates "
                             f"({generators}), not {config.task}")
        plan = plan_precision(probe_caps(device or config.training.device), config.model.dtype,
                              config.model.attn_implementation, "full")
        source = resolve_source(config.model.name, config.model.gguf_file, config.model.revision)
        backbone = load_backbone(source, config.model)
        hf_model = load_for_causal_lm(source, config.model, plan)
        hf_model.eval()
        tokenizer = backbone.tokenizer
        conversational = get_task_class(config.task).contract.conversational
        prompt_format = resolve_prompt_format(config.data, tokenizer) if conversational else None
        generator = cls(CausalLM(hf_model, hf_model), tokenizer, config, plan, [], prompt_format,
                        config.generation, batch_size, source=f"base:{public_model_name(config.model.name)}")
        if tokenizer.eos_token_id is not None:
            generator.task.eos_token_ids.append(tokenizer.eos_token_id)
        generator.task._add_model_eos(hf_model)
        return generator

    def describe(self) -> str:
        return str(self.run_dir or self.source)

    @property
    def _raw_prompts(self) -> bool:
        """Whether prompts are text continued as it is (not conversations in a prompt format)."""
        return not self.task_class.contract.conversational

    @property
    def _scores_generations(self) -> bool:
        """Whether an evaluation generates and scores answers (else: token loss only)."""
        return self.task.evaluation_generates(final=True)

    # --- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, prompt: Any, raw: bool = False) -> list[int]:
        """The token ids generation continues from, in the run's prompt format."""
        if raw or self._raw_prompts:
            if not isinstance(prompt, str):
                raise KitaeError("a raw prompt is a string")
            return leading_special_ids(self.tokenizer) + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids, _ = self.task.prompt_ids(self._conversation(prompt))
        return ids

    def _conversation(self, prompt: Any, row: Row | None = None) -> Conversation:
        data = self.config.data
        if isinstance(prompt, str) and data.template is not None:
            from kitae.data.templates import template_fields

            fields = template_fields(data.template)
            if len(fields) != 1:
                raise KitaeError(f"this run writes prompts with data.template over the columns {', '.join(fields)}: "
                                 "give rows (dicts) with those columns, or raw=True for text as it is")
            prompt = {fields[0]: prompt}
        if isinstance(prompt, str):
            return Conversation(data.system_prompt, ((prompt, None),), prompt, None)
        if isinstance(prompt, list):  # chat messages
            field = data.messages_field or "messages"
            prompt = {field: prompt}
            data = data.model_copy(update={"messages_field": field})
        if not isinstance(prompt, dict):
            raise KitaeError(f"a prompt is a string, a row (dict) or a list of chat messages, not {type(prompt).__name__}")
        row = row or Row(prompt, Path("<input>"), 0)
        return read_conversation(row, data, require_response=False).without_response()

    # --- generation ---------------------------------------------------------------------------
    def settings_with(self, **overrides: Any) -> GenerationSettings:
        """The run's generation settings with some keys replaced (None leaves a key as it is)."""
        changed = {k: v for k, v in overrides.items() if v is not None}
        return GenerationSettings.model_validate({**self.settings.model_dump(), **changed})

    def generate(self, prompts: Sequence[Any], raw: bool = False, progress: bool = False, **overrides: Any) -> list[str]:
        """The generated answer to every prompt; keyword arguments override `generation:` keys
        (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, stop, seed)."""
        return self._generate([self.prompt_ids(p, raw) for p in prompts], self.settings_with(**overrides), progress)

    def _generate(self, ids: list[list[int]], settings: GenerationSettings, progress: bool) -> list[str]:
        from kitae.inference.generate import generate

        if not ids:
            return []
        return generate(self.model.generator, self.tokenizer, ids, settings, self.plan, self.task.eos_token_ids,
                        settings.batch_size or self.batch_size, progress=progress)

    def _stream(self, path: Path, require_answers: bool, settings: GenerationSettings, progress: bool,
                raw: bool = False) -> Iterator[tuple[list[str], list[str], list[str], list[Any] | None, list[Row]]]:
        """(ids, prompts, generations, targets or None, rows) chunk by chunk in file order."""
        from tqdm.auto import tqdm

        data = self.config.data
        with tqdm(total=count_rows(path), desc=f"generate {path.name}", unit="row", dynamic_ncols=True,
                  disable=not progress) as bar:
            for rows in iter_chunks(iter_rows(path, encoding=data.encoding), GENERATE_CHUNK_ROWS):
                ids, prompts, prompt_texts, targets = [], [], [], []
                for row in rows:
                    ids.append(str(row.values.get(data.id_field) or f"{path.stem}-{row.line}"))
                    if raw or self._raw_prompts:
                        text = self.task.render(row)
                        prompts.append(self.prompt_ids(text, raw=True))
                        prompt_texts.append(text)
                        targets.append(None)
                        continue
                    token_ids, text = self.task.prompt_ids(self._conversation(row.values, row), row)
                    prompts.append(token_ids)
                    prompt_texts.append(text)
                    try:
                        targets.append(self.task.encode_target(row))
                    except DataError:
                        if require_answers:
                            raise
                        targets.append(None)
                if require_answers and any(t is None for t in targets):
                    bad = rows[next(i for i, t in enumerate(targets) if t is None)]
                    raise bad.error("no gold answer: evaluate needs the response column", self.task.target_columns()[0])
                generations = self._generate(prompts, settings, progress=False)
                yield ids, prompt_texts, generations, targets, rows
                bar.update(len(rows))

    def generate_file(self, path: str | Path, output: str | Path, overwrite: bool = False, progress: bool = True,
                      raw: bool = False, **overrides: Any) -> int:
        """Generate for every row of a file; write JSONL or CSV (by suffix): id, prompt, generated
        (and gold with scores where the row has answers). Streams into a temporary file renamed at
        the end. Returns the number of rows."""
        from kitae.runs import check_output_file
        from kitae.tasks.sft import prediction_records

        path, output = Path(path), Path(output)
        check_output_file(output, path, overwrite)
        settings = self.settings_with(**overrides)
        csv_out = output.suffix.lower() in (".csv", ".tsv")
        count = 0
        with atomic_text_file(output, newline="" if csv_out else None) as handle:
            writer = None
            for ids, prompts, generations, targets, _ in self._stream(path, False, settings, progress, raw):
                records = prediction_records(ids, prompts, generations, targets)
                if csv_out:
                    flat = [{k: ("|".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
                            for r in records]
                    if writer is None:
                        fields = list(dict.fromkeys(k for r in flat for k in r))
                        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n", extrasaction="ignore",
                                                delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
                        writer.writeheader()
                    writer.writerows(flat)
                else:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                count += len(records)
        return count

    def evaluate_file(self, path: str | Path, output_dir: str | Path | None = None, progress: bool = True,
                      **overrides: Any) -> dict[str, Any]:
        """Generate for a file with gold answers and score it (sft: exact match, char F1, chrF,
        choice accuracy, token loss and perplexity; causal_lm: loss and perplexity). Writes
        predictions.jsonl and metrics.json to output_dir (default RUN_DIR/eval-<file stem>)."""
        from kitae.tasks.sft import prediction_records, score_generations

        path = Path(path)
        if output_dir is None:
            if self.run_dir is None:
                raise KitaeError("give an output folder (-o) for the evaluation of a base model")
            output_dir = self.run_dir / f"eval-{path.stem}"
        out = Path(output_dir)
        check_writable_folder(out, {"the evaluated file": path}, is_own=is_evaluation(out), what="output folder")
        settings = self.settings_with(**overrides)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        # Streamed: per chunk, the generations and targets (a few strings per row) and the loss sums.
        generations: list[str] = []
        targets: list[Any] = []
        loss_total, loss_tokens = 0.0, 0
        try:
            if self._scores_generations:
                with atomic_text_file(out / "predictions.jsonl") as handle:
                    for ids, prompts, chunk, chunk_targets, chunk_rows in self._stream(path, True, settings, progress):
                        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n"
                                          for r in prediction_records(ids, prompts, chunk, chunk_targets))
                        generations += chunk
                        targets += chunk_targets
                        total, count = self._loss_sum(chunk_rows)
                        loss_total, loss_tokens = loss_total + total, loss_tokens + count
            else:
                for chunk_rows in iter_chunks(iter_rows(path, encoding=self.config.data.encoding), GENERATE_CHUNK_ROWS):
                    total, count = self._loss_sum(chunk_rows)
                    loss_total, loss_tokens = loss_total + total, loss_tokens + count
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        metrics: dict[str, Any] = {"loss": loss_total / loss_tokens if loss_tokens else float("nan")}
        metrics["perplexity"] = float(np.exp(metrics["loss"])) if metrics["loss"] < 700 else float("inf")
        if generations:
            metrics.update(score_generations(generations, targets))
        settings_used = settings.model_dump(mode="json")
        write_json(out / "metrics.json", {"evaluated_run": self.source, "file": str(path), "generation": settings_used,
                                          **metrics})
        return metrics

    def evaluate_splits(self, examples: dict[str, list[Any]], output_dir: str | Path,
                        **overrides: Any) -> dict[str, dict[str, Any]]:
        """Generate for and score prepared examples (e.g. a config's dev and test splits, see
        kitae.data.prepare): predictions_{split}.jsonl and one metrics.json in output_dir."""
        from kitae.tasks.sft import prediction_records, score_generations

        out = Path(output_dir)
        check_writable_folder(out, {}, is_own=is_evaluation(out), what="output folder")
        out.mkdir(parents=True, exist_ok=True)
        settings = self.settings_with(**overrides)
        results: dict[str, dict[str, Any]] = {}
        batch_size = self.config.training.eval_batch_size or 2 * self.config.training.batch_size
        for name, split_examples in examples.items():
            split = self.task.encode(name, split_examples, _BackboneView(self.tokenizer))
            loss = self.task.mean_loss(self.model, split, self.plan, batch_size)
            metrics: dict[str, Any] = {"loss": loss, "perplexity": float(np.exp(loss)) if loss < 700 else float("inf")}
            if self._scores_generations:
                prompts = [ids[:n] for (ids, _), n in zip(split.examples, split.prompt_lengths)]
                generations = self._generate(prompts, settings, progress=True)
                metrics.update(score_generations(generations, split.targets))
                write_jsonl(out / f"predictions_{name}.jsonl",
                            prediction_records(split.ids, split.prompts or [], generations, split.targets))
            results[name] = metrics
        write_json(out / "metrics.json", {"evaluated_run": self.source, "generation": settings.model_dump(mode="json"),
                                          **results})
        return results

    def _loss_sum(self, rows: list[Row]) -> tuple[float, int]:
        """(summed token loss, tokens) of the rows' responses (sft) or texts (causal_lm)."""
        from kitae.data.examples import build_examples

        examples = build_examples(rows, self.config.data, self.task.encode_target, "eval", self.task.render,
                                  unique_ids=False)
        split: LMSplit = self.task.encode("eval", examples, _BackboneView(self.tokenizer))
        batch_size = self.config.training.eval_batch_size or 2 * self.config.training.batch_size
        return self.task.loss_sum(self.model, split, self.plan, batch_size)


class _BackboneView:
    """What a task's encode reads of a backbone: the tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
