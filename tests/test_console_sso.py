"""A person in the web console (issues 27 and 28 together): with OpenID Connect configured,
the console's sign-in page offers "Sign in with <provider>"; a person who clicks it signs in
at the real authorization server of tests/authserver.py (code flow with PKCE, in a real
Chromium), lands in the console, and as a member of the approver group decides on requests,
but never on their own (the two-person rule compares people, whichever key they asked with).
Against gunicorn with 2 workers."""

from __future__ import annotations

import re
import secrets
import time

import pytest
import requests

from tests.authserver import Person, TestAuthorizationServer
from tests.browser import axe_violations, new_page
from tests.conftest import PluginDist, Server, free_port
from waygate.config import Config
from waygate.keystore import KeyStore
from waygate.storage import open_storage

WIPE = {"action": "wipe", "params": {"target": "db-eu-2", "seconds": 0.05}}


@pytest.fixture(scope="module")
def sso(tmp_path_factory, starts_servers):
    authserver = TestAuthorizationServer().start()
    authserver.signed_in = Person("dana", ["ops", "approvers"], "Dana Ops", "dana@example.com")
    root = tmp_path_factory.mktemp("console-sso")
    plugins = PluginDist(root / "site")
    plugins.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    data = root / "data"
    data.mkdir()
    storage = open_storage(Config(data_dir=data))
    storage.migrate()
    store = KeyStore(storage)
    _, carol = store.create("carol", "user")
    _, danas = store.create(  # Dana's own key: her requests through it are hers
        "dana-laptop", "user", owner=f"{authserver.issuer}#dana", owner_name="Dana Ops"
    )
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(16)
    client = authserver.register_client(f"{public}/auth/callback", secret, "client_secret_basic")
    server = Server(
        data_dir=data,
        workers=2,
        port=port,
        env={
            "PYTHONPATH": str(plugins.root),
            "WAYGATE_OAUTH_ISSUER": authserver.issuer,
            "WAYGATE_PUBLIC_URL": public,
            "WAYGATE_OIDC_CLIENT_ID": client.client_id,
            "WAYGATE_OIDC_CLIENT_SECRET": secret,
            "WAYGATE_OIDC_PROVIDER_NAME": "Example SSO",
            "WAYGATE_OAUTH_APPROVER_GROUPS": "approvers",
            "WAYGATE_RATE_LIMIT_EXECUTE": "10000/minute",
            "WAYGATE_RATE_LIMIT_DEFAULT": "10000/minute",
        },
    ).start()
    yield server, {"carol": carol, "dana": danas}
    server.stop()
    storage.close()
    authserver.stop()


def ask(server: Server, key: str) -> str:
    held = requests.post(
        server.url + "/mcp/execute", json=WIPE, headers={"X-API-Key": key}, timeout=10
    )
    assert held.status_code == 202 and held.json()["status"] == "awaiting_approval", held.text
    return held.json()["command_id"]


def outcome(server: Server, command_id: str, key: str, deadline_s: float = 10) -> dict:
    end = time.monotonic() + deadline_s
    while True:
        body = requests.get(
            f"{server.url}/mcp/executions/{command_id}", headers={"X-API-Key": key}, timeout=10
        ).json()
        if body["status"] not in ("pending", "running") or time.monotonic() > end:
            return body
        time.sleep(0.02)


def test_a_person_signs_in_with_the_provider_and_approves_in_the_inbox(browser, sso):
    server, keys = sso
    carols = ask(server, keys["carol"])  # someone else's request
    own = ask(server, keys["dana"])  # Dana's own, through the key she owns
    with new_page(browser) as page:
        page.goto(server.url + "/console/approvals")
        assert "/console/login" in page.url  # not signed in yet
        assert axe_violations(page) == []
        page.get_by_role("link", name="Sign in with Example SSO").click()
        # to the authorization server and back, to where the browser was going
        page.wait_for_url("**/console/approvals")
        assert "Dana Ops (user)" in page.locator(".who").inner_text()

        mine = page.locator(f'[data-id="{own}"]')
        assert "key dana-laptop, person Dana Ops" in mine.inner_text()
        assert mine.get_by_role("button", name="Approve").is_disabled()
        assert "another person must" in mine.locator(".refusal").inner_text()

        row = page.locator(f'[data-id="{carols}"]')
        assert "key carol" in row.inner_text()
        row.get_by_label("Reason").fill("checked with carol")
        row.get_by_role("button", name="Approve").click()
        page.wait_for_url("**/console/approvals")
        assert f"Approved {carols}" in page.get_by_role("status").inner_text()

        page.goto(f"{server.url}/console/executions/{carols}")
        assert page.locator(".decided-by").inner_text().startswith("Dana Ops")
        assert page.locator(".decision-reason").inner_text() == "checked with carol"

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/console/login")
        page.goto(server.url + "/console/approvals")  # the person's session ended too
        assert re.search(r"/console/login\?next=", page.url)

    approved = outcome(server, carols, keys["carol"])
    assert approved["status"] == "success"
    assert approved["approval"]["decided_by"] == "Dana Ops"
    held = outcome(server, own, keys["dana"])
    assert held["status"] == "awaiting_approval"  # nobody decided on Dana's own request


def test_without_oidc_the_sign_in_page_offers_only_the_api_key(make_app):
    page = make_app().test_client().get("/console/login").get_data(as_text=True)
    assert "API key" in page and "Sign in with" not in page
