"""Sign-in for people (issue 27): OpenID Connect's code flow with PKCE, state and nonce,
through the real authorization server of tests/authserver.py, with a real HTTP client that
follows the redirects, against gunicorn with 2 workers (the browser may come back to either).
The session cookie, its timeouts, sign-out and the same-origin rule for changes."""

from __future__ import annotations

import secrets
import sqlite3
from urllib.parse import urljoin

import pytest
import requests

from tests.authserver import Person, TestAuthorizationServer
from tests.conftest import Server, free_port

ECHO = {"action": "echo", "params": {"message": "signed in"}}


@pytest.fixture(scope="module")
def authserver():
    server = TestAuthorizationServer().start()
    yield server
    server.stop()


@pytest.fixture
def waygate(authserver, data_dir, starts_servers):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(16)
    client = authserver.register_client(f"{public}/auth/callback", secret, "client_secret_basic")
    authserver.signed_in = Person("alice", ["ops", "approvers"], "Alice Ops", "alice@example.com")
    server = Server(
        data_dir=data_dir,
        workers=2,
        port=port,
        env={
            "WAYGATE_OAUTH_ISSUER": authserver.issuer,
            "WAYGATE_PUBLIC_URL": public,
            "WAYGATE_OIDC_CLIENT_ID": client.client_id,
            "WAYGATE_OIDC_CLIENT_SECRET": secret,
            "WAYGATE_OAUTH_APPROVER_GROUPS": "approvers",
        },
    ).start()
    yield server
    server.stop()


def sign_in(waygate, browser=None, next_path="/auth/session"):
    browser = browser or requests.Session()
    answer = browser.get(f"{waygate.url}/auth/login", params={"next": next_path}, timeout=20)
    return browser, answer


def test_a_person_signs_in_at_the_identity_provider_and_works_with_the_session(
    waygate, authserver, data_dir
):
    browser, answer = sign_in(waygate)
    assert answer.status_code == 200, answer.text
    assert answer.url == f"{waygate.url}/auth/session"
    assert answer.json() == {
        "principal": f"{authserver.issuer}#alice",
        "name": "Alice Ops",
        "email": "alice@example.com",
        "role": "user",
        "approver": True,
        "read_only": False,
    }
    hops = [hop.url.split("?")[0] for hop in answer.history]
    assert hops == [
        f"{waygate.url}/auth/login",
        f"{authserver.issuer}/authorize",
        f"{waygate.url}/auth/callback",
    ]
    cookie = answer.history[-1].headers["Set-Cookie"]
    assert "waygate_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie and "Max-Age=43200" in cookie
    authorize = answer.history[0].headers["Location"]
    for part in ("code_challenge_method=S256", "nonce=", "state=", "scope=openid+profile+email"):
        assert part in authorize

    origin = {"Origin": waygate.url}
    ran = browser.post(f"{waygate.url}/mcp/execute", json=ECHO, headers=origin, timeout=20)
    assert ran.status_code == 200 and ran.json()["result"] == {"result": "signed in"}
    cross_site = browser.post(f"{waygate.url}/mcp/execute", json=ECHO, timeout=20)
    assert cross_site.status_code == 403  # no Origin of this server: never on the cookie alone
    rows = sqlite3.connect(data_dir / "waygate.db").execute(
        "SELECT key_name, principal FROM executions"
    )
    assert rows.fetchall() == [("Alice Ops", f"{authserver.issuer}#alice")]

    out = browser.post(f"{waygate.url}/auth/logout", headers=origin, timeout=20)
    assert out.status_code == 200 and out.json()["end_session_url"] == f"{authserver.issuer}/logout"
    assert browser.get(f"{waygate.url}/auth/session", timeout=20).status_code == 401
    assert browser.get(f"{waygate.url}/mcp/commands", timeout=20).status_code == 401


def test_a_callback_for_another_browser_or_a_second_time_is_refused(waygate):
    victim = requests.Session()
    started = victim.get(f"{waygate.url}/auth/login", allow_redirects=False, timeout=20)
    at_provider = victim.get(started.headers["Location"], allow_redirects=False, timeout=20)
    callback = urljoin(waygate.url, at_provider.headers["Location"])
    attacker = requests.Session()
    assert attacker.get(callback, allow_redirects=False, timeout=20).status_code == 403
    finished = victim.get(callback, allow_redirects=False, timeout=20)
    assert finished.status_code == 302 and finished.headers["Location"] == "/"
    again = victim.get(callback, allow_redirects=False, timeout=20)
    assert again.status_code in (401, 403)  # the state was spent (and its cookie cleared)


def test_an_idle_or_too_old_session_ends(waygate, data_dir):
    browser, answer = sign_in(waygate)
    assert answer.status_code == 200
    db = sqlite3.connect(data_dir / "waygate.db")
    with db:
        db.execute("UPDATE sessions SET last_seen_at = '2000-01-01T00:00:00Z'")
    assert browser.get(f"{waygate.url}/auth/session", timeout=20).status_code == 401
    assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    browser, answer = sign_in(waygate)
    with db:
        db.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00Z'")
    assert browser.get(f"{waygate.url}/auth/session", timeout=20).status_code == 401


def test_only_a_path_of_this_server_is_a_place_to_return_to(waygate):
    for elsewhere in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        browser = requests.Session()
        started = browser.get(
            f"{waygate.url}/auth/login", params={"next": elsewhere}, allow_redirects=False
        )
        at_provider = browser.get(started.headers["Location"], allow_redirects=False, timeout=20)
        done = browser.get(
            urljoin(waygate.url, at_provider.headers["Location"]), allow_redirects=False
        )
        assert done.headers["Location"] == "/", elsewhere


def test_behind_tls_the_cookies_are_secure_and_host_prefixed(authserver, make_app):
    client = authserver.register_client("https://waygate.example/auth/callback")
    app = make_app(
        oauth_issuer=authserver.issuer,
        public_url="https://waygate.example",
        oidc_client_id=client.client_id,
    ).test_client()
    started = app.get("/auth/login")
    assert started.status_code == 302
    cookie = started.headers["Set-Cookie"]
    assert cookie.startswith("__Host-waygate_signin=") and "Secure" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_without_oidc_there_is_no_sign_in(make_app):
    client = make_app().test_client()
    assert client.get("/auth/login").status_code == 404
    assert client.get("/auth/session").status_code == 404
