"""The audit log: every execution recorded, listed for admins, filtered, paginated, pruned."""

from datetime import timedelta

import pytest

from tests.test_http import assert_envelope
from waygate.clock import isoformat, utcnow

pytestmark = pytest.mark.both_backends


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


def run(client, keys, body, role="user"):
    return client.post("/mcp/execute", json=body, headers=keys.headers(role))


def rows(db):
    return db("SELECT * FROM executions ORDER BY created_at")


def test_every_kind_of_execution_is_recorded_with_the_key_name(client, keys, db):
    run(client, keys, {"action": "echo", "params": {"message": "a"}})
    run(client, keys, {"action": "boom"})
    run(client, keys, [{"action": "test"}, {"action": "test"}])
    run(client, keys, {"action": "sleep", "params": {"seconds": 2}, "timeout": 1})
    recorded = rows(db)
    assert [(r["action"], r["mode"], r["status"]) for r in recorded] == [
        ("echo", "sync", "success"),
        ("boom", "sync", "failed"),
        ("test", "batch", "success"),
        ("test", "batch", "success"),
        ("sleep", "sync", "timeout"),
    ]
    assert {r["key_name"] for r in recorded} == {"ops-user"}
    assert recorded[1]["error"] == "kaboom" and recorded[1]["plugin"] == "Testing"
    assert all(r["duration_ms"] is not None and r["finished_at"] for r in recorded)


def test_the_key_itself_is_never_stored(client, keys, data_dir, db):
    run(client, keys, {"action": "echo", "params": {"message": "a"}})
    for path in data_dir.iterdir():
        if path.is_file():
            assert keys.user.encode() not in path.read_bytes(), path.name
    for table in ("api_keys", "executions", "key_events", "errors"):
        assert keys.user not in str(db(f"SELECT * FROM {table}")), table  # noqa: S608


def test_executions_list_is_admin_only(client, keys):
    assert_envelope(client.get("/mcp/executions", headers=keys.headers("user")), 403, "FORBIDDEN")
    assert_envelope(client.get("/mcp/executions"), 401, "UNAUTHORIZED")


def test_executions_are_listed_newest_first_with_filters(client, keys):
    run(client, keys, {"action": "echo", "params": {"message": "a"}})
    run(client, keys, {"action": "boom"})
    run(client, keys, {"action": "test"})
    admin = keys.headers("admin")
    body = client.get("/mcp/executions", headers=admin).get_json()
    assert [e["action"] for e in body["executions"]] == ["test", "boom", "echo"]
    assert body["total"] == 3
    assert set(body["executions"][0]) >= {
        "command_id",
        "action",
        "plugin",
        "key_name",
        "status",
        "duration_ms",
        "error",
        "created_at",
        "finished_at",
    }
    failed = client.get("/mcp/executions?status=failed", headers=admin).get_json()
    assert [e["action"] for e in failed["executions"]] == ["boom"]
    echo = client.get("/mcp/executions?action=echo", headers=admin).get_json()
    assert echo["total"] == 1
    future = isoformat(utcnow() + timedelta(hours=1))
    assert client.get(f"/mcp/executions?since={future}", headers=admin).get_json()["total"] == 0


def test_executions_are_paginated_with_link_headers(client, keys):
    for i in range(5):
        run(client, keys, {"action": "echo", "params": {"message": str(i)}})
    response = client.get("/mcp/executions?limit=2&page=2", headers=keys.headers("admin"))
    assert len(response.get_json()["executions"]) == 2
    assert response.headers["X-Total-Count"] == "5"
    assert response.headers["X-Page-Count"] == "3"
    link = response.headers["Link"]
    for rel, page in (("first", 1), ("last", 3), ("next", 3), ("prev", 1)):
        assert f'page={page}>; rel="{rel}"' in link


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "page=0", "page=x", "since=yesterday", "status=exploded"]
)
def test_bad_list_parameters_are_400(client, keys, query):
    assert_envelope(
        client.get(f"/mcp/executions?{query}", headers=keys.headers("admin")),
        400,
        "INVALID_REQUEST",
    )


def test_retention_prunes_old_rows_only(client, keys, db, app_services_of):
    services = app_services_of(client)
    old = isoformat(utcnow() - timedelta(days=8))
    # recorded in their order (the audit chain is pruned as a prefix, oldest first)
    for i in range(1200):
        services.audit.record(
            command_id=f"cmd_old_{i}", action="old", plugin=None, key_name=None,
            mode="sync", status="success", duration_ms=1, error=None, timeout_s=30,
            created_at=old, started_at=old,
        )  # fmt: skip
    run(client, keys, {"action": "test"})
    if services.audit.chain is not None:  # chained as within the chain's delay, then pruned
        assert services.audit.chain.seal_pending()
    assert services.housekeeper.retention.prune(batch=500) == 1200
    assert [r["action"] for r in rows(db)] == ["test"]
    # the total kept by folded totals and triggers followed the inserts and the pruning
    listed = client.get("/mcp/executions", headers=keys.headers("admin"))
    assert listed.headers["X-Total-Count"] == "1" and listed.get_json()["total"] == 1


def test_housekeeping_prunes_old_errors_too(client, keys, app_services_of):
    services = app_services_of(client)
    old = isoformat(utcnow() - timedelta(days=8))
    with services.storage.write() as conn:
        conn.executemany(
            "INSERT INTO errors (timestamp, level, code, message) VALUES (?, 'ERROR', 'X', 'old')",
            [(old,)] * 700,
        )
    services.errors.record(level="ERROR", code="X", message="recent")
    services.housekeeper.run_once(prune=True)
    body = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()
    assert body["total"] == 1 and body["errors"][0]["message"] == "recent"
