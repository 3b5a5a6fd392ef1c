"""What `kitae.load` returns: a loaded run whose capability its task declares.

A classifier run (`kitae.predictor.Classifier`) predicts; a causal-LM run
(`kitae.generator.Generator`) generates. Callers ask `loaded.capability` (or `loaded.generates`)
instead of probing for methods, and asking a run for what its task does not do is one clear
error, the same from Python, the CLI, the UI and export:

    clf = kitae.load("runs/quickstart")
    clf.generate(["..."])   # KitaeError: ... a single_label run is a classifier: it predicts ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitae.errors import KitaeError
from kitae.tasks.contract import Capability

if TYPE_CHECKING:
    from kitae.tasks.base import Task


class LoadedRun:
    """The base of a loaded run: its task class (and so its contract) and the capability checks.
    A subclass sets `task_class` and implements the methods of its capability."""

    task_class: type[Task]

    @property
    def capability(self) -> Capability:
        return self.task_class.contract.capability

    @property
    def generates(self) -> bool:
        return self.capability is Capability.GENERATE

    def describe(self) -> str:
        """How errors name the run (its folder, or the base model)."""
        raise NotImplementedError

    def refusal(self, asked: Capability) -> KitaeError:
        """The one error for a run asked to do what its task does not."""
        name = self.task_class.name
        if asked is Capability.GENERATE:
            return KitaeError(f"{self.describe()}: a {name} run is a classifier: it predicts (kitae predict, "
                              ".predict), it does not generate text")
        return KitaeError(f"{self.describe()}: a {name} run generates text (kitae generate, .generate); "
                          "it does not predict labels")

    def require(self, asked: Capability) -> None:
        if asked is not self.capability:
            raise self.refusal(asked)

    # The other capability's methods: on every loaded run, so that calling one is the clear error
    # above rather than an AttributeError (the run of that capability overrides them).
    def predict(self, texts: Any) -> Any:
        raise self.refusal(Capability.PREDICT)

    def predict_file(self, path: Any, output: Any, *args: Any, **kwargs: Any) -> Any:
        raise self.refusal(Capability.PREDICT)

    def generate(self, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        raise self.refusal(Capability.GENERATE)

    def generate_file(self, path: Any, output: Any, *args: Any, **kwargs: Any) -> Any:
        raise self.refusal(Capability.GENERATE)
