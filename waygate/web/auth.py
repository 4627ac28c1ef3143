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


def _confirm_caller() -> None:
    """After the rate-limit hit: a key answered from the cache stands only if the hit read the
    key generation the answer was read with (no key changed since). Otherwise (it moved, or
    no hit read it: an OPTIONS, an unrouted path, a storage failure) the caller is identified
    again from the database, and counted again when that changes who it is or its limit."""
    tagged = g.get("key_generation")
    if tagged is None:
        return
    now = g.pop("key_generation_now", None)
    if now == tagged:
        g.key_generation = None
        return
    keys = services().keys
    keys.cache.saw(now)
    before = g.api_key
    _identify_caller(fresh=True)
    after = g.api_key
    limiter = current_app.extensions.get("waygate.limiter")
    counted = g.get("rate_limit_counter") is not None
    same_budget = after is not None and (after.id, after.rate_limit) == (
        before.id,
        before.rate_limit,
    )
    if limiter is not None and counted and not same_budget:
        limiter.check()


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
    """Registered after the rate limiter's hook: see ``_confirm_caller``."""
    app.before_request(_confirm_caller)
