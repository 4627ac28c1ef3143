"""Sign-in for people over HTTP (issue 27): ``/auth/login``, ``/auth/callback``,
``/auth/session`` and ``/auth/logout``, and the cookies they set. The flow and the sessions
are :mod:`waygate.signin`; with ``WAYGATE_OIDC_CLIENT_ID`` unset every endpoint here is 404
and people use API keys.

Cookies are HttpOnly and SameSite=Lax (sent on the top-level redirect back from the identity
provider, not on other sites' requests), Secure when ``WAYGATE_PUBLIC_URL`` is https (then
also ``__Host-`` prefixed). A request that authenticates with the session cookie and changes
something must come from this origin (``Origin`` equal to ``WAYGATE_PUBLIC_URL``).
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, g, jsonify, redirect, request

from ..errors import Forbidden, NotFound, Unauthorized
from ..signin import SignIn, check_callback
from . import services

bp = Blueprint("signin", __name__)
SIGNIN_COOKIE = "waygate_signin"
SESSION_COOKIE = "waygate_session"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _signin() -> SignIn:
    signin = services().signin
    if signin is None:
        raise NotFound("sign-in with an identity provider is not configured: use an API key")
    return signin


def cookie_name(base: str, signin: SignIn) -> str:
    return f"__Host-{base}" if signin.secure_cookies else base


def _set_cookie(response: Response, name: str, value: str, max_age: int, signin: SignIn) -> None:
    response.set_cookie(
        cookie_name(name, signin),
        value,
        max_age=max_age,
        path="/",
        secure=signin.secure_cookies,
        httponly=True,
        samesite="Lax",
    )


@bp.get("/auth/login")
def login():
    """Start signing in at the identity provider (OpenID Connect, code flow with PKCE).
    ---
    get:
      summary: Sign in (redirects to the identity provider)
      tags: [signin]
      parameters:
        - {name: next, in: query, schema: {type: string}, description: A path here to return to}
      responses:
        302:
          description: To the identity provider's authorization endpoint
        404:
          description: Sign-in is not configured (NOT_FOUND)
        503:
          description: The identity provider cannot be reached (SERVICE_UNAVAILABLE)
    """
    signin = _signin()
    started = signin.begin(request.args.get("next"))
    response = redirect(started.url, 302)
    _set_cookie(response, SIGNIN_COOKIE, started.state, 600, signin)
    return response


@bp.get("/auth/callback")
def callback():
    """Where the identity provider sends the browser back: opens the session.
    ---
    get:
      summary: Finish signing in (the identity provider's redirect)
      tags: [signin]
      parameters:
        - {name: state, in: query, schema: {type: string}}
        - {name: code, in: query, schema: {type: string}}
        - {name: error, in: query, schema: {type: string}}
      responses:
        302:
          description: Signed in; to the path asked for at /auth/login
        400:
          description: No state or code (INVALID_REQUEST)
        401:
          description: Unknown, expired or foreign sign-in, or a refused ID token (UNAUTHORIZED)
        403:
          description: Not in a group allowed to use Waygate (FORBIDDEN)
        404:
          description: Sign-in is not configured (NOT_FOUND)
    """
    signin = _signin()
    state, code = check_callback(
        request.args.get("state"), request.args.get("code"), request.args.get("error")
    )
    mine = request.cookies.get(cookie_name(SIGNIN_COOKIE, signin), "")
    if not hmac.compare_digest(mine.encode(), state.encode()):
        raise Forbidden("this sign-in was not started in this browser: start again")
    opened = signin.finish(state, code)
    response = redirect(opened.next_path, 302)
    response.delete_cookie(cookie_name(SIGNIN_COOKIE, signin), path="/")
    _set_cookie(response, SESSION_COOKIE, opened.session_id, opened.max_age_s, signin)
    return response


@bp.get("/auth/session")
def session():
    """Who is signed in with this browser's session.
    ---
    get:
      summary: The signed-in person
      tags: [signin]
      responses:
        200:
          description: name, email, principal, role, approver
          content:
            application/json:
              schema: {type: object}
        401:
          description: Not signed in, or the session ended (UNAUTHORIZED)
        404:
          description: Sign-in is not configured (NOT_FOUND)
    """
    _signin()
    principal = g.get("session_principal")
    if principal is None:
        raise Unauthorized("not signed in")
    person = principal.person
    return jsonify(
        {
            "principal": principal.id,
            "name": person.label if person is not None else principal.name,
            "email": person.email if person is not None else None,
            "role": principal.role,
            "approver": principal.approver,
            "read_only": principal.scope.read_only,
        }
    )


@bp.post("/auth/logout")
def logout():
    """Sign out: the session ends on every worker and host at once.
    ---
    post:
      summary: Sign out
      tags: [signin]
      responses:
        200:
          description: Signed out; end_session_url is the identity provider's own sign-out
          content:
            application/json:
              schema: {type: object}
        403:
          description: From another origin (FORBIDDEN)
        404:
          description: Sign-in is not configured (NOT_FOUND)
    """
    signin = _signin()
    if g.get("auth_error") is not None and isinstance(g.auth_error, Forbidden):
        raise g.auth_error
    session_id = request.cookies.get(cookie_name(SESSION_COOKIE, signin))
    if session_id:
        signin.end(session_id)
    response = jsonify({"signed_out": True, "end_session_url": signin.end_session_url()})
    response.delete_cookie(cookie_name(SESSION_COOKIE, signin), path="/")
    return response


def session_principal():
    """The person behind this request's session cookie (None without one), with the
    same-origin rule for requests that change something."""
    signin = services().signin
    if signin is None:
        return None
    session_id = request.cookies.get(cookie_name(SESSION_COOKIE, signin))
    if not session_id or len(session_id) > 200:
        return None
    principal = signin.session(session_id)
    g.session_principal = principal
    if principal is not None and request.method in UNSAFE:
        origin = request.headers.get("Origin", "")
        if origin.rstrip("/") != services().config.public_url:
            raise Forbidden("a signed-in session changes nothing from another origin")
    return principal
