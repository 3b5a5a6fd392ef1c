"""The HTTP edge `kitae serve` and `kitae ui` share: every answer a JSON object, bounded bodies,
read deadlines, authentication before any route runs, and every answer counted.

    app.add_middleware(Edge, limits=EdgeLimits(), authorise=check, on_answer=count)
    run_server(app, host, port, limits)       # uvicorn with header deadlines and JSON 400/408s

- `Edge` (pure ASGI, so streamed answers pass through untouched) refuses an over-long body by its
  Content-Length or as it arrives (413), a body slower than its deadline (408), and a request
  `authorise` refuses (401/403); any exception a route lets out becomes a 500 whose message names
  no exception, no path (the traceback goes to the server's log).
- `install_json_errors` gives FastAPI's own refusals (404, 405, validation) the same shape.
- The uvicorn protocol in `run_server` closes a connection whose request headers take longer than
  `header_timeout_s` (a half-sent request does not hold a connection forever) with a JSON 408,
  and answers a malformed request with a JSON 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("kitae")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OnAnswer = Callable[[str, int], None]  # (path, status) of every answer
COUNT_KEY = "kitae_on_answer"  # where the lifespan state keeps `OnAnswer` for the protocol's own 408s


class RequestError(Exception):
    """A refusal: HTTP status, a short message for the client, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class EdgeLimits:
    max_body_bytes: int = 1_000_000
    header_timeout_s: float = 10.0  # from connection (or the last answer) to the request's last header
    body_timeout_s: float = 30.0  # from the last header to the body's last byte


def error_body(message: str) -> bytes:
    """The body of every refusal.

    >>> error_body("no")
    b'{"error":"no"}'
    """
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or a 422 saying why not (deep nesting included: json's recursion
    limit would otherwise surface as a 500)."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(422, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(422, f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, "
                                f"column {exc.colno})") from None
    except RecursionError:
        raise RequestError(422, "the body nests too deeply") from None


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Edge:
    """ASGI middleware: authorise, bound the body, turn escapes into JSON 500s, count answers."""

    def __init__(self, app: Any, limits: EdgeLimits = EdgeLimits(),
                 authorise: Callable[[Scope], RequestError | None] | None = None,
                 on_answer: OnAnswer | None = None) -> None:
        self.app, self.limits, self.authorise, self.on_answer = app, limits, authorise, on_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                raise refusal
            await self.app(scope, self._bounded(receive), counted_send)
        except RequestError as exc:
            if status == 0:
                await send_error(counted_send, exc.status, exc.message,
                                 {**exc.headers, "connection": "close"} if exc.status in (408, 413) else exc.headers)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if status == 0:
                await send_error(counted_send, 500, "internal error: the server's log has the details")
        finally:
            if self.on_answer is not None and status:
                self.on_answer(scope.get("path", ""), status)

    def _refusal(self, scope: Scope) -> RequestError | None:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return RequestError(413, f"the body is {int(declared)} bytes; the limit is {self.limits.max_body_bytes}")
        return self.authorise(scope) if self.authorise is not None else None

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` with the body's size and deadline enforced; after the body, untouched (a
        streamed answer waits on it for the client's disconnect)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        size, more = 0, True

        async def bounded() -> Message:
            nonlocal size, more
            if not more:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise RequestError(408, f"the request body did not arrive within "
                                        f"{self.limits.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limits.max_body_bytes:
                    raise RequestError(413, f"the body is over the limit of {self.limits.max_body_bytes} bytes")
                more = bool(message.get("more_body", False))
            return message

        return bounded


def install_json_errors(app: Any, not_found: Callable[[str, str], str] | None = None) -> None:
    """FastAPI's own 404 / 405 / 422 answers as `{"error": ...}` like every other refusal."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException) -> Any:
        if exc.status_code == 404:
            message = (not_found or (lambda m, p: f"no route {m} {p}"))(request.method, request.url.path)
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail) if isinstance(exc.detail, str) else "refused"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)


# --- the server ------------------------------------------------------------------------------------

def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = error_body(message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def deadline_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline on the request headers (uvicorn's own keep-alive
    timer is cancelled by any byte, so a client trickling a header never times out) and JSON for
    the 400 it sends on a malformed request."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _watch(self) -> None:
            # their_state is IDLE until a request's headers are complete; the deadline runs from the
            # moment the server waits for them and is never reset by a byte.
            waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting and self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout_s, self._expired)
            elif not waiting:
                self._cancel()

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_raw_error(408, "Request Timeout",
                                                f"the request headers did not arrive within {header_timeout_s:g} s"))
                self.transport.close()
                self._count(408)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_raw_error(400, "Bad Request", "the request is not valid HTTP"))
            self.transport.close()
            self._count(400)

        def _count(self, status: int) -> None:
            count = (self.app_state or {}).get(COUNT_KEY)
            if count is not None:
                count("", status)

    return DeadlineH11Protocol


def server_config(app: Any, host: str, port: int, limits: EdgeLimits, log_level: str = "info",
                  graceful_seconds: int | None = None) -> Any:
    """uvicorn's config with the header deadline and a bounded header size."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=deadline_protocol(limits.header_timeout_s),
                          h11_max_incomplete_event_size=64 * 1024, timeout_graceful_shutdown=graceful_seconds)


def run_server(app: Any, host: str, port: int, limits: EdgeLimits, log_level: str = "info",
               graceful_seconds: int | None = None) -> None:
    """Serve `app` until interrupted."""
    import uvicorn

    uvicorn.Server(server_config(app, host, port, limits, log_level, graceful_seconds)).run()
