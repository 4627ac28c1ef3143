"""How long executions are kept: past the retention, and while the database is over its
budget, the oldest finished ones are deleted in small batches (open executions never are).
With the audit chain, chained executions go as whole prefixes of the chain, so that it stays
verifiable from the checkpoint kept at the end of what went (waygate/auditchain.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from .audit import ROW_COUNT_SQL
from .auditchain import AuditChain
from .clock import isoformat, utcnow
from .outcomes import ExecutionStatus
from .storage import Storage

_UNFINISHED = ExecutionStatus.unfinished()  # bound into "status IN (?, ?, ?)"


class Retention:
    def __init__(
        self,
        storage: Storage,
        retention: timedelta = timedelta(days=7),
        max_bytes: int = 1024**3,
        chain: AuditChain | None = None,
        catch_up: Callable[[], None] | None = None,
    ):
        self.storage = storage
        # folds this process's pending audit totals (waygate/totals.py) before the row count
        # is read: a stale count made the budget's batches one row each
        self._catch_up = catch_up or (lambda: None)
        self.retention = retention
        self.max_bytes = max_bytes  # the database's budget, kept by prune_to_budget()
        # with the audit chain, chained executions go only as whole prefixes of the chain,
        # ending at a checkpoint kept for verification to start from (AuditChain.prune_prefix)
        self.chain = chain

    def prune_to_budget(self, batch: int = 500) -> int:
        """Delete the oldest finished executions while the database is over its budget (on
        SQLite; PostgreSQL cannot tell its live bytes cheaply, and keeps the retention)."""
        deleted = 0
        while (used := self.storage.used_bytes()) is not None and used > self.max_bytes:
            # as many rows as the excess is worth, at the table's average row size
            self._catch_up()
            rows = max(1, self.storage.conn.execute(ROW_COUNT_SQL).fetchone()[0])
            wanted = min(batch, int((used - self.max_bytes) / (used / rows)) + 1)
            n = self._delete(
                "DELETE FROM executions WHERE command_id IN (SELECT command_id FROM executions "  # noqa: S608 # nosec B608 - a fixed clause
                f"WHERE status NOT IN (?, ?, ?){self._unchained} ORDER BY created_at LIMIT ?)",
                (*_UNFINISHED, wanted),
            )
            if n == 0 and self.chain is not None:  # then the chain's oldest, in its order
                end = self.chain.prunable_prefix(executions=wanted)
                n = self.chain.prune_prefix(end) if end is not None else 0
            if n == 0:
                break  # only open executions left: nothing more to give back
            deleted += n
        return deleted

    def prune(self, batch: int = 500, pause_s: float = 0.01) -> int:
        """Delete rows older than the retention, in small batches so writers never stall."""
        cutoff = isoformat(utcnow() - self.retention)
        deleted = 0
        if self.chain is not None:
            end = self.chain.prunable_prefix(cutoff=cutoff)
            if end is not None:
                deleted += self.chain.prune_prefix(end, batch, pause_s)
        while True:
            n = self._delete(
                "DELETE FROM executions WHERE command_id IN (SELECT command_id FROM executions "  # noqa: S608 # nosec B608 - a fixed clause
                f"WHERE created_at < ? AND status NOT IN (?, ?, ?){self._unchained} LIMIT ?)",
                (cutoff, *_UNFINISHED, batch),
            )
            deleted += n
            if n < batch:
                return deleted
            time.sleep(pause_s)

    @property
    def _unchained(self) -> str:
        """With the chain, the plain deletes take only unchained rows that finished before it
        began; chained ones go with their prefix of the chain, and those finished since it
        began but not chained yet (a deferred batch's, the sweep's) wait for their entry, or
        they would vanish without a trace in the chain or the audit file."""
        if self.chain is None:
            return ""
        return (
            " AND chain_seq IS NULL AND finished_at <"
            " (SELECT started_at FROM audit_chain_head WHERE id = 1)"
        )

    def _delete(self, sql: str, params: tuple) -> int:
        """A plain delete; with the chain, after locking its head, as every writer of rows
        the chain's batches number does (waygate/auditchain.py): otherwise a batch numbering
        the same old rows in another order deadlocks with it on PostgreSQL."""
        if self.chain is None:
            return self.storage.execute_write(sql, params).rowcount
        with self.storage.write() as tx:
            self.chain.lock(tx)
            return tx.execute(sql, params).rowcount
