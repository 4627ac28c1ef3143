"""Domain errors: each carries one of the spec's error codes (section 4) and its HTTP status.

Services raise these; exactly one place (``waygate.web.envelope``) turns them, and Flask's own
HTTP errors, into the spec's error envelope.
"""

from __future__ import annotations

from typing import Any


class WaygateError(Exception):
    code = "INTERNAL_ERROR"
    status = 500

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        status: int | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if status is not None:
            self.status = status
        self.retry_after = retry_after  # seconds until a retry may succeed (503, 429)


class InvalidRequest(WaygateError):
    code, status = "INVALID_REQUEST", 400


class MissingParameter(WaygateError):
    code, status = "MISSING_PARAMETER", 400


class Unauthorized(WaygateError):
    code, status = "UNAUTHORIZED", 401


class Forbidden(WaygateError):
    code, status = "FORBIDDEN", 403


class NotFound(WaygateError):
    code, status = "NOT_FOUND", 404


class Conflict(WaygateError):
    """The resource is not in a state that allows this (e.g. an execution decided already)."""

    code, status = "CONFLICT", 409


class RateLimited(WaygateError):
    code, status = "RATE_LIMITED", 429


class ServiceUnavailable(WaygateError):
    code, status = "SERVICE_UNAVAILABLE", 503


# The code a bare HTTP status maps to when no domain error says otherwise.
CODE_FOR_STATUS = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "TIMEOUT",
    409: "CONFLICT",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def code_for_status(status: int) -> str:
    if status in CODE_FOR_STATUS:
        return CODE_FOR_STATUS[status]
    return "INTERNAL_ERROR" if status >= 500 else "INVALID_REQUEST"
