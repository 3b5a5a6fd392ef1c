"""The run directory: the contract between training and everything after it.

```
RUN_DIR/
  run.json                  status (running / interrupted / finished), versions, timings, sizes
  config.yaml               the resolved config (every default filled in)
  labels.json               the task, index -> label, the task's capability (predict / generate)
  metrics.json              dev and test metrics of the selected epoch
  history.csv, history.png  per-epoch train loss, dev loss and dev metrics
  steps.csv                 loss, learning rate, throughput and memory every log_every_steps steps
  progress.json             phase, epoch, batch, a point a second, epochs done (what kitae ui watches)
  predictions_{dev,test}.jsonl
  confusion_matrix_{split}.png / .csv, classification_report_{split}.csv
  model/                    Hugging Face format: PEFT adapter (+ head) or full weights,
                            config.json with id2label, tokenizer, kitae_model.json
  checkpoints/               resumable training state (removed when the run finishes)
  train.log
  .kitae.lock               held (flock) by the process training here
```
Every file is written atomically (temporary file + rename): an interrupted run never leaves a
half-written file, and a finished run's files are never replaced by a failing one.

A folder is a kitae run only when its `run.json` says so (`"format": "kitae-run"`): kitae
replaces, with `--overwrite`, nothing else — never a folder that merely holds a `config.yaml`,
never one holding the inputs of the run, and a replaced run is only moved aside until its
successor has trained its first step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from kitae.errors import RunDirError

RUN_FILE = "run.json"
RUN_FORMAT = "kitae-run"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".kitae.lock"


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    umask = None
    try:  # Linux reports the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the mode a new file gets here: libraries that write through
    a private temporary file (safetensors writes 0600 whatever the umask) would otherwise leave
    a model that nobody else in the user's group can read."""
    mode = file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != LOCK_FILE:
            os.chmod(path, mode)


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str, newline: str | None = None) -> Iterator[Any]:
    """A file handle on a temporary file beside `path`, flushed and renamed over `path` only when
    the block ends without an error; on an error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        # mkstemp makes the file private (0600); give it the mode any new file gets here.
        os.fchmod(fd, file_mode())
        text = {"encoding": "utf-8", "newline": newline} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with _atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_text_file(path: Path, newline: str | None = None) -> contextlib.AbstractContextManager[TextIO]:
    """Write a text file incrementally (e.g. predictions, chunk by chunk) into a temporary file
    beside `path`, renamed over it only when the block ends without an error; on an error the
    temporary file is removed and `path` is untouched."""
    return _atomic_file(path, "w", newline)


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


def run_info(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of a kitae run directory, or None when `run_dir` is not one."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    # Runs written before the format marker carry kitae's version, task and status.
    legacy = {"kitae_version", "task", "status"} <= set(info)
    return info if info.get("format") == RUN_FORMAT or legacy else None


# Statuses of a complete run directory: trained, selected, saved (a pruned sweep trial stopped
# early at its pruner's request, and is as complete as an early-stopped run).
COMPLETE = ("finished", "pruned")


def run_status(run_dir: Path) -> str | None:
    """'running', 'interrupted', 'failed', 'finished', 'pruned', or None when there is no kitae run here."""
    info = run_info(run_dir)
    return None if info is None else info.get("status")


def update_run_info(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run.json (a None value removes the key)."""
    path = Path(run_dir) / RUN_FILE
    info = read_json(path) if path.is_file() else {"format": RUN_FORMAT}
    info.update(fields)
    info = {k: v for k, v in info.items() if v is not None}
    write_json(path, info)
    return info


def require_finished_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    status = run_status(run_dir)
    if status is None:
        raise RunDirError(f"{run_dir}: not a kitae run directory (no {RUN_FILE} of kitae's)")
    if status not in COMPLETE or not (run_dir / MODEL_DIR).is_dir():
        raise RunDirError(f"{run_dir}: the run is {status}, not finished (resume it with "
                          f"`kitae train CONFIG --resume`)")
    return run_dir


# --- what kitae may write over ------------------------------------------------------------------

def input_inside(folder: Path, inputs: dict[str, Path]) -> tuple[str, Path] | None:
    """The first input (what, path) that is `folder` or lies inside it; None when none does."""
    folder = Path(folder).resolve()
    for what, path in inputs.items():
        resolved = Path(path).resolve()
        if resolved == folder or folder in resolved.parents:
            return what, Path(path)
    return None


def check_writable_folder(folder: Path, inputs: dict[str, Path], is_own: bool, what: str) -> None:
    """Refuse to write into `folder` unless it is new, empty, or (`is_own`) something kitae made;
    never one holding an input or the current directory. The messages do not suggest
    --overwrite: nothing would make these folders safe to replace."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder}: is a file, not a folder; choose another {what}")
    held = input_inside(folder, inputs)
    if held is not None:
        raise RunDirError(f"{folder}: holds {held[0]} ({held[1]}); kitae never writes over the inputs of a "
                          f"command: choose another {what}")
    if not folder.exists() or is_own or not any(folder.iterdir()):
        return
    if folder.resolve() == Path.cwd().resolve() or folder.resolve() in Path.cwd().resolve().parents:
        raise RunDirError(f"{folder}: is the current directory; choose another {what}")
    raise RunDirError(f"{folder}: exists, is not empty, and was not made by kitae; kitae writes only into a "
                      f"new folder, an empty one, or one it made itself: choose another {what}")


def is_evaluation(folder: Path) -> bool:
    """A folder `kitae evaluate` wrote (its metrics.json names the evaluated run), which it may rewrite."""
    try:
        return "evaluated_run" in read_json(Path(folder) / "metrics.json")
    except (OSError, ValueError, TypeError):
        return False


def check_output_file(output: Path, source: Path, overwrite: bool) -> None:
    """A file a command writes (predictions): never its input, a folder, or an existing file
    without `overwrite`."""
    from kitae.errors import KitaeError

    if output.resolve() == source.resolve():
        raise KitaeError(f"-o {output}: is the input file; write the predictions to another file")
    if output.is_dir():
        raise KitaeError(f"-o {output}: is a folder; give a .jsonl or .csv file name")
    if output.exists() and not overwrite:
        raise KitaeError(f"-o {output}: exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise KitaeError(f"-o {output}: the folder {output.parent} does not exist")


class RunLock:
    """An exclusive lock on a folder (flock on `.kitae.lock`, released when the process ends,
    even by kill -9): two processes can never train in one run directory."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.handle: Any = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return self
        handle = open(self.folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunDirError(f"{self.folder}: another kitae process (pid {holder}) is working in this run "
                              "directory; wait for it to end or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None


class Replacement:
    """A run being replaced (--overwrite): moved aside, beside its old place, until the new run
    has trained its first step (`discard`) — or put back if the new run fails before (`restore`)."""

    def __init__(self, target: Path, aside: Path, lock: RunLock | None = None) -> None:
        self.target, self.aside, self.lock = Path(target), Path(aside), lock
        self.done = False

    @classmethod
    def move_aside(cls, run_dir: Path, lock: RunLock) -> Replacement:
        run_dir = Path(run_dir).resolve()
        aside = run_dir.with_name(f".{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(run_dir, aside)
        return cls(run_dir, aside, lock)

    @classmethod
    def recorded(cls, run_dir: Path) -> Replacement | None:
        """The replacement a run directory's run.json records (a resumed replacing run)."""
        previous = (run_info(run_dir) or {}).get("previous_run")
        if previous and is_set_aside(Path(previous), Path(run_dir)):
            return cls(Path(run_dir), Path(previous))
        return None

    def discard(self) -> None:
        """The new run is under way: delete the old one (and any run it was itself replacing).
        Only what `move_aside` made for this place is deleted: a run.json naming any other folder
        as its `previous_run` (edited, or copied from elsewhere) deletes nothing."""
        if self.done:
            return
        chain = self.aside
        while chain is not None and is_set_aside(chain, self.target):
            older = (run_info(chain) or {}).get("previous_run")
            shutil.rmtree(chain)
            chain = Path(older) if older else None
        self._finish()

    def restore(self) -> None:
        """The new run failed before training a step: delete it (kitae made it) and put the old one back."""
        if self.done:
            return
        if is_kitae_run(self.target) or (self.target.is_dir() and not any(self.target.iterdir())):
            shutil.rmtree(self.target)
        os.replace(self.aside, self.target)
        self._finish()

    def _finish(self) -> None:
        self.done = True
        if self.lock is not None:
            self.lock.release()


def is_set_aside(path: Path, target: Path) -> bool:
    """Whether `path` is a kitae run that `Replacement.move_aside` set aside from `target`: beside it
    (same folder, symlinks resolved), named `.NAME.replaced-DATE-TIME-PID`.

    >>> is_set_aside(Path("/nowhere/.run.replaced-20260101-120000-42"), Path("/nowhere/run"))
    False
    """
    path, target = Path(path), Path(target).resolve()
    pattern = rf"\.{re.escape(target.name)}\.replaced-\d{{8}}-\d{{6}}-\d+"
    return (not path.is_symlink() and path.resolve().parent == target.parent
            and re.fullmatch(pattern, path.name) is not None and is_kitae_run(path))


def is_kitae_run(path: Path) -> bool:
    return Path(path).is_dir() and run_info(path) is not None
