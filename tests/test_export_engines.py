"""`kitae export --for vllm|tei`: the folder meets the engine's contract (architecture, bias-free
`score`, problem_type, id2label / label2id, tokenizer.json), reproduces kitae's outputs under the
engine's own tokenisation, pooling and activation (checked here independently of the exporter's
own parity code), and every run an engine cannot reproduce is refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import separable_rows, tiny_config, write_jsonl
from safetensors import safe_open
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.errors import KitaeError
from kitae.export import export_run


def _train(cfg: dict):
    return kitae.train(config_from_dict(cfg), progress=False).run_dir


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is not a dict)
    return out


@pytest.fixture(scope="module")
def llama_run(tiny_models, separable_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "llama"
    return _train(tiny_config(tiny_models["llama_left"], separable_data, out, training={"epochs": 1}))


@pytest.fixture(scope="module")
def bert_run(tiny_models, separable_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "bert"
    # pooling cls: the tiny BERT, like e5, has no pretrained pooler, and auto would pick mean.
    return _train(tiny_config(tiny_models["bert"], separable_data, out, adapter={"type": "lora", "r": 4},
                              model={"pooling": "cls"}, training={"epochs": 1}))


def _texts(n: int = 6) -> list[str]:
    return [r["text"] for r in separable_rows(2, 9)][:n]


def test_vllm_export_meets_the_contract_and_pools_at_the_last_prompt_token(llama_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "vllm"
    result = CliRunner().invoke(app, ["export", str(llama_run), str(out), "--for", "vllm"])
    assert result.exit_code == 0, result.output
    assert "vllm serve" in result.output and "--max-model-len 32" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["problem_type"] == "single_label_classification"
    clf = kitae.load(llama_run)
    assert config["id2label"] == {str(i): label for i, label in enumerate(clf.labels)}
    assert config["label2id"] == {label: i for i, label in enumerate(clf.labels)}
    weights = _weights(out)
    assert "score.weight" in weights and "score.bias" not in weights
    assert not any("lora" in k for k in weights)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["rows"] > 0 and parity["labels_agree"] == parity["rows"]
    assert parity["transformers_pooling_agrees"] is True  # this tokenizer appends no pad-as-EOS
    # Independently: vLLM runs each prompt unpadded and applies `score` to its last token's state.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = _texts()
    with torch.no_grad():
        engine = np.stack([model.score(model.model(input_ids=torch.tensor([tokenizer(t)["input_ids"]]))
                                       .last_hidden_state[0, -1]).numpy() for t in texts])
    np.testing.assert_allclose(engine, clf.logits(texts), atol=1e-4)


def test_tei_export_reproduces_kitae_with_the_rust_tokenizer(bert_run, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "tei"
    export_run(bert_run, out, engine="tei")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["label2id"]
    assert (out / "tokenizer.json").is_file()
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and "text-embeddings-inference" in parity["launch"]
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    clf = kitae.load(bert_run)
    texts = _texts()
    with torch.no_grad():
        engine = np.stack([model(input_ids=torch.tensor([tokenizer.encode(t).ids])).logits[0].numpy()
                           for t in texts])
    np.testing.assert_allclose(engine, clf.logits(texts), atol=1e-4)


def test_multi_label_thresholds_are_written_beside_the_model(tiny_models, tmp_path):
    from test_multi_label import multilabel_rows

    files = {s: write_jsonl(tmp_path / "data" / f"{s}.jsonl", multilabel_rows(40, seed))
             for s, seed in (("train", 1), ("dev", 2), ("test", 3))}
    cfg = tiny_config(tiny_models["llama"], files, tmp_path / "run", data={"label_field": "categories"},
                      evaluation={"thresholds": "tune"}, training={"epochs": 1})
    cfg["task"] = "multi_label"
    run = _train(cfg)
    export_run(run, tmp_path / "out", engine="vllm")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    thresholds = json.loads((tmp_path / "out" / "thresholds.json").read_text())
    clf = kitae.load(run)
    assert thresholds["labels"] == clf.labels
    assert thresholds["thresholds"] == pytest.approx(list(clf.task.thresholds))
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"]


def test_regression_normalisation_is_folded_or_refused(tiny_models, tmp_path):
    from test_regression import score_rows

    files = {s: write_jsonl(tmp_path / "data" / f"{s}.jsonl", score_rows(40, seed))
             for s, seed in (("train", 1), ("dev", 2), ("test", 3))}
    bert = tiny_config(tiny_models["bert"], files, tmp_path / "bert", adapter={"type": "full"}, model={"pooling": "cls"},
                       data={"label_field": "score", "normalize_targets": True}, training={"epochs": 1, "lr": 1e-3})
    bert["task"] = "regression"
    bert_run = _train(bert)
    clf = kitae.load(bert_run)
    assert np.any(clf.task.mean != 0)
    export_run(bert_run, tmp_path / "tei", engine="tei")  # the classifier has a bias: mean and std fold in
    assert json.loads((tmp_path / "tei" / "parity.json").read_text())["passed"]
    assert json.loads((tmp_path / "tei" / "config.json").read_text())["problem_type"] == "regression"
    llama = tiny_config(tiny_models["llama"], files, tmp_path / "llama",
                        data={"label_field": "score", "normalize_targets": True}, training={"epochs": 1})
    llama["task"] = "regression"
    llama_run = _train(llama)
    with pytest.raises(KitaeError, match="bias-free `score` head cannot add it back"):
        export_run(llama_run, tmp_path / "vllm", engine="vllm")
    assert not (tmp_path / "vllm").exists()


def test_runs_an_engine_cannot_reproduce_are_refused_before_writing(llama_run, bert_run, tiny_models,
                                                                    separable_data, tmp_path, monkeypatch):
    with pytest.raises(KitaeError, match="serves encoder classifiers.*use --for vllm"):
        export_run(llama_run, tmp_path / "a", engine="tei")
    mean_run = _train(tiny_config(tiny_models["bert"], separable_data, tmp_path / "mean",
                                  model={"pooling": "mean"}, adapter={"type": "lora", "r": 4}, training={"epochs": 1}))
    for engine in ("vllm", "tei"):
        with pytest.raises(KitaeError, match="model.pooling: mean"):
            export_run(mean_run, tmp_path / "b", engine=engine)
    with pytest.raises(KitaeError, match="unknown engine"):
        export_run(bert_run, tmp_path / "c", engine="triton")
    clf = kitae.load(bert_run)
    monkeypatch.setattr(type(clf.tokenizer), "is_fast", property(lambda self: False))
    with pytest.raises(KitaeError, match="no tokenizer.json"):
        export_run(bert_run, tmp_path / "d", engine="tei")
    monkeypatch.undo()
    # A failed parity check leaves nothing behind.
    monkeypatch.setattr("kitae.export_engines.PARITY_TOLERANCE", -1.0)
    with pytest.raises(KitaeError, match="parity check .* failed"):
        export_run(bert_run, tmp_path / "e", engine="tei")
    assert not any(p.name.startswith((".e", "e")) for p in tmp_path.iterdir())
    for name in "abcd":
        assert not (tmp_path / name).exists()


def test_generator_runs_point_to_the_merged_export(tiny_models, tmp_path):
    from test_sft import qa_rows, sft_config

    files = {s: write_jsonl(tmp_path / "data" / f"{s}.jsonl", qa_rows(16, seed))
             for s, seed in (("train", 1), ("dev", 2), ("test", 3))}
    run = _train(sft_config(tiny_models["llama"], files, tmp_path / "sft", training={"epochs": 1}))
    with pytest.raises(KitaeError, match="--merge"):
        export_run(run, tmp_path / "out", engine="vllm")


def _padded(clf, texts, side):
    from kitae.data.batching import collate

    inputs = clf.encode(texts)
    return collate(inputs.encoded.input_ids, clf.tokenizer.pad_token_id, side, inputs.encoded.token_type_ids)


@pytest.mark.parametrize("which", ["llama", "bert_mean", "regression"])
def test_onnx_export_runs_in_onnx_runtime_with_pooling_in_the_graph(which, llama_run, tiny_models, separable_data,
                                                                     tmp_path):
    import onnxruntime as ort

    if which == "llama":
        run = llama_run
    elif which == "bert_mean":  # what vLLM and TEI refuse: the mean pooling is in the graph
        run = _train(tiny_config(tiny_models["bert"], separable_data, tmp_path / "mean", model={"pooling": "mean"},
                                 adapter={"type": "lora", "r": 4}, training={"epochs": 1}))
    else:
        from test_regression import score_rows

        files = {s: write_jsonl(tmp_path / "data" / f"{s}.jsonl", score_rows(40, seed))
                 for s, seed in (("train", 1), ("dev", 2), ("test", 3))}
        cfg = tiny_config(tiny_models["llama"], files, tmp_path / "reg",
                          data={"label_field": "score", "normalize_targets": True}, training={"epochs": 1})
        cfg["task"] = "regression"
        run = _train(cfg)
    out = tmp_path / "onnx"
    result = CliRunner().invoke(app, ["export", str(run), str(out), "--for", "onnx"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "parity.json").read_text())["passed"]
    clf, exported = kitae.load(run), kitae.load(out)
    texts = _texts()
    for mine, theirs in zip(clf.predict(texts), exported.predict(texts)):
        assert mine.label == pytest.approx(theirs.label, abs=1e-4) if which == "regression" else mine.label == theirs.label
    # ONNX Runtime alone: `outputs` is what kitae predicts, in target units. Decoders count
    # positions over real tokens, so left padding gives the same; encoders' absolute positions need right.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = _padded(clf, texts, "right" if which == "bert_mean" else "left")
    feeds = {k: batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
             and k in {i.name for i in session.get_inputs()}}
    logits, outputs = session.run(["logits", "outputs"], feeds)
    np.testing.assert_allclose(logits, clf.logits(texts), atol=1e-4)
    np.testing.assert_allclose(outputs, clf.task.probabilities(clf.logits(texts)), atol=1e-4)


def test_kitae_serve_serves_an_exported_folder(llama_run, tmp_path):
    from fastapi.testclient import TestClient

    from kitae.serving import build_app

    out = tmp_path / "onnx"
    export_run(llama_run, out, engine="onnx")
    texts = _texts()
    expected = kitae.load(llama_run).predict(texts)
    with TestClient(build_app(out)) as client:
        answers = client.post("/predict", json={"texts": texts}).json()["predictions"]
        info = client.get("/info").json()
    assert [a["label"] for a in answers] == [p.label for p in expected]
    for answer, prediction in zip(answers, expected):
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(prediction.probabilities.values()),
                                   atol=1e-5)
    assert info["run"] == "onnx" and len(info["weights_sha256"]) == 64
