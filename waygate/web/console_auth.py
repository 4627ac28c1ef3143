"""Who is signed in to the web console, and what protects its forms.

- The session: Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the request came
  over TLS, path /console under any prefix) carries only a random token; the sign-in behind it
  lives in storage (``console_sessions.py``), so timeouts, sign-out and a revoked key hold on
  every worker and host. API requests never open the cookie.
- Every POST to the console must come from the console's own origin (Origin, else Referer) and
  carry the form's CSRF token (Flask-WTF's, bound to the session): a page elsewhere cannot make
  a signed-in browser decide, create or revoke anything.
- The API key is only ever read from the sign-in form's body: never put in a page, a URL, the
  cookie or a log; a wrong one counts against the same refused-key budget as the API's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import TypeVar
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms import ValidationError

from ..errors import Forbidden, Unauthorized
from ..keys import ApiKey, require_admin
from ..services import Services
from .console_sessions import ConsoleSessions, SessionPolicy

F = TypeVar("F", bound=Callable)
PREFIX = "/console"
COOKIE = "waygate_console"


def _is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened only on console paths (an API request pays
    nothing for it), Secure whenever the request itself came over TLS (directly, or through a
    trusted proxy's X-Forwarded-Proto), and scoped to the console's path under any prefix."""

    def open_session(self, app, request):
        if not _is_console(request.path):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        if _is_console(request.path):
            super().save_session(app, session, response)

    def get_cookie_secure(self, app) -> bool:
        return request.is_secure

    def get_cookie_path(self, app) -> str:
        return (request.script_root or "") + PREFIX


def sessions() -> ConsoleSessions:
    return current_app.extensions["waygate.console"]


def signed_in_key() -> ApiKey | None:
    """The key the browser is signed in as (checked against storage once per request)."""
    if "console_key" not in g:
        g.console_key = sessions().resolve(session.get("sid"))
    return g.console_key


def me() -> ApiKey:
    key = signed_in_key()
    if key is None:
        raise Unauthorized("sign in to the console")
    return key


def sign_in(key: ApiKey) -> None:
    """A new session for ``key``: the old cookie's contents (and its CSRF token) go."""
    session.clear()
    session["sid"] = sessions().start(key)
    g.console_key = key


def sign_out() -> None:
    sessions().end(session.get("sid"))
    session.clear()
    g.console_key = None


def admin_page(view: F) -> F:
    """A console page for admin keys only: the same check as the REST API's admin endpoints."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        require_admin(me())
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def own_origins() -> set[str]:
    """The origins the console is served from: this request's (the trusted proxy's forwarded
    scheme and host, when there is one) and the configured public URL's."""
    origins = {_origin(f"{request.scheme}://{request.host}")}
    public = current_app.extensions["waygate"].config.public_url
    if public:
        origins.add(_origin(public))
    return origins


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> str:
    """scheme://host[:port] without the scheme's default port (a proxy forwards the port it
    listens on, a browser's Origin leaves the default one out)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "invalid"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def check_form_post() -> None:
    """Forbidden unless this POST came from the console's own origin with a valid CSRF token."""
    origin = request.headers.get("Origin") or request.referrer
    if origin is None or _origin(origin) not in own_origins():
        raise Forbidden("this form was not sent from the console's own pages")
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError:
        raise Forbidden(
            "the form's security token is missing or stale: reload the page and try again"
        ) from None


def init_app(app: Flask, services: Services) -> None:
    config = services.config
    store = ConsoleSessions(
        services.storage,
        services.keys,
        SessionPolicy(
            idle=timedelta(seconds=config.console_idle_timeout_s),
            absolute=timedelta(seconds=config.console_session_max_s),
        ),
    )
    app.extensions["waygate.console"] = store
    app.secret_key = store.signing_secret()
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # a webhook's link still arrives signed in
        # the token lives as long as the session (whose own timeouts bound it)
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_FIELD_NAME="csrf_token",
    )
    app.jinja_env.globals["csrf_token"] = generate_csrf
