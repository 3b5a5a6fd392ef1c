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
from pathlib import Path

from kitae.errors import KitaeError

logger = logging.getLogger("kitae")

__all__ = ["create_ui_app", "run_ui"]


def create_ui_app(runs_dir: str | Path = "runs", token: str | None = None, base_dir: str | Path | None = None,
                  local_only: bool = True):  # noqa: ANN201 (a FastAPI app; fastapi is an extra)
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise KitaeError("kitae ui needs the serve extra: pip install 'kitae[serve]'") from None
    from kitae.ui.app import create_ui_app as create

    return create(Path(runs_dir), token=token, base_dir=Path(base_dir) if base_dir else None, local_only=local_only)


def run_ui(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 7860,
           token_file: str | Path | None = None, log_level: str = "warning") -> None:
    """Serve the page until interrupted. Bound beyond localhost it needs a token: the one in
    `token_file`, or a new random one printed in the address."""
    try:
        import uvicorn
    except ImportError:
        raise KitaeError("kitae ui needs the serve extra: pip install 'kitae[serve]'") from None
    from kitae.serving import is_loopback, read_token

    local = is_loopback(host)
    token = read_token(token_file)
    if token is None and not local:
        token = secrets.token_urlsafe(24)
    app = create_ui_app(runs_dir, token=token, local_only=local)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"kitae ui: runs under {Path(runs_dir).resolve()}; open {address}\n"
          "(Ctrl-C stops the page, not the training it started)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
