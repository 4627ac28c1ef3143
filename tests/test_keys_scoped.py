"""Least privilege: scoped keys everywhere a command is listed or run, expiry, rotation,
per-key limits, key management over REST and the CLI, the key event trail, the migration."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import mcp
import pytest
import requests
from mcp import StdioServerParameters

from tests.conftest import BIN
from tests.test_mcp_sdk import connect, run

pytestmark = pytest.mark.both_backends


@pytest.fixture
def api(plugin_dist, make_app, keys):
    client = make_app().test_client()
    admin = keys.headers("admin")

    def create(**body):
        answer = client.post("/keys", json=body, headers=admin)
        assert answer.status_code == 201, answer.get_json()
        return {"X-API-Key": answer.get_json()["key"]}

    client.create = create
    client.admin = admin
    return client


def execute(client, headers, action, **params):
    return client.post("/mcp/execute", json={"action": action, "params": params}, headers=headers)


def rpc(client, headers, method, params=None):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return client.post(
        "/mcp", json=body, headers={**headers, "MCP-Protocol-Version": "2025-06-18"}
    ).get_json()


# -- scopes ------------------------------------------------------------------------------------


def test_a_scoped_key_runs_only_its_commands_over_rest(api):
    agent = api.create(name="agent", allow=["echo", "Core.status"])
    assert execute(api, agent, "echo", message="hi").status_code == 200
    assert execute(api, agent, "status").status_code == 200
    refused = execute(api, agent, "process_data", input="[]", format="json")
    assert refused.status_code == 403
    error = refused.get_json()["error"]
    assert error["code"] == "FORBIDDEN" and "process_data" in error["message"]
    # async is refused before anything is accepted
    accepted = api.post(
        "/mcp/execute",
        json={"action": "analyze", "params": {"input": "[]"}, "async": True},
        headers=agent,
    )
    assert accepted.status_code == 403
    # a batch item out of scope gets its own failed response; the others run
    items = api.post(
        "/mcp/execute",
        json=[
            {"action": "echo", "params": {"message": "a"}},
            {"action": "analyze", "params": {"input": "[]"}},
        ],
        headers=agent,
    ).get_json()
    assert [i["status"] for i in items] == ["success", "failed"]
    assert "FORBIDDEN" in items[1]["error"] and "analyze" in items[1]["error"]


def test_discovery_lists_only_what_the_key_may_run(api):
    agent = api.create(name="agent", allow=["echo", "Core.status"])
    listed = api.get("/mcp/commands", headers=agent).get_json()
    assert [c["name"] for c in listed["commands"]] == ["echo", "status"]
    assert listed["total"] == 2
    status = api.get("/mcp/status", headers=agent).get_json()
    assert status["commands_available"] == ["echo", "status"]
    tools = rpc(api, agent, "tools/list")["result"]["tools"]
    assert [t["name"] for t in tools] == ["echo", "status", "waygate_execution"]  # + built in
    # the admin key is unscoped
    everything = api.get("/mcp/commands", headers=api.admin).get_json()["total"]
    assert everything > 2


def test_mcp_answers_a_hidden_tool_exactly_as_a_missing_one(api):
    agent = api.create(name="agent", allow=["echo"])
    hidden = rpc(api, agent, "tools/call", {"name": "analyze", "arguments": {"input": "[]"}})
    missing = rpc(api, agent, "tools/call", {"name": "nosuch", "arguments": {"input": "[]"}})
    assert json.dumps(hidden).replace("analyze", "X") == json.dumps(missing).replace("nosuch", "X")
    assert "process_data" not in json.dumps(hidden)  # nor does it list what it may not see


def test_read_only_keys_run_only_read_only_commands(api):
    reader = api.create(name="dashboard", read_only=True)
    assert execute(api, reader, "status").status_code == 200
    assert execute(api, reader, "sleep", seconds=0).status_code == 403  # no readOnlyHint
    names = [
        c["name"] for c in api.get("/mcp/commands?limit=100", headers=reader).get_json()["commands"]
    ]
    assert "status" in names and "sleep" not in names and "boom" not in names


def test_a_plugin_reload_never_widens_a_scoped_key(plugin_dist, make_app, keys):
    plugin_dist.unregister("Testing")
    client = make_app().test_client()
    body = {"name": "agent", "allow": ["echo", "Testing.sl*"]}
    agent = {
        "X-API-Key": client.post("/keys", json=body, headers=keys.headers("admin")).get_json()[
            "key"
        ]
    }
    assert [
        c["name"] for c in client.get("/mcp/commands", headers=agent).get_json()["commands"]
    ] == ["echo"]
    plugin_dist.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    assert client.post("/plugins/reload", headers=keys.headers("admin")).status_code == 200
    listed = [c["name"] for c in client.get("/mcp/commands", headers=agent).get_json()["commands"]]
    assert listed == ["echo", "sleep"]  # the new plugin's other commands stay out of reach
    assert execute(client, agent, "boom").status_code == 403


# -- expiry, rotation, per-key limits ----------------------------------------------------------


def test_an_expired_key_is_told_it_expired(api):
    short = api.create(name="short", expires_in=1)
    assert execute(api, short, "echo", message="hi").status_code == 200
    time.sleep(1.1)
    answer = execute(api, short, "echo", message="hi")
    assert answer.status_code == 401
    assert "expired" in answer.get_json()["error"]["message"]
    events = api.get("/key-events?key=short&event=expired_use", headers=api.admin).get_json()
    assert events["total"] == 1 and events["events"][0]["actor_name"] == "short"


def test_rotation_keeps_the_old_secret_for_its_grace_period_only(api):
    old = api.create(name="ci")
    rotated = api.post("/keys/ci/rotate", json={"grace_seconds": 1}, headers=api.admin)
    assert rotated.status_code == 200
    new = {"X-API-Key": rotated.get_json()["key"]}
    assert new != old
    assert execute(api, old, "echo", message="x").status_code == 200
    assert execute(api, new, "echo", message="x").status_code == 200
    time.sleep(1.1)
    assert execute(api, old, "echo", message="x").status_code == 401
    assert execute(api, new, "echo", message="x").status_code == 200
    # without grace the old secret is refused at once
    newer = api.post("/keys/ci/rotate", json={}, headers=api.admin).get_json()["key"]
    assert execute(api, new, "echo", message="x").status_code == 401
    assert execute(api, {"X-API-Key": newer}, "echo", message="x").status_code == 200


def test_a_key_with_its_own_limit_is_held_to_it(api):
    limited = api.create(name="cron", rate_limit="3/minute")
    answers = [execute(api, limited, "echo", message="x") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    assert answers[2].headers["X-RateLimit-Remaining"] == "0"
    # other keys keep the default
    other = api.create(name="other")
    assert execute(api, other, "echo", message="x").headers["X-RateLimit-Limit"] == "100"


def test_a_per_key_limit_is_exact_across_workers(plugin_dist, server_factory, keys):
    server = server_factory(workers=3, GUNICORN_CMD_ARGS="--worker-connections 2")
    created = requests.post(
        server.url + "/keys",
        json={"name": "fleet", "rate_limit": "10/minute"},
        headers=keys.headers("admin"),
        timeout=10,
    )
    fleet = {"X-API-Key": created.json()["key"]}

    def call(_):
        return requests.post(
            server.url + "/mcp/execute",
            json={"action": "echo", "params": {"message": "x"}},
            headers=fleet,
            timeout=10,
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = Counter(pool.map(call, range(15)))
    assert codes == {200: 10, 429: 5}


# -- keys over REST ----------------------------------------------------------------------------


def test_keys_are_managed_over_rest_and_secrets_shown_once(api):
    created = api.post(
        "/keys",
        json={
            "name": "agent",
            "allow": ["echo"],
            "read_only": True,
            "expires_in": 3600,
            "rate_limit": "50/minute",
        },
        headers=api.admin,
    )
    assert created.status_code == 201
    record = created.get_json()
    secret = record.pop("key")
    assert len(secret) == 32
    assert record["allow"] == ["echo"] and record["read_only"] is True
    assert record["rate_limit"] == "50/minute" and record["expires_at"]
    listed = api.get("/keys", headers=api.admin)
    assert secret not in listed.get_data(as_text=True)
    assert "key_hash" not in listed.get_data(as_text=True)
    assert listed.headers["X-Total-Count"] == "3"
    one = api.get("/keys/agent", headers=api.admin).get_json()
    assert one == {**record, "last_used_at": None}
    changed = api.patch("/keys/agent", json={"allow": None, "read_only": False}, headers=api.admin)
    assert changed.status_code == 200 and changed.get_json()["allow"] is None
    revoked = api.delete("/keys/agent", headers=api.admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert execute(api, {"X-API-Key": secret}, "echo", message="x").status_code == 401
    assert api.get("/keys/agent", headers=api.admin).status_code == 404


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"name": "a", "allow": ["echo;rm"]}, 400, "allow"),
        ({"name": "a", "allow": "echo"}, 400, "allow"),
        ({"name": "a", "role": "root"}, 400, "role"),
        ({"name": "a", "expires_in": -5}, 400, "expires_in"),
        ({"name": "a", "expires_in": 10, "expires_at": "2030-01-01T00:00:00Z"}, 400, "expires_at"),
        ({"name": "a", "expires_at": "yesterday"}, 400, "expires_at"),
        ({"name": "a", "rate_limit": "lots"}, 400, "rate_limit"),
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "u1\n"}, 400, "name"),  # anchored at the end too: no second "u1"
        ({"name": "a", "allow": ["echo\n"]}, 400, "allow"),
        ({"name": "a", "colour": "red"}, 400, "colour"),
        ({"role": "user"}, 400, "name"),
        ({"name": "ops-user"}, 409, "name"),
    ],
)
def test_bad_key_requests_get_field_details(api, body, status, field):
    answer = api.post("/keys", json=body, headers=api.admin)
    assert answer.status_code == status, answer.get_json()
    assert field in answer.get_json()["error"]["details"]["fields"]


def test_a_name_with_a_trailing_newline_is_refused_not_a_second_key(api, runner):
    api.create(name="u1")
    answer = api.post("/keys", json={"name": "u1\n"}, headers=api.admin)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "INVALID_REQUEST"
    names = [k["name"] for k in api.get("/keys?limit=100", headers=api.admin).get_json()["keys"]]
    assert names.count("u1") == 1 and "u1\n" not in names
    code, _, err = runner("keys", "create", "--name", "u1\n")
    assert code == 1 and "invalid name" in err


def test_the_last_live_admin_key_is_not_revoked_or_expired_by_accident(api, keys, runner):
    # an admin key that has expired does not count as one left
    keys.store.create("stale-admin", "admin", expires_at="2099-01-01T00:00:00.000Z")
    keys.store.storage.execute_write(
        "UPDATE api_keys SET expires_at = '2020-01-01T00:00:00.000Z' WHERE name = 'stale-admin'"
    )
    for answer in (
        api.delete("/keys/ops-admin", headers=api.admin),
        api.patch("/keys/ops-admin", json={"expires_in": 3600}, headers=api.admin),
    ):
        assert answer.status_code == 409, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "CONFLICT" and "last live admin key" in error["message"]
        assert "--force" in error["message"] and error["details"]["name"] == "ops-admin"
    assert api.get("/keys", headers=api.admin).status_code == 200  # still an admin
    assert api.get("/keys/ops-admin", headers=api.admin).get_json()["expires_at"] is None
    # with a second live admin either may go, and then the other is the last
    second = api.create(name="second-admin", role="admin")
    assert api.patch("/keys/ops-admin", json={"expires_in": 60}, headers=second).status_code == 200
    assert api.delete("/keys/ops-admin", headers=second).status_code == 200
    assert api.delete("/keys/second-admin", headers=second).status_code == 409
    # deliberately, on the host
    code, _, err = runner("keys", "revoke", "second-admin")
    assert code == 1 and "waygate keys revoke second-admin --force" in err
    code, _, err = runner("keys", "update", "second-admin", "--expires", "1h")
    assert code == 1 and "--force" in err
    code, _, err = runner("keys", "update", "second-admin", "--expires", "1h", "--force")
    assert code == 0, err
    code, out, err = runner("keys", "revoke", "second-admin", "--force")
    assert code == 0 and "revoked key 'second-admin'" in out
    assert api.get("/keys", headers=second).status_code == 401


def test_only_admin_keys_manage_keys(api, keys):
    for method, path in (
        ("get", "/keys"),
        ("post", "/keys"),
        ("get", "/key-events"),
        ("delete", "/keys/ops-admin"),
    ):
        answer = getattr(api, method)(
            path, json={"name": "x"} if method == "post" else None, headers=keys.headers()
        )
        assert answer.status_code == 403, (method, path)


def test_the_key_trail_names_the_acting_admin_and_holds_no_secret(api, keys):
    secret = api.create(name="agent")["X-API-Key"]
    api.patch("/keys/agent", json={"rate_limit": "5/minute"}, headers=api.admin)
    rotated = api.post(
        "/keys/agent/rotate", json={"grace_seconds": 60}, headers=api.admin
    ).get_json()["key"]
    api.delete("/keys/agent", headers=api.admin)
    trail = api.get("/key-events?key=agent", headers=api.admin)
    body = trail.get_json()
    assert [e["event"] for e in body["events"]] == ["revoked", "rotated", "changed", "created"]
    assert {e["actor_name"] for e in body["events"]} == {"ops-admin"}
    assert {e["actor_id"] for e in body["events"]} == {keys.store.get("ops-admin").id}
    text = trail.get_data(as_text=True)
    assert secret not in text and rotated not in text
    assert api.get("/key-events?event=created&limit=1", headers=api.admin).get_json()["total"] >= 1
    assert api.get("/key-events?event=nope", headers=api.admin).status_code == 400


# -- the CLI, on the same service code ---------------------------------------------------------


def test_the_cli_creates_updates_rotates_and_lists_events(runner):
    assert runner("migrate")[0] == 0  # key commands work on an existing database only
    code, out, _ = runner(
        "keys",
        "create",
        "--name",
        "bot",
        "--allow",
        "echo",
        "--allow",
        "Core.*",
        "--read-only",
        "--expires",
        "30d",
        "--rate-limit",
        "1000/minute",
    )
    assert code == 0
    secret = out.strip().splitlines()[-1]
    assert len(secret) == 32
    code, out, _ = runner("keys", "update", "bot", "--allow-all", "--not-read-only")
    assert code == 0 and json.loads(out)["allow"] is None and json.loads(out)["read_only"] is False
    code, out, _ = runner("keys", "rotate", "bot", "--grace", "1h")
    assert code == 0 and out.strip().splitlines()[-1] != secret
    code, out, _ = runner("keys", "events", "--key", "bot")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["rotated", "changed", "created"]
    assert {e["actor_name"] for e in events} == {"cli"}
    code, _, err = runner("keys", "create", "--name", "bot2", "--expires", "soon")
    assert code == 1 and "duration" in err
    code, _, err = runner("keys", "create", "--name", "bot")
    assert code == 1 and "already exists" in err


# -- MCP clients with a scope ------------------------------------------------------------------


def test_the_official_sdk_with_a_scoped_key_sees_and_runs_only_its_tools(server_factory, keys):
    server = server_factory(workers=2)
    created = requests.post(
        server.url + "/keys",
        json={"name": "agent", "allow": ["echo", "status"]},
        headers=keys.headers("admin"),
        timeout=10,
    ).json()

    async def scenario():
        http, client = connect(server.url + "/mcp", created["key"], "legacy")
        async with http, client:
            names = {t.name for t in (await client.list_tools()).tools}
            echo = await client.call_tool("echo", {"message": "hi"})
            with pytest.raises(mcp.MCPError) as hidden:  # exactly as for a tool that is not there
                await client.call_tool("analyze", {"input": "[]"})
            return names, echo, hidden.value

    names, echo, hidden = run(scenario())
    assert names == {"echo", "status", "waygate_execution"}
    assert echo.is_error is False
    assert hidden.error.code == -32602 and hidden.error.message == "Unknown tool: analyze"


# a `waygate mcp stdio` process
@pytest.mark.server
def test_waygate_mcp_stdio_offers_only_the_scope_it_was_given(data_dir):
    params = StdioServerParameters(
        command=str(BIN / "waygate"),
        args=["mcp", "stdio", "--as", "desktop", "--allow", "echo", "--allow", "DataProcessor.*"],
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
    )

    async def scenario():
        async with mcp.Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            with pytest.raises(mcp.MCPError) as hidden:
                await client.call_tool("status", {})
            return names, hidden.value

    names, hidden = run(scenario())
    assert names == {"echo", "process_data", "analyze", "waygate_execution"}
    assert hidden.error.code == -32602 and hidden.error.message == "Unknown tool: status"


# -- migration ---------------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_keys_made_before_scopes_keep_working_unscoped(data_dir, make_app):
    """A database made by the previous release (migrations up to m008, keys created then)."""
    import hashlib

    from sqlite_utils import Database

    from waygate.storage.migrations import STATE
    from waygate.storage.sqlite import sqlite_migrations

    conn = sqlite3.connect(data_dir / "waygate.db")
    sqlite_migrations(STATE).apply(Database(conn), stop_before="m009_key_scopes")
    conn.execute(
        "INSERT INTO api_keys (name, role, key_hash, created_at) VALUES (?, 'user', ?, ?)",
        ("legacy", hashlib.sha256(b"L" * 32).hexdigest(), "2026-11-01T00:00:00.000Z"),
    )
    conn.commit()
    conn.close()
    client = make_app().test_client()
    legacy = {"X-API-Key": "L" * 32}
    assert execute(client, legacy, "echo", message="still here").status_code == 200
    assert execute(client, legacy, "process_data", input="[]", format="json").status_code == 200
    commands = client.get("/mcp/commands", headers=legacy).get_json()["total"]
    assert commands == 5


@pytest.mark.sqlite_only
def test_m015_keeps_who_created_each_key_from_the_key_events(tmp_path):
    import sqlite_utils

    from waygate.storage import SqliteStorage
    from waygate.storage.migrations import STATE
    from waygate.storage.sqlite import sqlite_migrations

    migrations = sqlite_migrations(STATE)

    conn = SqliteStorage(tmp_path / "waygate.db").connect()
    conn.row_factory = None
    db = sqlite_utils.Database(conn)
    migrations.apply(db, stop_before="m015_key_created_by")
    for key_id, name, actor_id, actor_name in ((1, "root", None, "cli"), (2, "made", 1, "root")):
        db.execute(
            "INSERT INTO api_keys (id, name, role, key_hash, created_at) VALUES (?, ?, 'admin',"
            " ?, '2026-11-01T00:00:00.000Z')",
            (key_id, name, f"h{key_id}"),
        )
        db.execute(
            "INSERT INTO key_events (at, event, key_id, key_name, actor_id, actor_name) VALUES"
            " ('2026-11-01T00:00:00.000Z', 'created', ?, ?, ?, ?)",
            (key_id, name, actor_id, actor_name),
        )
    db.execute(  # a key whose trail was lost: nobody is named
        "INSERT INTO api_keys (id, name, role, key_hash, created_at) VALUES (3, 'orphan', 'user',"
        " 'h3', '2026-11-01T00:00:00.000Z')"
    )
    db.conn.commit()
    migrations.apply(db)
    db.conn.commit()
    rows = db.execute("SELECT name, created_by_key_id, created_by FROM api_keys ORDER BY id")
    assert rows.fetchall() == [("root", None, "cli"), ("made", 1, "root"), ("orphan", None, None)]
