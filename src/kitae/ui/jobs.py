"""Training jobs the web page starts: each is an ordinary `kitae train CONFIG` process, detached
(its own session, so closing the page, the browser or even `kitae ui` does not stop it), found
again from what it left on disk:

```
RUNS_DIR/.kitae-ui/
  configs/NAME.yaml    the config the job trains (input paths absolute, output inside RUNS_DIR)
  jobs/NAME.json       pid, command, working directory, config, log, start time
  logs/NAME.log        the process's stdout and stderr (errors before the run directory exists)
```
Whether a run is training is read from the run itself: the pid in its `.kitae.lock` (written by
the process holding the lock) is alive and is a kitae process. Runs started from a terminal are
found the same way. Stop is SIGTERM: the loop saves a checkpoint and the run becomes
"interrupted"; resume is `kitae train CONFIG --resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitae.errors import KitaeError
from kitae.runs import LOCK_FILE, read_json, run_status, write_json, write_text_atomic

UI_DIR = ".kitae-ui"


@dataclass
class Job:
    name: str  # the run's path relative to RUNS_DIR
    pid: int
    command: list[str]
    cwd: str
    config: str
    log: str
    started: float

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Jobs:
    """Launch, find, stop and resume `kitae train` processes for the runs under `runs_dir`."""

    def __init__(self, runs_dir: Path, python: str | None = None) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.home = self.runs_dir / UI_DIR
        self.python = python or sys.executable
        self.children: dict[int, subprocess.Popen[bytes]] = {}  # reaped when they end (no zombies)

    # --- paths ------------------------------------------------------------------------------

    def run_dir(self, name: str) -> Path:
        """The folder of run `name`, refused unless it lies inside RUNS_DIR and outside the UI's
        own folder (`..` and symlinks resolved before either is checked)."""
        if not name:
            raise KitaeError("run: give a run name")
        path = (self.runs_dir / name).resolve()
        if path == self.runs_dir or self.runs_dir not in path.parents:
            raise KitaeError(f"run {name!r}: must be a folder inside the runs folder")
        if path == self.home or self.home in path.parents:
            raise KitaeError(f"run {name!r}: not a run name")
        return path

    def name_of(self, run_dir: Path) -> str:
        return Path(run_dir).resolve().relative_to(self.runs_dir).as_posix()

    def _safe_stem(self, name: str) -> str:
        return name.replace("/", "__")

    # --- launching --------------------------------------------------------------------------

    def launch(self, config: dict[str, Any], *, overwrite: bool = False) -> Job:
        """Write `config` (a validated mapping whose output lies inside RUNS_DIR) to
        .kitae-ui/configs/ and start `kitae train` on it."""
        from kitae.config import config_from_dict, dump_yaml

        output = config.get("output")
        if not output:
            raise KitaeError("output: give the run's folder (a name inside the runs folder)")
        run_dir = self.run_dir(self.name_of_output(str(output)))
        name = self.name_of(run_dir)
        if self.running(name) is not None:
            raise KitaeError(f"output: run {name} is training already")
        status = run_status(run_dir)
        if status is not None and not overwrite:  # what `kitae train` would say, before starting it
            raise KitaeError(f"output: {name} already holds a {status} run; choose another output, or replace "
                             "it (--overwrite)")
        config = {**config, "output": str(run_dir)}
        config_from_dict(config, source="the form")  # refuse before anything is written
        path = self.home / "configs" / f"{self._safe_stem(name)}.yaml"
        write_text_atomic(path, dump_yaml(config))
        return self._start(name, path, ["--overwrite"] if overwrite else [])

    def name_of_output(self, output: str) -> str:
        """A form's output (absolute, relative to RUNS_DIR, or starting with RUNS_DIR's own name
        as in `runs/x`) as a run name; refused outside RUNS_DIR."""
        path = Path(output)
        if not path.is_absolute():
            first = path.parts[0] if path.parts else ""
            path = (self.runs_dir.parent / path) if first == self.runs_dir.name else self.runs_dir / path
        path = path.resolve()
        if path == self.runs_dir or self.runs_dir not in path.parents:
            raise KitaeError(f"output: {output} is outside the runs folder {self.runs_dir}; kitae ui writes "
                             "runs only inside it")
        return self.name_of(path)

    def resume(self, name: str, check_config: Callable[[dict[str, Any]], None] | None = None) -> Job:
        """`kitae train CONFIG --resume` with the config the run was started with (held to
        `check_config` first: the UI's folders and remote-code rule)."""
        run_dir = self.run_dir(name)
        status = run_status(run_dir)
        if status is None:
            raise KitaeError(f"run {name}: not a kitae run")
        if self.running(name) is not None:
            raise KitaeError(f"run {name}: is training already")
        if status in ("finished", "pruned"):
            raise KitaeError(f"run {name}: already {status}; nothing to resume")
        job = self.recorded(name)
        config = Path(job.config) if job is not None and Path(job.config).is_file() else run_dir / "config.yaml"
        if check_config is not None:
            import yaml

            check_config(yaml.safe_load(config.read_text(encoding="utf-8")) or {})
        return self._start(name, config, ["--resume"], cwd=job.cwd if job is not None else None)

    def _start(self, name: str, config: Path, extra: list[str], cwd: str | None = None) -> Job:
        log = self.home / "logs" / f"{self._safe_stem(name)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "kitae.cli", "train", str(config), *extra]
        cwd = cwd or str(self.runs_dir)
        with log.open("ab") as handle:
            handle.write(f"$ kitae train {config} {' '.join(extra)}\n".encode())
            handle.flush()
            process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.children[process.pid] = process
        job = Job(name, process.pid, command, cwd, str(config), str(log), time.time())
        write_json(self.home / "jobs" / f"{self._safe_stem(name)}.json", job.as_json())
        return job

    # --- finding ----------------------------------------------------------------------------

    def recorded(self, name: str) -> Job | None:
        """The last job the page started for run `name` (None when it never started one)."""
        path = self.home / "jobs" / f"{self._safe_stem(name)}.json"
        try:
            return Job(**read_json(path))
        except (OSError, ValueError, TypeError):
            return None

    def jobs(self) -> list[Job]:
        folder = self.home / "jobs"
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                found.append(Job(**read_json(path)))
            except (OSError, ValueError, TypeError):
                continue
        return found

    def running(self, name: str) -> int | None:
        """The pid training run `name` now (its lock holder, or the page's job still starting:
        loading the model before the run directory exists), or None."""
        self._reap()
        try:
            run_dir = self.run_dir(name)
        except KitaeError:
            return None
        try:
            holder = int((run_dir / LOCK_FILE).read_text(encoding="utf-8").strip() or 0)
        except (OSError, ValueError):
            holder = 0
        if holder and run_status(run_dir) == "running" and _is_kitae_process(holder):
            return holder
        job = self.recorded(name)
        if job is not None and _is_kitae_process(job.pid) and _same_command(job.pid, job.command):
            return job.pid
        return None

    def _reap(self) -> None:
        for pid, process in list(self.children.items()):
            if process.poll() is not None:
                del self.children[pid]

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, name: str) -> int:
        """SIGTERM to the process training run `name`: it saves a checkpoint and exits."""
        self.run_dir(name)  # refuses names outside RUNS_DIR
        pid = self.running(name)
        if pid is None:
            raise KitaeError(f"run {name}: is not training")
        os.kill(pid, signal.SIGTERM)
        return pid

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of the run's train.log, or of the job's own output when the run wrote
        no log (it failed before its run directory was made) or the process printed after it."""
        parts = []
        job = self.recorded(name)
        try:
            train_log = self.run_dir(name) / "train.log"
        except KitaeError:
            return ""
        if train_log.is_file():
            parts.append(_tail(train_log, lines))
        if job is not None and Path(job.log).is_file():
            output = _tail(Path(job.log), lines)
            # What the process printed at its end (an error, the metrics table) is not in train.log.
            if not parts or "error" in output.lower() or "Traceback" in output:
                parts.append(output)
        return "\n".join(p for p in parts if p)


def _tail(path: Path, lines: int) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_kitae_process(pid: int) -> bool:
    """A live (not zombie) process running kitae: a reused pid is not mistaken for the run."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        except (OSError, IndexError):
            return False
        cmdline = _cmdline(pid)
        return cmdline is not None and any("kitae" in part for part in cmdline)
    return True  # no /proc (macOS): the pid is alive, trust the lock file


def _same_command(pid: int, command: list[str]) -> bool:
    cmdline = _cmdline(pid)
    return cmdline is None or cmdline == command


def describe_job(job: Job | None) -> dict[str, Any] | None:
    return None if job is None else {**job.as_json(), "command_line": " ".join(json.dumps(c) if " " in c else c
                                                                              for c in job.command)}
