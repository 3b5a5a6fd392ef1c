"""sft: instruction tuning of a causal LM, evaluated by generating in the same run.

Each row is a conversation (instruction columns, chat messages, or a template over any columns;
see kitae.data.instructions), written in the run's prompt format. The loss is on the response
tokens only (`training.train_on_prompt` adds the prompt), from token positions; examples may be
packed several to a row (`training.packing`). Dev loss is computed every epoch; at the end (and
every epoch with `evaluation.generate_each_epoch`, or when `training.select_metric` is a
generation metric) the model answers every dev and test prompt with the run's `generation:`
settings, scored by exact match, character F1 (NFKC), chrF and — with `data.choice_fields` —
choice accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitae.data.instructions import (
    Conversation,
    PromptTooLong,
    gold_answers,
    read_conversation,
    resolve_prompt_format,
    row_choices,
    segments,
    tokenize_segments,
)
from kitae.data.packing import LMSplit, pack
from kitae.data.readers import Row
from kitae.errors import DataError
from kitae.metrics.generation import GENERATION_DIRECTIONS, generation_metrics, per_example_scores
from kitae.runs import write_jsonl
from kitae.tasks.contract import Analysis, generator_contract
from kitae.tasks.generative import GenerativeTask

if TYPE_CHECKING:
    from kitae.config import RunConfig
    from kitae.data.examples import Example
    from kitae.models.loading import Backbone


class SFTTask(GenerativeTask):
    name = "sft"
    contract = generator_contract("An instruction-tuned (SFT) causal language model", True, Analysis.PROMPT_LENGTHS)
    report_metrics = ("exact_match", "char_f1", "chrf", "choice_accuracy", "loss")

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.prompt_format: str | None = None
        self._end_of_turn_known = False  # the chat template's end-of-turn token is among eos_token_ids

    # --- data -----------------------------------------------------------------------------
    def render(self, row: Row) -> Conversation:
        return read_conversation(row, self.config.data)

    def encode_target(self, row: Row) -> dict[str, Any]:
        data = self.config.data
        answers = gold_answers(row, data)
        if answers is None:  # chat rows: the last assistant message
            answers = [read_conversation(row, data).response or ""]
        target: dict[str, Any] = {"answers": answers}
        if data.choice_fields is not None:
            choices = row_choices(row, data)
            target["choices"] = choices
            target["gold_choice"] = choices.index(answers[0]) if answers[0] in choices else None
        return target

    def target_columns(self) -> list[str]:
        data = self.config.data
        return [data.messages_field or data.answer_choice_field or data.output_field]

    def undefined_metric(self, metric: str, targets: Sequence[Any]) -> str | None:
        if metric == "choice_accuracy" and self.config.data.choice_fields is None:
            return "choice_accuracy needs data.choice_fields (the columns of the choices)"
        return None

    # --- encoding -------------------------------------------------------------------------
    def prompt_field(self) -> str:
        data = self.config.data
        return data.messages_field or (",".join(_template_fields(data.template)) if data.template
                                       else data.instruction_field)

    def encode(self, name: str, examples: list[Example], backbone: Backbone) -> LMSplit:
        tokenizer = backbone.tokenizer
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos_token_ids:
            self.eos_token_ids.append(tokenizer.eos_token_id)
        self.prompt_format = resolve_prompt_format(self.config.data, tokenizer)
        encoded = [self.encode_conversation(example.text, example.row) for example in examples]
        split = LMSplit(name, [e.id for e in examples], [(t.input_ids, t.labels) for t, _ in encoded],
                        [t.prompt_length for t, _ in encoded], [e.target for e in examples],
                        truncated=sum(t.truncated for t, _ in encoded), pad_token_id=tokenizer.pad_token_id,
                        prompts=[prompt for _, prompt in encoded])
        if name == "train" and self.config.training.packing is True:
            split.rows = pack([len(ids) for ids, _ in split.examples], self.config.model.max_length)
        return split

    def encode_conversation(self, conversation: Conversation, row: Row | None = None) -> tuple[Any, str]:
        """(token ids with labels, prompt text) of one conversation in the run's prompt format."""
        tokenizer = self.tokenizer
        assert self.prompt_format is not None
        try:
            parts = segments(conversation, self.prompt_format, tokenizer)
            tokenized = tokenize_segments(tokenizer, parts, self.config.model.max_length,
                                          self.config.training.train_on_prompt)
        except (PromptTooLong, DataError) as exc:
            if row is None:
                raise DataError(str(exc)) from None
            raise row.error(str(exc), self.prompt_field()) from None
        if self.prompt_format == "chat_template":
            self._add_end_of_turn(parts)
        prompt = "".join(text for text, trained in parts[:_last_prompt_part(parts) + 1])
        return tokenized, prompt

    def _add_end_of_turn(self, parts: list[tuple[str, bool]]) -> None:
        """A chat template ends an assistant turn with its own marker (Gemma's <end_of_turn>,
        ChatML's <|im_end|>): generation stops there too."""
        trained = [text for text, is_trained in parts if is_trained]
        if not trained or self._end_of_turn_known:
            return
        tokenizer = self.tokenizer
        special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        for token in tokenizer(trained[0], add_special_tokens=False)["input_ids"]:
            if token in special and token not in self.eos_token_ids:
                self.eos_token_ids.append(token)
        self._end_of_turn_known = True

    def prompt_ids(self, conversation: Conversation, row: Row | None = None) -> tuple[list[int], str]:
        """The token ids (and text) of a prompt to answer: everything before the last response
        (errors name `row` when given)."""
        tokenized, prompt = self.encode_conversation(conversation.without_response(), row)
        return tokenized.input_ids[:tokenized.prompt_length], prompt

    # --- evaluation -----------------------------------------------------------------------
    def evaluation_generates(self, final: bool) -> bool:
        return (final or self.config.evaluation.generate_each_epoch
                or self.config.training.select_metric in GENERATION_DIRECTIONS)

    def metrics(self, targets: Sequence[Any], outputs: dict[str, Any]) -> dict[str, Any]:
        metrics = super().metrics(targets, outputs)
        generations = outputs.get("generations")
        if generations is not None:
            metrics.update(score_generations(generations, targets))
        return metrics

    def write_outputs(self, run_dir: Path, name: str, split: LMSplit, outputs: dict[str, Any]) -> None:
        generations = outputs.get("generations")
        if generations is None:
            return
        write_jsonl(run_dir / f"predictions_{name}.jsonl",
                    prediction_records(split.ids, split.prompts or [""] * len(split.ids), generations, split.targets))

    def generator_meta(self) -> dict[str, Any]:
        return {**super().generator_meta(), "prompt_format": self.prompt_format}


def score_generations(generations: Sequence[str], targets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Generation metrics of a split (choice accuracy when the targets have choices)."""
    with_choices = bool(targets) and "choices" in targets[0] and all(t.get("gold_choice") is not None for t in targets)
    return generation_metrics(list(generations), [t["answers"] for t in targets],
                              [t["choices"] for t in targets] if with_choices else None,
                              [t["gold_choice"] for t in targets] if with_choices else None)


def prediction_records(ids: Sequence[str], prompts: Sequence[str], generations: Sequence[str],
                       targets: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One record per example: id, prompt, generated text, and with gold answers their scores."""
    records = []
    for i, (example_id, prompt, generated) in enumerate(zip(ids, prompts, generations)):
        record: dict[str, Any] = {"id": example_id, "prompt": prompt, "generated": generated}
        target = targets[i] if targets is not None else None  # None: a prompt without answers
        if target is not None:
            answers = target["answers"]
            record["gold"] = answers[0] if len(answers) == 1 else answers
            gold_choice = target.get("gold_choice")
            choices = target.get("choices") if gold_choice is not None else None
            record.update(per_example_scores(generated, answers, choices, gold_choice))
        records.append(record)
    return records


def _last_prompt_part(parts: list[tuple[str, bool]]) -> int:
    untrained = [i for i, (_, trained) in enumerate(parts) if not trained]
    return untrained[-1] if untrained else -1


def _template_fields(template: str) -> list[str]:
    from kitae.data.templates import template_fields

    return template_fields(template)
