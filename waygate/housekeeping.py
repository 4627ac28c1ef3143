"""Background upkeep in each worker: renew the worker's lease on its executions, close
executions left behind by dead workers (of this host or, past their lease, of another) or past
their timeout, end approvals nobody decided on in time, keep the audit chain (chain what
finished outside it, sign checkpoints, verify a stretch a round), and prune the audit log and
the error log beyond the retention, in small batches, and idempotency keys past their window."""

from __future__ import annotations

import logging
import threading
import time

from .approvals.workflow import Approvals
from .auditchain import AuditChain, ChainMoved
from .errorlog import ErrorLog
from .forksafe import reset_after_fork
from .idempotency import Idempotency
from .leases import Leases
from .retention import Retention
from .storage import UnavailableError

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0


class Housekeeper:
    def __init__(
        self,
        leases: Leases,
        retention: Retention,
        errors: ErrorLog,
        interval_s: float,
        approvals: Approvals | None = None,
        idempotency: Idempotency | None = None,
        chain: AuditChain | None = None,
        verify_entries: int = 0,
    ):
        self.leases = leases
        self.chain = chain
        self.verify_entries = verify_entries  # audit chain entries verified a round
        self.retention = retention
        self.approvals = approvals
        self.idempotency = idempotency  # its keys past their window are forgotten
        self.errors = errors
        self.interval_s = interval_s
        # leases matter where hosts share the database; one host's own workers are checked
        # by pid (see Leases.sweep)
        self.renews_lease = leases.storage.shared_by_hosts
        self._stop = threading.Event()
        self._forked()
        reset_after_fork(self, Housekeeper._forked)

    def _forked(self) -> None:
        self._started = False  # a forked child has no housekeeping thread until start()

    def start(self) -> None:
        """Start this process's thread (once per process). On a database several hosts share
        it runs even with housekeeping off (interval 0): the lease must be renewed, or other
        hosts end this worker's executions. The first renewal is made before this returns."""
        if self._started or not (self.interval_s or self.renews_lease):
            return
        if self.renews_lease:
            self._renew()
        self._started = True
        threading.Thread(target=self._run, name="waygate-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self, prune: bool) -> None:
        self.leases.sweep()
        if self.approvals is not None:
            self.approvals.expire()  # requests nobody decided on in time end expired
            self.approvals.refresh_gauge()
        if self.chain is not None:
            self.keep_chain()
        if prune:
            executions = self.retention.prune()
            errors = self.errors.prune(self.retention.retention)
            if self.idempotency is not None:
                self.idempotency.prune()
            if executions or errors:
                log.info("pruned %d audit and %d error rows past the retention", executions, errors)
        over = self.retention.prune_to_budget()  # cheap when under budget: three PRAGMAs
        if over:
            log.warning(
                "pruned the %d oldest audit rows: the database was over its budget of %d bytes",
                over,
                self.retention.max_bytes,
            )

    def keep_chain(self) -> None:
        """Chain what finished outside a chained transaction (the sweep's closings, a
        revocation's denials, rows from before the chain), sign a checkpoint when one is
        due, and verify the next stretch of the chain."""
        chain = self.chain
        assert chain is not None  # noqa: S101 # nosec B101 - the caller checked
        try:
            chain.seal_unchained()
        except ChainMoved as exc:  # rows went meanwhile (retention): chained next round
            log.info("audit chain: %s", exc)
        chain.checkpoint()
        if self.verify_entries:
            chain.watch(self.verify_entries)

    def _renew(self) -> None:
        try:
            self.leases.heartbeat()
        except Exception as exc:  # the database is away: retried at the next tick
            log.warning("could not renew this worker's execution lease: %s", exc)

    def _run(self) -> None:
        beat_every = self.leases.lease_s / 3
        tick = min(beat_every, self.interval_s) if self.interval_s else beat_every
        last_prune, last_beat = 0.0, time.monotonic()
        last_run = time.monotonic()  # the first upkeep one interval after start, as before
        while True:
            now = time.monotonic()
            if self.renews_lease and now - last_beat >= beat_every:
                last_beat = now
                self._renew()
            if self.interval_s and now - last_run >= self.interval_s:
                last_run = now
                try:
                    due = now - last_prune > PRUNE_EVERY_S
                    if due:
                        last_prune = now
                    self.run_once(prune=due)
                except UnavailableError as exc:  # an outage, said once a round, no traceback
                    log.warning("housekeeping skipped: the database does not answer (%s)", exc)
                except Exception:  # keep the thread alive; the failure is logged and retried
                    log.exception("housekeeping failed")
            if self._stop.wait(tick):
                return
