"""'Did you mean' hints for mistyped keys, metrics and task names."""

from __future__ import annotations

import difflib

# Names users bring from transformers / PEFT / LLaMA-Factory configs.
KEY_SYNONYMS = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "use_dora": "dora",
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "model_name_or_path": "name", "max_seq_length": "max_length", "cutoff_len": "max_length",
    "lr_scheduler_type": "scheduler", "metric_for_best_model": "select_metric",
}


def did_you_mean(word: str, choices: list[str]) -> str:
    if KEY_SYNONYMS.get(word) in choices:
        return f" (did you mean '{KEY_SYNONYMS[word]}'?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
