"""The bounded command pool of one worker process.

Python threads cannot be killed, so a handler that ignores its cancellation flag keeps its
thread. The pool therefore counts threads in use and admits at most ``size + queue_size``
commands; beyond that :meth:`CommandPool.submit` refuses at once instead of queueing without
bound. Threads are daemons: a stuck handler never holds up the process's exit (gunicorn's
graceful shutdown), unlike ``ThreadPoolExecutor``, whose exit hook joins every thread.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import logs
from .forksafe import reset_after_fork

# Context variables a job carries from its submitter into the pool thread: the request id
# its log lines show. Only these: the rest of the submitter's context (Flask's request
# context among it) belongs to a request thread that may have moved on when the job runs.
CARRIED: tuple[contextvars.ContextVar, ...] = (logs.request_id,)


REPORT_EVERY_S = 1.0  # how often the counts are sampled for the gauges


class PoolFull(Exception):
    """Every thread is busy and the queue is full."""


@dataclass(frozen=True)
class PoolStats:
    size: int
    queue_size: int
    in_use: int
    queued: int

    def as_dict(self) -> dict[str, int]:
        return {
            "size": self.size,
            "queue_size": self.queue_size,
            "in_use": self.in_use,
            "queued": self.queued,
            "available": max(0, self.size + self.queue_size - self.in_use - self.queued),
        }


class Job:
    """One queued call and its outcome: a slimmer future (one lock, held until the call ends).

    ``concurrent.futures.Future`` takes a condition, its lock and a fresh waiter lock for each
    wait and each completion; with eight request threads per worker every lock handed between
    threads costs a GIL switch, and a ``/mcp/execute`` request waits on one job."""

    __slots__ = ("_fn", "_carried", "_done", "_result", "_error", "ended")

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._carried = tuple(var.get() for var in CARRIED)
        self._done = threading.Lock()
        self._done.acquire()  # released by the pool thread when the call has ended
        self._result: Any = None
        self._error: BaseException | None = None
        self.ended = 0.0  # time.monotonic() when the call ended

    def _run(self) -> None:
        try:
            self._result = contextvars.Context().run(self._call)
        except BaseException as exc:  # handed to whoever waits on the job
            self._error = exc
        finally:
            self._fn = None  # the call's closure is not kept alive by a finished job
            self.ended = time.monotonic()
            self._done.release()

    def _call(self) -> Any:
        # A fresh context per job, holding only what the submitter hands over
        for var, value in zip(CARRIED, self._carried, strict=True):
            var.set(value)
        return self._fn()

    def done(self) -> bool:
        return not self._done.locked()

    def result(self, timeout: float | None = None) -> Any:
        """The call's return value (or its exception); TimeoutError if it has not ended."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError()
        self._done.release()  # every later wait returns at once
        if self._error is not None:
            raise self._error
        return self._result


class CommandPool:
    def __init__(
        self, size: int, queue_size: int, on_change: Callable[[int, int], None] | None = None
    ):
        self.size = size
        self.queue_size = queue_size
        # (in_use, queued), sampled for the gauges by a reporter thread (see _report)
        self._on_change = on_change
        self._forked()
        reset_after_fork(self, CommandPool._forked)

    def _forked(self) -> None:
        """No threads yet in this process: they, the locks and the queue are made on first
        use (threads do not survive a fork)."""
        self._started = False
        self._start_lock = threading.Lock()
        # One lock for the counts, which also admit: a command holds a place from submit()
        # until its call ends, at most size + queue_size places.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # waited on only by submit(wait > 0)
        self._waiting_for_room = 0
        self._in_use = 0
        self._queued = 0

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            self._queue: queue.SimpleQueue = queue.SimpleQueue()
            for n in range(self.size):
                threading.Thread(
                    target=self._work, name=f"waygate-command-{n}", daemon=True
                ).start()
            if self._on_change is not None:
                threading.Thread(
                    target=self._report, name="waygate-pool-gauges", daemon=True
                ).start()
            self._started = True

    def submit(self, fn: Callable[[], Any], wait: float = 0.0) -> Job:
        """Queue ``fn``; waits up to ``wait`` seconds for room, then raises PoolFull."""
        self._ensure_started()
        job = Job(fn)
        with self._lock:
            if not self._has_room() and not (wait > 0 and self._wait_for_room(wait)):
                raise PoolFull()
            self._queued += 1
        self._queue.put(job)
        return job

    def _has_room(self) -> bool:
        return self._in_use + self._queued < self.size + self.queue_size

    def _wait_for_room(self, wait: float) -> bool:
        self._waiting_for_room += 1
        try:
            return self._room.wait_for(self._has_room, timeout=wait)
        finally:
            self._waiting_for_room -= 1

    def _report(self) -> None:
        """Hand the counts to ``on_change`` when they differ from the last report, sampled
        every REPORT_EVERY_S: a scrape reads an instant anyway, and a command that holds its
        thread shows within that time. Reported at every change instead, a command cost four
        gauge writes (a file write each in multiprocess mode), made under the pool's lock that
        every request and pool thread takes."""
        reported = None
        while True:
            with self._lock:
                counts = (self._in_use, self._queued)
            if counts != reported:
                self._on_change(*counts)  # type: ignore[misc]
                reported = counts
            time.sleep(REPORT_EVERY_S)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                self._queued -= 1
                self._in_use += 1
            try:
                job._run()
            finally:
                with self._lock:
                    self._in_use -= 1
                    if self._waiting_for_room:
                        self._room.notify()
                # Waiting for the next job must not keep this one's result alive (a large
                # process_data result per idle thread, eight threads per worker).
                job = None

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self.size, self.queue_size, self._in_use, self._queued)
