"""The audit log of executions and the per-plugin statistics, on either storage backend.

A finished execution is one INSERT, committed before the caller gets the answer, so no
completed command goes unrecorded; its plugin's running totals and its audit chain entry
follow within a moment (waygate/totals.py, waygate/auditchain.py), so the statistics add up
over every worker and the chain covers every row. Keys are recorded
by name, never the key itself. Whether an open execution still has a worker is
``waygate.leases``'s question; how long finished ones are kept, ``waygate.retention``'s.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import isoformat
from .errors import RateLimited
from .outcomes import ExecutionStatus, Mode, Outcome
from .storage import Storage, where_clause
from .totals import PendingTotals

if TYPE_CHECKING:
    from .auditchain import AuditChain, Entry

log = logging.getLogger(__name__)


@functools.cache
def _insert_sql(names: tuple[str, ...]) -> str:
    """The INSERT of a row with these columns (record()'s, named once in its dict)."""
    return (
        f"INSERT INTO executions ({', '.join(names)})"  # noqa: S608 # nosec B608 - fixed names
        f" VALUES ({','.join('?' * len(names))})"
    )


_OPEN = ExecutionStatus.open()  # bound into "status IN (?, ?)"
_UNFINISHED = ExecutionStatus.unfinished()  # bound into "status IN (?, ?, ?)"
# An execution is accepted (async, or awaiting approval) only while its key has fewer than the
# cap unfinished. The statuses are literals, as SQLite uses the partial index (m012, its
# condition rewritten by m026) only for its own WHERE, word for word
# (tests/test_execution_path.py checks them against ExecutionStatus.unfinished()).

_ACCEPT_SQL = (
    "INSERT INTO executions (command_id, action, plugin, key_name, key_id, mode, status,"
    " timeout_s, worker_pid, created_at, params, params_hash, client_context,"
    " approval_expires_at, trace_id, host, principal, arguments_hash)"
    " SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?"
    " WHERE (SELECT count(*) FROM executions WHERE key_id IS NOT DISTINCT FROM ? AND"
    " (status = 'pending' OR status = 'running' OR status = 'awaiting_approval')) < ?"
)
# A person with a token has no key: their cap counts their own executions (index of m016).
_ACCEPT_BY_PRINCIPAL_SQL = _ACCEPT_SQL.replace(
    "key_id IS NOT DISTINCT FROM ?", "key_id IS NULL AND principal = ?"
)
ROW_COUNT_SQL = "SELECT n FROM row_counts WHERE name = 'executions'"
_NEWEST_FIRST = "ORDER BY created_at DESC, command_id DESC LIMIT ? OFFSET ?"
EXECUTION_COLUMNS = (
    "command_id, action, plugin, key_name, key_id, mode, status, duration_ms, error, "
    "timeout_s, worker_pid, created_at, started_at, finished_at, params, client_context, "
    "params_hash, "
    "approval_expires_at, decided_by, decided_by_key_id, decided_at, decision_reason, trace_id, "
    "principal, decided_by_principal"
)
_GET_SQL = f"SELECT {EXECUTION_COLUMNS}, result, progress FROM executions WHERE command_id = ?"  # noqa: S608 # nosec B608


class TooManyOpen(RateLimited):
    """A key has as many async executions open as it may."""


@dataclass(frozen=True)
class Execution:
    command_id: str
    action: str
    plugin: str | None
    key_name: str | None
    key_id: int | None
    mode: str
    status: str
    duration_ms: int | None
    error: str | None
    timeout_s: int
    worker_pid: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    # the stored request and its decision: only for commands that need approval
    params: Any = None
    client_context: Any = None
    params_hash: str | None = None
    approval_expires_at: str | None = None
    decided_by: str | None = None
    decided_by_key_id: int | None = None
    decided_at: str | None = None
    decision_reason: str | None = None
    trace_id: str | None = None  # the OpenTelemetry trace of the execution, when traced
    # who asked and who decided (waygate.principals: a person, or a key without an owner)
    principal: str | None = None
    decided_by_principal: str | None = None
    result: Any = None
    progress: dict[str, Any] | None = None  # the latest report of a running async execution

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("result", "progress")}

    def outcome(self) -> Outcome:
        """Its state as the API shows it (an open execution with its latest progress)."""
        is_open = self.status in ExecutionStatus.open()
        return Outcome(
            status=ExecutionStatus(self.status),
            command_id=self.command_id,
            duration_ms=self.duration_ms or 0,
            result=self.result,
            error=self.error,
            timestamp=self.finished_at or self.created_at,
            progress=self.progress if is_open else None,
            approval=self.approval(),
        )

    def approval(self) -> dict[str, Any] | None:
        """The approval part of its response, when it needed approval."""
        if self.params_hash is None:
            return None
        return {
            "required": True,
            "params_hash": self.params_hash,
            "expires_at": self.approval_expires_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "reason": self.decision_reason,
        }


@dataclass(frozen=True)
class StoredRequest:
    """What an execution awaiting approval will run, fixed when it is stored."""

    params_json: str  # canonical JSON
    params_hash: str
    client_context_json: str
    expires_at: str


@dataclass(frozen=True)
class PluginStatistics:
    calls_total: int = 0
    errors_total: int = 0
    avg_duration_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


class AuditLog:
    def __init__(
        self,
        storage: Storage,
        *,
        result_max_bytes: int = 1024**2,
        max_open_per_key: int = 16,
        host: str | None = None,
        chain: AuditChain | None = None,
    ):
        self.storage = storage
        # the tamper-evident chain (waygate.auditchain): every finished execution and event
        # becomes its next entry in the transaction that writes it; None: not chained
        self.chain = chain
        # this host's name (Config.instance): the executions it takes on carry it, so that
        # leases (waygate.leases) tell whose worker runs them
        self.host = host
        self.result_max_bytes = result_max_bytes  # a stored result's most
        self.max_open_per_key = max_open_per_key  # open async executions per key
        # totals of the rows record() writes, folded in by a thread (m022, waygate/totals.py)
        self.totals = PendingTotals(storage)

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        *,
        command_id: str,
        action: str,
        plugin: str | None,
        key_name: str | None,
        key_id: int | None = None,
        mode: str,
        status: str,
        duration_ms: int,
        error: str | None,
        timeout_s: int,
        created_at: str,
        started_at: str | None,
        result: Any = None,
        store_result: bool = False,
        trace_id: str | None = None,
        principal: str | None = None,
        arguments_hash: str | None = None,
    ) -> None:
        """Record a finished execution, committed before this returns (concurrent requests'
        records share a transaction); its plugin's totals and the row count follow within a
        moment (PendingTotals). With the chain, the row and its chain entry are written in
        that transaction, or (a deferred chain) the entry within its delay after the commit."""
        columns = {
            "command_id": command_id,
            "action": action,
            "plugin": plugin,
            "key_name": key_name,
            "key_id": key_id,
            "mode": mode,
            "status": status,
            "duration_ms": duration_ms,
            "error": error,
            "result": _dump(result) if store_result else None,
            "timeout_s": timeout_s,
            "worker_pid": os.getpid(),
            "created_at": created_at,
            "started_at": started_at,
            "finished_at": isoformat(),
            "trace_id": trace_id,
            "principal": principal,
            "arguments_hash": arguments_hash,
        }
        chain = self.chain
        if chain is not None and not chain.deferred:
            written: list[Entry] = []

            def work(tx: Any) -> None:
                written[:] = [chain.insert_execution(tx, columns)]

            self.storage.write_grouped(work)
            chain.published(written)
        else:
            self.storage.execute_grouped(_insert_sql(tuple(columns)), tuple(columns.values()))
            if chain is not None:
                chain.pending()
        self.totals.add(plugin, status, duration_ms)

    def accept(
        self,
        *,
        command_id: str,
        action: str,
        plugin: str,
        key_name: str | None,
        key_id: int | None = None,
        timeout_s: int,
        created_at: str,
        mode: Mode = Mode.ASYNC,
        request: StoredRequest | None = None,
        trace_id: str | None = None,
        principal: str | None = None,
        arguments_hash: str | None = None,
    ) -> None:
        """Record an async execution as pending, before it is queued, or (with ``request``)
        one awaiting approval, held by no worker; TooManyOpen when the key already has
        ``max_open_per_key`` unfinished ones (checked and inserted in one statement under
        one write transaction, so workers and hosts cannot overshoot together)."""
        awaiting = request is not None
        with self.storage.write() as conn:
            inserted = conn.execute(
                _ACCEPT_BY_PRINCIPAL_SQL if key_id is None and principal else _ACCEPT_SQL,
                (
                    command_id,
                    action,
                    plugin,
                    key_name,
                    key_id,
                    mode,
                    ExecutionStatus.AWAITING_APPROVAL if awaiting else ExecutionStatus.PENDING,
                    timeout_s,
                    None if awaiting else os.getpid(),
                    created_at,
                    request.params_json if awaiting else None,
                    request.params_hash if awaiting else None,
                    request.client_context_json if awaiting else None,
                    request.expires_at if awaiting else None,
                    trace_id,
                    None if awaiting else self.host,
                    principal,
                    arguments_hash,
                    principal if key_id is None and principal else key_id,
                    self.max_open_per_key,
                ),
            )
        if inserted.rowcount == 0:
            raise TooManyOpen(
                f"this key already has {self.max_open_per_key} executions pending, running"
                " or awaiting approval; poll them or wait for them to finish",
                {"max_open": self.max_open_per_key},
                retry_after=1,
            )

    def start(self, command_id: str) -> bool:
        """Mark a pending execution running; False if it was already closed (e.g. swept)."""
        cursor = self.storage.execute_write(
            "UPDATE executions SET status = ?, started_at = ? WHERE command_id = ? AND status = ?",
            (ExecutionStatus.RUNNING, isoformat(), command_id, ExecutionStatus.PENDING),
        )
        return cursor.rowcount == 1

    def progress(self, command_id: str, report: dict[str, Any]) -> None:
        """Keep a running async execution's latest progress report."""
        self.storage.execute_write(
            "UPDATE executions SET progress = ? WHERE command_id = ? AND status = ?",
            (json.dumps(report), command_id, ExecutionStatus.RUNNING),
        )

    def finish(
        self,
        command_id: str,
        *,
        status: ExecutionStatus,
        duration_ms: int,
        error: str | None,
        result: Any = None,
    ) -> None:
        """Close an async execution, unless a sweep closed it first."""
        self._close(
            "UPDATE executions SET status = ?, duration_ms = ?, error = ?, result = ?,"
            " finished_at = ? WHERE command_id = ? AND status IN (?, ?)",
            (
                status,
                duration_ms,
                error,
                self._stored(result) if status is ExecutionStatus.SUCCESS else None,
                isoformat(),
                command_id,
                *_OPEN,
            ),
            command_id,
        )

    def _close(self, sql: str, params: tuple, command_id: str) -> None:
        """Finish an execution by ``sql``; with the chain, chained in the same transaction
        (or, deferred, in a batch within its delay)."""
        chain = self.chain
        if chain is None or chain.deferred:
            if self.storage.execute_write(sql, params).rowcount and chain is not None:
                chain.pending()
            return
        written: list[Entry] = []

        def work(tx: Any) -> None:
            chain.lock(tx)
            written[:] = chain.seal(tx, [command_id]) if tx.execute(sql, params).rowcount else []

        self.storage.write_grouped(work)
        chain.published(written)

    # -- closing -----------------------------------------------------------------------------

    def fail_open_executions_by_id(self, command_id: str, reason: str) -> None:
        self._close(
            "UPDATE executions SET status = ?, error = ?, finished_at = ? "
            "WHERE command_id = ? AND status IN (?, ?)",
            (ExecutionStatus.FAILED, reason, isoformat(), command_id, *_OPEN),
            command_id,
        )

    def _stored(self, result: Any) -> str:
        """The result as stored: whole up to ``result_max_bytes``, else a marked preview."""
        dumped = _dump(result)
        if len(dumped) <= self.result_max_bytes:
            return dumped
        return _dump(
            {
                "truncated": True,
                "size_bytes": len(dumped.encode()),
                "max_bytes": self.result_max_bytes,
                "preview": dumped[: min(4096, self.result_max_bytes // 2)],
            }
        )

    # -- reading -----------------------------------------------------------------------------

    def get(self, command_id: str) -> Execution | None:
        row = self.storage.conn.execute(_GET_SQL, (command_id,)).fetchone()
        if row is None:
            return None
        return execution_of(row)

    def query(
        self,
        *,
        action: str | None = None,
        status: str | None = None,
        since: str | None = None,
        offset: int = 0,
        limit: int = 10,
        principal: str | None = None,
    ) -> tuple[list[Execution], int]:
        clause, args = where_clause(
            {"action": action, "status": status, "principal": principal}, "created_at", since
        )
        conn = self.storage.conn
        # Only fixed column names are spliced in; every value is a bound parameter.
        if clause:
            count_sql = f"SELECT count(*) FROM executions{clause}"  # noqa: S608 # nosec B608
            total = conn.execute(count_sql, args).fetchone()[0]
        else:  # kept by triggers and folded totals (m006, m022): no count over every row
            self.totals.catch_up()
            total = conn.execute(ROW_COUNT_SQL).fetchone()[0]
        page_sql = f"SELECT {EXECUTION_COLUMNS} FROM executions{clause} {_NEWEST_FIRST}"  # noqa: S608 # nosec B608
        rows = conn.execute(page_sql, [*args, limit, offset]).fetchall()
        return [execution_of(r) for r in rows], total

    def page(
        self,
        *,
        action: str | None = None,
        status: str | None = None,
        key_name: str | None = None,
        key_id: int | None = None,
        principal: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Execution], str | None]:
        """Executions newest first, by keyset: those older than the execution ``before``
        (a command id; the next page starts after the last row of this one), so a deep page
        costs what the first does. Returns the rows and the cursor of the next page (None at
        the end). Each filter is an index's leading column (status, action, key name)."""
        where, args = [], []
        for column, value in (("action", action), ("status", status), ("key_name", key_name)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if key_id is not None:
            where.append("key_id = ?")
            args.append(key_id)
        if principal:
            where.append("principal = ?")
            args.append(principal)
        if since:
            where.append("created_at >= ?")
            args.append(since)
        if until:
            where.append("created_at < ?")
            args.append(until)
        if before:
            cursor = self.storage.conn.execute(
                "SELECT created_at FROM executions WHERE command_id = ?", (before,)
            ).fetchone()
            if cursor is not None:
                where.append("(created_at < ? OR (created_at = ? AND command_id < ?))")
                args += [cursor[0], cursor[0], before]
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self.storage.conn.execute(
            f"SELECT {EXECUTION_COLUMNS} FROM executions{clause}"  # noqa: S608 # nosec B608 - fixed names
            " ORDER BY created_at DESC, command_id DESC LIMIT ?",
            [*args, limit + 1],
        ).fetchall()
        listed = [execution_of(row) for row in rows[:limit]]
        return listed, (listed[-1].command_id if len(rows) > limit else None)

    def count_since(self, since: str, statuses: tuple[str, ...] = ()) -> int:
        """Executions created since ``since`` (of the given statuses): the recent error rate."""
        sql = "SELECT count(*) FROM executions WHERE created_at >= ?"
        args: list[Any] = [since]
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += statuses
        return self.storage.conn.execute(sql, args).fetchone()[0]

    def statistics(self, plugin: str) -> PluginStatistics:
        self.totals.catch_up()  # this process's own rows count at once
        row = self.storage.conn.execute(
            "SELECT calls_total, errors_total, duration_ms_total FROM plugin_stats "
            "WHERE plugin = ?",
            (plugin,),
        ).fetchone()
        if row is None or not row["calls_total"]:
            return PluginStatistics()
        return PluginStatistics(
            row["calls_total"],
            row["errors_total"],
            round(row["duration_ms_total"] / row["calls_total"]),
        )


def execution_of(row: Any) -> Execution:
    data = dict(row)
    for column in ("params", "client_context", "result", "progress"):
        if data.get(column) is not None:
            data[column] = json.loads(data[column])
    return Execution(**data)


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))
