"""Background upkeep in each worker: close executions left behind by dead workers or past
their timeout, and prune the audit log and the error log beyond the retention, in small
batches."""

from __future__ import annotations

import logging
import os
import threading
import time

from .audit import AuditLog
from .errorlog import ErrorLog

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0


class Housekeeper:
    def __init__(self, audit: AuditLog, errors: ErrorLog, interval_s: float):
        self.audit = audit
        self.errors = errors
        self.interval_s = interval_s
        self._pid: int | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start this process's thread (once per process; made after fork)."""
        if not self.interval_s or self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="waygate-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self, prune: bool) -> None:
        self.audit.sweep()
        if prune:
            executions = self.audit.prune()
            errors = self.errors.prune(self.audit.retention)
            if executions or errors:
                log.info("pruned %d audit and %d error rows past the retention", executions, errors)

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                due = time.monotonic() - last_prune > PRUNE_EVERY_S
                if due:
                    last_prune = time.monotonic()
                self.run_once(prune=due)
            except Exception:  # keep the thread alive; the failure is logged and retried
                log.exception("housekeeping failed")
