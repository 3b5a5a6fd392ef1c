"""Model card front-matter lists the real metrics; an exported merged model loads in plain
transformers and gives the run's logits; mean-pooled models refuse a merged export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

import kitae
from kitae.card import card_front_matter
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.errors import KitaeError


@pytest.fixture(scope="module")
def llama_run(tiny_models, separable_data, tmp_path_factory):
    # The left-padding tokenizer: the export must still match under transformers' own pooling.
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = tiny_config(tiny_models["llama_left"], separable_data, out, training={"epochs": 2})
    return kitae.train(config_from_dict(cfg), progress=False)


def test_card_front_matter_lists_the_real_metrics(llama_run):
    for card_path in (llama_run.run_dir / "README.md", llama_run.run_dir / "model" / "README.md"):
        text = card_path.read_text(encoding="utf-8")
        front = card_front_matter(text)
        assert front["pipeline_tag"] == "text-classification" and "kitae" in front["tags"]
        reported = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
        saved = json.loads((llama_run.run_dir / "metrics.json").read_text())["test"]
        assert reported["accuracy"] == pytest.approx(saved["accuracy"])
        assert reported["macro_f1"] == pytest.approx(saved["macro_f1"])
        for heading in ("## Labels", "## Training results (per epoch)", "## Hyperparameters", "token limit: 32"):
            assert heading in text
        assert "![confusion matrix](confusion_matrix_test.png)" in text
    assert (llama_run.run_dir / "model" / "confusion_matrix_test.png").is_file()


def test_a_loaded_classifier_refuses_to_generate(llama_run):
    from kitae.tasks.contract import Capability

    loaded = kitae.load(llama_run.run_dir)
    assert loaded.capability is Capability.PREDICT and not loaded.generates
    assert json.loads((llama_run.run_dir / "labels.json").read_text())["capability"] == "predict"
    with pytest.raises(KitaeError, match="a single_label run is a classifier: it predicts .* does not generate"):
        loaded.generate(["日本の首都は"])
    out = CliRunner().invoke(app, ["generate", str(llama_run.run_dir), "--prompt", "日本の首都は"])
    assert out.exit_code != 0 and "is a classifier: it predicts" in out.output, out.output


def _texts(separable_data):
    return [json.loads(line)["text"] for line in separable_data["test"].read_text().splitlines()]


def test_merged_export_loads_in_plain_transformers(llama_run, separable_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(llama_run.run_dir), str(out), "--merge"])
    assert result.exit_code == 0, result.output
    assert not (out / "adapter_config.json").exists()
    texts = _texts(separable_data)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "天気", 1: "料理", 2: "経済"} or set(model.config.id2label.values()) == {
        "天気", "料理", "経済"}
    with torch.no_grad():
        plain = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.numpy()
    ours = kitae.load(llama_run.run_dir).logits(texts)
    np.testing.assert_allclose(plain, ours, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(plain.argmax(-1), ours.argmax(-1))


def test_adapter_export_and_refusals(llama_run, tmp_path):
    out = tmp_path / "adapter"
    assert CliRunner().invoke(app, ["export", str(llama_run.run_dir), str(out)]).exit_code == 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    again = CliRunner().invoke(app, ["export", str(llama_run.run_dir), str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_mean_pooling_refuses_merged_export(tiny_models, separable_data, tmp_path):
    from kitae.export import export_run

    cfg = tiny_config(tiny_models["bert"], separable_data, tmp_path / "run", adapter={"type": "full"},
                      training={"epochs": 1, "lr": 5e-3})
    run = kitae.train(config_from_dict(cfg), progress=False).run_dir
    assert json.loads((run / "model" / "kitae_model.json").read_text())["pooling"] == "mean"
    with pytest.raises(KitaeError, match="mean"):
        export_run(run, tmp_path / "out", merge=True)


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded."""

    def __init__(self, fail: Exception | None = None, existing: dict[str, bool] | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple] = []
        self.files: list[str] = []
        self.repos = dict(existing or {})  # repo id -> private

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        self.repos.setdefault(repo_id, private)  # like the hub: an existing repo keeps its visibility
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id):
        from types import SimpleNamespace

        return SimpleNamespace(private=self.repos[repo_id])

    def update_repo_settings(self, repo_id, private=None):
        self.calls.append(("update_repo_settings", repo_id, private))
        self.repos[repo_id] = private

    def upload_folder(self, repo_id, folder_path, commit_message=""):
        if self.fail:
            raise self.fail
        from pathlib import Path

        self.calls.append(("upload_folder", repo_id))
        self.files = sorted(p.name for p in Path(folder_path).iterdir())


def test_push_uploads_the_exported_folder_with_its_card(llama_run):
    from kitae.hub import push_run

    hub = FakeHub()
    url = push_run(llama_run.run_dir, "someone/kitae-tiny", private=True, api=hub)
    assert url == "https://huggingface.co/someone/kitae-tiny"
    assert hub.calls[0] == ("create_repo", "someone/kitae-tiny", True, True)
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "confusion_matrix_test.png"} <= set(hub.files)
    # --private on a repo that exists public: made private before the upload, not left public.
    public = FakeHub(existing={"someone/was-public": False})
    push_run(llama_run.run_dir, "someone/was-public", private=True, api=public)
    assert public.repos["someone/was-public"] is True
    assert [c[0] for c in public.calls] == ["create_repo", "update_repo_settings", "upload_folder"]


def test_push_errors_are_clear(llama_run, monkeypatch):
    from kitae.hub import push_run

    with pytest.raises(KitaeError, match="user-or-org/name"):
        push_run(llama_run.run_dir, "no-slash", api=FakeHub())
    with pytest.raises(KitaeError, match="no network"):
        push_run(llama_run.run_dir, "someone/x", api=FakeHub(fail=ConnectionError("unreachable")))
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    result = CliRunner().invoke(app, ["push", str(llama_run.run_dir), "--repo-id", "someone/x"])
    assert result.exit_code == 2 and "no Hugging Face token" in result.output
