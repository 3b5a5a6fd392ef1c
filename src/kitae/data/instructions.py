"""Instruction data for SFT: rows -> conversations -> token ids with an exact loss mask.

A row is read as a `Conversation` (an optional system message, then user / assistant turns)
from instruction columns (`instruction`, `input`, `output`), a chat column of OpenAI-style
messages, or a template over any columns. A prompt format then writes it as text segments —
the tokenizer's chat template, the Japanese Alpaca format, or the template itself — each marked
as trained (an assistant turn) or not (everything else).

The loss mask comes from token positions: every segment is tokenised on its own and the ids are
joined, so the mask covers exactly the response tokens. It never searches the token ids for a
response key such as `### 応答:`, which a sentencepiece tokenizer may split differently in context
than alone (the known failure of completion-only collators). Generation feeds the same prompt
ids, so training and inference see identical prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kitae.data.readers import Row
from kitae.data.templates import render_text
from kitae.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kitae.config import SFTData

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label of a token that is not trained on (PyTorch's cross-entropy default)

# The Japanese Alpaca format (as in the Japanese Alpaca / Dolly datasets and rinna's and
# LLM-jp's instruction-tuned models).
ALPACA_JA_PREAMBLE = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
ALPACA_JA_PREAMBLE_WITH_INPUT = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"


@dataclass(frozen=True)
class Conversation:
    """An SFT example: an optional system message and (user, assistant) turns. The assistant text
    of the last turn is None for a prompt to be answered (generation). `instruction` / `input`
    keep the two columns apart for the Alpaca format."""

    system: str | None
    turns: tuple[tuple[str, str | None], ...]
    instruction: str | None = None
    input: str | None = None

    @property
    def response(self) -> str | None:
        return self.turns[-1][1]

    def without_response(self) -> Conversation:
        """The prompt alone: the last assistant text removed (what generation continues)."""
        return Conversation(self.system, (*self.turns[:-1], (self.turns[-1][0], None)), self.instruction, self.input)


# --- rows -> conversations ---------------------------------------------------------------------

def _text(row: Row, field: str, what: str, required: bool = True) -> str | None:
    if field not in row.values:
        if required:
            raise row.error(f"missing column ({what}; columns here: {', '.join(map(str, row.values))})", field)
        return None
    value = row.values[field]
    text = "" if value is None else str(value)
    if not text.strip():
        if required:
            raise row.error(f"empty {what}", field)
        return None
    return text


def gold_answers(row: Row, data: SFTData) -> list[str] | None:
    """The correct responses of a row (several for extractive QA), or None when it has none
    (a prompt to answer). Errors for an empty response."""
    if data.answer_choice_field is not None:
        choices = row_choices(row, data)
        index = _choice_index(row, data.answer_choice_field, len(choices))
        return None if index is None else [choices[index]]
    if data.messages_field is not None:
        return None  # chat rows carry their response in the messages
    field = data.output_field
    if field not in row.values:
        return None
    value = row.values[field]
    if isinstance(value, list | tuple):
        answers = [str(v) for v in value if v is not None and str(v).strip()]
        if not answers:
            raise row.error("empty response (an empty list of answers)", field)
        return answers
    text = "" if value is None else str(value)
    if not text.strip():
        raise row.error("empty response", field)
    return [text]


def row_choices(row: Row, data: SFTData) -> list[str]:
    assert data.choice_fields is not None
    return [_text(row, field, "choice") or "" for field in data.choice_fields]


def _choice_index(row: Row, field: str, count: int) -> int | None:
    if field not in row.values or row.values[field] in (None, ""):
        return None
    value = row.values[field]
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise row.error(f"expected the index of the correct choice (0 to {count - 1}), got {value!r}", field) from None
    if not 0 <= index < count or isinstance(value, bool):
        raise row.error(f"choice index {value!r} is out of range (0 to {count - 1})", field)
    return index


def read_conversation(row: Row, data: SFTData, require_response: bool = True) -> Conversation:
    """The conversation of one row; errors name the file, line and field (a missing output
    column, an empty response, a chat message with an unknown role)."""
    if data.messages_field is not None:
        return _chat_conversation(row, data, require_response)
    if data.template is not None:
        prompt = render_text(row, template=data.template, text_field=data.text_field)
        instruction, extra = prompt, None
    else:
        instruction = _text(row, data.instruction_field, "instruction")
        extra = _text(row, data.input_field, "input", required=False)
        prompt = instruction if extra is None else f"{instruction}\n\n{extra}"
    answers = gold_answers(row, data)
    if answers is None and require_response:
        field = data.answer_choice_field or data.output_field
        raise row.error("missing column (the response to learn)" if field not in row.values else "empty response", field)
    return Conversation(data.system_prompt, ((prompt, None if answers is None else answers[0]),), instruction, extra)


def _chat_conversation(row: Row, data: SFTData, require_response: bool) -> Conversation:
    field = data.messages_field
    assert field is not None
    messages = row.values.get(field)
    if field not in row.values:
        raise row.error("missing column (chat messages)", field)
    if isinstance(messages, str):
        import json

        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise row.error("expected a list of {role, content} messages (a JSON list in a CSV cell)", field) from None
    if not isinstance(messages, list) or not messages:
        raise row.error("expected a non-empty list of {role, content} messages", field)
    system = data.system_prompt
    turns: list[tuple[str, str | None]] = []
    expected = "user"
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise row.error(f"message {number}: expected an object with 'role' and 'content'", field)
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise row.error(f"message {number}: unknown role {role!r} (expected one of {', '.join(ROLES)})", field)
        if not isinstance(content, str) or not content.strip():
            raise row.error(f"message {number} ({role}): empty content", field)
        if role == "system":
            if number != 1:
                raise row.error(f"message {number}: a system message may only come first", field)
            system = content
            continue
        if role != expected:
            raise row.error(f"message {number}: expected a {expected} message, got {role} (turns must "
                            "alternate user / assistant)", field)
        if role == "user":
            turns.append((content, None))
        else:
            turns[-1] = (turns[-1][0], content)
        expected = "assistant" if role == "user" else "user"
    if not turns:
        raise row.error("no user message", field)
    if turns[-1][1] is None and require_response:
        raise row.error("the last message must be the assistant's response to learn", field)
    return Conversation(system, tuple(turns))


# --- conversations -> text segments -------------------------------------------------------------

def resolve_prompt_format(data: SFTData, tokenizer: Any) -> str:
    """auto -> template (data.template set), chat_template (the tokenizer has one), else alpaca_ja."""
    requested = data.prompt_format
    if requested == "auto":
        if data.template is not None:
            return "template"
        return "chat_template" if getattr(tokenizer, "chat_template", None) else "alpaca_ja"
    if requested == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.prompt_format: chat_template, but this tokenizer has no chat template; use "
                          "alpaca_ja or a data.template")
    if requested == "template" and data.template is None:
        raise ConfigError("data.prompt_format: template needs data.template (the prompt over your columns)")
    return requested


def segments(conversation: Conversation, prompt_format: str, tokenizer: Any) -> list[tuple[str, bool]]:
    """The conversation as text segments, each (text, trained): assistant turns are trained, with
    the end of their turn (the eos token, or the chat template's end-of-turn marker)."""
    if prompt_format == "chat_template":
        return _chat_template_segments(conversation, tokenizer)
    if len(conversation.turns) > 1:
        raise DataError(f"prompt_format {prompt_format} is single-turn; multi-turn chats need "
                        "data.prompt_format: chat_template")
    user, response = conversation.turns[0]
    if prompt_format == "alpaca_ja":
        prompt = alpaca_ja_prompt(conversation)
    else:
        prompt = user if conversation.system is None else f"{conversation.system}\n\n{user}"
    parts = [(prompt, False)]
    if response is not None:
        parts.append((response + (tokenizer.eos_token or ""), True))
    return parts


def alpaca_ja_prompt(conversation: Conversation) -> str:
    """The Japanese Alpaca prompt, up to and including '### 応答:' and its line break.

    >>> print(alpaca_ja_prompt(Conversation(None, (("日本の首都は？", None),), "日本の首都は？", None)))
    以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。
    <BLANKLINE>
    ### 指示:
    日本の首都は？
    <BLANKLINE>
    ### 応答:
    <BLANKLINE>
    """
    instruction = conversation.instruction if conversation.instruction is not None else conversation.turns[0][0]
    extra = conversation.input
    preamble = conversation.system or (ALPACA_JA_PREAMBLE if extra is None else ALPACA_JA_PREAMBLE_WITH_INPUT)
    text = f"{preamble}\n\n### 指示:\n{instruction}\n\n"
    if extra is not None:
        text += f"### 入力:\n{extra}\n\n"
    return text + "### 応答:\n"


def _chat_template_segments(conversation: Conversation, tokenizer: Any) -> list[tuple[str, bool]]:
    """Render the conversation one turn at a time: each assistant text is what the template adds
    between the prompt with `add_generation_prompt` and the conversation including that turn."""
    messages: list[dict[str, str]] = []
    if conversation.system is not None:
        messages.append({"role": "system", "content": conversation.system})
    parts: list[tuple[str, bool]] = []
    rendered = ""
    for user, assistant in conversation.turns:
        messages.append({"role": "user", "content": user})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not prompt.startswith(rendered):
            raise ConfigError("the tokenizer's chat template rewrites earlier turns, so turns cannot be masked "
                              "by position: use data.prompt_format: alpaca_ja or a data.template")
        parts.append((prompt[len(rendered):], False))
        rendered = prompt
        if assistant is None:
            break
        messages.append({"role": "assistant", "content": assistant})
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(rendered) or assistant not in full[len(rendered):]:
            raise ConfigError("the tokenizer's chat template does not write an assistant turn after its "
                              "generation prompt: use data.prompt_format: alpaca_ja or a data.template")
        parts.append((full[len(rendered):], True))
        rendered = full
    return [(text, trained) for text, trained in parts if text]


# --- segments -> token ids and labels ----------------------------------------------------------

@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken
    prompt_length: int  # tokens before the last response (what generation is given)
    truncated: bool = False


def leading_special_ids(tokenizer: Any) -> list[int]:
    """What the tokenizer puts in front of a text on its own (e.g. [<bos>]; [] for GPT-NeoX)."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i in set(tokenizer.all_special_ids)]


class PromptTooLong(ValueError):
    """The prompt alone fills model.max_length (the caller names the row)."""


def tokenize_segments(tokenizer: Any, parts: Sequence[tuple[str, bool]], max_length: int,
                      train_on_prompt: bool = False) -> TokenizedExample:
    """Token ids of the segments joined, with labels on the trained ones (every token with
    `train_on_prompt`, except the leading special tokens). A prompt that alone fills max_length is
    an error; a response that does not fit is truncated (and reported)."""
    leading = leading_special_ids(tokenizer)
    first_text = parts[0][0] if parts else ""
    bos_text = tokenizer.bos_token
    if bos_text and first_text.startswith(bos_text):
        leading = []  # the chat template writes the bos token itself
    ids = list(leading)
    labels = [IGNORE_INDEX] * len(ids)
    prompt_length = len(ids)
    for text, trained in parts:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained or train_on_prompt else [IGNORE_INDEX] * len(piece)
        if not trained:
            prompt_length = len(ids)
    if prompt_length >= max_length:
        raise PromptTooLong(f"the prompt is {prompt_length} tokens and model.max_length is {max_length}: no room "
                            "for the response (raise model.max_length or shorten the prompt)")
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    if ids:
        labels[0] = IGNORE_INDEX  # nothing predicts the first token
    return TokenizedExample(ids, labels, prompt_length, truncated)
