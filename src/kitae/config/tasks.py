"""One run config per task: the union that `task` discriminates.

Each task declares here, without importing torch, what its config has: its data keys (text pairs,
label columns, preference columns, instruction columns), its sections (balance where class
imbalance means something, thresholds for multi_label, generation for the tasks that write text),
its rules, the metrics `training.select_metric` may name and the default one, and where its
implementation lives (`implementation`, imported only when a run needs it; see kitae.tasks). A
key of another task is not a field here, so validation refuses it (kitae.config.loading names the
task it belongs to).

The shape follows PEFT's one config class per method and H2O LLM Studio's one config per problem
type: the config class is the torch-free half of a task.
"""

from __future__ import annotations

import operator
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from kitae.config.hints import did_you_mean
from kitae.config.sections import (
    AdapterConfig,
    ClassBalance,
    DataConfig,
    FromPreferenceKey,
    GenerationSettings,
    InstructionKeys,
    LabelColumnKeys,
    LabelKeys,
    LabelNameKeys,
    ModelConfig,
    MultiLabelBalance,
    PreferenceKeys,
    Section,
    SFTEvaluation,
    TargetNormalizationKey,
    TextPairKeys,
    ThresholdEvaluation,
    TrackingConfig,
    TrainingConfig,
)

DEFAULT_TASK = "single_label"
TASK_DESCRIPTION = ("Problem type: single_label, multi_label, pair, regression, reward, sft (instruction "
                    "tuning) or causal_lm (continued pre-training). It decides which keys the config has.")

# The metrics of a classifier over a label set (kitae.metrics.single_label_metrics), headline first.
CLASSIFICATION_METRICS = (
    "accuracy", "macro_f1", "macro_precision", "macro_recall", "micro_f1", "micro_precision", "micro_recall",
    "weighted_f1", "weighted_precision", "weighted_recall", "roc_auc", "log_loss", "loss")


def _task(name: str) -> Any:
    return Field(name, description=TASK_DESCRIPTION)


class RunConfig(Section):
    """What every task's run config has. A config is always one of the per-task classes below
    (`TASK_CONFIGS`); `RunConfig` is the type the rest of kitae names."""

    task: str = Field(DEFAULT_TASK, description=TASK_DESCRIPTION)
    data: DataConfig
    model: ModelConfig
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: Path = Field(description="Run directory to create (relative to the current directory).")

    # The task's torch-free declaration (ClassVars are not config keys).
    metric_names: ClassVar[tuple[str, ...]] = ()  # what training.select_metric may name, headline first
    default_select_metric: ClassVar[str] = ""
    implementation: ClassVar[str] = ""  # "module:Class" of the task, imported when a run needs it

    @model_validator(mode="after")
    def _task_rules(self) -> RunConfig:
        self.apply_rules()
        if self.training.lr is None:
            self.training.lr = {"full": 2e-5, "prompt_tuning": 3e-2}.get(self.adapter.type, 2e-4)
        if self.training.select_metric is None:
            self.training.select_metric = self.default_select_metric
        if self.training.select_metric not in self.metric_names:
            names = sorted(self.metric_names)
            raise ValueError(
                f"training.select_metric: '{self.training.select_metric}' is not a {self.task} metric"
                f"{did_you_mean(self.training.select_metric, names)}; known: {', '.join(names)}"
            )
        return self

    def apply_rules(self) -> None:
        """The task's rules and defaults, in place; a ValueError names the key that does not fit.
        (Sections are assigned into, never the config itself: that would validate it again.)"""
        return None


# --- classifiers ------------------------------------------------------------------------------

class ClassifierConfig(RunConfig):
    """What the classifier tasks (a head on a pooled text vector) share: their adapter rules."""

    def apply_rules(self) -> None:
        if self.adapter.type == "prompt_tuning":
            raise ValueError("adapter.type: prompt_tuning is for task sft and causal_lm; classifiers train "
                             "lora, qlora or full")
        if self.training.kernels == "unsloth":
            raise ValueError("training.kernels: unsloth is for task sft and causal_lm; classifiers can use liger")


def check_pair_template(template: str | None, pair_fields: list[str] | None) -> None:
    """A pair's template (read by decoders) may name only the pair's two columns."""
    from kitae.data.templates import template_fields

    if pair_fields is None or template is None:
        return
    unknown = [f for f in template_fields(template) if f not in pair_fields]
    if unknown:
        raise ValueError(f"data.template: names {', '.join(unknown)}, but a text pair's template may "
                         f"name only its two columns: {{{pair_fields[0]}}} and {{{pair_fields[1]}}}")


class SingleLabelData(FromPreferenceKey, PreferenceKeys, LabelNameKeys, LabelKeys, TextPairKeys, DataConfig):
    def from_preference_pairs(self) -> bool:
        return self.from_preference


class SingleLabelConfig(ClassifierConfig):
    task: Literal["single_label"] = _task("single_label")
    data: SingleLabelData
    balance: ClassBalance = Field(default_factory=ClassBalance)

    metric_names = CLASSIFICATION_METRICS
    default_select_metric = "macro_f1"
    implementation = "kitae.tasks.single_label:SingleLabelTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        data = self.data
        if not data.from_preference:
            if data.prompt_field is not None:
                raise ValueError("data.prompt_field is for preference data (task: reward, or data.from_preference); "
                                 "for other text pairs use data.text_fields")
            check_pair_template(data.template, data.text_fields)
            return
        # Each preference row becomes two examples (chosen, rejected) whose response is in
        # text_field (see data.prepare), read with the prompt when there is one.
        if data.labels is None:
            data.labels = ["rejected", "chosen"]
        expected = [data.prompt_field, data.text_field] if data.prompt_field else None
        if data.text_fields not in (None, expected):
            raise ValueError("data.text_fields: from_preference reads chosen_field / rejected_field "
                             "(and prompt_field); drop text_fields")
        data.text_fields = expected
        check_pair_template(data.template, expected)


class PairData(LabelNameKeys, LabelKeys, TextPairKeys, DataConfig):
    pass


class PairConfig(ClassifierConfig):
    task: Literal["pair"] = _task("pair")
    data: PairData
    balance: ClassBalance = Field(default_factory=ClassBalance)

    metric_names = CLASSIFICATION_METRICS
    default_select_metric = "macro_f1"
    implementation = "kitae.tasks.pair:PairTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        if self.data.text_fields is None:
            self.data.text_fields = ["text_a", "text_b"]
        check_pair_template(self.data.template, self.data.text_fields)


class MultiLabelData(LabelNameKeys, LabelColumnKeys, LabelKeys, TextPairKeys, DataConfig):
    pass


class MultiLabelConfig(ClassifierConfig):
    task: Literal["multi_label"] = _task("multi_label")
    data: MultiLabelData
    balance: MultiLabelBalance = Field(default_factory=MultiLabelBalance)
    evaluation: ThresholdEvaluation = Field(default_factory=ThresholdEvaluation)

    metric_names = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "weighted_f1",
                    "micro_precision", "micro_recall", "macro_precision", "macro_recall", "macro_roc_auc",
                    "log_loss", "loss")
    default_select_metric = "macro_f1"
    implementation = "kitae.tasks.multi_label:MultiLabelTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        check_pair_template(self.data.template, self.data.text_fields)


class RegressionData(TargetNormalizationKey, LabelColumnKeys, LabelKeys, TextPairKeys, DataConfig):
    pass


class RegressionConfig(ClassifierConfig):
    task: Literal["regression"] = _task("regression")
    data: RegressionData

    metric_names = ("rmse", "mae", "r2", "pearson", "spearman", "loss")
    default_select_metric = "rmse"
    implementation = "kitae.tasks.regression:RegressionTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        check_pair_template(self.data.template, self.data.text_fields)


class RewardData(PreferenceKeys, TextPairKeys, DataConfig):
    pass


class RewardConfig(ClassifierConfig):
    task: Literal["reward"] = _task("reward")
    data: RewardData

    metric_names = ("pairwise_accuracy", "mean_margin", "loss")
    default_select_metric = "pairwise_accuracy"
    implementation = "kitae.tasks.reward:RewardTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        data = self.data
        # Each example is the (chosen, rejected) texts of one row, scored one by one.
        data.text_fields = [data.chosen_field, data.rejected_field]
        check_pair_template(data.template, [data.prompt_field, data.text_field] if data.prompt_field else None)


# --- generative tasks ---------------------------------------------------------------------------

class GenerativeConfig(RunConfig):
    """What the tasks that train the LM head share: generation settings and their adapter rules."""

    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    def apply_rules(self) -> None:
        if self.model.pooling != "auto":
            raise ValueError(f"model.pooling is for classifiers; {self.task} trains the LM head itself")
        if self.training.kernels == "unsloth" and self.adapter.type not in ("lora", "qlora"):
            raise ValueError(f"training.kernels: unsloth trains LoRA (adapter.type lora or qlora), not "
                             f"{self.adapter.type}")
        if self.adapter.type == "prompt_tuning" and self.training.packing is True:
            raise ValueError("training.packing cannot be used with adapter.type: prompt_tuning (the soft prompt "
                             "goes in front of a row, so packed examples after the first would not see it)")


class SFTData(InstructionKeys, DataConfig):
    pass


class SFTConfig(GenerativeConfig):
    task: Literal["sft"] = _task("sft")
    data: SFTData
    evaluation: SFTEvaluation = Field(default_factory=SFTEvaluation)

    metric_names = ("exact_match", "char_f1", "chrf", "choice_accuracy", "loss", "perplexity")
    default_select_metric = "loss"
    implementation = "kitae.tasks.sft:SFTTask"

    def apply_rules(self) -> None:
        super().apply_rules()
        data = self.data
        if data.answer_choice_field is not None and data.choice_fields is None:
            raise ValueError("data.answer_choice_field needs data.choice_fields (the columns of the choices)")
        if data.messages_field is not None and data.template is not None:
            raise ValueError("data.template writes prompts from columns; chat rows (data.messages_field) are "
                             "written by the chat template: give one of them")


class CausalLMConfig(GenerativeConfig):
    task: Literal["causal_lm"] = _task("causal_lm")

    metric_names = ("perplexity", "loss")
    default_select_metric = "loss"
    implementation = "kitae.tasks.causal_lm:CausalLMTask"


# --- the registry -------------------------------------------------------------------------------

# Adding a task: its config class above and one line here (kitae.tasks imports its implementation).
TASK_CONFIGS: dict[str, type[RunConfig]] = {
    "single_label": SingleLabelConfig,
    "multi_label": MultiLabelConfig,
    "pair": PairConfig,
    "regression": RegressionConfig,
    "reward": RewardConfig,
    "sft": SFTConfig,
    "causal_lm": CausalLMConfig,
}

# The discriminated union (built from the registry, so the registry stays the one list).
AnyRunConfig = Annotated[reduce(operator.or_, TASK_CONFIGS.values()), Field(discriminator="task")]

# Top-level keys in the order a config reads best (written configs and the form follow it).
SECTION_ORDER = ("task", "data", "model", "adapter", "training", "balance", "evaluation", "generation",
                 "tracking", "output")
