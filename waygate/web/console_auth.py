"""Who is signed in to the web console, and what protects its forms.

- The session: Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the request came
  over TLS, path /console under any prefix) carries only a random token; the sign-in behind it
  lives in the one session store (``waygate.sessions``), so timeouts, sign-out and a revoked
  key hold on every worker and host. API requests never open the cookie. A person who signed
  in at the identity provider (``/auth/login``, ``web/signin_api.py``) is signed in to the console
  by that session's own cookie, from the same store.
- Every POST to the console must come from the console's own origin (Origin, else Referer) and
  carry the form's CSRF token (Flask-WTF's, bound to the session): a page elsewhere cannot make
  a signed-in browser decide, create or revoke anything.
- The API key is only ever read from the sign-in form's body: never put in a page, a URL, the
  cookie or a log; a wrong one counts against the same refused-key budget as the API's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms import ValidationError

from ..approvals.policy import may_approve
from ..errors import Forbidden, Unauthorized
from ..keys import ApiKey
from ..principals import Principal
from ..services import Services
from ..sessions import Sessions
from . import services
from .auth import require_admin
from .console_sessions import signing_secret
from .signin_api import SESSION_COOKIE, cookie_name

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


def sessions() -> Sessions:
    return services().sessions


def _people_cookie() -> str | None:
    """The session id of a person signed in at the identity provider (``/auth/callback``'s
    cookie, path /), when sign-in for people is configured."""
    signin = services().signin
    if signin is None:
        return None
    return request.cookies.get(cookie_name(SESSION_COOKIE, signin))


def signed_in() -> Principal | None:
    """Who the browser is signed in as, checked against the one session store once per
    request: the console's own sign-in (a key, as the REST API sees that key), else a person
    who signed in at the identity provider."""
    if "console_principal" not in g:
        principal = sessions().resolve(session.get("sid"))
        if principal is None:
            principal = sessions().resolve(_people_cookie())
        g.console_principal = principal
    return g.console_principal


def me() -> Principal:
    principal = signed_in()
    if principal is None:
        raise Unauthorized("sign in to the console")
    return principal


def sign_in(key: ApiKey) -> None:
    """A new session for ``key``: the old cookie's contents (and its CSRF token) go."""
    principal = Principal.of_key(key)
    session.clear()
    session["sid"] = sessions().open(principal)
    g.console_principal = principal


def sign_out(response: Response) -> None:
    """End the browser's session, whichever way it signed in, everywhere at once."""
    sessions().end(session.get("sid"))
    people = _people_cookie()
    if people:
        sessions().end(people)
        signin = services().signin
        assert signin is not None  # noqa: S101 - the cookie is only read with sign-in on
        response.delete_cookie(cookie_name(SESSION_COOKIE, signin), path="/")
    session.clear()
    g.console_principal = None


def admin_page(view: F) -> F:
    """A console page for admins only: the same check as the REST API's admin endpoints."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        require_admin(me())
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def approver_page(view: F) -> F:
    """A console page for those who may decide on approvals (admins, approver group members):
    the same hook as the REST API's approve and deny."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not may_approve(me()):
            raise Forbidden(
                "deciding on approvals needs an admin key or membership of an approver group"
            )
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


def init_app(app: Flask, svc: Services) -> None:
    app.secret_key = signing_secret(svc.storage)
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
