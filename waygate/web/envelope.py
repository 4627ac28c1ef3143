"""The one place that turns errors into the spec's error envelope (section 3.3).

Domain errors (:class:`waygate.errors.WaygateError`), Flask/werkzeug HTTP errors (404, 405,
413, 429, malformed JSON ...) and unexpected exceptions all leave through here. Bodies never
carry a stack trace or a server path; unexpected exceptions are logged with the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import errorlog
from ..clock import isoformat
from ..errors import WaygateError, code_for_status
from ..storage import DatabaseError, UnavailableError
from . import oauth_api
from .mcp_message import readable_request_id

log = logging.getLogger("waygate.errors")

_HTTP_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed for this endpoint",
    413: "request body too large",
    415: "unsupported Content-Type: send application/json",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details or {},
            "timestamp": isoformat(),
            "request_id": g.get("request_id", ""),
        }
    }


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    rpc_code: int | None = None,
) -> Response:
    """The envelope as a response; ``extra`` adds top-level fields (e.g. /health's report)."""
    g.error_code, g.error_message = code, message
    if request.blueprint == "mcp":
        body = jsonrpc_error_body(status, code, message, details, rpc_code)
    else:
        body = {**(extra or {}), **error_body(code, message, details)}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status in (401, 403) and has_request_context():
        value = oauth_api.challenge(status)
        if value is not None:
            response.headers.setdefault("WWW-Authenticate", value)
    return response


def jsonrpc_error_body(
    status: int, code: str, message: str, details: dict | None, rpc_code: int | None = None
) -> dict:
    """On /mcp every answer is JSON-RPC: the envelope's facts travel in ``error.data``, and the
    request's id when it can be read."""
    error = error_body(code, message, details)["error"]
    return {
        "jsonrpc": "2.0",
        "id": readable_request_id(),
        "error": {
            "code": rpc_code or (-32603 if status >= 500 else -32600),
            "message": message,
            "data": {k: error[k] for k in ("code", "details", "request_id")},
        },
    }


def _from_domain(exc: WaygateError) -> Response:
    oauth_api.refused_token(exc)
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message, extra={"error_code": exc.code})
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


def _from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    details: dict[str, Any] = {}
    message = _HTTP_MESSAGES.get(status) or (exc.description or exc.name)
    if status == 404:
        details = {"path": (request.script_root + request.path)[:200]}
    elif status == 405:
        details = {
            "method": request.method,
            "allowed": sorted(getattr(exc, "valid_methods", None) or []),
        }
    elif status == 413:
        limit = request.max_content_length
        message = f"request body exceeds the limit of {limit} bytes" if limit else message
        details = {"max_bytes": limit}
    elif status >= 500:
        log.error(
            "HTTP %s: %s", status, exc.description, extra={"error_code": code_for_status(status)}
        )
        message = "internal error"
    return error_response(status, code_for_status(status), message, details, headers)


def _from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
    return error_response(
        500, "INTERNAL_ERROR", "internal error; quote the request_id when reporting it"
    )


def request_context() -> dict[str, Any]:
    """What an error record may say about the request: never headers, keys or bodies."""
    if not has_request_context():
        return {}
    return {
        "request_id": g.get("request_id"),
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule else None,
        "path": request.path[:200],
    }


class PersistingHandler(errorlog.PersistingHandler):
    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if has_request_context():
            g.error_persisted = True


def _persist_unlogged_5xx(response: Response) -> Response:
    """Every 5xx answer reaches the error log, also those no ERROR record announced."""
    if response.status_code >= 500 and not g.get("error_persisted"):
        context = request_context()
        code = g.get("error_code") or code_for_status(response.status_code)
        message = g.get("error_message") or f"answered {response.status_code}"
        if response.is_json and isinstance(response.get_json(silent=True), dict):
            command_error = response.get_json().get("error")
            if isinstance(command_error, str):  # an MCPResponse of a failed command
                message = f"command {response.get_json().get('command_id')} failed: {command_error}"
        try:
            current_app.extensions["waygate"].errors.record(
                level="ERROR",
                code=code,
                message=message,
                context=context,
                request_id=context.pop("request_id", None),
            )
        except DatabaseError as exc:  # the answer stands even when the log cannot be written
            log.warning("could not persist a %s answer: %s", response.status_code, exc)
    return response


def install_error_persistence(app: Flask) -> None:
    """Persist ERROR records of Waygate's loggers (one handler per process, pointing at the
    newest app's error log)."""
    handler = PersistingHandler(
        app.extensions["waygate"].errors, context_of=lambda r: request_context()
    )
    logger = logging.getLogger("waygate")
    for old in [h for h in logger.handlers if isinstance(h, errorlog.PersistingHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    app.after_request(_persist_unlogged_5xx)


def _from_storage(exc: Exception) -> Response:
    # A full, read-only or vanished data dir is the service's trouble, not the client's.
    log.error(
        "storage failure on %s %s: %s",
        request.method,
        request.path,
        exc,
        extra={"error_code": "SERVICE_UNAVAILABLE"},
    )
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        "storage unavailable; try again shortly",
        headers={"Retry-After": "5"},
    )


def init_app(app: Flask) -> None:
    for unavailable in UnavailableError:
        app.register_error_handler(unavailable, _from_storage)
    app.register_error_handler(WaygateError, _from_domain)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(Exception, _from_unexpected)
