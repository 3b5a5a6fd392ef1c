"""One inference thread that owns the model and batches texts across concurrent requests.

Requests are queued whole; the worker fills each forward pass with texts from the front of the
queue (one request's texts longest first, so they pad well) while the padded batch stays within
a token budget, and hands each request its logits once all of its texts are done. A full queue
refuses new requests (the server answers 429 with an estimate of when to retry) instead of
growing without bound; nothing queued is ever dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from kitae.predictor import EncodedInputs


class QueueFull(Exception):
    """The queue holds as many texts as it may; `retry_after` is a guess in seconds."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"the inference queue is full ({queued} texts waiting)")
        self.queued, self.retry_after = queued, retry_after


@dataclass
class BatchStats:
    """What one forward pass did: for the Prometheus metrics."""

    texts: int
    padded_tokens: int
    seconds: float


@dataclass
class _Job:
    inputs: EncodedInputs
    future: Future
    order: list[int]  # the job's texts, longest first
    lengths: list[int]
    logits: np.ndarray | None = None
    scheduled: int = 0  # texts of `order` handed to a batch so far
    done: int = 0
    failed: bool = False


@dataclass
class InferenceWorker:
    """`submit(inputs)` -> a Future of the logits (texts x outputs, in the order sent).

    `forward` computes the logits of one batch; it is only ever called from the worker thread,
    so the model never runs two batches at once. `max_batch_tokens` bounds texts x longest
    sequence x group size of a batch (a text longer than the budget goes alone).
    """

    forward: Callable[[EncodedInputs], np.ndarray]
    max_batch_tokens: int
    max_queue_texts: int
    on_batch: Callable[[BatchStats], None] | None = None
    _jobs: deque[_Job] = field(default_factory=deque)
    _queued: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _stopping: bool = False
    _texts_per_second: float = 0.0

    @property
    def queued_texts(self) -> int:
        """Texts waiting or being computed."""
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kitae-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, inputs: EncodedInputs) -> Future:
        future: Future = Future()
        if len(inputs) == 0:
            future.set_result(np.zeros((0, 0), dtype=np.float32))
            return future
        lengths = inputs.lengths()
        order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
        with self._cond:
            if self._stopping:
                raise RuntimeError("the inference worker is stopping")
            if self._queued + len(inputs) > self.max_queue_texts:
                raise QueueFull(self._queued, retry_after_seconds(self._queued, self._texts_per_second))
            self._jobs.append(_Job(inputs, future, order, lengths))
            self._queued += len(inputs)
            self._cond.notify()
        return future

    # --- the worker thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return  # stopping, and nothing left
                picked = self._take()
            self._compute(picked)

    def _take(self) -> list[tuple[_Job, list[int]]]:
        """Texts for the next batch, from the front of the queue, within the token budget."""
        picked: list[tuple[_Job, list[int]]] = []
        count, width = 0, 0
        for job in self._jobs:
            group = job.inputs.group_size
            chosen: list[int] = []
            while job.scheduled < len(job.order):
                index = job.order[job.scheduled]
                new_width = max(width, job.lengths[index])
                if count and (count + 1) * new_width * group > self.max_batch_tokens:
                    break
                chosen.append(index)
                job.scheduled += 1
                count, width = count + 1, new_width
            if chosen:
                picked.append((job, chosen))
            if job.scheduled < len(job.order):
                break  # the budget is spent
        return picked

    def _compute(self, picked: list[tuple[_Job, list[int]]]) -> None:
        # One forward per group size (reward groups and single texts do not share a batch).
        started = time.perf_counter()
        texts = sum(len(chosen) for _, chosen in picked)
        by_group: dict[int, list[tuple[_Job, list[int]]]] = {}
        for job, chosen in picked:
            by_group.setdefault(job.inputs.group_size, []).append((job, chosen))
        padded = 0
        for parts in by_group.values():
            batch = _concatenate([job.inputs.select(chosen) for job, chosen in parts])
            padded += len(batch) * max(batch.lengths()) * batch.group_size
            try:
                logits = self.forward(batch)
            except BaseException as exc:  # the requests in this batch fail; the server goes on
                for job, _ in parts:
                    self._fail(job, exc)
                continue
            offset = 0
            for job, chosen in parts:
                part = logits[offset:offset + len(chosen)]
                offset += len(chosen)
                if job.logits is None:
                    job.logits = np.zeros((len(job.inputs), logits.shape[1]), dtype=np.float32)
                job.logits[chosen] = part
                self._finish_part(job, len(chosen))
        seconds = time.perf_counter() - started
        rate = texts / seconds if seconds > 0 else 0.0
        self._texts_per_second = rate if not self._texts_per_second else 0.8 * self._texts_per_second + 0.2 * rate
        if self.on_batch is not None:
            self.on_batch(BatchStats(texts, padded, seconds))

    def _finish_part(self, job: _Job, texts: int) -> None:
        with self._cond:
            job.done += texts
            complete = job.done == len(job.order) and job in self._jobs
            if complete:
                self._jobs.remove(job)
                self._queued -= len(job.order)
        if complete and not job.failed:
            job.future.set_result(job.logits)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued -= len(job.order)
        if not job.failed:
            job.failed = True
            job.future.set_exception(exc)


def _concatenate(parts: list[EncodedInputs]) -> EncodedInputs:
    """Several requests' inputs (one group size) as one batch, in order."""
    from kitae.data.batching import Encoded

    ids = [row for p in parts for row in p.encoded.input_ids]
    typed = all(p.encoded.token_type_ids is not None for p in parts)
    types = [row for p in parts for row in p.encoded.token_type_ids] if typed else None  # type: ignore[union-attr]
    truncated = [flag for p in parts for flag in p.truncated]
    return EncodedInputs(Encoded(ids, sum(truncated), types), parts[0].group_size, truncated)


def retry_after_seconds(queued: int, texts_per_second: float) -> int:
    """Seconds a refused client should wait: the queue's texts at the measured rate (at least 1).

    >>> retry_after_seconds(100, 40.0)
    3
    >>> retry_after_seconds(5, 0.0)  # nothing measured yet
    5
    """
    return max(1, math.ceil(queued / (texts_per_second or 1.0)))
