"""The web console (issue 28) in a real browser: Playwright driving the system Chromium against
gunicorn with 2 workers, one server and one browser for the module. Also what needs no
browser: forged posts, sessions, the prefix, the webhook's link, keyset pages."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
import requests

from tests.browser import DESKTOP, PHONE, OriginWatch, axe_violations, new_page
from tests.conftest import FIGURES, ROOT, PluginDist, Server
from waygate.clock import isoformat, utcnow
from waygate.config import Config
from waygate.keystore import KeyStore
from waygate.storage import open_storage

WIPE = {"action": "wipe", "params": {"target": "db-eu-1", "seconds": 0.05}}
# The screenshots in docs/console/ are refreshed only on request (WAYGATE_UPDATE_SCREENSHOTS=1):
# a plain `make test` leaves the checkout as it found it.
SHOTS = ROOT / "docs" / "console"


@dataclass
class Console:
    server: Server
    admin: str  # "alice"
    admin2: str  # "bob"
    user: str  # "carol"
    store: KeyStore

    @property
    def url(self) -> str:
        return self.server.url + "/console"

    def execute(self, key: str, body: dict = WIPE) -> requests.Response:
        return requests.post(
            self.server.url + "/mcp/execute", json=body, headers={"X-API-Key": key}, timeout=10
        )

    def execution(self, command_id: str, key: str | None = None) -> dict:
        return requests.get(
            f"{self.server.url}/mcp/executions/{command_id}",
            headers={"X-API-Key": key or self.admin},
            timeout=10,
        ).json()

    def ended(self, command_id: str, deadline_s: float = 10) -> dict:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            body = self.execution(command_id)
            if body["status"] not in ("pending", "running", "awaiting_approval"):
                return body
            time.sleep(0.02)
        raise AssertionError(f"{command_id} did not end: {body}")


@pytest.fixture(scope="module")
def console(tmp_path_factory, starts_servers):
    root = tmp_path_factory.mktemp("console")
    plugins = PluginDist(root / "site")
    plugins.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    data = root / "data"
    data.mkdir()
    storage = open_storage(Config(data_dir=data))
    storage.migrate()
    store = KeyStore(storage)
    keys = {
        name: store.create(name, role)[1]
        for name, role in (("alice", "admin"), ("bob", "admin"), ("carol", "user"))
    }
    server = Server(
        data_dir=data,
        workers=2,
        env={
            "PYTHONPATH": str(plugins.root),
            "WAYGATE_RATE_LIMIT_EXECUTE": "10000/minute",
            "WAYGATE_RATE_LIMIT_DEFAULT": "10000/minute",
            "WAYGATE_TRACE_URL_TEMPLATE": "https://jaeger.example.com/trace/{trace_id}",
            "WAYGATE_TRUSTED_PROXIES": "1",  # nginx in front, for the test that uses it
        },
    ).start()
    yield Console(server, keys["alice"], keys["bob"], keys["carol"], store)
    server.stop()
    storage.close()


@contextmanager
def signed_in(browser, console: Console, key: str, viewport=DESKTOP, origin_watch=False):
    with new_page(browser, viewport) as page:
        watch = OriginWatch(page, console.server.url) if origin_watch else None
        page.goto(console.url + "/login")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r".*/console/(approvals|executions)$"))
        yield (page, watch) if origin_watch else page


def item(page, command_id: str):
    return page.locator(f'[data-id="{command_id}"]')


def test_sign_in_wrong_key_then_right_key_then_sign_out(browser, console):
    with new_page(browser) as page:
        page.goto(console.url + "/approvals")
        assert page.url.endswith("/console/login?next=/console/approvals")
        page.get_by_label("API key").fill("x" * 32)
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text().startswith("That API key was not accepted")
        assert not [c for c in page.context.cookies() if "sid" in c["value"]]
        page.get_by_label("API key").fill(console.admin)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/console/approvals")  # back where it was going
        assert console.admin not in page.content() and console.admin not in page.url
        (cookie,) = page.context.cookies()
        assert cookie["name"] == "waygate_console"
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
        assert not cookie["secure"]  # plain HTTP here; behind TLS it is Secure (test below)
        stolen = {cookie["name"]: cookie["value"]}
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/console/login")
        assert page.get_by_role("status").inner_text() == "Signed out."
    # the cookie of a signed-out session opens nothing, on any worker
    for _ in range(4):
        answer = requests.get(
            console.url + "/approvals", cookies=stolen, allow_redirects=False, timeout=10
        )
        assert answer.status_code == 302 and "/console/login" in answer.headers["Location"]


def test_a_users_request_appears_in_another_admins_inbox_and_is_approved_by_click(
    browser, console, request
):
    with signed_in(browser, console, console.admin) as page:
        assert page.get_by_role("heading", name=re.compile("Awaiting approval")).is_visible()
        asked = time.monotonic()
        held = console.execute(console.user)
        assert held.status_code == 202 and held.json()["status"] == "awaiting_approval"
        command_id = held.json()["command_id"]
        row = item(page, command_id)
        row.wait_for(timeout=2_000)  # no reload: the page polls
        appeared_s = time.monotonic() - asked
        assert appeared_s < 2.0
        text = row.inner_text()
        for fact in ("wipe", "Testing", "carol", "destructiveHint", "Time left", "db-eu-1"):
            assert fact in text, fact
        stored = row.locator("pre.args").inner_text()
        assert '"seconds": 0.05' in stored and '"target": "db-eu-1"' in stored
        assert held.json()["approval"]["params_hash"] in text
        row.get_by_label("Reason").fill("change ticket CHG-42")
        row.get_by_role("button", name="Approve").click()
        page.wait_for_url("**/console/approvals")
        decided_s = time.monotonic() - asked
        assert f"Approved {command_id}" in page.get_by_role("status").inner_text()
        assert console.ended(command_id)["status"] == "success"
        outcome = page.locator("#decided").get_by_text(command_id)
        outcome.click()  # the decided item links to its execution
        page.wait_for_url(f"**/console/executions/{command_id}")
        assert page.locator(".decided-by").inner_text().startswith("alice")
        assert page.locator(".decision-reason").inner_text() == "change ticket CHG-42"
        timeline = page.locator(".timeline").inner_text()
        for step in ("requested by carol", "approved by alice: change ticket CHG-42", "executed"):
            assert step in timeline, step
    request.config.stash.setdefault(FIGURES, {})["console"] = {
        "request_in_inbox_s": round(appeared_s, 3),
        "held_request_to_approved_by_click_s": round(decided_s, 3),
    }


def test_deny_with_a_reason_typed_while_new_requests_arrive(browser, console):
    command_id = console.execute(console.user).json()["command_id"]
    with signed_in(browser, console, console.admin2) as page:
        row = item(page, command_id)
        row.get_by_label("Reason").fill("not during the freeze")
        # another request arrives while the reason is being typed: it appears above, and the
        # typed reason stays where it was
        later = console.execute(console.user).json()["command_id"]
        item(page, later).wait_for(timeout=2_000)
        assert row.get_by_label("Reason").input_value() == "not during the freeze"
        row.get_by_role("button", name="Deny").click()
        page.wait_for_url("**/console/approvals")
        assert f"Denied {command_id}" in page.get_by_role("status").inner_text()
        page.goto(f"{console.url}/executions/{command_id}")
        assert page.locator(".decision-reason").inner_text() == "not during the freeze"
    body = console.execution(command_id)
    assert body["status"] == "denied" and body["approval"]["decided_by"] == "bob"


def test_self_approval_is_shown_disabled_with_the_reason(browser, console):
    command_id = console.execute(console.admin2).json()["command_id"]  # bob asks
    with signed_in(browser, console, console.admin2) as page:
        row = item(page, command_id)
        for name in ("Approve", "Deny"):
            button = row.get_by_role("button", name=name)
            assert button.is_disabled()
        assert "cannot decide on its own request" in row.locator(".refusal").inner_text()
    assert console.execution(command_id)["status"] == "awaiting_approval"
    # the service's whole rule, not a copy of part of it: a key bob created is still bob
    puppet = requests.post(
        console.server.url + "/keys",
        json={"name": "bob-2", "role": "admin"},
        headers={"X-API-Key": console.admin2},
        timeout=10,
    ).json()["key"]
    with signed_in(browser, console, puppet) as page:
        row = item(page, command_id)
        assert row.get_by_role("button", name="Approve").is_disabled()
        assert "created by the requesting key" in row.locator(".refusal").inner_text()


def test_keys_created_rotated_and_revoked_in_the_console_work_over_rest(browser, console):
    def works(key: str) -> int:
        return requests.get(
            console.server.url + "/mcp/status", headers={"X-API-Key": key}, timeout=10
        ).status_code

    with signed_in(browser, console, console.admin) as page:
        page.goto(console.url + "/keys")
        page.get_by_label("Name").fill("deploy-bot")
        page.get_by_label("Allowed commands").fill("echo, status")
        page.get_by_role("button", name="Create key").click()
        secret = page.get_by_label("Secret of deploy-bot").input_value()
        assert re.fullmatch(r"[A-Za-z0-9]{32}", secret)
        assert page.get_by_role("button", name="Copy").is_visible()
        assert works(secret) == 200
        ran = console.execute(secret, {"action": "echo", "params": {"message": "hi"}})
        assert ran.status_code == 200
        assert console.execute(secret, {"action": "process_data"}).status_code == 403
        page.reload()  # shown once: a reload (a GET) does not show it again
        assert secret not in page.content()
        # edit the scope
        page.get_by_role("link", name="deploy-bot").click()
        page.get_by_label("Allowed commands").fill("echo, process_data")
        page.get_by_role("button", name="Save scope").click()
        assert page.get_by_role("status").inner_text() == "Key deploy-bot changed."
        data = {"action": "process_data", "params": {"input": "[1]", "format": "json"}}
        assert console.execute(secret, data).status_code == 200
        # rotate with no grace: the old secret stops, the new one works
        page.get_by_role("button", name="Rotate key").click()
        rotated = page.get_by_label("Secret of deploy-bot").input_value()
        assert rotated != secret and works(rotated) == 200 and works(secret) == 401
        # revoke
        page.get_by_role("link", name="deploy-bot").click()
        page.get_by_role("button", name="Revoke key").click()
        assert "revoked" in page.get_by_role("status").inner_text()
        assert works(rotated) == 401
        page.goto(console.url + "/key-events?key=deploy-bot")
        events = page.locator("tbody").inner_text()
        for event in ("created", "changed", "rotated", "revoked"):
            assert event in events
        assert "alice" in events  # the acting key, as for REST


def login_session(console: Console, key: str) -> tuple[requests.Session, str]:
    """A signed-in requests session and a CSRF token of it."""
    session = requests.Session()
    page = session.get(console.url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    session.post(
        console.url + "/login",
        data={"api_key": key, "csrf_token": token},
        headers={"Origin": console.server.url},
        timeout=10,
    )
    page = session.get(console.url + "/keys", timeout=10).text
    return session, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_a_forged_cross_site_post_is_refused(console):
    command_id = console.execute(console.user).json()["command_id"]
    session, token = login_session(console, console.admin)
    target = f"{console.url}/executions/{command_id}/approve"
    forged = [
        ({"reason": "x"}, {"Origin": "https://evil.example"}),  # no token, another site
        ({"reason": "x", "csrf_token": token}, {"Origin": "https://evil.example"}),
        ({"reason": "x"}, {"Origin": console.server.url}),  # its own origin, no token
        ({"reason": "x", "csrf_token": "forged"}, {"Origin": console.server.url}),
        ({"reason": "x", "csrf_token": token}, {}),  # no Origin, no Referer
    ]
    for data, headers in forged:
        answer = session.post(target, data=data, headers=headers, timeout=10)
        assert answer.status_code == 403, (data, headers)
        assert "Approved" not in answer.text
    assert console.execution(command_id)["status"] == "awaiting_approval"
    # the same form, sent from the console with its token, is taken
    done = session.post(
        target,
        data={"csrf_token": token, "back": "inbox"},
        headers={"Origin": console.server.url},
        timeout=10,
    )
    assert done.status_code == 200 and f"Approved {command_id}" in done.text


def test_a_user_key_sees_no_approve_button_and_gets_403_on_admin_pages(browser, console):
    command_id = console.execute(console.user).json()["command_id"]
    with signed_in(browser, console, console.user) as page:
        assert page.url.endswith("/console/executions")
        assert page.get_by_role("link", name="Approvals").count() == 0
        page.goto(f"{console.url}/executions/{command_id}")
        assert "awaiting approval" in page.locator(".status").first.inner_text()
        assert page.get_by_role("button", name="Approve").count() == 0
        for path in ("/approvals", "/approvals/items", "/keys", "/key-events", "/status"):
            answer = page.goto(console.url + path)
            assert answer.status == 403, path
            assert "admin key" in page.get_by_role("alert").inner_text()
        # its own executions only
        other = console.execute(console.admin, {"action": "echo", "params": {"message": "a"}})
        answer = page.goto(f"{console.url}/executions/{other.json()['command_id']}")
        assert answer.status == 404
        page.goto(console.url + "/executions")
        assert command_id in page.content() and other.json()["command_id"] not in page.content()
        # the catalog as this key may see it
        page.goto(console.url + "/commands")
        assert page.get_by_role("heading", name=re.compile("^wipe")).count() == 1


def test_behind_the_shipped_nginx_site_over_tls_the_cookie_is_secure(browser, console):
    from tests.nginx import Nginx

    nginx = Nginx([console.server.port]).start()
    try:
        site = f"https://127.0.0.1:{nginx.https}/console"
        command_id = console.execute(console.user).json()["command_id"]
        with new_page(browser, ignore_https_errors=True) as page:
            page.goto(site + "/login")
            page.get_by_label("API key").fill(console.admin)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(site + "/approvals")
            (cookie,) = page.context.cookies()
            assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
            row = item(page, command_id)
            row.get_by_label("Reason").fill("through nginx")
            row.get_by_role("button", name="Approve").click()  # Origin https://...:port
            page.wait_for_url(site + "/approvals")
            assert f"Approved {command_id}" in page.get_by_role("status").inner_text()
    finally:
        nginx.stop()
    assert console.ended(command_id)["status"] == "success"


ADMIN_PAGES = ("/approvals", "/executions", "/commands", "/keys", "/key-events", "/status")


def test_pages_load_nothing_from_another_origin_and_axe_finds_nothing_serious(browser, console):
    command_id = console.execute(console.user).json()["command_id"]
    pages = (*ADMIN_PAGES, f"/executions/{command_id}", f"/keys/{'carol'}")
    for viewport in (DESKTOP, PHONE):
        with signed_in(browser, console, console.admin, viewport, origin_watch=True) as (
            page,
            watch,
        ):
            for path in pages:
                answer = page.goto(console.url + path)
                assert answer.status == 200, path
                csp = answer.headers["content-security-policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
                assert axe_violations(page) == [], (path, viewport)
                # usable at 375 px: nothing wider than the screen
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], (path, width)
            page.goto(console.url + "/login")
            assert axe_violations(page) == []
        assert watch.requests and not watch.foreign, watch.foreign


def test_screenshots_of_the_inbox_and_an_execution_at_desktop_and_phone_widths(
    browser, console, tmp_path
):
    shots = SHOTS if os.environ.get("WAYGATE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(exist_ok=True)
    held = console.execute(console.user).json()["command_id"]
    ran = console.execute(console.user).json()["command_id"]
    with signed_in(browser, console, console.admin) as page:
        page.goto(f"{console.url}/executions/{ran}")
        page.get_by_label("Reason").fill("restore drill")
        page.get_by_role("button", name="Approve").click()
    console.ended(ran)
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        with signed_in(browser, console, console.admin, viewport) as page:
            item(page, held).wait_for()
            page.screenshot(path=shots / f"inbox-{name}.png", full_page=name == "phone")
            page.goto(f"{console.url}/executions/{ran}")
            page.screenshot(path=shots / f"execution-{name}.png", full_page=True)
    for shot in ("inbox-desktop", "inbox-phone", "execution-desktop", "execution-phone"):
        assert (shots / f"{shot}.png").stat().st_size > 10_000, shot


# -- without a browser: the test client on one app --------------------------------------------


def sign_in(client, key: str, **options):
    """Sign a test client in through the form; returns the answer to the form's POST."""
    page = client.get("/console/login", **options).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    headers = {"Origin": "http://localhost", **options.pop("headers", {})}
    return client.post(
        "/console/login", data={"api_key": key, "csrf_token": token}, headers=headers, **options
    )


def test_every_console_page_has_a_strict_csp_and_is_never_cached(client, keys):
    assert sign_in(client, keys.admin).status_code == 303
    for path in ("/approvals", "/approvals/items", "/executions", "/keys", "/status"):
        answer = client.get("/console" + path)
        assert answer.status_code == 200, path
        csp = answer.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'") and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp and "http" not in csp and "*" not in csp
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Frame-Options"] == "DENY"
    # the API's own headers are unchanged, and it never opens or sets the console's cookie
    health = client.get("/health")
    assert health.headers["Content-Security-Policy"] == "default-src 'self'"
    assert "Set-Cookie" not in health.headers


def test_static_files_are_served_by_waygate_and_cached_by_their_content(client):
    page = client.get("/console/login").get_data(as_text=True)
    paths = re.findall(r'(?:href|src)="(/console/static/[^"]+)"', page)
    assert len(paths) == 2 and all("?v=" in path for path in paths)
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_the_console_works_under_a_path_prefix(make_app, keys):
    """A proxy that serves Waygate under /waygate says so (X-Forwarded-Prefix, one trusted hop):
    every link, form, poll and the cookie's path carry the prefix."""
    client = make_app(trusted_proxies=1).test_client()
    behind = {"headers": {"X-Forwarded-Prefix": "/waygate"}, "base_url": "http://localhost/waygate"}
    page = client.get("/console/login", **behind).get_data(as_text=True)
    assert 'action="/waygate/console/login"' in page
    assert 'href="/waygate/console/static/console.css?v=' in page
    answer = sign_in(client, keys.admin, **behind)
    assert answer.headers["Location"] == "/waygate/console/"
    assert "Path=/waygate/console" in answer.headers["Set-Cookie"]
    approvals = client.get("/console/approvals", **behind).get_data(as_text=True)
    assert 'data-poll="/waygate/console/approvals/items"' in approvals


def test_wrong_keys_at_sign_in_spend_the_refused_key_budget(make_app, keys, caplog):
    client = make_app(rate_limit_auth_failures="3/minute").test_client()
    for _ in range(3):
        answer = sign_in(client, "y" * 32)
        assert answer.status_code == 401
        assert "not accepted" in answer.get_data(as_text=True)
        assert "Set-Cookie" not in answer.headers or "sid" not in answer.headers["Set-Cookie"]
    for key in ("y" * 32, keys.admin):  # spent: the right key is refused too, as on the API
        answer = sign_in(client, key)
        assert answer.status_code == 429
        assert "too many refused keys" in answer.get_data(as_text=True)
    # the secret is in no page, no URL and no log line
    assert keys.admin not in caplog.text and "y" * 32 not in caplog.text


@pytest.mark.both_backends
def test_a_signed_in_session_ends_at_its_timeouts_and_with_its_key(storage, backend):
    from waygate.principals import Principal
    from waygate.sessions import SessionPolicy, Sessions

    keys = KeyStore(storage)
    admin, _ = keys.create("ops-admin", "admin")
    store = Sessions(
        storage, keys, SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=12))
    )
    write = storage.execute_write
    idle, old, revoked = (store.open(Principal.of_key(admin)) for _ in range(3))
    assert store.resolve(idle) == store.resolve(old) == Principal.of_key(admin)
    write(
        "UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?",
        (isoformat(utcnow() - timedelta(minutes=31)), digest_of(idle)),
    )
    write(  # active a second ago, but its twelve hours are over
        "UPDATE sessions SET expires_at = ? WHERE id_hash = ?",
        (isoformat(utcnow() - timedelta(seconds=1)), digest_of(old)),
    )
    assert store.resolve(idle) is None and store.resolve(old) is None
    keys.revoke("ops-admin", force=True)  # the last admin key: deliberately
    assert store.resolve(revoked) is None
    rows = storage.conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    assert rows == 0  # each ended session's row is gone


def digest_of(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def test_the_approval_webhook_links_the_items_console_page():
    from waygate.approvals.webhook import payload
    from waygate.audit import Execution
    from waygate.outcomes import ApprovalStep

    execution = Execution(
        command_id="cmd_1",
        action="wipe",
        plugin="Testing",
        key_name="carol",
        key_id=3,
        mode="sync",
        status="awaiting_approval",
        duration_ms=None,
        error=None,
        timeout_s=30,
        worker_pid=None,
        created_at="2026-12-07T08:00:00.000Z",
        started_at=None,
        finished_at=None,
    )
    body = payload(ApprovalStep.REQUESTED, execution, "https://waygate.example.com")
    assert body["console_url"] == "https://waygate.example.com/console/executions/cmd_1"
    assert body["text"].endswith(body["console_url"])
    assert "console_url" not in payload(ApprovalStep.REQUESTED, execution)  # no public URL


@pytest.mark.both_backends
def test_executions_page_by_keyset_newest_first_with_filters(storage, backend):
    from waygate.audit import AuditLog

    audit = AuditLog(storage)
    base = utcnow() - timedelta(hours=1)
    for n in range(130):
        audit.record(
            command_id=f"cmd_{n:04d}",
            action="echo" if n % 2 else "status",
            plugin="Core",
            key_name="k1" if n % 3 else "k2",
            mode="sync",
            status="success",
            duration_ms=1,
            error=None,
            timeout_s=30,
            # pairs share a time: the command id breaks the tie
            created_at=isoformat(base + timedelta(seconds=n // 2)),
            started_at=None,
        )
    seen, cursor = [], None
    while True:
        rows, cursor = audit.page(action="echo", before=cursor, limit=20)
        seen += [row.command_id for row in rows]
        if cursor is None:
            break
    expected = sorted((f"cmd_{n:04d}" for n in range(130) if n % 2), reverse=True)
    assert seen == expected
    rows, _ = audit.page(key_name="k2", limit=100)
    assert [r.command_id for r in rows] == sorted(
        (f"cmd_{n:04d}" for n in range(130) if not n % 3), reverse=True
    )
    if backend == "sqlite":  # each filter reads an index in order, not the whole table
        for column in ("status", "action", "key_name"):
            plan = storage.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT command_id FROM executions WHERE {column} = ?"  # noqa: S608
                " AND (created_at < ? OR (created_at = ? AND command_id < ?))"
                " ORDER BY created_at DESC, command_id DESC LIMIT 51",
                ("x", "z", "z", "z"),
            ).fetchall()
            assert "USING INDEX" in str([tuple(row) for row in plan]), (column, plan)


def test_behind_a_proxy_on_port_443_the_browsers_origin_is_the_consoles_own(make_app, keys):
    """nginx forwards the port it listens on (443); a browser's Origin leaves the default
    port out: the two are the same origin, and a form from another one is still refused."""
    client = make_app(trusted_proxies=1).test_client()
    proxy = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "waygate.example.com",
        "X-Forwarded-Port": "443",
        "X-Forwarded-For": "192.0.2.7",
    }
    page = client.get("/console/login", headers=proxy).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = {"api_key": keys.admin, "csrf_token": token}
    for origin, status in (
        ("https://waygate.example.com:8443", 403),
        ("http://waygate.example.com", 403),
        ("https://waygate.example.com", 303),
    ):
        answer = client.post("/console/login", data=form, headers={**proxy, "Origin": origin})
        assert answer.status_code == status, origin
    assert "Secure" in answer.headers["Set-Cookie"]


def test_an_executions_trace_id_links_through_the_configured_template(make_app, keys):
    client = make_app(
        trace_url_template="https://jaeger.example.com/trace/{trace_id}"
    ).test_client()
    audit = client.application.extensions["waygate"].audit
    audit.record(
        command_id="cmd_traced",
        action="echo",
        plugin="Core",
        key_name="ops-user",
        mode="sync",
        status="success",
        duration_ms=3,
        error=None,
        timeout_s=30,
        created_at=isoformat(),
        started_at=isoformat(),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    sign_in(client, keys.admin)
    page = client.get("/console/executions/cmd_traced").get_data(as_text=True)
    assert 'href="https://jaeger.example.com/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in page
    keys_page = client.get("/console/keys").get_data(as_text=True)
    assert "Created by" in keys_page and ">cli<" in keys_page  # the fixture's keys: the CLI's


def test_a_bad_filter_is_a_400_page_not_a_500(client, keys):
    sign_in(client, keys.user)
    for query in (
        "since=9999-12-31T23:59:59-23:59",  # past the end of time once in UTC
        "until=yesterday",
        "status=exploded",
    ):
        answer = client.get(f"/console/executions?{query}")
        assert answer.status_code == 400, query
        assert "INVALID_REQUEST" in answer.get_data(as_text=True)
