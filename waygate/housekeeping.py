"""Background upkeep in each worker: close executions left behind by dead workers or past
their timeout, end approvals nobody decided on in time, and prune the audit log and the error
log beyond the retention, in small batches."""

from __future__ import annotations

import logging
import threading
import time

from .approvals import Approvals
from .audit import AuditLog
from .errorlog import ErrorLog
from .forksafe import reset_after_fork

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0


class Housekeeper:
    def __init__(
        self,
        audit: AuditLog,
        errors: ErrorLog,
        interval_s: float,
        approvals: Approvals | None = None,
    ):
        self.audit = audit
        self.approvals = approvals
        self.errors = errors
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._forked()
        reset_after_fork(self, Housekeeper._forked)

    def _forked(self) -> None:
        self._started = False  # a forked child has no housekeeping thread until start()

    def start(self) -> None:
        """Start this process's thread (once per process)."""
        if not self.interval_s or self._started:
            return
        self._started = True
        threading.Thread(target=self._run, name="waygate-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self, prune: bool) -> None:
        self.audit.sweep()
        if self.approvals is not None:
            self.approvals.expire()  # requests nobody decided on in time end expired
            self.approvals.refresh_gauge()
        if prune:
            executions = self.audit.prune()
            errors = self.errors.prune(self.audit.retention)
            if executions or errors:
                log.info("pruned %d audit and %d error rows past the retention", executions, errors)
        over = self.audit.prune_to_budget()  # cheap when under budget: three PRAGMAs
        if over:
            log.warning(
                "pruned the %d oldest audit rows: the database was over its budget of %d bytes",
                over,
                self.audit.max_bytes,
            )

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
