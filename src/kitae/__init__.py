"""kitae (鍛え): fine-tune pretrained language models into Japanese text classifiers.

    import kitae
    result = kitae.train("examples/quickstart.yaml")
    kitae.load(result.run_dir).predict(["明日は全国的に雨の予報です"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kitae.api import Classifier, TrainResult, load, train

__all__ = ["Classifier", "TrainResult", "load", "train", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import kitae` and `kitae config check` stay fast (torch loads only when needed).
    if name in ("Classifier", "TrainResult", "load", "train"):
        from kitae import api

        return getattr(api, name)
    raise AttributeError(name)
