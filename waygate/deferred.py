"""Work a request leaves for a moment later: one thread per process runs it, gathering what
the requests of that moment left into one run.

``DeferredRun(owner, "method", after_s=...)``: ``due()`` (cheap, from any request thread) asks
for ``owner.method()`` to run on the thread, ``after_s`` after the first ``due()`` since the last
run, so one run (one transaction) takes everything the requests meanwhile left. The method
says whether it succeeded; a failed run is retried ``retry_s`` later, until it succeeds or
the owner says it is closed for good (``owner.closed``). The thread holds its owner weakly: it
ends with it. After a fork the child starts its own thread on its first ``due()``. At the
interpreter's exit (a graceful stop), a process that asked for runs makes a last one, so what
it left is not lost with it.

Used by the audit's folded totals (waygate/totals.py) and the audit chain's batches
(waygate/auditchain.py).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any

from .forksafe import reset_after_fork

log = logging.getLogger(__name__)
IDLE_CHECK_S = 5.0  # how often an idle thread looks whether its owner is gone


class DeferredRun:
    def __init__(self, owner: Any, method: str, *, after_s: float, retry_s: float, name: str):
        self._owner = weakref.ref(owner)
        self._method = method
        self.after_s = after_s
        self.retry_s = retry_s
        self._name = name
        self._forked()
        reset_after_fork(self, DeferredRun._forked)
        atexit.register(_last_run, weakref.ref(self))

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> None:
        """Run the owner's method soon (at once if nothing is pending; else with the run
        already coming)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=_run_forever, args=(weakref.ref(self),), name=self._name,
                        daemon=True,
                    )  # fmt: skip
                    self._thread.start()
        if not self._due.is_set():
            self._due.set()

    def _run(self) -> bool | None:
        """One run: whether it succeeded; None when the owner is gone or closed for good
        (the thread ends)."""
        owner = self._owner()
        if owner is None:
            return None
        if getattr(owner, self._method)():
            return True
        return None if getattr(owner, "closed", False) else False


def _last_run(ref: weakref.ref) -> None:
    deferred = ref()
    if deferred is not None and deferred._thread is not None:  # this process asked for runs
        try:
            deferred._run()
        except Exception:  # the process ends regardless; say what was left
            log.exception("%s: the last run at exit failed", deferred._name)


def _run_forever(ref: weakref.ref) -> None:
    while True:
        deferred = ref()
        if deferred is None:
            return
        due = deferred._due
        del deferred  # not kept alive by this thread while it waits
        if not due.wait(timeout=IDLE_CHECK_S):
            continue
        deferred = ref()
        if deferred is None:
            return
        time.sleep(deferred.after_s)  # gather the requests of the next moment into this run
        due.clear()
        try:
            outcome = deferred._run()
        except Exception:  # a bug must not end this process's runs for good: retried
            log.exception("%s: a deferred run failed; retrying", deferred._name)
            outcome = False
        if outcome is None:
            return
        if not outcome:
            time.sleep(deferred.retry_s)
            due.set()
        del deferred
