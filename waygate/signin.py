"""Sign-in for people: OpenID Connect's authorization code flow with PKCE against the
issuer of ``WAYGATE_OAUTH_ISSUER``, and the server-side sessions it opens.

- :meth:`SignIn.begin` makes a ``state``, a ``nonce`` and a PKCE verifier, keeps them in the
  database (any worker may see the browser come back) and says where to send the browser.
  The view also puts the state in a short-lived cookie: a callback whose state is not that
  browser's own is refused (no login CSRF).
- :meth:`SignIn.finish` takes the request back once (the row is deleted as it is read),
  exchanges the code with the verifier, verifies the ID token (signature, ``iss``, ``aud`` =
  this client, ``exp``, the nonce) and maps its claims to permissions exactly as an access
  token's (:meth:`waygate.oauth.ResourceServer.principal`). It opens a session: a random id
  whose digest is stored, with the person and their permissions as of sign-in.
- Sessions are the one store of :mod:`waygate.sessions` (the web console's too):
  :meth:`SignIn.session` finds who is behind a session cookie, :meth:`SignIn.end` signs out.

Framework-free: ``waygate.web.signin_api`` owns the endpoints and the cookies.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .clock import isoformat, utcnow
from .config import Config
from .errors import InvalidRequest, ServiceUnavailable, Unauthorized
from .oauth import FetchError, ResourceServer, fetch_json
from .principals import Principal
from .sessions import Sessions
from .storage import Storage

log = logging.getLogger(__name__)
SIGNIN_TTL = timedelta(minutes=10)
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session


@dataclass(frozen=True)
class Started:
    state: str
    url: str


@dataclass(frozen=True)
class Opened:
    session_id: str
    principal: Principal
    next_path: str
    max_age_s: int


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a path on this server only (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value[:500]


class SignIn:
    def __init__(self, config: Config, storage: Storage, oauth: ResourceServer, sessions: Sessions):
        self.config, self.storage, self.oauth, self.sessions = config, storage, oauth, sessions
        self.client_id = config.oidc_client_id
        self.redirect_uri = f"{config.public_url}/auth/callback"

    @property
    def scopes(self) -> str:
        return " ".join(("openid", "profile", "email", self.config.oauth_run_scope))

    @property
    def secure_cookies(self) -> bool:
        return self.config.public_url.startswith("https://")

    # -- the flow --------------------------------------------------------------------------

    def begin(self, next_path: str | None) -> Started:
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        authorize = self._endpoint("authorization_endpoint")
        now = utcnow()
        with self.storage.write() as conn:
            conn.execute("DELETE FROM signin_requests WHERE expires_at <= ?", (isoformat(now),))
            conn.execute(
                "INSERT INTO signin_requests (state_hash, nonce, code_verifier, next_path,"
                " expires_at) VALUES (?,?,?,?,?)",
                (
                    _digest(state),
                    nonce,
                    verifier,
                    safe_next(next_path),
                    isoformat(now + SIGNIN_TTL),
                ),
            )
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in authorize else "?"
        return Started(state, f"{authorize}{separator}{urllib.parse.urlencode(query)}")

    def finish(self, state: str, code: str) -> Opened:
        with self.storage.write() as conn:
            row = conn.execute(
                "DELETE FROM signin_requests WHERE state_hash = ? AND expires_at > ?"
                " RETURNING nonce, code_verifier, next_path",
                (_digest(state), isoformat()),
            ).fetchone()
        if row is None:
            raise Unauthorized("this sign-in is unknown or expired: start again")
        tokens = self._exchange(code, row["code_verifier"])
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthorized("the identity provider sent no ID token")
        claims = self.oauth.id_token_claims(id_token, self.client_id, row["nonce"])
        granted = tokens.get("scope") if isinstance(tokens.get("scope"), str) else self.scopes
        principal = self.oauth.principal({**claims, "scope": granted})
        return Opened(self._open(principal), principal, row["next_path"], self.sessions.max_age_s)

    # -- sessions (the one store, waygate.sessions) ----------------------------------------

    def session(self, session_id: str) -> Principal | None:
        """Who is signed in with this session id, or None (unknown, idle, too old)."""
        return self.sessions.resolve(session_id)

    def end(self, session_id: str) -> None:
        self.sessions.end(session_id)

    def end_session_url(self) -> str | None:
        """The provider's RP-initiated logout endpoint, when it has one."""
        metadata = self.oauth.metadata.get()
        url = metadata.get("end_session_endpoint") if metadata else None
        return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None

    # -- internals -----------------------------------------------------------------------------

    def _open(self, principal: Principal) -> str:
        assert principal.person is not None  # noqa: S101 - sign-in is for people
        session_id = self.sessions.open(principal)
        log.info("signed in: %s (%s)", principal.person.label, principal.role)
        return session_id

    def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
            "client_id": self.client_id,
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.config.oidc_client_secret:
            pair = f"{urllib.parse.quote_plus(self.client_id)}:"
            pair += urllib.parse.quote_plus(self.config.oidc_client_secret)
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            return fetch_json(
                self._endpoint("token_endpoint"),
                self.config.oauth_timeout_s,
                data=urllib.parse.urlencode(form).encode(),
                headers=headers,
            )
        except FetchError as exc:
            log.warning("sign-in: the code exchange failed: %s", exc)
            raise Unauthorized("the identity provider refused the sign-in: start again") from None

    def _endpoint(self, name: str) -> str:
        metadata = self.oauth.metadata.get()
        url = metadata.get(name) if metadata else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ServiceUnavailable(
                "the identity provider cannot be reached: try again shortly", retry_after=5
            )
        return url


def check_callback(state: str | None, code: str | None, error: str | None) -> tuple[str, str]:
    """The callback's parameters, or why the sign-in cannot go on."""
    if error:
        raise Unauthorized(f"the identity provider answered {error[:60]!r}: sign-in ended")
    if not state or not code or len(state) > 200 or len(code) > 2000:
        raise InvalidRequest("the callback needs state and code")
    return state, code
