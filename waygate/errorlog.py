"""The persisted error log behind /diagnostics/errors, shared by every worker.

A logging handler stores each ERROR (and worse) record of Waygate's loggers; the web layer
also stores each 5xx answer that no log record covered. Rows carry a code, a message and a
small context (request id, method, route, command id): never headers, keys or bodies.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import logs
from .clock import isoformat, utcnow
from .storage import DatabaseError, Storage, UnavailableError

MAX_MESSAGE = 2000
_ALL, _SINCE = "", "WHERE timestamp >= ?"
_COUNT_SQL = {
    _ALL: "SELECT n FROM row_counts WHERE name = 'errors'",  # kept by triggers (m006)
    _SINCE: "SELECT count(*) FROM errors WHERE timestamp >= ?",
}
_PAGE_SQL = {
    w: "SELECT timestamp, level, code, message, context, request_id, worker_pid FROM errors "  # noqa: S608 # nosec B608
    f"{w} ORDER BY timestamp DESC, id DESC LIMIT ? OFFSET ?"
    for w in (_ALL, _SINCE)
}


@dataclass(frozen=True)
class ErrorRecord:
    timestamp: str
    level: str
    code: str
    message: str
    context: dict[str, Any]
    request_id: str | None
    worker_pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class ErrorLog:
    def __init__(self, storage: Storage):
        self.storage = storage

    def record(
        self,
        *,
        level: str,
        code: str,
        message: str,
        context: dict | None = None,
        request_id: str | None = None,
    ) -> None:
        self.storage.execute_write(
            "INSERT INTO errors (timestamp, level, code, message, context, request_id, worker_pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                isoformat(),
                level,
                code,
                message[:MAX_MESSAGE],
                json.dumps(context or {}, default=str),
                request_id,
                os.getpid(),
            ),
        )

    def query(self, *, since: str | None, offset: int, limit: int) -> tuple[list[ErrorRecord], int]:
        where, args = (_SINCE, [since]) if since else (_ALL, [])
        conn = self.storage.conn
        total = conn.execute(_COUNT_SQL[where], args).fetchone()[0]
        rows = conn.execute(_PAGE_SQL[where], [*args, limit, offset]).fetchall()
        return [
            ErrorRecord(**{**dict(r), "context": json.loads(r["context"])}) for r in rows
        ], total

    def prune(self, older_than: timedelta, batch: int = 500) -> int:
        """Delete records older than ``older_than``, in small batches so writers never stall."""
        cutoff = isoformat(utcnow() - older_than)
        deleted = 0
        while True:
            n = self.storage.execute_write(
                "DELETE FROM errors WHERE id IN "
                "(SELECT id FROM errors WHERE timestamp < ? LIMIT ?)",
                (cutoff, batch),
            ).rowcount
            deleted += n
            if n < batch:
                return deleted


class PersistingHandler(logging.Handler):
    """Stores ERROR records in the error log. A failure to store is never re-logged here
    (that could loop); it goes to stderr through logging's own handleError."""

    def __init__(self, errors: ErrorLog, context_of=None):
        super().__init__(level=logging.ERROR)
        self.errors = errors
        self._context_of = context_of or (lambda record: {})
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "active", False):
            return
        self._busy.active = True
        try:
            context = {"logger": record.name, **self._context_of(record)}
            context.update(getattr(record, "error_context", None) or {})
            if record.exc_info and record.exc_info[0] is not None:
                context["exception"] = record.exc_info[0].__name__
            self.errors.record(
                level=record.levelname,
                code=getattr(record, "error_code", "INTERNAL_ERROR"),
                message=record.getMessage(),
                context=context,
                request_id=context.pop("request_id", None) or _request_id_of(record),
            )
        except UnavailableError:
            pass  # the database is away: the record still went to the log stream
        except DatabaseError:
            self.handleError(record)
        finally:
            self._busy.active = False


def _request_id_of(record: logging.LogRecord) -> str | None:
    """The request id the record's log line shows, also outside a request context (a command
    pool thread runs with its submitter's id): the row and the line must agree."""
    found = getattr(record, "request_id", None) or logs.request_id.get()
    return None if found == "-" else found
