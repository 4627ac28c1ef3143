"""Which executions still have a worker, and the closing of those that do not.

A worker of this host is alive while its process exists (psutil); a worker of another host
sharing the database is alive while it renews its lease (``worker_leases``, a heartbeat every
third of ``lease_s`` from the housekeeping thread). The sweep ends as failed what a dead worker
left open, and as timed out what ran far past its timeout; the master closes a dead worker's
executions at once (gunicorn's child_exit) and every one of its host's on start.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from .clock import isoformat, parse_iso, utcnow
from .outcomes import ExecutionStatus
from .storage import Storage

_OPEN = ExecutionStatus.open()  # bound into "status IN (?, ?)"


class Leases:
    def __init__(self, storage: Storage, host: str | None = None, lease_s: float = 15.0):
        self.storage = storage
        # this host's name in leases (Config.instance): executions it runs carry it, and a
        # worker of another host ends them when this worker's lease lapses
        self.host = host
        self.lease_s = lease_s

    def fail_open_executions(self, reason: str, worker_pid: int | None = None) -> int:
        """Close unfinished executions of one worker (or of every worker) of this host as
        failed; those of other hosts sharing the database are theirs to close."""
        sql = (
            "UPDATE executions SET status = ?, error = ?, finished_at = ? WHERE status IN (?, ?)"
            " AND (host IS NULL OR host = ?)"
        )
        args: list[Any] = [ExecutionStatus.FAILED, reason, isoformat(), *_OPEN, self.host]
        if worker_pid is not None:
            sql += " AND worker_pid = ?"
            args.append(worker_pid)
        return self.storage.execute_write(sql, args).rowcount

    def heartbeat(self) -> None:
        """Renew this worker's lease on the executions it runs (see sweep)."""
        self.storage.execute_write(
            "INSERT INTO worker_leases (host, pid, started_at, renewed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (host, pid) DO UPDATE SET renewed_at = excluded.renewed_at",
            (self.host or "", os.getpid(), isoformat(), time.time()),
        )

    def release(self, pid: int) -> None:
        """Drop a worker's lease once it is gone and its executions are closed."""
        self.storage.execute_write(
            "DELETE FROM worker_leases WHERE host = ? AND pid = ?", (self.host or "", pid)
        )

    def _lapsed(self, host: str, pid: int, leases: dict[tuple[str, int], float]) -> bool:
        """Whether a worker of another host has stopped renewing its lease (its host died,
        or lost the database): its executions will never be finished by it."""
        renewed = leases.get((host, pid))
        return renewed is None or time.time() - renewed > self.lease_s

    def sweep(self, grace_s: float = 5.0) -> int:
        """Close executions whose worker is gone (this host: its process has exited; another
        host: its lease has lapsed) or whose timeout has long passed."""
        rows = self.storage.conn.execute(
            # an approved execution's timeout runs from its approval, not its request
            "SELECT command_id, worker_pid, host, coalesce(decided_at, created_at) AS created_at,"
            " timeout_s FROM executions WHERE status IN (?, ?)",
            _OPEN,
        ).fetchall()
        if not rows:
            return 0
        leases = {
            (row["host"], row["pid"]): row["renewed_at"]
            for row in self.storage.conn.execute("SELECT host, pid, renewed_at FROM worker_leases")
        }
        closed = 0
        now = utcnow()
        for row in rows:
            pid, host = row["worker_pid"], row["host"]
            expired = (now - parse_iso(row["created_at"])).total_seconds() > row[
                "timeout_s"
            ] + grace_s
            local = host is None or host == self.host
            if pid is not None and local and not psutil.pid_exists(pid):
                reason = f"the worker (pid {pid}) running this command exited"
                status = ExecutionStatus.FAILED
            elif pid is not None and not local and self._lapsed(host, pid, leases):
                reason = (
                    f"the worker (pid {pid} on {host}) running this command stopped renewing"
                    f" its lease for {self.lease_s:g} s: its host is down or cut off"
                )
                status = ExecutionStatus.FAILED
            elif expired:
                reason = f"command exceeded its timeout of {row['timeout_s']} s"
                status = ExecutionStatus.TIMEOUT
            else:
                continue
            closed += self.storage.execute_write(
                "UPDATE executions SET status = ?, error = ?, finished_at = ? "
                "WHERE command_id = ? AND status IN (?, ?)",
                (status, reason, isoformat(), row["command_id"], *_OPEN),
            ).rowcount
        return closed
