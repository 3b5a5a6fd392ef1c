"""`kitae serve`: /predict answers exactly what `kitae.load(run).predict` gives, for every task;
the token guards every inference route; bounds answer 413 / 422 / 429 with a clear message; the
worker batches across requests within its token budget; many concurrent clients on loopback get
only right answers (or 429s under overload)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_CHARS, FILLER, separable_rows, tiny_config, write_jsonl

import kitae
from kitae.config import config_from_dict
from kitae.errors import KitaeError

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from kitae.serving import ServeLimits, build_app, is_loopback, read_token, serve  # noqa: E402
from kitae.serving.worker import InferenceWorker, QueueFull  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"


def _train(cfg: dict) -> Path:
    return kitae.train(config_from_dict(cfg), progress=False).run_dir


@pytest.fixture(scope="module")
def runs(tiny_models, separable_data, tmp_path_factory) -> dict[str, Path]:
    from test_multi_label import multilabel_rows
    from test_pair import pair_rows
    from test_preference import preference_rows
    from test_regression import score_rows

    root = tmp_path_factory.mktemp("serve")
    one_epoch = {"epochs": 1}

    def files(name: str, make, n: int) -> dict[str, Path]:
        return {split: write_jsonl(root / f"data-{name}" / f"{split}.jsonl", make(n, seed))
                for split, seed in (("train", 1), ("dev", 2), ("test", 3))}

    out = {"single_label": _train(tiny_config(tiny_models["llama"], separable_data, root / "single",
                                              training=one_epoch))}
    ml = tiny_config(tiny_models["llama"], files("ml", multilabel_rows, 40), root / "multi", training=one_epoch)
    ml["task"] = "multi_label"
    ml["data"]["label_field"] = "categories"
    out["multi_label"] = _train(ml)
    pair = tiny_config(tiny_models["bert"], files("pair", pair_rows, 40), root / "pair", adapter={"type": "full"},
                       data={"text_fields": ["text_a", "text_b"]}, training=one_epoch)
    pair["task"] = "pair"
    out["pair"] = _train(pair)
    reg = tiny_config(tiny_models["llama"], files("reg", score_rows, 40), root / "reg",
                      data={"label_field": "score"}, training=one_epoch)
    reg["task"] = "regression"
    out["regression"] = _train(reg)
    reward = tiny_config(tiny_models["llama"], files("reward", preference_rows, 30), root / "reward",
                         training=one_epoch)
    reward["task"] = "reward"
    out["reward"] = _train(reward)
    return out


def _texts(n: int, seed: int) -> list[str]:
    return [r["text"] for r in separable_rows(n, seed)][:n]


def _inputs(task: str, seed: int) -> list:
    rng = random.Random(seed)
    if task == "pair":
        return [["".join(rng.choice(FILLER) for _ in range(4)), "".join(rng.choice(CLASS_CHARS["天気"])
                 for _ in range(rng.randint(2, 9)))] for _ in range(7)]
    return _texts(3, seed)


def _same(answer: dict, prediction: kitae.Prediction) -> None:
    assert answer["label"] == pytest.approx(prediction.label, abs=1e-4) if isinstance(prediction.label, float) \
        else answer["label"] == prediction.label
    for key in ("probabilities", "scores"):
        expected = getattr(prediction, key)
        if expected is None:
            assert key not in answer
        else:
            assert answer[key].keys() == expected.keys()
            np.testing.assert_allclose(list(answer[key].values()), list(expected.values()), atol=1e-5)


@pytest.mark.parametrize("task", ["single_label", "multi_label", "pair", "regression", "reward"])
def test_predict_route_equals_the_python_predict(runs, task):
    run = runs[task]
    clf = kitae.load(run)
    with TestClient(build_app(run)) as client:
        for seed in (1, 2):
            texts = _inputs(task, seed)
            response = client.post("/predict", json={"texts": texts})
            assert response.status_code == 200, response.text
            answers = response.json()["predictions"]
            expected = clf.predict([tuple(t) if isinstance(t, list) else t for t in texts])
            assert len(answers) == len(expected)
            for answer, prediction in zip(answers, expected):
                _same(answer, prediction)
                assert answer["truncated"] is False
        info = client.get("/info").json()
        assert info["task"] == task and info["labels"] == clf.labels and info["max_length"] == 32
        assert len(info["weights_sha256"]) == 64


def test_rows_as_objects_and_truncation_is_reported(runs):
    run = runs["single_label"]
    clf = kitae.load(run)
    long_text = "雨" * 200  # max_length is 32 tokens
    with TestClient(build_app(run)) as client:
        answers = client.post("/predict", json={"texts": [{"text": "晴れ"}, {"text": long_text}]}).json()["predictions"]
    expected = clf.predict(["晴れ", long_text])
    for answer, prediction in zip(answers, expected):
        _same(answer, prediction)
    assert [a["truncated"] for a in answers] == [False, True]


def test_every_inference_route_needs_the_token(runs):
    with TestClient(build_app(runs["single_label"], token=TOKEN)) as client:
        for method, route, body in (("post", "/predict", {"texts": ["晴れ"]}), ("get", "/info", None),
                                    ("get", "/metrics", None)):
            call = getattr(client, method)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                kwargs = {"json": body} if body else {}
                response = call(route, headers=headers, **kwargs)
                assert response.status_code == 401, (route, headers)
                assert "bearer token" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
            kwargs = {"json": body} if body else {}
            assert call(route, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs).status_code == 200
        assert client.get("/health").json()["status"] == "ok"  # probes need no token


def test_bounds_and_malformed_input_get_clear_refusals(runs):
    limits = ServeLimits(max_payload_bytes=2_000, max_texts_per_request=4, max_text_chars=50, max_queue_texts=64)
    with TestClient(build_app(runs["single_label"], limits)) as client:
        def refusal(status: int, **kwargs) -> str:
            response = client.post("/predict", **kwargs)
            assert response.status_code == status, response.text
            return response.json()["error"]

        assert "2000" in refusal(413, content=json.dumps({"texts": ["あ" * 40] * 30}).encode())
        assert "limit is 4" in refusal(413, json={"texts": ["晴れ"] * 5})
        assert "texts[1] is 51 characters" in refusal(413, json={"texts": ["晴れ", "あ" * 51]})
        assert "not valid JSON" in refusal(422, content=b'{"texts": ["a",]}')
        assert "line 1, column 16" in refusal(422, content=b'{"texts": ["a",]}')
        assert "not UTF-8" in refusal(422, content="{\"texts\": [\"晴\"]}".encode("cp932"))
        assert "texts[2] is empty" in refusal(422, json={"texts": ["晴れ", "雨", "  "]})
        assert "non-empty list" in refusal(422, json={"texts": []})
        assert "unknown field 'text'" in refusal(422, json={"texts": ["a"], "text": "b"})
        assert "must be a JSON object" in refusal(422, json=["晴れ"])
        assert "texts[0] must be a string" in refusal(422, json={"texts": [3]})
        assert "texts[0]: a text pair is a list of two" in refusal(422, json={"texts": [["a", "b", "c"]]})
        assert "mixes" in refusal(422, json={"texts": ["a", ["b", "c"]]})
        assert "texts[0]" in refusal(422, json={"texts": [{"title": "no text column"}]})
        assert client.get("/nope").status_code == 404 and "POST /predict" in client.get("/nope").json()["error"]
        assert client.get("/predict").status_code == 405
        # The server still answers after all that.
        assert client.post("/predict", json={"texts": ["晴れ"]}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'kitae_requests_total{route="/predict",status="413"} 3.0' in metrics
    assert 'kitae_requests_total{route="/predict",status="200"} 1.0' in metrics
    assert "kitae_batch_texts_bucket" in metrics and "kitae_tokenize_seconds_count" in metrics


def test_a_pair_run_wants_pairs(runs):
    with TestClient(build_app(runs["pair"])) as client:
        response = client.post("/predict", json={"texts": ["only one text"]})
    assert response.status_code == 422 and "pair" in response.json()["error"]


def _inputs_of(lengths: list[int]):
    from kitae.data.batching import Encoded
    from kitae.predictor import EncodedInputs

    return EncodedInputs(Encoded([[7] * n for n in lengths], 0), 1, [False] * len(lengths))


def test_worker_batches_across_requests_within_the_token_budget():
    batches: list[list[int]] = []
    gate = threading.Event()

    def forward(inputs):
        gate.wait(5)
        batches.append(inputs.lengths())
        # The logit is the length: each request can check it got its own texts, in its order.
        return np.array([[float(n)] for n in inputs.lengths()], dtype=np.float32)

    worker = InferenceWorker(forward, max_batch_tokens=40, max_queue_texts=20)
    worker.start()
    try:
        first = worker.submit(_inputs_of([3]))  # taken alone while the gate is shut
        time.sleep(0.2)
        a = worker.submit(_inputs_of([2, 9, 4]))
        b = worker.submit(_inputs_of([5, 1]))
        with pytest.raises(QueueFull) as refused:
            worker.submit(_inputs_of([1] * 16))  # 1 + 3 + 2 + 16 > 20
        assert refused.value.retry_after >= 1
        gate.set()
        assert first.result(5).ravel().tolist() == [3.0]
        assert a.result(5).ravel().tolist() == [2.0, 9.0, 4.0]
        assert b.result(5).ravel().tolist() == [5.0, 1.0]
    finally:
        worker.stop()
    # a's texts longest first (9, 4, 2: width 9 x 3 = 27 <= 40), then b's 5 joins (9 x 4 = 36).
    assert batches[1:] == [[9, 4, 2, 5], [1]]
    assert all(len(b) * max(b) <= 40 for b in batches)
    assert worker.queued_texts == 0


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    def forward(inputs):
        if 13 in inputs.lengths():
            raise RuntimeError("CUDA out of memory (simulated)")
        return np.zeros((len(inputs), 1), dtype=np.float32)

    worker = InferenceWorker(forward, max_batch_tokens=13, max_queue_texts=10)
    worker.start()
    try:
        bad = worker.submit(_inputs_of([13]))
        with pytest.raises(RuntimeError, match="out of memory"):
            bad.result(5)
        assert worker.submit(_inputs_of([2, 2])).result(5).shape == (2, 1)
        assert worker.queued_texts == 0
    finally:
        worker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A real uvicorn server on loopback, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_many_concurrent_clients_get_exactly_predict_or_429(runs):
    import httpx
    import psutil

    run = runs["single_label"]
    clf = kitae.load(run)
    pool = _texts(60, 11) + ["雨" * 100]
    expected = {t: p for t, p in zip(pool, clf.predict(pool))}
    limits = ServeLimits(max_queue_texts=24, max_texts_per_request=8, max_batch_tokens=256)
    app = build_app(run, limits)
    statuses: list[int] = []
    wrong: list[str] = []
    lock = threading.Lock()
    rss_before = psutil.Process().memory_info().rss

    def client(seed: int, url: str) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(12):
                texts = rng.sample(pool, rng.randint(1, 8))
                # A refused request is sent again after a short pause (a client that honours
                # 429), so every request is answered in the end, however busy the machine.
                for _attempt in range(600):
                    response = http.post("/predict", json={"texts": texts})
                    with lock:
                        statuses.append(response.status_code)
                    if response.status_code != 429:
                        break
                    assert int(response.headers["retry-after"]) >= 1
                    time.sleep(0.05)
                for text, answer in zip(texts, response.json()["predictions"]):
                    want = expected[text]
                    if answer["label"] != want.label or not np.allclose(
                            list(answer["probabilities"].values()), list(want.probabilities.values()), atol=1e-5):
                        with lock:
                            wrong.append(text)

    with _Server(app) as url:
        threads = [threading.Thread(target=client, args=(seed, url)) for seed in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        metrics = httpx.get(f"{url}/metrics").text
    assert not wrong
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) == 16 * 12  # every request answered, the overload shed with 429
    assert psutil.Process().memory_info().rss - rss_before < 300 * 2**20
    # More than one request's texts shared a forward pass: the worker batched across requests.
    counts = [line for line in metrics.splitlines() if line.startswith("kitae_batch_texts_bucket")]
    eight = next(float(line.split()[-1]) for line in counts if 'le="8.0"' in line)
    total = next(float(line.split()[-1]) for line in counts if 'le="+Inf"' in line)
    assert total > eight  # some batches held more than 8 texts, the most one request may send


def test_a_full_queue_answers_429_with_retry_after_and_loses_nothing(runs):
    import httpx

    app = build_app(runs["single_label"], ServeLimits(max_queue_texts=4, max_texts_per_request=4))
    worker = app.state.service.worker
    gate = threading.Event()
    real_forward = worker.forward

    def held_forward(inputs):
        gate.wait(30)
        return real_forward(inputs)

    worker.forward = held_forward
    answers: dict[str, httpx.Response] = {}
    with _Server(app) as url:
        def send(name: str, texts: list[str]) -> None:
            answers[name] = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=60)

        first = threading.Thread(target=send, args=("first", ["晴れ", "雨", "株", "円"]))
        first.start()
        deadline = time.time() + 30
        while worker.queued_texts < 4:
            assert time.time() < deadline
            time.sleep(0.02)
        send("refused", ["晴れ"])
        gate.set()
        first.join(60)
        send("after", ["晴れ"])
    refused = answers["refused"]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "queue is full (4 texts waiting)" in refused.json()["error"]
    assert answers["first"].status_code == 200 and len(answers["first"].json()["predictions"]) == 4
    assert answers["after"].status_code == 200


def test_serving_refuses_generators_and_weak_tokens(tiny_models, tmp_path, monkeypatch, caplog, runs):
    from test_sft import qa_rows, sft_config

    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", qa_rows(16, seed))
             for split, seed in (("train", 1), ("dev", 2), ("test", 3))}
    sft_run = _train(sft_config(tiny_models["llama"], files, tmp_path / "sft", training={"epochs": 1}))
    with pytest.raises(KitaeError, match="generates text; kitae serve serves classification runs"):
        build_app(sft_run)
    (tmp_path / "short.txt").write_text("abc\n")
    with pytest.raises(KitaeError, match="at least 16"):
        read_token(tmp_path / "short.txt")
    with pytest.raises(KitaeError, match="no such token file"):
        read_token(tmp_path / "missing.txt")
    good = tmp_path / "token.txt"
    good.write_text(TOKEN + "\n")
    good.chmod(0o600)
    assert read_token(good) == TOKEN
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(KitaeError, match="the token file is empty"):
        read_token(tmp_path / "blank.txt")
    from kitae.serving import guards

    started: list[tuple] = []
    monkeypatch.setattr(guards, "run_server", lambda app, host, port, limits, **kw: started.append((host, limits)))
    with pytest.raises(KitaeError, match="needs a token"):
        serve(runs["single_label"], host="0.0.0.0", port=9999)
    assert not started
    serve(runs["single_label"], host="0.0.0.0", port=9999, token_file=good)
    assert started[0][0] == "0.0.0.0" and started[0][1].header_timeout_s == 10
    assert is_loopback("::1") and not is_loopback("192.168.1.5")


def test_a_real_server_answers_slow_broken_and_hostile_clients_in_json(runs, monkeypatch):
    """On loopback, through uvicorn as `kitae serve` runs it: a half-sent request is cut off, a
    broken one is refused, deep nesting and a failing model get short JSON errors naming no
    exception, and every answer is counted."""
    import httpx
    from conftest import LiveServer

    limits = ServeLimits(header_timeout_s=1, body_timeout_s=1, max_payload_bytes=200_000)
    app = build_app(runs["single_label"], limits, token=TOKEN)
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    with LiveServer(app, limits.edge()) as server:
        def head_and_body(raw: bytes) -> tuple[str, dict]:
            status, _, body = raw.partition(b"\r\n\r\n")
            return status.split(b"\r\n")[0].decode(), json.loads(body)

        started = time.monotonic()
        line, body = head_and_body(server.raw(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
        assert line.startswith("HTTP/1.1 408") and "headers did not arrive within 1 s" in body["error"]
        assert time.monotonic() - started < 4
        line, body = head_and_body(server.raw(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                                              "Content-Length: 100\r\n\r\n{\"texts\"".encode()))
        assert line.startswith("HTTP/1.1 408") and "body did not arrive" in body["error"]
        line, body = head_and_body(server.raw(b"NOT HTTP AT ALL\r\n\r\n"))
        assert line.startswith("HTTP/1.1 400") and body == {"error": "the request is not valid HTTP"}
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            nested = client.post("/predict", content=b'{"texts": ' + b"[" * 100_000)
            assert nested.status_code == 422 and nested.json() == {"error": "the body nests too deeply"}
            chunked = client.post("/predict", content=iter([b'{"texts": ["' + b"a" * 150_000, b"a" * 60_000 + b'"]}']))
            assert chunked.status_code == 413 and "limit of 200000 bytes" in chunked.json()["error"]
            assert client.get("/info", headers={"Authorization": "Bearer nope"}).status_code == 401

            def broken(*_args, **_kwargs):
                raise RuntimeError("secret detail in /srv/private/weights")

            monkeypatch.setattr(app.state.service.classifier, "logits_of", broken)
            failed = client.post("/predict", json={"texts": ["晴れ"]})
            assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
            assert "secret" not in failed.text and "RuntimeError" not in failed.text and "/srv" not in failed.text
            metrics = client.get("/metrics").text
    for route, status in (("other", 408), ("/predict", 408), ("/predict", 422), ("/predict", 413),
                          ("/info", 401), ("/predict", 500)):
        assert f'kitae_requests_total{{route="{route}",status="{status}"}} 1.0' in metrics, (route, status)
