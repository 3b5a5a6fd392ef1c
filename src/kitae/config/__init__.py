"""The run config: one typed config per task, validated once, at the edge, without torch.

- `sections`: the sections every task shares and the groups of keys only some tasks have;
- `tasks`: one run config per task (its keys, sections, rules and metrics; where its
  implementation lives) and the discriminated union on `task`;
- `loading`: YAML + `--set` overrides -> the task's config, error messages that name the key (a
  key of another task names the task it belongs to), the schema per task.

Everything a caller needs is importable from `kitae.config`.
"""

from kitae.config.hints import KEY_SYNONYMS, did_you_mean
from kitae.config.loading import (
    apply_override,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    foreign_keys,
    format_validation_error,
    key_defaults,
    key_owners,
    load_config,
    read_saved_config,
    task_config_class,
    task_keys,
    task_schema,
    validate_config,
    without_foreign_keys,
)
from kitae.config.sections import (
    DATA_SUFFIXES,
    AdapterConfig,
    ClassBalance,
    DataConfig,
    GenerationSettings,
    ModelConfig,
    MultiLabelBalance,
    Section,
    SFTEvaluation,
    SplitConfig,
    ThresholdEvaluation,
    TrackingConfig,
    TrainingConfig,
)
from kitae.config.tasks import (
    DEFAULT_TASK,
    SECTION_ORDER,
    TASK_CONFIGS,
    AnyRunConfig,
    CausalLMConfig,
    MultiLabelConfig,
    PairConfig,
    RegressionConfig,
    RewardConfig,
    RunConfig,
    SFTConfig,
    SFTData,
    SingleLabelConfig,
)

__all__ = [
    "DATA_SUFFIXES", "DEFAULT_TASK", "KEY_SYNONYMS", "SECTION_ORDER", "TASK_CONFIGS", "AdapterConfig", "AnyRunConfig",
    "CausalLMConfig", "ClassBalance", "DataConfig", "GenerationSettings", "ModelConfig", "MultiLabelBalance",
    "MultiLabelConfig", "PairConfig", "RegressionConfig", "RewardConfig", "RunConfig", "SFTConfig", "SFTData",
    "SFTEvaluation", "Section", "SingleLabelConfig", "SplitConfig", "ThresholdEvaluation", "TrackingConfig",
    "TrainingConfig", "apply_override", "config_from_dict", "config_to_dict", "did_you_mean", "dump_yaml",
    "foreign_keys", "format_validation_error", "key_defaults", "key_owners", "load_config", "read_saved_config",
    "task_config_class", "task_keys", "task_schema", "validate_config", "without_foreign_keys",
]
