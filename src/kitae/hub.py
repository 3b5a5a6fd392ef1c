"""`kitae push`: export a run and upload it to the Hugging Face hub with its model card.

The upload goes through `huggingface_hub` (create the repo if needed, then one commit of the
exported folder). What can be checked offline is checked first: a finished run, a token, a valid
repo id; a network failure is one clear error, and the local run is never modified.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from kitae.errors import KitaeError

logger = logging.getLogger("kitae")

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, merge: bool | None = None,
             token: str | None = None, api: Any = None, trust_remote_code: bool = False) -> str:
    """Export `run_dir` (merged when the model allows it, unless `merge` says otherwise) and upload
    it to `repo_id`; returns the repo URL. `api` is a `huggingface_hub.HfApi` (tests pass a fake)."""
    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    api = api or hub_api(token)
    with tempfile.TemporaryDirectory(prefix="kitae-push-") as tmp:
        folder = stage_push(run_dir, Path(tmp) / "export", merge=merge, trust_remote_code=trust_remote_code)
        return upload_folder(folder, repo_id, private, api, f"kitae: upload {run_dir.name}")


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id):
        raise KitaeError(f"--repo-id '{repo_id}': expected 'user-or-org/name'")


def hub_api(token: str | None = None) -> Any:
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise KitaeError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a write token)")
    return HfApi(token=token)


def stage_push(run_dir: Path, folder: Path, merge: bool | None = None, trust_remote_code: bool = False,
               overwrite: bool = False) -> Path:
    """The folder a push uploads: the run's export (merged when the model allows it)."""
    from kitae.api import load
    from kitae.export import export_run
    from kitae.runs import require_finished_run

    run_dir = require_finished_run(Path(run_dir))
    if merge is None:
        # A merged model loads without kitae or PEFT; mean pooling can only ship as an adapter.
        merge = load(run_dir, device="cpu", trust_remote_code=trust_remote_code).model.pooling != "mean"
    return export_run(run_dir, folder, merge=merge, overwrite=overwrite, trust_remote_code=trust_remote_code)


def upload_folder(folder: Path, repo_id: str, private: bool, api: Any, message: str) -> str:
    """Create the repo if needed and upload `folder` in one commit. `private` also applies to a
    repo that exists already: a public repo is made private before anything is uploaded to it."""
    check_repo_id(repo_id)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not getattr(api.repo_info(repo_id), "private", True):
            api.update_repo_settings(repo_id, private=True)
            logger.info("%s existed as a public repo: made private before the upload", repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    except KitaeError:
        raise
    except Exception as exc:  # huggingface_hub raises HTTP, connection and auth errors
        raise KitaeError(f"push to '{repo_id}' failed: {type(exc).__name__}: {exc}\n"
                         "  (no network, a read-only token, or no right to that namespace?)") from None
    return str(url)
