"""`kitae export`: a run's model as a standalone Hugging Face folder.

- merged (`--merge`, and always for full fine-tuning): LoRA folded into the weights, head
  included, `id2label` set — plain `AutoModelForSequenceClassification.from_pretrained(folder)`
  loads it (and so do vLLM and TGI) and gives kitae's predictions.
- adapter (default for LoRA runs): the PEFT adapter with its head, config, tokenizer and card,
  for `PeftModel.from_pretrained(base, folder)`.

The tokenizer is exported padding on the right: transformers' own pooling (rightmost non-pad
token) and its default position ids are then exactly kitae's, whatever the tokenizer did in
training (kitae's own logits do not depend on the padding side).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from kitae.errors import KitaeError, RunDirError
from kitae.runs import MODEL_DIR, require_finished_run, write_text_atomic

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "config.json", "kitae_model.json")


def export_run(run_dir: str | Path, out_dir: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the standalone folder; returns it. Refuses to replace an existing folder unless `overwrite`."""
    from kitae.api import load
    from kitae.card import build_card

    run_dir = require_finished_run(Path(run_dir))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RunDirError(f"{out_dir}: exists and is not empty; pass --overwrite to replace it")
    clf = load(run_dir, device="cpu")
    full = clf.model.model is clf.model.hf_model
    merged = merge or full
    if merged and clf.model.pooling == "mean":
        raise KitaeError(
            f"{run_dir}: this model pools the mean of token states (model.pooling: mean), which "
            "transformers' *ForSequenceClassification cannot express; a merged export would not give "
            "kitae's predictions. Export the adapter (without --merge), or train with model.pooling: cls."
        )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokenizer = clf.tokenizer
    tokenizer.padding_side = "right"
    if merged:
        model = clf.model.hf_model if full else clf.model.model.merge_and_unload()
        model.config.use_cache = False
        model.save_pretrained(partial, safe_serialization=True)
    else:
        for name in ADAPTER_FILES:
            shutil.copyfile(run_dir / MODEL_DIR / name, partial / name)
    tokenizer.save_pretrained(partial)
    write_text_atomic(partial / "README.md", build_card(run_dir, exported="merged" if merged else "adapter"))
    for image in run_dir.glob("confusion_matrix_*.png"):
        shutil.copyfile(image, partial / image.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    logger.info("exported %s (%s) to %s", run_dir, "merged" if merged else "adapter", out_dir)
    return out_dir
