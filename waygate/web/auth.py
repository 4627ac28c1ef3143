"""Who is calling: an API key from ``X-API-Key`` or ``Authorization: Bearer``, or, with
``WAYGATE_OAUTH_ISSUER`` set, a person's OAuth access token in ``Authorization: Bearer``.

A bearer value shaped like a JWT is verified as an access token; anything else is looked up
as an API key and, when introspection is configured and it is no key, introspected. The
caller is identified before rate limiting (so limits count per caller) but refused only by the
view's decorator, after the limiter has counted the attempt: repeated bad credentials from one
client use up that client's budget.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import Flask, current_app, g, request

from ..commands import Caller
from ..errors import Forbidden, Unauthorized, WaygateError
from ..keys import ApiKey
from ..oauth import InvalidToken, looks_like_jwt
from ..principals import Principal
from . import services
from .oauth_api import refused_token
from .signin_api import session_principal

F = TypeVar("F", bound=Callable)


def presented_credentials() -> tuple[str | None, str | None]:
    """``(X-API-Key, Authorization: Bearer)`` as sent, each stripped, or None."""
    key = (request.headers.get("X-API-Key") or "").strip() or None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return key, bearer


def presented_key() -> str | None:
    key, bearer = presented_credentials()
    return key or bearer


def _identify_caller(fresh: bool = False) -> None:
    g.api_key = g.principal = g.auth_error = g.key_generation = None
    g.bearer_refused = False  # a bearer access token failed verification (a 401 on /mcp)
    key, bearer = presented_credentials()
    if key is None and bearer is None:
        try:
            g.principal = session_principal()  # a person signed in with a browser session
        except WaygateError as exc:
            g.auth_error = exc
        return
    svc = services()
    oauth = svc.oauth
    try:
        if key is None and oauth is not None and looks_like_jwt(bearer):
            g.principal = oauth.verify(bearer)
            return
        try:
            if fresh or _cache_confirmed():
                g.api_key, g.key_generation = svc.keys.authenticate_cached(
                    key or bearer, fresh=fresh
                )
            else:
                g.api_key = svc.keys.authenticate(key or bearer)
        except Unauthorized:
            if key is not None or oauth is None or not oauth.introspects:
                raise
            g.principal = oauth.verify(bearer)  # an opaque access token
            return
        g.principal = Principal.of_key(g.api_key)
    except WaygateError as exc:
        g.auth_error = exc
        g.bearer_refused = isinstance(exc, InvalidToken)
        refused_token(exc)


def _cache_confirmed() -> bool:
    """Whether a cached key can be confirmed by this app's rate-limit hit (PostgreSQL)."""
    limiter = current_app.extensions.get("waygate.limiter")
    return limiter is not None and limiter.confirms_key_generation


def _identify_again(generation: int | None) -> bool:
    """The caller identified again from the database: its key came from the cache, read at
    another key generation than ``generation``, the one the rate-limit hit just read (None:
    no hit read one). Whether that changed who it is or its rate limit (then it is counted
    again, as who it turned out to be)."""
    services().keys.cache.saw(generation)
    before = g.api_key
    _identify_caller(fresh=True)
    after = g.api_key
    return (
        after is None
        or before is None
        or (after.id, after.rate_limit) != (before.id, before.rate_limit)
    )


def _confirm_caller() -> None:
    """After the rate limiter's hook: a key still taken from the cache unconfirmed (no hit read
    the key generation: an OPTIONS, an unrouted path, a failed limit storage) is read again
    before any view sees it."""
    if g.get("key_generation") is not None:
        _identify_again(None)


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is None:
        raise g.get("auth_error") or Unauthorized(
            "missing API key: send it in the X-API-Key header"
            + (" or an OAuth access token as Bearer" if services().oauth else "")
        )
    return principal


def current_key() -> ApiKey | None:
    """The calling API key; None for a person with an access token."""
    return current_principal().key


def current_caller() -> Caller:
    """The caller as the command service knows it."""
    return caller_of(current_principal())


def caller_of(principal: Principal) -> Caller:
    """A principal as the command service knows it (the REST API's and the console's)."""
    return Caller(
        key_name=principal.name,
        key_id=principal.key_id,
        scope=principal.scope,
        principal=principal.id,
    )


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this endpoint needs an admin key")


def key_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args, **kwargs):
        current_principal()
        return view(*args, **kwargs)

    wrapper.waygate_auth = "user"  # type: ignore[attr-defined]  (read by the OpenAPI builder)
    return wrapper  # type: ignore[return-value]


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args, **kwargs):
        require_admin(current_principal())
        return view(*args, **kwargs)

    wrapper.waygate_auth = "admin"  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    app.before_request(_identify_caller)


def confirm_after_limits(app: Flask) -> None:
    """After the rate limiter is built: it confirms a cached key with the generation its hit
    reads, or has the caller identified again (``_identify_again``); ``_confirm_caller``
    catches the requests it did not count."""
    limiter = app.extensions.get("waygate.limiter")
    if limiter is not None:
        limiter.identify_again = _identify_again
    app.before_request(_confirm_caller)
