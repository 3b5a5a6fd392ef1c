"""The HTTP API of `kitae serve`: routes, bounds, authentication and Prometheus metrics.

    POST /predict  {"texts": [...]}  -> {"predictions": [...]}   (bearer token when configured)
    GET  /info                        task, labels, max length, base model, weights hash
    GET  /metrics                     Prometheus text format
    GET  /health                      200 while the inference worker runs (never needs a token)

Every refusal is one JSON object `{"error": "..."}` naming what was wrong (`texts[3]` for the
fourth text), with the status a client can act on: 401 no or wrong token, 408 headers or body too
slow, 413 over a size bound, 422 malformed input, 429 queue full (with `Retry-After`), 500 the model
failed (the message names no exception; the server's log has it). Every answer is counted in
`kitae_requests_total`. The edge (auth, bounds, deadlines, JSON errors) is `serving.guards`,
shared with `kitae ui`.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime.

import asyncio
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from kitae.errors import KitaeError
from kitae.predictor import Classifier, EncodedInputs, Prediction
from kitae.serving.guards import (
    COUNT_KEY,
    Edge,
    EdgeLimits,
    RequestError,
    install_json_errors,
    parse_json,
)
from kitae.serving.worker import BatchStats, InferenceWorker, QueueFull

logger = logging.getLogger("kitae")

__all__ = ["PredictService", "RequestError", "ServeLimits", "create_app"]
ROUTES = ("/predict", "/info", "/metrics", "/health")


@dataclass
class ServeLimits:
    """Bounds on what one request may ask and how much may wait: memory stays bounded."""

    max_payload_bytes: int = 1_000_000
    max_texts_per_request: int = 256
    max_text_chars: int = 20_000  # longer texts are refused; texts over max_length tokens are truncated
    max_queue_texts: int = 4096
    max_batch_tokens: int | None = None  # None: the run's batch size x max_length
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 30.0  # and its body within this after them

    def edge(self) -> EdgeLimits:
        return EdgeLimits(self.max_payload_bytes, self.header_timeout_s, self.body_timeout_s)

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "max_texts_per_request", "max_text_chars", "max_queue_texts"):
            if getattr(self, name) < 1:
                raise KitaeError(f"serve: {name} must be at least 1")
        if min(self.header_timeout_s, self.body_timeout_s) <= 0:
            raise KitaeError("serve: the header and body timeouts must be positive")
        if self.max_texts_per_request > self.max_queue_texts:
            raise KitaeError("serve: max_texts_per_request cannot exceed max_queue_texts "
                             "(such a request could never be queued)")


class ServeMetrics:
    """The Prometheus series, in a registry of the app's own (several apps in one process,
    as in tests, do not collide)."""

    def __init__(self, worker: InferenceWorker) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("kitae_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.texts = Counter("kitae_texts", "Texts predicted", registry=self.registry)
        self.truncated = Counter("kitae_texts_truncated", "Texts cut to the run's max_length",
                                 registry=self.registry)
        queue = Gauge("kitae_queue_texts", "Texts waiting or being computed", registry=self.registry)
        queue.set_function(lambda: worker.queued_texts)
        self.request_seconds = Histogram("kitae_request_seconds", "Time from request to response (predict)",
                                         registry=self.registry)
        self.tokenize_seconds = Histogram("kitae_tokenize_seconds", "Tokenisation time per request",
                                          registry=self.registry,
                                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.model_seconds = Histogram("kitae_model_seconds", "Forward time per batch", registry=self.registry)
        self.batch_texts = Histogram("kitae_batch_texts", "Texts per forward batch", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_tokens = Histogram("kitae_batch_padded_tokens", "Padded tokens per forward batch",
                                      registry=self.registry,
                                      buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536))

    def observe_batch(self, stats: BatchStats) -> None:
        self.model_seconds.observe(stats.seconds)
        self.batch_texts.observe(stats.texts)
        self.batch_tokens.observe(stats.padded_tokens)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class PredictService:
    """What the routes call: parse and bound a request, encode it, queue it, shape the answer."""

    def __init__(self, classifier: Classifier, limits: ServeLimits, info: dict[str, Any]) -> None:
        self.classifier, self.limits, self.info = classifier, limits, info
        max_length = classifier.meta["model"]["max_length"]
        budget = limits.max_batch_tokens or classifier.batch_size * max_length
        # Fast tokenizers refuse concurrent calls that set truncation ("Already borrowed"): one at a time.
        self._tokenize_lock = threading.Lock()
        self.worker = InferenceWorker(self._forward, max(budget, max_length), limits.max_queue_texts,
                                      on_batch=lambda stats: self.metrics.observe_batch(stats))
        self.metrics = ServeMetrics(self.worker)

    def _forward(self, inputs: EncodedInputs) -> Any:
        return self.classifier.logits_of(inputs, batch_size=len(inputs))

    def parse(self, body: bytes) -> list[Any]:
        """The request's texts, as `Classifier.predict` takes them; RequestError otherwise."""
        payload = parse_json(body)
        if not isinstance(payload, dict) or "texts" not in payload:
            raise RequestError(422, 'the body must be a JSON object {"texts": [...]}')
        unknown = sorted(set(payload) - {"texts"})
        if unknown:
            raise RequestError(422, f"unknown field {unknown[0]!r}: the body holds only 'texts'")
        texts = payload["texts"]
        if not isinstance(texts, list) or not texts:
            raise RequestError(422, "'texts' must be a non-empty list")
        if len(texts) > self.limits.max_texts_per_request:
            raise RequestError(413, f"{len(texts)} texts in one request; the limit is "
                                    f"{self.limits.max_texts_per_request} (--max-texts): split the request")
        parsed = [self._parse_text(f"texts[{i}]", value) for i, value in enumerate(texts)]
        kinds = {type(t) for t in parsed}
        if len(kinds) > 1:
            raise RequestError(422, "'texts' mixes strings, pairs and rows: send one kind per request")
        return parsed

    def _parse_text(self, where: str, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise RequestError(422, f"{where} is empty")
            if len(value) > self.limits.max_text_chars:
                raise RequestError(413, f"{where} is {len(value)} characters; the limit is "
                                        f"{self.limits.max_text_chars} (--max-text-chars)")
            return value
        if isinstance(value, list):
            if len(value) != 2:
                raise RequestError(422, f"{where}: a text pair is a list of two texts, not {len(value)}")
            return tuple(self._parse_text(f"{where}[{j}]", v) for j, v in enumerate(value))
        if isinstance(value, dict):
            for key, v in value.items():
                if isinstance(v, str) and len(v) > self.limits.max_text_chars:
                    raise RequestError(413, f"{where}.{key} is {len(v)} characters; the limit is "
                                            f"{self.limits.max_text_chars} (--max-text-chars)")
            try:
                return self.classifier._render(value)
            except KitaeError as exc:
                raise RequestError(422, f"{where}: {_strip_location(str(exc))}") from None
        raise RequestError(422, f"{where} must be a string, a two-element list or an object, "
                                f"not {type(value).__name__}")

    def encode(self, texts: list[Any]) -> EncodedInputs:
        with self._tokenize_lock:
            try:
                return self.classifier.encode(texts)
            except KitaeError as exc:
                raise RequestError(422, _strip_location(str(exc))) from None

    def answer(self, inputs: EncodedInputs, logits: Any) -> dict[str, Any]:
        predictions = self.classifier.predictions(logits)
        self.metrics.texts.inc(len(predictions))
        self.metrics.truncated.inc(sum(inputs.truncated))
        return {"predictions": [_prediction_json(p, cut) for p, cut in zip(predictions, inputs.truncated)]}


def _prediction_json(prediction: Prediction, truncated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"label": prediction.label}
    if prediction.probabilities is not None:
        out["probabilities"] = prediction.probabilities
    if prediction.scores is not None:
        out["scores"] = prediction.scores
    out["truncated"] = truncated
    return out


def _strip_location(message: str) -> str:
    """Row errors name '<input>, line 0' (the request has no file): drop that."""
    return message.replace("<input>, line 0, ", "").replace("<input>, line 0: ", "").replace("<input>: ", "")


def create_app(service: PredictService, token: str | None = None) -> Any:
    """The FastAPI app over a PredictService; the worker thread runs for the app's lifetime.
    With `token`, every route but /health needs `Authorization: Bearer <token>`."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    metrics = service.metrics
    limits = service.limits

    def count(path: str, status: int) -> None:
        metrics.requests.labels(path if path in ROUTES else "other", str(status)).inc()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        service.worker.start()
        try:
            yield {COUNT_KEY: count}  # the server's own 408s (headers too slow) are counted too
        finally:
            service.worker.stop()

    app = FastAPI(title="kitae", version=str(service.info.get("kitae_version", "")), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service  # for tests and embedding applications

    def authorise(scope: dict[str, Any]) -> RequestError | None:
        if token is None or scope.get("path") == "/health":  # probes need no token
            return None
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return RequestError(401, "a bearer token is required: Authorization: Bearer <token>",
                                {"WWW-Authenticate": "Bearer"})
        return None

    app.add_middleware(Edge, limits=limits.edge(), authorise=authorise, on_answer=count)
    install_json_errors(app, lambda method, path: f"no route {method} {path}: the routes are "
                                                  "POST /predict, GET /info, /metrics, /health")

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        started = time.perf_counter()
        texts = service.parse(await request.body())
        tokenize_started = time.perf_counter()
        inputs = await run_in_threadpool(service.encode, texts)
        metrics.tokenize_seconds.observe(time.perf_counter() - tokenize_started)
        try:
            future = service.worker.submit(inputs)
        except QueueFull as exc:
            raise RequestError(429, f"{exc}; retry in about {exc.retry_after} s",
                               {"Retry-After": str(exc.retry_after)}) from None
        try:
            logits = await asyncio.wrap_future(future)
        except Exception:  # the model failed on this batch: say so (not how), keep serving
            logger.exception("the model failed on a batch")
            raise RequestError(500, "the model failed on this request; the server's log has the details") from None
        answer = service.answer(inputs, logits)
        metrics.request_seconds.observe(time.perf_counter() - started)
        return JSONResponse(answer)

    @app.get("/info")
    async def info() -> Any:
        return JSONResponse({**service.info, "limits": {**limits.__dict__,
                                                         "max_batch_tokens": service.worker.max_batch_tokens}})

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> Any:
        if not service.worker.alive:
            return JSONResponse({"status": "down", "error": "the inference worker is not running"}, status_code=503)
        return JSONResponse({"status": "ok", "queued_texts": service.worker.queued_texts})

    return app
