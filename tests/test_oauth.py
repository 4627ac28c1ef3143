"""Waygate as an OAuth 2.1 resource server (issue 27), against a real authorization server
built on Authlib (tests/authserver.py) on loopback: protected-resource metadata, the 401
challenge, JWT verification and its refusals, introspection, claims to permissions, key
rotation and outages. The official MCP SDK's OAuth client runs the whole flow against
gunicorn in test_oauth_sdk.py."""

from __future__ import annotations

import secrets
import threading
import time

import jwt
import pytest

from tests.authserver import OpaqueToken, Person, SigningKey, TestAuthorizationServer

PUBLIC_URL = "https://waygate.example"
RESOURCE = f"{PUBLIC_URL}/mcp"
METADATA_URL = f"{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp"
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def call(name, arguments=None, id_=2):
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {}},
    }


@pytest.fixture(scope="module")
def authserver():
    server = TestAuthorizationServer().start()
    yield server
    server.stop()


@pytest.fixture
def oauth_app(authserver, make_app, plugin_dist):
    """Build an app that trusts the test authorization server, with setting overrides."""
    authserver.down, authserver.delay_s, authserver.opaque = False, 0.0, False

    def build(**overrides):
        settings = {
            "oauth_issuer": authserver.issuer,
            "public_url": PUBLIC_URL,
            "oauth_admin_groups": ("ops-admins",),
            "oauth_approver_groups": ("approvers",),
            **overrides,
        }
        return make_app(**settings)

    return build


@pytest.fixture
def client(oauth_app):
    return oauth_app().test_client()


def bearer(token):
    return {"Authorization": f"Bearer {token}", **MCP_HEADERS}


def challenge(response) -> str:
    return response.headers.get("WWW-Authenticate", "")


def test_protected_resource_metadata_names_the_mcp_url_the_issuer_and_the_scopes(
    client, authserver
):
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ):
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.get_json() == {
            "resource": RESOURCE,
            "authorization_servers": [authserver.issuer],
            "scopes_supported": ["waygate:read", "waygate:run"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Waygate",
        }


def test_without_oauth_there_is_no_metadata_and_mcp_still_refuses_with_403(make_app):
    client = make_app().test_client()
    assert client.get("/.well-known/oauth-protected-resource/mcp").status_code == 404
    answer = client.post("/mcp", json=LIST, headers=MCP_HEADERS)
    assert answer.status_code == 403 and "resource_metadata" not in challenge(answer)


def test_mcp_without_credentials_is_401_with_a_challenge_that_starts_discovery(client):
    answer = client.post("/mcp", json=LIST, headers=MCP_HEADERS)
    assert answer.status_code == 401
    assert challenge(answer) == (
        f'Bearer resource_metadata="{METADATA_URL}", scope="waygate:read waygate:run"'
    )
    assert answer.get_json()["error"]["data"]["code"] == "UNAUTHORIZED"


def test_a_wrong_api_key_stays_403_without_a_challenge(client):
    for headers in ({"X-API-Key": "x" * 32}, {"Authorization": "Bearer " + "x" * 32}):
        answer = client.post("/mcp", json=LIST, headers={**headers, **MCP_HEADERS})
        assert answer.status_code == 403, headers
        assert "WWW-Authenticate" not in answer.headers


def test_api_keys_keep_working_beside_oauth(client, keys):
    answer = client.post("/mcp", json=LIST, headers={**keys.headers(), **MCP_HEADERS})
    assert answer.status_code == 200 and answer.get_json()["result"]["tools"]


def test_a_valid_token_calls_tools_on_mcp_and_the_rest_api_as_its_person(
    client, authserver, app_services_of
):
    token = authserver.mint(RESOURCE)
    listed = client.post("/mcp", json=LIST, headers=bearer(token))
    assert listed.status_code == 200, listed.get_json()
    assert "echo" in {tool["name"] for tool in listed.get_json()["result"]["tools"]}
    called = client.post("/mcp", json=call("echo", {"message": "hi"}), headers=bearer(token))
    assert called.get_json()["result"]["structuredContent"] == {"result": "hi"}
    rest = client.post(
        "/mcp/execute",
        json={"action": "echo", "params": {"message": "rest"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert rest.status_code == 200 and rest.get_json()["result"] == {"result": "rest"}
    rows = (
        app_services_of(client)
        .storage.conn.execute("SELECT key_name, key_id, principal FROM executions")
        .fetchall()
    )
    assert [tuple(row) for row in rows] == [("Alice Ops", None, f"{authserver.issuer}#alice")] * 2


def foreign_key():
    return SigningKey.new("key-1")  # the issuer's kid, another key


REFUSALS = {
    "wrong audience": lambda s: s.mint("https://other.example/mcp"),
    "expired": lambda s: s.mint(RESOURCE, exp=int(time.time()) - 3600),
    "not yet valid": lambda s: s.mint(RESOURCE, nbf=int(time.time()) + 3600),
    "no expiry": lambda s: s.mint(RESOURCE, exp=None),
    "wrong issuer": lambda s: s.mint(RESOURCE, iss="https://evil.example"),
    "unknown kid": lambda s: s.mint(RESOURCE, key=SigningKey.new("key-unknown")),
    "foreign signature": lambda s: s.mint(RESOURCE, key=foreign_key()),
    "alg none": lambda s: jwt.encode(
        s.claims(s.signed_in, RESOURCE, "waygate:run", "x"),
        None,
        algorithm="none",
        headers={"kid": s.signing.kid},
    ),
    "HS256 signed with the public key": lambda s: hs256_with_public_key(s),
}


def hs256_with_public_key(server):
    """The classic confusion: the RSA public key (which anyone can fetch) as an HMAC secret.
    PyJWT refuses to sign with a PEM as an HMAC secret, so the token is put together here."""
    import hashlib
    import hmac
    import json

    def segment(value: dict) -> bytes:
        return jwt.utils.base64url_encode(json.dumps(value).encode())

    claims = server.claims(server.signed_in, RESOURCE, "waygate:run", "x")
    signing_input = segment({"alg": "HS256", "kid": server.signing.kid}) + b"." + segment(claims)
    signature = hmac.new(server.signing.public_pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_token_is_401_invalid_token_on_mcp_and_rest(client, authserver, case):
    token = REFUSALS[case](authserver)
    answer = client.post("/mcp", json=LIST, headers=bearer(token))
    assert answer.status_code == 401, (case, answer.get_json())
    assert f'resource_metadata="{METADATA_URL}"' in challenge(answer)
    assert 'error="invalid_token"' in challenge(answer), challenge(answer)
    rest = client.get("/mcp/commands", headers={"Authorization": f"Bearer {token}"})
    assert rest.status_code == 401 and rest.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert 'error="invalid_token"' in challenge(rest)


def test_a_token_without_a_waygate_scope_is_403_insufficient_scope(client, authserver):
    answer = client.post(
        "/mcp", json=LIST, headers=bearer(authserver.mint(RESOURCE, scope="openid"))
    )
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in challenge(answer)
    assert 'scope="waygate:read waygate:run"' in challenge(answer)


def test_the_read_scope_admits_only_read_only_commands(client, authserver):
    token = authserver.mint(RESOURCE, scope="waygate:read")
    names = {
        tool["name"]
        for tool in client.post("/mcp", json=LIST, headers=bearer(token)).get_json()["result"][
            "tools"
        ]
    }
    assert "echo" in names and "pid" not in names and "wipe" not in names
    refused = client.post(
        "/mcp/execute", json={"action": "pid"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403


def test_groups_map_to_admin_and_to_allow_lists_like_a_scoped_key(oauth_app, authserver):
    client = oauth_app(oauth_group_allow={"dba": ["echo"]}).test_client()
    admin = authserver.mint(RESOURCE, Person("root", ["ops-admins"]))
    dba = authserver.mint(RESOURCE, Person("dora", ["dba"]))
    nobody = authserver.mint(RESOURCE, Person("nemo", ["guests"]))

    def rest(token, path="/mcp/executions", **body):
        headers = {"Authorization": f"Bearer {token}"}
        if body:
            return client.post(path, json=body, headers=headers)
        return client.get(path, headers=headers)

    assert rest(admin).status_code == 200
    assert rest(dba).status_code == 403
    assert rest(dba, "/mcp/execute", action="echo", params={"message": "x"}).status_code == 200
    assert rest(dba, "/mcp/execute", action="status").status_code == 403
    assert rest(nobody, "/mcp/execute", action="echo", params={"message": "x"}).status_code == 403
    assert rest(admin, "/mcp/execute", action="status").status_code == 200


def test_user_groups_keep_everyone_else_out(oauth_app, authserver):
    client = oauth_app(oauth_user_groups=("ops",)).test_client()
    outsider = authserver.mint(RESOURCE, Person("eve", ["sales"]))
    member = authserver.mint(RESOURCE, Person("bob", ["ops"]))
    assert client.post("/mcp", json=LIST, headers=bearer(outsider)).status_code == 403
    assert client.post("/mcp", json=LIST, headers=bearer(member)).status_code == 200


def test_a_rotated_signing_key_is_fetched_on_its_first_unknown_kid(oauth_app, authserver):
    app = oauth_app(oauth_jwks_refresh_s=0)
    client = app.test_client()
    assert client.post("/mcp", json=LIST, headers=bearer(authserver.mint(RESOURCE))).status_code
    authserver.rotate()
    try:
        fresh = authserver.mint(RESOURCE)
        assert client.post("/mcp", json=LIST, headers=bearer(fresh)).status_code == 200
        assert app.extensions["waygate"].oauth.keys.fetches == 2
    finally:
        authserver.keys = authserver.keys[:1]
        authserver.signing = authserver.keys[0]


def test_unknown_kids_fetch_the_keys_at_most_once_per_interval(client, authserver):
    oauth = client.application.extensions["waygate"].oauth
    assert client.post("/mcp", json=LIST, headers=bearer(authserver.mint(RESOURCE))).status_code
    for n in range(5):  # the keys were fetched moments ago: within the default 30 s interval
        token = authserver.mint(RESOURCE, key=SigningKey.new(f"junk-{n}"))
        assert client.post("/mcp", json=LIST, headers=bearer(token)).status_code == 401
    assert oauth.keys.fetches == 1


def test_the_authorization_server_down_cached_keys_work_unknown_keys_fail_closed(
    oauth_app, authserver
):
    client = oauth_app(oauth_jwks_refresh_s=0, oauth_timeout_s=1).test_client()
    good = authserver.mint(RESOURCE)
    assert client.post("/mcp", json=LIST, headers=bearer(good)).status_code == 200
    authserver.down = True
    assert client.post("/mcp", json=LIST, headers=bearer(good)).status_code == 200
    unknown = authserver.mint(RESOURCE, key=SigningKey.new("key-new"))
    answer = client.post("/mcp", json=LIST, headers=bearer(unknown))
    assert answer.status_code == 401 and 'error="invalid_token"' in challenge(answer)


def test_a_slow_authorization_server_costs_one_bounded_fetch_for_many_requests(
    oauth_app, authserver
):
    app = oauth_app(oauth_jwks_refresh_s=0, oauth_timeout_s=1)
    assert (
        app.test_client()
        .post("/mcp", json=LIST, headers=bearer(authserver.mint(RESOURCE)))
        .status_code
    )
    authserver.delay_s = 3.0
    before = authserver.requests.count("/jwks")
    unknown = authserver.mint(RESOURCE, key=SigningKey.new("key-slow"))
    answers, took = [], []

    def ask():
        started = time.monotonic()
        answers.append(app.test_client().post("/mcp", json=LIST, headers=bearer(unknown)))
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    authserver.delay_s = 0.0
    assert [a.status_code for a in answers] == [401] * 4
    assert max(took) < 2.5, took  # the timeout (1 s) and the wait for it, never the 3 s
    deadline = time.monotonic() + 5  # the one fetch reaches the server after its delay
    while authserver.requests.count("/jwks") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert authserver.requests.count("/jwks") - before == 1


def test_opaque_tokens_are_introspected_when_configured(oauth_app, authserver):
    secret = secrets.token_urlsafe(12)
    client = authserver.register_client("http://127.0.0.1:1/cb", secret, "client_secret_basic")
    app = oauth_app(
        oauth_introspection_client_id=client.client_id,
        oauth_introspection_client_secret=secret,
    ).test_client()
    authserver.opaque = True

    value = "opaque-" + "x" * 20
    authserver.opaque_tokens[value] = OpaqueToken(
        value, "c", "waygate:run", Person("olga", []), RESOURCE, int(time.time()) + 60
    )
    other = "opaque-" + "y" * 20
    authserver.opaque_tokens[other] = OpaqueToken(
        other, "c", "waygate:run", Person("olga", []), "https://other.example/mcp", 2**40
    )
    assert app.post("/mcp", json=LIST, headers=bearer(value)).status_code == 200
    for refused in (other, "opaque-unknown-token"):
        answer = app.post("/mcp", json=LIST, headers=bearer(refused))
        assert answer.status_code == 401 and 'error="invalid_token"' in challenge(answer)


def test_an_approver_group_member_approves_and_a_person_without_it_cannot(client, authserver, keys):
    wipe = {"action": "wipe", "params": {"target": "db1"}}
    requested = client.post("/mcp/execute", json=wipe, headers=keys.headers())
    assert requested.status_code == 202
    command_id = requested.get_json()["command_id"]

    def decide(person):
        token = authserver.mint(RESOURCE, person)
        return client.post(
            f"/mcp/executions/{command_id}/approve", headers={"Authorization": f"Bearer {token}"}
        )

    refused = decide(Person("mallory", ["ops"]))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "FORBIDDEN"
    ann = Person("ann", ["approvers"], "Ann Approver")
    polled = client.get(
        f"/mcp/executions/{command_id}",
        headers={"Authorization": f"Bearer {authserver.mint(RESOURCE, ann)}"},
    )
    assert polled.status_code == 200 and polled.get_json()["status"] == "awaiting_approval"
    approved = decide(ann)
    assert approved.status_code == 202, approved.get_json()
    assert approved.get_json()["approval"]["decided_by"] == "Ann Approver"


def test_a_person_cannot_approve_their_own_request(client, authserver):
    person = Person("sam", ["approvers"])
    token = authserver.mint(RESOURCE, person)
    requested = client.post(
        "/mcp/execute",
        json={"action": "wipe", "params": {"target": "db1"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert requested.status_code == 202
    command_id = requested.get_json()["command_id"]
    refused = client.post(
        f"/mcp/executions/{command_id}/approve", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403 and "own request" in refused.get_json()["error"]["message"]
    polled = client.get(
        f"/mcp/executions/{command_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert polled.status_code == 200 and polled.get_json()["status"] == "awaiting_approval"
    stranger = authserver.mint(RESOURCE, Person("tom", []))
    hidden = client.get(
        f"/mcp/executions/{command_id}", headers={"Authorization": f"Bearer {stranger}"}
    )
    assert hidden.status_code == 404  # a person sees only their own executions


@pytest.mark.parametrize(
    "settings, variable",
    [
        ({"WAYGATE_OAUTH_ALGORITHMS": "RS256,HS256"}, "WAYGATE_OAUTH_ALGORITHMS"),
        ({"WAYGATE_OAUTH_ALGORITHMS": "none"}, "WAYGATE_OAUTH_ALGORITHMS"),
        ({"WAYGATE_OAUTH_ISSUER": "http://idp.example/realms/ops"}, "WAYGATE_OAUTH_ISSUER"),
        ({"WAYGATE_OAUTH_ISSUER": "https://idp.example/?x=1"}, "WAYGATE_OAUTH_ISSUER"),
        (
            {"WAYGATE_OAUTH_ISSUER": "https://idp.example", "WAYGATE_PUBLIC_URL": ""},
            "WAYGATE_PUBLIC_URL",
        ),
        ({"WAYGATE_OAUTH_GROUP_ALLOW": '{"dba": "db.*"}'}, "WAYGATE_OAUTH_GROUP_ALLOW"),
        ({"WAYGATE_OAUTH_GROUP_ALLOW": '{"dba": ["db; drop"]}'}, "WAYGATE_OAUTH_GROUP_ALLOW"),
        ({"WAYGATE_OAUTH_RUN_SCOPE": "two words"}, "WAYGATE_OAUTH_RUN_SCOPE"),
        ({"WAYGATE_OAUTH_INTROSPECTION_CLIENT_ID": "rs"}, "WAYGATE_OAUTH_INTROSPECTION_CLIENT_ID"),
        ({"WAYGATE_OAUTH_TIMEOUT_S": "0"}, "WAYGATE_OAUTH_TIMEOUT_S"),
    ],
)
def test_settings_that_would_weaken_verification_are_refused_at_start(settings, variable):
    from waygate.config import Config, ConfigError

    environ = {"WAYGATE_PUBLIC_URL": PUBLIC_URL, **settings}
    with pytest.raises(ConfigError) as refused:
        Config.from_env({k: v for k, v in environ.items() if v})
    assert str(refused.value).startswith(variable + ":"), refused.value


def test_a_person_cannot_approve_what_their_own_key_asked_for(client, authserver, keys):
    alice = f"{authserver.issuer}#alice"
    _, key = keys.store.create("alice-ci", "user", owner=alice)
    requested = client.post(
        "/mcp/execute",
        json={"action": "wipe", "params": {"target": "db1"}},
        headers={"X-API-Key": key},
    )
    command_id = requested.get_json()["command_id"]
    token = authserver.mint(RESOURCE, Person("alice", ["approvers", "ops-admins"]))
    refused = client.post(
        f"/mcp/executions/{command_id}/approve", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 403 and "own request" in refused.get_json()["error"]["message"]


def test_key_events_name_the_person_who_acted(client, authserver):
    token = authserver.mint(RESOURCE, Person("root", ["ops-admins"], "Root Admin"))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/keys", json={"name": "made-by-root"}, headers=headers).status_code == 201
    events = client.get("/key-events", headers=headers).get_json()["events"]
    assert (events[0]["actor_name"], events[0]["actor_id"], events[0]["actor_principal"]) == (
        "Root Admin",
        None,
        f"{authserver.issuer}#root",
    )


def test_a_key_a_person_mints_is_theirs_so_it_cannot_get_their_approval(client, authserver):
    root = Person("root", ["ops-admins"], "Root Admin")
    headers = {"Authorization": f"Bearer {authserver.mint(RESOURCE, root)}"}
    minted = client.post("/keys", json={"name": "roots-bot"}, headers=headers)
    assert minted.get_json()["owner"] == f"{authserver.issuer}#root"
    requested = client.post(
        "/mcp/execute",
        json={"action": "wipe", "params": {"target": "db1"}},
        headers={"X-API-Key": minted.get_json()["key"]},
    )
    command_id = requested.get_json()["command_id"]
    refused = client.post(f"/mcp/executions/{command_id}/approve", headers=headers)
    assert refused.status_code == 403 and "own request" in refused.get_json()["error"]["message"]


def test_each_person_has_their_own_cap_of_unfinished_executions(oauth_app, authserver):
    client = oauth_app(async_max_open_per_key=1).test_client()
    wipe = {"action": "wipe", "params": {"target": "db1"}}

    def ask(person):
        token = authserver.mint(RESOURCE, person)
        return client.post(
            "/mcp/execute", json=wipe, headers={"Authorization": f"Bearer {token}"}
        ).status_code

    assert ask(Person("amy", [])) == 202  # held for approval: unfinished
    assert ask(Person("amy", [])) == 429
    assert ask(Person("ben", [])) == 202  # another person's cap, not amy's
