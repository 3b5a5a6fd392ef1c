"""`kitae ui [RUNS_DIR]`: a local web page to set up, launch, watch, compare and try runs.

    from kitae.ui import create_ui_app, run_ui
    run_ui("runs", port=7860)          # blocks, like the CLI

- `form.py`: the run form generated from the config schema, validated as `kitae config check`;
- `jobs.py`: `kitae train` processes, detached, found again, stopped (SIGTERM) and resumed;
- `app.py`: the JSON routes (each one a CLI command or Python call) and the page in `static/`;
- `i18n.py`: Japanese for every config key and section.

The page adds no behaviour of its own: launching is `kitae train`, watching reads the run's
progress.json, comparing is `kitae.catalog`, trying mounts the `kitae serve` app of the run.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from kitae.errors import KitaeError
from kitae.ui.auth import NO_TOKEN_WARNING

logger = logging.getLogger("kitae")

__all__ = ["create_ui_app", "run_ui"]


def create_ui_app(runs_dir: str | Path = "runs", token: str | None = None, base_dir: str | Path | None = None,
                  local_only: bool = True, data_roots: Sequence[str | Path] = (),
                  allow_remote_code: bool = False):  # noqa: ANN201 (a FastAPI app; fastapi is an extra)
    """The page's ASGI app; `token` None serves without one (loopback only: `--no-token`)."""
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise KitaeError("kitae ui needs the serve extra: pip install 'kitae[serve]'") from None
    from kitae.ui.app import create_ui_app as create

    return create(Path(runs_dir), token=token, base_dir=Path(base_dir) if base_dir else None, local_only=local_only,
                  data_roots=[Path(r) for r in data_roots], allow_remote_code=allow_remote_code)


def run_ui(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 7860,
           token_file: str | Path | None = None, log_level: str = "warning", no_token: bool = False,
           data_roots: Sequence[str | Path] = (), allow_remote_code: bool = False) -> None:
    """Serve the page until interrupted. It always needs a token — the one in `token_file`, or a
    new one printed in the login address — unless `no_token` (loopback only)."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise KitaeError("kitae ui needs the serve extra: pip install 'kitae[serve]'") from None
    from kitae.serving import is_loopback, read_token
    from kitae.serving.guards import run_server
    from kitae.ui.app import UI_LIMITS

    local = is_loopback(host)
    if no_token and (not local or token_file is not None):
        raise KitaeError("--no-token is only for a page bound to localhost, without --token-file")
    for root in data_roots:
        if not Path(root).is_dir():
            raise KitaeError(f"--data-root {root}: not a folder")
    token = None if no_token else (read_token(token_file) or secrets.token_urlsafe(32))
    app = create_ui_app(runs_dir, token=token, local_only=local, data_roots=data_roots,
                        allow_remote_code=allow_remote_code)
    shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
    if token is None:
        logger.warning(NO_TOKEN_WARNING)
        address = f"http://{shown}:{port}/"
    elif token_file is not None:
        address = f"http://{shown}:{port}/ (log in with the token in {token_file})"
    else:
        address = f"http://{shown}:{port}/?token={token}"
    print(f"kitae ui: runs under {Path(runs_dir).resolve()}; open {address}\n"
          "(Ctrl-C stops the page, not the training it started)", flush=True)
    run_server(app, host, port, UI_LIMITS, log_level=log_level)
