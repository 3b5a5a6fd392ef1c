"""The task contract, over every registered task: each declares its own, with valid values that
agree with its config and its implementation; a loaded run refuses the other capability with one
clear error. Class-level checks only (no model is trained here: the trained runs of
test_export_and_card and test_sft check the refusals end to end)."""

from __future__ import annotations

import pytest

from kitae.config import TASK_CONFIGS, GenerationSettings
from kitae.config.sections import InstructionKeys
from kitae.errors import KitaeError
from kitae.inference.loaded import LoadedRun
from kitae.tasks import TASKS, get_task_class
from kitae.tasks.contract import Activation, Analysis, Capability, TaskContract

# transformers' PretrainedConfig.problem_type values (what an exported classifier loads with).
HF_PROBLEM_TYPES = {"single_label_classification", "multi_label_classification", "regression"}


@pytest.fixture(params=sorted(TASKS))
def task_name(request) -> str:
    return request.param


def test_every_task_declares_its_own_contract(task_name):
    task_class = get_task_class(task_name)
    assert task_class.name == task_name
    # Declared by the task itself, not inherited: pair would otherwise read as single_label on its card.
    contract = task_class.__dict__.get("contract")
    assert isinstance(contract, TaskContract), f"{task_name} declares no contract of its own"
    assert isinstance(contract.capability, Capability)
    assert contract.pipeline_tag in ("text-classification", "text-generation")
    assert contract.card_summary[0].isupper() and not contract.card_summary.endswith(".")
    assert all(isinstance(a, Analysis) for a in contract.analyses)


def test_capability_agrees_with_the_config_and_the_implementation(task_name):
    from kitae.tasks.classification import ClassificationTask
    from kitae.tasks.generative import GenerativeTask

    contract = get_task_class(task_name).contract
    fields = TASK_CONFIGS[task_name].model_fields
    if contract.generates:
        assert issubclass(get_task_class(task_name), GenerativeTask)
        assert fields["generation"].annotation is GenerationSettings  # generators have generation settings
        assert contract.problem_type is None and contract.activation is None
    else:
        assert issubclass(get_task_class(task_name), ClassificationTask)
        assert "generation" not in fields  # classifiers have none
        assert contract.problem_type in HF_PROBLEM_TYPES and isinstance(contract.activation, Activation)
    # Prompts are conversations exactly where the data section reads instruction rows.
    assert contract.conversational == issubclass(fields["data"].annotation, InstructionKeys)


def test_offered_analyses_fit_the_targets(task_name):
    contract = get_task_class(task_name).contract
    analyses = contract.analyses
    # A class share is of one class per example; category rates (and co-occurrence) of several.
    assert not {Analysis.CLASS_SHARES, Analysis.CATEGORY_RATES} <= analyses
    assert (Analysis.COOCCURRENCE in analyses) <= (Analysis.CATEGORY_RATES in analyses)
    assert (Analysis.PROMPT_LENGTHS in analyses) == contract.conversational
    if Analysis.TARGET_STATS in analyses:
        assert contract.activation is Activation.VALUES  # real-valued targets


def test_a_contract_that_mixes_capabilities_is_refused():
    with pytest.raises(ValueError, match="problem_type and activation are for classifiers"):
        TaskContract(Capability.GENERATE, "A model", problem_type="regression", activation=Activation.VALUES)
    with pytest.raises(ValueError, match="every classifier declares both"):
        TaskContract(Capability.PREDICT, "A classifier", problem_type="regression")
    with pytest.raises(ValueError, match="conversational is for generators"):
        TaskContract(Capability.PREDICT, "A classifier", problem_type="regression", activation=Activation.VALUES,
                     conversational=True)


class _Loaded(LoadedRun):
    """A loaded run without a model: what the refusals need (its task class and its name)."""

    def __init__(self, task_name: str) -> None:
        self.task_class = get_task_class(task_name)

    def describe(self) -> str:
        return "runs/example"


def test_a_loaded_run_refuses_the_other_capability(task_name):
    loaded = _Loaded(task_name)
    assert loaded.capability is loaded.task_class.contract.capability
    if loaded.generates:
        for call in (lambda: loaded.predict(["text"]), lambda: loaded.predict_file("in.jsonl", "out.jsonl")):
            with pytest.raises(KitaeError, match=f"runs/example: a {task_name} run generates text .* it does not "
                                                 "predict labels"):
                call()
        loaded.require(Capability.GENERATE)
    else:
        for call in (lambda: loaded.generate(["prompt"]), lambda: loaded.generate_file("in.jsonl", "out.jsonl")):
            with pytest.raises(KitaeError, match=f"runs/example: a {task_name} run is a classifier: it predicts"):
                call()
        loaded.require(Capability.PREDICT)


def test_the_loaded_run_classes_implement_their_capability():
    """Classifier and Generator override their own capability's methods (else a classifier asked
    to predict would get the refusal meant for generators)."""
    from kitae.generator import Generator
    from kitae.predictor import Classifier

    for cls, own in ((Classifier, ("predict", "predict_file")), (Generator, ("generate", "generate_file"))):
        assert all(getattr(cls, name) is not getattr(LoadedRun, name) for name in own), cls


def test_the_ui_reads_the_capability_a_run_records(task_name, tmp_path):
    """Runs record their task's capability in labels.json (the UI reads it without torch); a run of
    an earlier release, without it, is answered by its task class."""
    import json

    from kitae.ui.app import run_capability

    assert run_capability(tmp_path) == ""  # still training: nothing recorded yet
    (tmp_path / "labels.json").write_text(json.dumps({"task": task_name, "labels": []}), encoding="utf-8")
    assert run_capability(tmp_path) == str(get_task_class(task_name).contract.capability)
    other = "predict" if get_task_class(task_name).contract.generates else "generate"
    (tmp_path / "labels.json").write_text(json.dumps({"task": task_name, "capability": other}), encoding="utf-8")
    assert run_capability(tmp_path) == other  # what the run recorded wins
