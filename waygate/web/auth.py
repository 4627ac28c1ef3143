"""Who is calling: the API key from ``X-API-Key`` or ``Authorization: Bearer``.

The caller is identified before rate limiting (so limits count per key) but refused only by
the view's decorator, after the limiter has counted the attempt: repeated bad keys from one
client use up that client's budget.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import Flask, g, request

from ..commands import Caller
from ..errors import Unauthorized, WaygateError
from ..keys import ApiKey, require_admin
from . import services

F = TypeVar("F", bound=Callable)


def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _identify_caller() -> None:
    g.api_key = None
    g.auth_error = None
    key = presented_key()
    if key is None:
        return
    try:
        g.api_key = services().keys.authenticate(key)
    except WaygateError as exc:
        g.auth_error = exc


def current_key() -> ApiKey:
    key = g.get("api_key")
    if key is None:
        raise g.get("auth_error") or Unauthorized(
            "missing API key: send it in the X-API-Key header"
        )
    return key


def current_caller() -> Caller:
    """The calling key as the command service knows it."""
    key = current_key()
    return Caller(key_name=key.name, key_id=key.id, scope=key.scope)


def key_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args, **kwargs):
        current_key()
        return view(*args, **kwargs)

    wrapper.waygate_auth = "user"  # type: ignore[attr-defined]  (read by the OpenAPI builder)
    return wrapper  # type: ignore[return-value]


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args, **kwargs):
        require_admin(current_key())
        return view(*args, **kwargs)

    wrapper.waygate_auth = "admin"  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    app.before_request(_identify_caller)
