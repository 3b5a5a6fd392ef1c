"""The run directory: the contract between training and everything after it.

```
RUN_DIR/
  run.json                  status (running / interrupted / finished), versions, timings, sizes
  config.yaml               the resolved config (every default filled in)
  labels.json               index -> label
  metrics.json              dev and test metrics of the selected epoch
  history.csv, history.png  per-epoch train loss, dev loss and dev metrics
  predictions_{dev,test}.jsonl
  confusion_matrix_{split}.png / .csv, classification_report_{split}.csv
  model/                    Hugging Face format: PEFT adapter (+ head) or full weights,
                            config.json with id2label, tokenizer, kitae_model.json
  checkpoints/last, best/   resumable training state (removed when the run finishes)
  train.log
```
Every file is written atomically (temporary file + rename): an interrupted run never leaves a
half-written file, and a finished run's files are never replaced by a failing one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kitae.errors import RunDirError

RUN_FILE = "run.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); run artifacts are ordinary shared files.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2, allow_nan=True) + "\n")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fieldnames: list[str] = []
    for row in rows:
        fieldnames.extend(k for k in row if k not in fieldnames)
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_status(run_dir: Path) -> str | None:
    """'running', 'interrupted', 'failed', 'finished', or None when there is no run here."""
    info = Path(run_dir) / RUN_FILE
    if not info.is_file():
        return None
    return read_json(info).get("status")


def update_run_info(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    info = read_json(path) if path.is_file() else {}
    info.update(fields)
    write_json(path, info)
    return info


def require_finished_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    status = run_status(run_dir)
    if status is None:
        raise RunDirError(f"{run_dir}: not a kitae run directory (no {RUN_FILE})")
    if status != "finished" or not (run_dir / MODEL_DIR).is_dir():
        raise RunDirError(f"{run_dir}: the run is {status}, not finished (resume it with "
                          f"`kitae train CONFIG --resume`)")
    return run_dir
