"""Log records: where they go, their two formats, and the ids that tie them to a request.

Every record about a request carries its request id (``request_id`` below, set by the web
layer for the request's thread and carried into the command pool's threads with the rest of
the submitting context), and a plugin's records carry their command id. ``WAYGATE_LOG_FORMAT``
chooses text lines (``text``) or one JSON object per line (``json``) for log shippers; the
same choice applies to gunicorn's own and access lines (``waygate.gunicorn_conf``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from .config import Config, log_level_number
from .tracing import LogContextFilter

#: The id of the request the current thread (or pool job) works for; "-" outside a request.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(ids)s %(message)s"
# gunicorn's access lines had no time of their own; they get the same leading timestamp
ACCESS_TEXT_FORMAT = "%(asctime)s %(message)s"


class RequestIds(logging.Filter):
    """Puts the request id (and ``command_id`` when a plugin's logger gave one) on records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        command_id = getattr(record, "command_id", None)
        record.ids = f"request_id={record.request_id}" + (
            f" command_id={command_id}" if command_id else ""
        )
        if hasattr(record, "trace_id"):  # tracing on: the span the line was written in
            record.ids += f" trace_id={record.trace_id} span_id={record.span_id}"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, ids, message (and the traceback).

    gunicorn's access records also get their fields (method, path, status ...) as keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            line.update(_access_fields(record.args))
        else:
            line["request_id"] = getattr(record, "request_id", request_id.get())
        command_id = getattr(record, "command_id", None)
        if command_id:
            line["command_id"] = command_id
        if getattr(record, "trace_id", "-") != "-":
            line["trace_id"], line["span_id"] = record.trace_id, record.span_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _access_fields(atoms: Mapping) -> dict:
    def atom(name: str) -> str:
        return atoms[name]

    status = atom("s")
    return {
        "remote_addr": atom("h"),
        "method": atom("m"),
        "path": atom("U"),
        "query": atom("q"),
        "status": int(status) if str(status).isdigit() else status,
        "bytes": atom("B"),
        "duration_ms": atom("M"),
        "user_agent": atom("a"),
        "request_id": atom("{x-request-id}o"),
    }


def formatter(config: Config) -> logging.Formatter:
    return JsonFormatter() if config.log_format == "json" else logging.Formatter(TEXT_FORMAT)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (gunicorn and test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(config: Config) -> None:
    """Waygate's records go to stderr with the request id; one handler per process, set to
    the config's level and format."""
    logger = logging.getLogger("waygate")
    logger.setLevel(log_level_number(config))
    handler = next((h for h in logger.handlers if getattr(h, "waygate", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.waygate = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIds())
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(formatter(config))
    if config.tracing and not any(isinstance(f, LogContextFilter) for f in handler.filters):
        handler.filters.insert(0, LogContextFilter())  # before RequestIds, which shows them
