"""Service lifecycle: when the service started, and whether this worker is ready.

The start time belongs to the service, not to a worker: the gunicorn master records it in the
environment before forking (see gunicorn.conf.py), so every worker, including replacements,
reports the same uptime. Readiness is per worker, because each worker gets its own SIGTERM.
"""

from __future__ import annotations

import os
import threading
import time

STARTED_AT_ENV = "WAYGATE_SERVICE_STARTED_AT"


def mark_service_start(now: float | None = None) -> float:
    """Record the service start (the gunicorn master calls this once, before forking)."""
    started = time.time() if now is None else now
    os.environ[STARTED_AT_ENV] = repr(started)
    return started


def service_started_at() -> float:
    """The recorded start; a process not started by Waygate's gunicorn master records its own."""
    raw = os.environ.get(STARTED_AT_ENV)
    try:
        return float(raw) if raw else mark_service_start()
    except ValueError:
        return mark_service_start()


def uptime_seconds() -> int:
    return max(0, int(time.time() - service_started_at()))


class Readiness:
    STARTING, READY, DRAINING = "starting", "ready", "draining"

    def __init__(self) -> None:
        self._state = self.STARTING
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    def mark_ready(self) -> None:
        with self._lock:
            if self._state == self.STARTING:
                self._state = self.READY

    def begin_draining(self) -> None:
        with self._lock:
            self._state = self.DRAINING

    @property
    def is_ready(self) -> bool:
        return self._state == self.READY
