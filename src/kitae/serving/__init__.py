"""`kitae serve RUN_DIR`: a trained classifier over HTTP (FastAPI + uvicorn), on one machine.

    from kitae.serving import build_app, serve
    serve("runs/quickstart", port=8000, token_file="token.txt")   # blocks, like the CLI

- `worker.py`: the one inference thread, batching texts across requests by a token budget;
- `app.py`: the routes, request bounds, bearer-token check and Prometheus metrics.

Predictions are exactly `kitae.load(RUN_DIR).predict(texts)` (same rendering, truncation,
thresholds); the server only decides which texts share a forward pass.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitae.errors import KitaeError

if TYPE_CHECKING:
    from kitae.serving.app import ServeLimits

logger = logging.getLogger("kitae")

__all__ = ["ServeLimits", "build_app", "read_token", "serve", "weights_sha256"]


def __getattr__(name: str) -> Any:
    # The app module loads the predictor (torch, transformers) only when used: `kitae ui` imports
    # read_token / is_loopback from here and starts in a second, not after torch.
    if name in ("PredictService", "ServeLimits", "create_app"):
        from kitae.serving import app

        return getattr(app, name)
    raise AttributeError(f"module 'kitae.serving' has no attribute {name!r}")


def weights_sha256(model_dir: Path) -> str:
    """One SHA-256 over the model's weight files (name and bytes, in name order): two servers
    answer alike when this agrees."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file()
                   and p.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".onnx"))
    for path in files:
        digest.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_token(path: str | Path | None) -> str | None:
    """The bearer token in `path` (its first word); None without a file."""
    if path is None:
        return None
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        raise KitaeError(f"{path}: no such token file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KitaeError(f"{path}: cannot read the token file ({exc.__class__.__name__})") from None
    if not lines:
        raise KitaeError(f"{path}: the token file is empty; write a token of at least 16 characters in it "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt)")
    token = lines[0]
    if len(token) < 16:
        raise KitaeError(f"{path}: the token is {len(token)} characters; use at least 16 "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt)")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("%s can be read by other users of this machine (chmod 600 %s)", path, path)
    return token


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(source: str | Path, limits: ServeLimits | None = None, token: str | None = None,
              device: str = "auto", batch_size: int | None = None, trust_remote_code: bool = False) -> Any:
    """The FastAPI app serving a finished classification run or a kitae export of one (merged,
    vllm, tei, onnx) — what `serve` runs; tests and other ASGI servers can use it directly."""
    from kitae import __version__
    from kitae.models.sources import public_model_name
    from kitae.predictor import load
    from kitae.runs import MODEL_DIR
    from kitae.serving.app import PredictService, ServeLimits, create_app

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise KitaeError("kitae serve needs the serve extra: pip install 'kitae[serve]'") from None
    model = load(source, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    if model.generates:  # the task declares it (kitae.tasks.contract); only classifiers are served
        raise KitaeError(f"{source}: a {model.config.task} run generates text; kitae serve serves "
                         "classification runs (use kitae generate, or the Python Generator)")
    meta = model.meta
    info = {"task": meta["task"], "labels": model.labels, "max_length": meta["model"]["max_length"],
            "base_model": public_model_name(meta["model"]["name"]),
            "adapter": meta.get("adapter", {}).get("type") if isinstance(meta.get("adapter"), dict) else None,
            "run": Path(source).resolve().name, "weights_sha256": weights_sha256(Path(source) / MODEL_DIR if (Path(source) / MODEL_DIR).is_dir()
                                             else Path(source)),
            "kitae_version": __version__}
    return create_app(PredictService(model, limits or ServeLimits(), info), token)


def serve(source: str | Path, host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
          limits: ServeLimits | None = None, device: str = "auto", batch_size: int | None = None,
          trust_remote_code: bool = False, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C finishes the requests in flight, then stops)."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise KitaeError("kitae serve needs the serve extra: pip install 'kitae[serve]'") from None
    from kitae.serving.app import ServeLimits
    from kitae.serving.guards import run_server

    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise KitaeError(f"--host {host}: serving beyond this machine needs a token (--token-file FILE); "
                         "without one anyone who can reach the address could use the model")
    limits = limits or ServeLimits()
    app = build_app(source, limits, token, device, batch_size, trust_remote_code)
    logger.info("serving %s on http://%s:%d (POST /predict, GET /info /metrics /health)%s", source, host, port,
                "; bearer token required" if token else "")
    run_server(app, host, port, limits.edge(), log_level=log_level, graceful_seconds=30)
