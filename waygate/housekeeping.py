"""Background upkeep in each worker: close executions left behind by dead workers or past
their timeout, and prune the audit log beyond its retention, in small batches."""

from __future__ import annotations

import logging
import os
import threading
import time

from .audit import AuditLog

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0


class Housekeeper:
    def __init__(self, audit: AuditLog, interval_s: float):
        self.audit = audit
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

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                self.audit.sweep()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    pruned = self.audit.prune()
                    if pruned:
                        log.info("pruned %d audit rows older than the retention", pruned)
            except Exception:  # keep the thread alive; the failure is logged and retried
                log.exception("housekeeping failed")
