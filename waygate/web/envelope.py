"""The one place that turns errors into the spec's error envelope (section 3.3).

Domain errors (:class:`waygate.errors.WaygateError`), Flask/werkzeug HTTP errors (404, 405,
413, 429, malformed JSON ...) and unexpected exceptions all leave through here. Bodies never
carry a stack trace or a server path; unexpected exceptions are logged with the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ..clock import isoformat
from ..errors import WaygateError, code_for_status

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


def error_response(status: int, code: str, message: str, details: dict | None = None,
                   headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> Response:
    """The envelope as a response; ``extra`` adds top-level fields (e.g. /health's report)."""
    body = {**(extra or {}), **error_body(code, message, details)}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="waygate"')
    return response


def _from_domain(exc: WaygateError) -> Response:
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def _from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    details: dict[str, Any] = {}
    message = _HTTP_MESSAGES.get(status) or (exc.description or exc.name)
    if status == 404:
        details = {"path": request.path}
    elif status == 405:
        details = {"method": request.method, "allowed": sorted(getattr(exc, "valid_methods", None) or [])}
    elif status == 413:
        limit = request.max_content_length
        message = f"request body exceeds the limit of {limit} bytes" if limit else message
        details = {"max_bytes": limit}
    elif status == 429:
        limit = getattr(exc, "limit", None)
        message = f"rate limit exceeded: {limit.limit}" if limit is not None else "rate limit exceeded"
    elif status >= 500:
        log.error("HTTP %s: %s", status, exc.description)
        message = "internal error"
    return error_response(status, code_for_status(status), message, details, headers)


def _from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
    return error_response(500, "INTERNAL_ERROR",
                          "internal error; quote the request_id when reporting it")


def init_app(app: Flask) -> None:
    app.register_error_handler(WaygateError, _from_domain)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(Exception, _from_unexpected)
