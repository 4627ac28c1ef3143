"""The audit's totals for rows written finished, kept in memory and folded into the database.

A finished execution's row (``AuditLog.record``, every sync, batch and MCP call) used to count
itself into ``row_counts`` and ``plugin_stats`` by trigger: two more statements in every audit
INSERT (migration m022 says what they cost). This process now adds the row to its pending
totals after the row's commit and a thread of its own folds them into the database in one
transaction, FOLD_AFTER_S after the first row it has not folded (one transaction for all the
rows meanwhile); a read of the totals (``AuditLog.statistics``, an unfiltered list's total)
folds this process's first. So the totals are exact at rest, this process's own at once, and
another worker's or host's within about FOLD_AFTER_S plus a commit (under a second).
A graceful stop folds what is left; a worker killed by SIGKILL loses its unfolded rows from
the totals (not from the audit: the rows are committed before their answers leave).
"""

from __future__ import annotations

import logging
import threading

from .deferred import DeferredRun
from .forksafe import reset_after_fork
from .storage import DatabaseError

log = logging.getLogger(__name__)

FOLD_AFTER_S = 0.2
RETRY_AFTER_S = 1.0
# statuses of rows still open: their plugin's totals count when they finish (trigger, m004)
_OPEN = frozenset(("pending", "running", "awaiting_approval"))


class PendingTotals:
    """This process's rows not yet in ``row_counts`` and ``plugin_stats``."""

    def __init__(self, storage):
        self.storage = storage
        self._folds = DeferredRun(
            self,
            "_fold_quietly",
            after_s=FOLD_AFTER_S,
            retry_s=RETRY_AFTER_S,
            name="waygate-totals",
        )
        self._forked()
        reset_after_fork(self, PendingTotals._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._rows = 0
        self._plugins: dict[str, list[int]] = {}  # plugin -> [calls, errors, duration_ms]

    def add(self, plugin: str | None, status: str, duration_ms: int | None) -> None:
        """A finished row, committed: count it (what trigger m004/m006 did per row)."""
        with self._lock:
            self._rows += 1
            if plugin is not None and status not in _OPEN:
                totals = self._plugins.get(plugin)
                if totals is None:
                    totals = self._plugins[plugin] = [0, 0, 0]
                totals[0] += 1
                # a round that asked its caller for input neither failed nor succeeded
                totals[1] += status not in ("success", "input_required")
                totals[2] += duration_ms or 0
        self._folds.due()

    @property
    def closed(self) -> bool:
        """Closed for good (the app's end): nothing will take pending rows now."""
        return getattr(self.storage, "closed", False)

    def catch_up(self) -> None:
        """Fold what is pending now (a reader of the totals sees this process's rows)."""
        if self._rows:
            self._fold_quietly()

    def fold(self) -> None:
        """Everything pending into the database, in one transaction; kept for the next fold
        when the database refuses (raises)."""
        with self._fold_lock:
            with self._lock:
                rows, plugins = self._rows, self._plugins
                self._rows, self._plugins = 0, {}
            if not rows:
                return
            try:
                with self.storage.write() as conn:
                    conn.execute(
                        "UPDATE row_counts SET n = n + ? WHERE name = 'executions'", (rows,)
                    )
                    for plugin, (calls, errors, duration) in plugins.items():
                        conn.execute(
                            "INSERT INTO plugin_stats (plugin, calls_total, errors_total,"
                            " duration_ms_total) VALUES (?, ?, ?, ?) ON CONFLICT (plugin) DO"
                            " UPDATE SET calls_total = plugin_stats.calls_total + ?,"
                            " errors_total = plugin_stats.errors_total + ?,"
                            " duration_ms_total = plugin_stats.duration_ms_total + ?",
                            (plugin, calls, errors, duration, calls, errors, duration),
                        )
            except BaseException:
                self._restore(rows, plugins)
                raise

    def _restore(self, rows: int, plugins: dict[str, list[int]]) -> None:
        with self._lock:
            self._rows += rows
            for plugin, (calls, errors, duration) in plugins.items():
                totals = self._plugins.setdefault(plugin, [0, 0, 0])
                totals[0] += calls
                totals[1] += errors
                totals[2] += duration

    def _fold_quietly(self) -> bool:
        try:
            self.fold()
            return True
        except DatabaseError as exc:
            if not self.closed:
                log.warning("audit totals not folded yet, retrying: %s", exc)
            return False
