"""The approval steps in storage: deciding on and expiring held executions, counting them,
and their trail (``execution_events``); the canonical params whose hash a stored request is
checked by.

Written in the SQL both backends read (waygate.storage.dialect), on the executions table the
audit log owns: each step is one write transaction with its event row.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from ..audit import EXECUTION_COLUMNS, AuditLog, Execution, execution_of
from ..clock import isoformat
from ..outcomes import ApprovalStep, ExecutionStatus


@dataclass(frozen=True)
class Event:
    """One step of an execution's approval trail."""

    command_id: str
    event: str  # an ApprovalStep
    key_id: int | None
    key_name: str | None
    reason: str | None
    worker_pid: int | None
    at: str
    principal: str | None = None  # who acted (waygate.principals)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def canonical(value: Any) -> str:
    """The canonical JSON of a request's params: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_hash(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


class ApprovalRecords:
    def __init__(self, audit: AuditLog):
        self.audit = audit
        self.storage = audit.storage

    def decide(
        self,
        command_id: str,
        *,
        approve: bool,
        key_id: int | None,
        key_name: str | None,
        reason: str | None,
        principal: str | None = None,
    ) -> Execution | None:
        """Decide on an execution awaiting approval and not past its expiry, with its event,
        in one transaction: approved, it becomes pending in this worker (the caller queues
        it); denied, it ends. None when it is not awaiting approval (decided, expired, or
        never asked for it): one decision wins however many are sent at once."""
        now = isoformat()
        if approve:
            sets, args = (
                "status = ?, worker_pid = ?, host = ?",
                [ExecutionStatus.PENDING, os.getpid(), self.audit.host],
            )
        else:
            denial = f"denied by {key_name}" + (f": {reason}" if reason else "")
            sets, args = (
                "status = ?, finished_at = ?, error = ?",
                [ExecutionStatus.DENIED, now, denial],
            )
        written: list = []
        with self.storage.write() as conn:
            self._lock_chain(conn)
            decided = conn.execute(
                f"UPDATE executions SET {sets}, decided_by = ?, decided_by_key_id = ?,"  # noqa: S608 # nosec B608
                " decided_by_principal = ?, decided_at = ?, decision_reason = ?"
                " WHERE command_id = ? AND status = ? AND approval_expires_at > ?",
                [
                    *args,
                    key_name,
                    key_id,
                    principal,
                    now,
                    reason,
                    command_id,
                    ExecutionStatus.AWAITING_APPROVAL,
                    now,
                ],
            ).rowcount
            if decided:
                written += self._chained_event(
                    conn,
                    command_id,
                    ApprovalStep.APPROVED if approve else ApprovalStep.DENIED,
                    key_id,
                    key_name,
                    reason,
                    now,
                    principal,
                )
                if not approve and self.audit.chain is not None:
                    written += self.audit.chain.seal(conn, [command_id])
        self._published(written)
        return self.audit.get(command_id) if decided else None

    def withdraw(
        self, command_id: str, key_id: int | None, key_name: str | None, principal: str | None
    ) -> bool:
        """The requester takes its request back (an MCP task cancelled): denied, with the
        requester as the one who decided and its event, in one transaction; False when it
        is not awaiting approval any more (decided or expired first: that stands)."""
        now = isoformat()
        written: list = []
        with self.storage.write() as conn:
            self._lock_chain(conn)
            withdrawn = conn.execute(
                "UPDATE executions SET status = ?, finished_at = ?, error = ?, decided_by = ?,"
                " decided_by_key_id = ?, decided_by_principal = ?, decided_at = ?,"
                " decision_reason = ? WHERE command_id = ? AND status = ?",
                (
                    ExecutionStatus.DENIED,
                    now,
                    f"denied: {WITHDRAWN}",
                    key_name,
                    key_id,
                    principal,
                    now,
                    WITHDRAWN,
                    command_id,
                    ExecutionStatus.AWAITING_APPROVAL,
                ),
            ).rowcount
            if withdrawn:
                written += self._chained_event(
                    conn,
                    command_id,
                    ApprovalStep.DENIED,
                    key_id,
                    key_name,
                    WITHDRAWN,
                    now,
                    principal,
                )
                if self.audit.chain is not None:
                    written += self.audit.chain.seal(conn, [command_id])
        self._published(written)
        return bool(withdrawn)

    def _lock_chain(self, conn: Any) -> None:
        if self.audit.chain is not None:
            self.audit.chain.lock(conn)

    def _chained_event(self, conn: Any, *args: Any) -> list:
        """An event row, as the chain's next entry when there is a chain."""
        return _insert_event(conn, *args, chain=self.audit.chain)

    def _published(self, written: list) -> None:
        if self.audit.chain is not None:
            self.audit.chain.published(written)

    def expire(self) -> list[str]:
        """End executions whose approval time has passed as expired; their ids."""
        now = isoformat()
        due = self.storage.conn.execute(  # a read through the partial index: cheap when none
            "SELECT 1 FROM executions WHERE status = ? AND approval_expires_at <= ? LIMIT 1",
            (ExecutionStatus.AWAITING_APPROVAL, now),
        ).fetchone()
        if due is None:
            return []
        written: list = []
        with self.storage.write() as conn:
            self._lock_chain(conn)
            rows = conn.execute(
                "UPDATE executions SET status = ?, error = ?, finished_at = ? WHERE status = ?"
                " AND approval_expires_at <= ? RETURNING command_id",
                (
                    ExecutionStatus.EXPIRED,
                    "nobody approved it in time",
                    now,
                    ExecutionStatus.AWAITING_APPROVAL,
                    now,
                ),
            ).fetchall()
            for row in rows:
                written += self._chained_event(
                    conn, row[0], ApprovalStep.EXPIRED, None, None, None, now
                )
            if self.audit.chain is not None:
                written += self.audit.chain.seal(conn, [row[0] for row in rows])
        self._published(written)
        return [row[0] for row in rows]

    def recently_decided(self, limit: int = 10) -> list[Execution]:
        """The executions decided (approved, denied) or expired most recently, newest first:
        read from the events' own order, never a scan of the executions."""
        rows = self.storage.conn.execute(
            "SELECT command_id FROM execution_events WHERE event IN (?, ?, ?)"
            " ORDER BY id DESC LIMIT ?",
            (ApprovalStep.APPROVED, ApprovalStep.DENIED, ApprovalStep.EXPIRED, limit),
        ).fetchall()
        ids = list(dict.fromkeys(row[0] for row in rows))  # an id once, at its newest event
        if not ids:
            return []
        found = {
            row["command_id"]: execution_of(row)
            for row in self.storage.conn.execute(
                f"SELECT {EXECUTION_COLUMNS} FROM executions"  # noqa: S608 # nosec B608 - fixed names
                f" WHERE command_id IN ({', '.join('?' * len(ids))})",
                ids,
            ).fetchall()
        }
        return [found[command_id] for command_id in ids if command_id in found]

    def count_awaiting(self) -> int:
        return self.storage.conn.execute(
            "SELECT count(*) FROM executions WHERE status = ?",
            (ExecutionStatus.AWAITING_APPROVAL,),
        ).fetchone()[0]

    def add_event(
        self,
        command_id: str,
        event: str,
        key_id: int | None = None,
        key_name: str | None = None,
        reason: str | None = None,
        principal: str | None = None,
    ) -> None:
        with self.storage.write() as conn:
            self._lock_chain(conn)
            written = self._chained_event(
                conn, command_id, event, key_id, key_name, reason, isoformat(), principal
            )
        self._published(written)

    def events(self, command_id: str) -> list[Event]:
        rows = self.storage.conn.execute(
            "SELECT command_id, event, key_id, key_name, reason, worker_pid, at, principal"
            " FROM execution_events WHERE command_id = ? ORDER BY id",
            (command_id,),
        ).fetchall()
        return [Event(**dict(row)) for row in rows]


def _insert_event(
    conn: Any,
    command_id: str,
    event: str,
    key_id: int | None,
    key_name: str | None,
    reason: str | None,
    at: str,
    principal: str | None = None,
    chain: Any = None,
) -> list:
    """Insert an event row; with ``chain`` (an AuditChain) as its next entry, returned."""
    if chain is not None:
        columns = {
            "command_id": command_id,
            "event": event,
            "key_id": key_id,
            "key_name": key_name,
            "reason": reason,
            "worker_pid": os.getpid(),
            "at": at,
            "principal": principal,
        }
        return [chain.insert_event(conn, columns)]
    conn.execute(
        "INSERT INTO execution_events (command_id, event, key_id, key_name, reason, worker_pid,"
        " at, principal) VALUES (?,?,?,?,?,?,?,?)",
        (command_id, event, key_id, key_name, reason, os.getpid(), at, principal),
    )
    return []


REQUESTER_REVOKED = "requester key revoked"
WITHDRAWN = "withdrawn by the requester"


def deny_requests_of_key(
    conn: Any, key_id: int | None, actor_id: int | None, actor_name: str, at: str
) -> list[str]:
    """Deny every execution of ``key_id`` still awaiting approval, with its event, on the
    caller's write transaction (a key's revocation: the two commit together, so no approval
    can slip in between). Returns the command ids denied."""
    rows = conn.execute(
        "UPDATE executions SET status = ?, finished_at = ?, error = ?, decided_by = ?,"
        " decided_by_key_id = ?, decided_at = ?, decision_reason = ?"
        " WHERE key_id = ? AND status = ? RETURNING command_id",
        (
            ExecutionStatus.DENIED,
            at,
            f"denied: {REQUESTER_REVOKED}",
            actor_name,
            actor_id,
            at,
            REQUESTER_REVOKED,
            key_id,
            ExecutionStatus.AWAITING_APPROVAL,
        ),
    ).fetchall()
    for row in rows:
        _insert_event(
            conn, row[0], ApprovalStep.DENIED, actor_id, actor_name, REQUESTER_REVOKED, at
        )
    return [row[0] for row in rows]
