"""`kitae export`: a run's model as a standalone Hugging Face folder.

- merged (`--merge`, and always for full fine-tuning): LoRA folded into the weights, head
  included, `id2label` set — plain `AutoModelForSequenceClassification.from_pretrained(folder)`
  loads it (and so do vLLM and TGI) and gives kitae's predictions.
- adapter (default for LoRA runs): the PEFT adapter with its head, config, tokenizer and card,
  for `PeftModel.from_pretrained(base, folder)`.

The tokenizer is exported padding on the right: transformers' own pooling (rightmost non-pad
token) and its default position ids are then exactly kitae's, whatever the tokenizer did in
training (kitae's own logits do not depend on the padding side).

An export is published material: it names models (hub ids, built-in names, a folder's own
name), never paths on this machine. Its `kitae_model.json` carries an `export` entry, which is
how kitae recognises a folder it may replace (`--overwrite`); nothing else is ever replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kitae import __version__
from kitae.errors import KitaeError, RunDirError
from kitae.models.persist import META_FILE
from kitae.models.sources import hub_model_name, public_model_name
from kitae.predictor import EXPORT_CONFIG
from kitae.runs import (
    MODEL_DIR,
    check_writable_folder,
    follow_umask,
    read_json,
    require_finished_run,
    write_json,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

# A classifier adapter also ships its head's config (num_labels, id2label).
CLASSIFIER_CONFIG = "config.json"


def is_kitae_export(folder: Path) -> bool:
    """Whether `folder` is an export kitae wrote (its kitae_model.json has an `export` entry)."""
    try:
        return "export" in read_json(Path(folder) / META_FILE)
    except (OSError, ValueError, TypeError):
        return False


def public_meta(meta: dict[str, Any], kind: str, run_dir: Path) -> dict[str, Any]:
    """kitae_model.json as published: model names instead of local paths, and the export marker."""
    name = public_model_name(meta["model"]["name"])
    return {**meta, "model": {**meta["model"], "name": name},
            "base_model": {**meta["base_model"], "path": name},
            "export": {"kind": kind, "run": run_dir.resolve().name, "kitae_version": __version__,
                       "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


def public_config(config: Any) -> str:
    """The run's config as an export carries it (how to render rows: template, columns, labels),
    with data files named by their file name only and no credentials in any URI."""
    from kitae.config import config_to_dict, dump_yaml
    from kitae.credentials import strip_credentials

    data = config_to_dict(config)
    for key in ("train", "dev", "test", "split_file"):
        if data["data"].get(key):
            data["data"][key] = Path(data["data"][key]).name
    data["output"] = Path(str(data["output"])).name
    data["model"]["name"] = public_model_name(str(data["model"]["name"]))
    return dump_yaml(strip_credentials(data))


def export_run(run_dir: str | Path, out_dir: str | Path, merge: bool = False, overwrite: bool = False,
               trust_remote_code: bool = False, engine: str | None = None) -> Path:
    """Write the standalone folder; returns it. `out_dir` must be new, empty, or (with
    `overwrite`) an earlier kitae export; it is replaced only once the new export is complete.
    `engine` ("vllm", "tei"): a merged folder that engine loads, checked (`kitae.export_engines`)."""
    import torch

    from kitae.api import load
    from kitae.card import build_card

    run_dir = require_finished_run(Path(run_dir))
    out_dir = Path(out_dir)
    own = is_kitae_export(out_dir)
    check_writable_folder(out_dir, {"the run being exported": run_dir}, is_own=own, what="export folder")
    if own and not overwrite:
        raise RunDirError(f"{out_dir}: already holds a kitae export; pass --overwrite to replace it")
    # Unmerged: the adapter is what an adapter export saves; a merged export merges below.
    clf = load(run_dir, device="cpu", trust_remote_code=trust_remote_code, merge=False)
    if getattr(clf, "plan", None) is not None and clf.plan.weights_dtype == torch.float32:
        # The engines' parity check compares float32 outputs: kitae's side runs float32 too, not
        # the bf16 autocast dtype "auto" picks on a CPU with bf16 matrix units.
        clf.plan = dataclasses.replace(clf.plan, autocast_dtype=None, why="float32 for the parity check")
    generator = clf.generates
    meta = read_json(run_dir / MODEL_DIR / META_FILE)
    plan = None
    if engine is not None:
        from kitae.export_engines import plan_engine_export

        plan = plan_engine_export(clf, engine, run_dir)
        merge = True
    full = clf.model.model is clf.model.hf_model
    merged = merge or full
    if merged and generator and meta["adapter"]["type"] == "prompt_tuning":
        raise KitaeError(f"{run_dir}: a prompt-tuning soft prompt cannot be merged into the weights; export the "
                         "adapter (without --merge), which PEFT loads onto the base model")
    if merged and not generator and clf.model.pooling == "mean" and (plan is None or plan.engine != "onnx"):
        raise KitaeError(
            f"{run_dir}: this model pools the mean of token states (model.pooling: mean), which "
            "transformers' *ForSequenceClassification cannot express; a merged export would not give "
            "kitae's predictions. Export the adapter (without --merge), or train with model.pooling: cls."
        )
    kind = "merged" if merged else "adapter"
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        tokenizer = clf.tokenizer
        # Classifiers: right padding makes transformers' own pooling kitae's. Causal LMs keep
        # their tokenizer's side (generation pads on the left).
        if not generator:
            tokenizer.padding_side = "right"
        if merged:
            model = clf.model.hf_model if full else clf.model.model.merge_and_unload()
            if not generator:
                model.config.use_cache = False
            if plan is not None:
                from kitae.export_engines import export_onnx, prepare_engine_model

                prepare_engine_model(model, plan, clf)
            if plan is not None and plan.engine == "onnx":
                export_onnx(model, clf, partial)
                model.config.save_pretrained(partial)  # id2label, label2id, problem_type (Optimum reads it)
            else:
                model.save_pretrained(partial, safe_serialization=True)
        else:
            if not generator:
                shutil.copyfile(run_dir / MODEL_DIR / CLASSIFIER_CONFIG, partial / CLASSIFIER_CONFIG)
            shutil.copyfile(run_dir / MODEL_DIR / "adapter_model.safetensors", partial / "adapter_model.safetensors")
            adapter_config = read_json(run_dir / MODEL_DIR / "adapter_config.json")
            adapter_config["base_model_name_or_path"] = hub_model_name(meta["model"]["name"])
            write_json(partial / "adapter_config.json", adapter_config)
        tokenizer.save_pretrained(partial)
        _scrub_name_or_path(partial)
        write_json(partial / META_FILE, public_meta(meta, kind if plan is None else f"{kind}:{plan.engine}", run_dir))
        if clf.config is not None:
            write_text_atomic(partial / EXPORT_CONFIG, public_config(clf.config))
        write_text_atomic(partial / "README.md", build_card(run_dir, exported=kind))
        for image in run_dir.glob("confusion_matrix_*.png"):
            shutil.copyfile(image, partial / image.name)
        if plan is not None:
            from kitae.export_engines import finish_engine_export

            parity = finish_engine_export(partial, plan, clf, run_dir, out_dir)
            logger.info("parity with %s: max |difference| %.2e on %d rows; serve with: %s", plan.engine,
                        parity["max_abs_difference"], parity["rows"], parity["launch"])
        follow_umask(partial)
        _swap_in(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("exported %s (%s) to %s", run_dir, kind, out_dir)
    return out_dir


def _scrub_name_or_path(folder: Path) -> None:
    """transformers may record where a model or tokenizer was loaded from: keep only the name."""
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        changed = False
        for key in ("_name_or_path", "name_or_path"):
            if isinstance(data.get(key), str) and data[key] != public_model_name(data[key]):
                data[key] = public_model_name(data[key])
                changed = True
        if changed:
            write_json(path, data)


def _swap_in(partial: Path, out_dir: Path) -> None:
    """Replace `out_dir` (an earlier export, or an empty folder) by the finished `partial`."""
    aside = None
    if out_dir.exists():
        aside = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        os.replace(out_dir, aside)
    try:
        os.replace(partial, out_dir)
    except BaseException:
        if aside is not None:
            os.replace(aside, out_dir)
        raise
    if aside is not None:
        shutil.rmtree(aside)
