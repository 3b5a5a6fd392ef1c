"""The HTTP API of `kitae serve`: routes, bounds, authentication and Prometheus metrics.

    POST /predict  {"texts": [...]}  -> {"predictions": [...]}   (bearer token when configured)
    GET  /info                        task, labels, max length, base model, weights hash
    GET  /metrics                     Prometheus text format
    GET  /health                      200 while the inference worker runs (never needs a token)

Every refusal is one JSON object `{"error": "..."}` naming what was wrong (`texts[3]` for the
fourth text), with the status a client can act on: 401 no or wrong token, 413 over a size bound,
422 malformed input, 429 queue full (with `Retry-After`), 500 the model failed.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime.

import asyncio
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from kitae.errors import KitaeError
from kitae.predictor import Classifier, EncodedInputs, Prediction
from kitae.serving.worker import BatchStats, InferenceWorker, QueueFull


@dataclass
class ServeLimits:
    """Bounds on what one request may ask and how much may wait: memory stays bounded."""

    max_payload_bytes: int = 1_000_000
    max_texts_per_request: int = 256
    max_text_chars: int = 20_000  # longer texts are refused; texts over max_length tokens are truncated
    max_queue_texts: int = 4096
    max_batch_tokens: int | None = None  # None: the run's batch size x max_length

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "max_texts_per_request", "max_text_chars", "max_queue_texts"):
            if getattr(self, name) < 1:
                raise KitaeError(f"serve: {name} must be at least 1")
        if self.max_texts_per_request > self.max_queue_texts:
            raise KitaeError("serve: max_texts_per_request cannot exceed max_queue_texts "
                             "(such a request could never be queued)")


class RequestError(Exception):
    """A refusal: HTTP status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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
        try:
            payload = json.loads(body)
        except UnicodeDecodeError:
            raise RequestError(422, "the body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise RequestError(422, f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, "
                                    f"column {exc.colno})") from None
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
    """The FastAPI app over a PredictService; the worker thread runs for the app's lifetime."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        service.worker.start()
        try:
            yield
        finally:
            service.worker.stop()

    app = FastAPI(title="kitae", version=str(service.info.get("kitae_version", "")), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service  # for tests and embedding applications
    metrics = service.metrics
    limits = service.limits

    def refuse(exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise RequestError(401, "a bearer token is required: Authorization: Bearer <token>",
                               {"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        try:
            response = await call_next(request)
        except RequestError as exc:
            response = refuse(exc)
        route = request.url.path if request.url.path in ("/predict", "/info", "/metrics", "/health") else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_payload_bytes:
            raise RequestError(413, f"the body is {declared} bytes; the limit is {limits.max_payload_bytes} "
                                    "(--max-payload-bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a Content-Length
            size += len(chunk)
            if size > limits.max_payload_bytes:
                raise RequestError(413, f"the body is over the limit of {limits.max_payload_bytes} bytes "
                                        "(--max-payload-bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        started = time.perf_counter()
        try:
            check_token(request)
            texts = service.parse(await read_body(request))
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
            except Exception as exc:  # the model failed on this batch: say so, keep serving
                raise RequestError(500, f"the model failed on this request: {type(exc).__name__}: {exc}") from None
            answer = service.answer(inputs, logits)
        except RequestError as exc:
            return refuse(exc)
        metrics.request_seconds.observe(time.perf_counter() - started)
        return JSONResponse(answer)

    @app.get("/info")
    async def info(request: Request) -> Any:
        try:
            check_token(request)
        except RequestError as exc:
            return refuse(exc)
        return JSONResponse({**service.info, "limits": {**limits.__dict__,
                                                         "max_batch_tokens": service.worker.max_batch_tokens}})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Any:
        try:
            check_token(request)
        except RequestError as exc:
            return refuse(exc)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> Any:
        if not service.worker.alive:
            return JSONResponse({"status": "down", "error": "the inference worker is not running"}, status_code=503)
        return JSONResponse({"status": "ok", "queued_texts": service.worker.queued_texts})

    @app.exception_handler(404)
    async def not_found(request: Request, _exc: Any) -> Any:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}: the routes are "
                                      "POST /predict, GET /info, /metrics, /health"}, status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, _exc: Any) -> Any:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)

    return app

