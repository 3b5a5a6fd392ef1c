"""The task contract: what a task declares for the rest of kitae to ask, instead of its name.

Every task class declares one `TaskContract` (`Task.contract`, a class attribute: read from the
class, no model or data needed). Who asks what:

- `kitae.load` and every caller of a loaded run: `capability` (a classifier predicts, a causal LM
  generates; asking for the other is one clear error, see kitae.inference.loaded);
- the model builder and the engine exports: `problem_type` (transformers' `config.problem_type`)
  and `activation` (what an export's `outputs` are, computed from the logits);
- the model card: `pipeline_tag` and `card_summary`;
- `kitae data analyze`: `analyses`;
- the generator and the card: `conversational` (prompts written in the run's prompt format).

This module imports no torch, so a contract can be checked without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class _Named(str, Enum):
    """An enum whose members are their strings (Python 3.10 has no StrEnum)."""

    def __str__(self) -> str:
        return self.value


class Capability(_Named):
    """What a loaded run of the task does."""

    PREDICT = "predict"    # a classifier: predict / predict_file / evaluate_file on texts
    GENERATE = "generate"  # a causal LM: generate / generate_file / evaluate_file on prompts


class Activation(_Named):
    """How a classifier's logits become its outputs (the `outputs` of an ONNX export)."""

    SOFTMAX = "softmax"  # class probabilities
    SIGMOID = "sigmoid"  # one probability per category
    VALUES = "values"    # real values in the targets' units (logits * std + mean)
    SCORES = "scores"    # the logits themselves (a reward model's scores)


class Analysis(_Named):
    """What `kitae data analyze` reports for a task's data (lengths are reported for every task)."""

    CLASS_SHARES = "class_shares"      # the share of each class
    CATEGORY_RATES = "category_rates"  # yes / no per category, and labels per example
    COOCCURRENCE = "cooccurrence"      # which categories appear together
    TARGET_STATS = "target_stats"      # mean, std, min, max of each real-valued target
    PROMPT_LENGTHS = "prompt_lengths"  # prompt and response lengths apart


# Hugging Face pipeline tags by capability (what the hub files a model under).
PIPELINE_TAGS = {Capability.PREDICT: "text-classification", Capability.GENERATE: "text-generation"}


@dataclass(frozen=True)
class TaskContract:
    capability: Capability
    # "A single-label text classifier": the card's first sentence names the model with it.
    card_summary: str
    analyses: frozenset[Analysis] = field(default_factory=frozenset)
    # Classifiers: transformers' problem_type and the activation of the exported outputs.
    problem_type: str | None = None
    activation: Activation | None = None
    # Generators: prompts are conversations (instruction columns, a template, chat messages) in the
    # run's prompt format; False: text is continued as it is.
    conversational: bool = False

    def __post_init__(self) -> None:
        predicts = self.capability is Capability.PREDICT
        # A classifier without a problem type could not be exported; a generator with one is a mix-up.
        if predicts != (self.problem_type is not None) or predicts != (self.activation is not None):
            raise ValueError(f"{self.capability} task: problem_type and activation are for classifiers "
                             "(and every classifier declares both)")
        if self.conversational and predicts:
            raise ValueError("conversational is for generators")
        if not self.card_summary[:1].isupper():
            raise ValueError(f"card_summary starts a sentence: {self.card_summary!r}")

    @property
    def pipeline_tag(self) -> str:
        return PIPELINE_TAGS[self.capability]

    @property
    def generates(self) -> bool:
        return self.capability is Capability.GENERATE

    @property
    def outputs_probabilities(self) -> bool:
        """Whether a classifier's outputs are probabilities (else real values: regression, reward)."""
        return self.activation in (Activation.SOFTMAX, Activation.SIGMOID)


def classifier_contract(card_summary: str, problem_type: str, activation: Activation,
                        *analyses: Analysis) -> TaskContract:
    return TaskContract(Capability.PREDICT, card_summary, frozenset(analyses), problem_type, activation)


def generator_contract(card_summary: str, conversational: bool, *analyses: Analysis) -> TaskContract:
    return TaskContract(Capability.GENERATE, card_summary, frozenset(analyses), conversational=conversational)
