"""predict and evaluate stream: a 200,000-row file goes through in chunks with memory that does
not grow with the file, the output appears only complete (renamed from a temporary file), and
the streamed predictions are exactly those of predicting the texts in one call."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import separable_rows, tiny_config, write_jsonl

import kitae
from kitae.config import config_from_dict

ROWS = 60_000


@pytest.fixture(scope="module")
def classifier(tiny_models, tmp_path_factory) -> kitae.Classifier:
    root = tmp_path_factory.mktemp("streaming")
    files = {split: write_jsonl(root / f"{split}.jsonl", separable_rows(6, seed=3)) for split in ("train", "dev", "test")}
    cfg = tiny_config(tiny_models["llama"], files, root / "run", training={"epochs": 1}, model={"max_length": 16})
    run = kitae.train(config_from_dict(cfg), progress=False).run_dir
    return kitae.load(run, device="cpu", batch_size=512)


def test_predict_file_streams_60k_rows_in_constant_memory(classifier, tmp_path):
    texts = ["雨晴雪", "肉魚米麺", "株円税金価", "雨のは肉", "銀貨資の"]
    source = tmp_path / "posts.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for i in range(ROWS):
            handle.write(json.dumps({"id": f"p{i}", "text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    output = tmp_path / "predictions.jsonl"
    tracemalloc.start()
    try:
        count = classifier.predict_file(source, output, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == ROWS
    # Holding the file's 60k rows as dicts alone takes ~20 MB (their records and encodings as
    # much again); a chunk of 4,096 rows (rows, examples, encodings, records) ~8 MB in all.
    assert peak < 16_000_000, peak
    assert not list(tmp_path.glob(".predictions.jsonl.*"))  # the temporary file was renamed
    expected = {p.label for p in classifier.predict(texts)}
    by_text = dict(zip(texts, classifier.predict(texts)))
    with output.open(encoding="utf-8") as handle:
        lines = [json.loads(line) for i, line in enumerate(handle) if i < 10 or i >= ROWS - 10]
    assert len(lines) == 20 and expected
    for record, index in zip(lines, [*range(10), *range(ROWS - 10, ROWS)]):
        assert record["id"] == f"p{index}"
        want = by_text[texts[index % len(texts)]]
        assert record["predicted"] == want.label
        assert record["probabilities"] == pytest.approx(want.probabilities, abs=1e-6)


def test_streamed_logits_equal_one_call(classifier, tmp_path, monkeypatch):
    import kitae.predictor as predictor

    monkeypatch.setattr(predictor, "PREDICT_CHUNK_ROWS", 7)  # many chunks, a ragged last one
    rows = separable_rows(10, seed=9)
    source = write_jsonl(tmp_path / "labelled.jsonl", rows)
    metrics = classifier.evaluate_file(source, tmp_path / "eval", progress=False)
    streamed = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    direct = classifier.predict([r["text"] for r in rows])
    assert [r["id"] for r in streamed] == [r["id"] for r in rows]
    assert [r["predicted"] for r in streamed] == [p.label for p in direct]
    accuracy = np.mean([p.label == r["label"] for p, r in zip(direct, rows)])
    assert metrics["accuracy"] == pytest.approx(accuracy) and metrics["n"] == len(rows)


def test_a_failing_predict_leaves_no_output(classifier, tmp_path):
    source = tmp_path / "posts.jsonl"
    source.write_text('{"text": "雨"}\n' * 5000 + "{broken\n", encoding="utf-8")
    output = tmp_path / "predictions.csv"
    with pytest.raises(kitae.errors.DataError, match="line 5001"):
        classifier.predict_file(source, output, progress=False)
    assert list(tmp_path.iterdir()) == [source]
    assert isinstance(Path(source), Path)
