"""How long executions are kept: past the retention, and while the database is over its
budget, the oldest finished ones are deleted in small batches (open executions never are).
"""

from __future__ import annotations

import time
from datetime import timedelta

from .audit import ROW_COUNT_SQL
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
    ):
        self.storage = storage
        self.retention = retention
        self.max_bytes = max_bytes  # the database's budget, kept by prune_to_budget()

    def prune_to_budget(self, batch: int = 500) -> int:
        """Delete the oldest finished executions while the database is over its budget (on
        SQLite; PostgreSQL cannot tell its live bytes cheaply, and keeps the retention)."""
        deleted = 0
        while (used := self.storage.used_bytes()) is not None and used > self.max_bytes:
            # as many rows as the excess is worth, at the table's average row size
            rows = max(1, self.storage.conn.execute(ROW_COUNT_SQL).fetchone()[0])
            wanted = min(batch, int((used - self.max_bytes) / (used / rows)) + 1)
            n = self.storage.execute_write(
                "DELETE FROM executions WHERE command_id IN (SELECT command_id FROM executions "
                "WHERE status NOT IN (?, ?, ?) ORDER BY created_at LIMIT ?)",
                (*_UNFINISHED, wanted),
            ).rowcount
            if n == 0:
                break  # only open executions left: nothing more to give back
            deleted += n
        return deleted

    def prune(self, batch: int = 500, pause_s: float = 0.01) -> int:
        """Delete rows older than the retention, in small batches so writers never stall."""
        cutoff = isoformat(utcnow() - self.retention)
        deleted = 0
        while True:
            n = self.storage.execute_write(
                "DELETE FROM executions WHERE command_id IN (SELECT command_id FROM executions "
                "WHERE created_at < ? AND status NOT IN (?, ?, ?) LIMIT ?)",
                (cutoff, *_UNFINISHED, batch),
            ).rowcount
            deleted += n
            if n < batch:
                return deleted
            time.sleep(pause_s)
