"""kitae (鍛え): fine-tune pretrained language models into Japanese text classifiers and
instruction followers.

    import kitae
    result = kitae.train("examples/quickstart.yaml")
    kitae.load(result.run_dir).predict(["明日は全国的に雨の予報です"])    # a Classifier
    kitae.load("runs/jsquad-sft").generate(["日本の首都はどこですか。"])    # an sft run: a Generator
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kitae.api import Classifier, TrainResult, load, train
    from kitae.generator import Generator
    from kitae.inference.loaded import LoadedRun

__all__ = ["Classifier", "Generator", "LoadedRun", "TrainResult", "load", "train", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import kitae` and `kitae config check` stay fast (torch loads only when needed).
    if name in ("Classifier", "TrainResult", "load", "train"):
        from kitae import api

        return getattr(api, name)
    if name == "Generator":
        from kitae.generator import Generator

        return Generator
    if name == "LoadedRun":  # what kitae.load returns (torch-free to import)
        from kitae.inference.loaded import LoadedRun

        return LoadedRun
    raise AttributeError(name)
