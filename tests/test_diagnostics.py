"""Diagnostics endpoints (admin): connection, performance and the persisted error log."""

import logging
import time

import pytest

from tests.test_http import assert_envelope

pytestmark = pytest.mark.both_backends


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


@pytest.mark.parametrize(
    "path", ["/diagnostics/connection", "/diagnostics/performance", "/diagnostics/errors"]
)
def test_diagnostics_are_admin_only(client, keys, path):
    assert_envelope(client.get(path), 401, "UNAUTHORIZED")
    assert_envelope(client.get(path, headers=keys.headers("user")), 403, "FORBIDDEN")
    assert client.get(path, headers=keys.headers("admin")).status_code == 200


def test_connection_report_shape(client, keys):
    body = client.get("/diagnostics/connection", headers=keys.headers("admin")).get_json()
    assert body["server"] == "running"
    assert set(body["connections"]) == {"active", "total", "max"}
    assert "lo" in body["network"]["interfaces"]


def test_performance_report_shape(client, keys):
    for _ in range(5):
        client.get("/health")
    body = client.get("/diagnostics/performance", headers=keys.headers("admin")).get_json()
    assert body["memory"]["rss_mb"] > 0 and body["threads"] >= 1 and body["open_files"] >= 1
    times = body["response_times"]
    assert times["samples"] >= 5
    assert 0 <= times["p50_ms"] <= times["p95_ms"] <= times["p99_ms"]


def test_a_failed_command_is_persisted_once_with_its_request(client, keys, data_dir):
    response = client.post("/mcp/execute", json={"action": "boom"}, headers=keys.headers())
    body = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()
    assert body["total"] == 1
    error = body["errors"][0]
    assert "(boom) failed: RuntimeError: kaboom" in error["message"]
    assert error["code"] == "INTERNAL_ERROR" and error["level"] == "ERROR"
    assert error["context"]["endpoint"] == "/mcp/execute"
    assert error["context"]["method"] == "POST"
    assert error["context"]["exception"] == "RuntimeError"
    assert error["request_id"] == response.headers["X-Request-ID"]


def test_an_error_record_outside_any_request_keeps_the_request_id_its_log_line_shows(
    client, keys, caplog
):
    accepted = client.post(
        "/mcp/execute", json={"action": "boom", "async": True}, headers=keys.headers()
    )
    request_id, location = accepted.headers["X-Request-ID"], accepted.headers["Location"]
    deadline = time.monotonic() + 10
    while client.get(location, headers=keys.headers()).get_json()["status"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    errors = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()["errors"]
    (failed,) = [e for e in errors if "kaboom" in e["message"]]
    assert "endpoint" not in failed["context"]  # run by a pool thread, after the request
    assert failed["request_id"] == request_id
    (line,) = [r for r in caplog.records if "kaboom" in r.getMessage()]
    assert line.request_id == request_id  # the log line's id, as the row has it


def test_an_error_record_of_no_request_has_no_request_id(client, keys, app_services_of):
    logging.getLogger("waygate.housekeeping").error("sweep failed: disk away")
    errors = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()["errors"]
    (row,) = [e for e in errors if e["message"] == "sweep failed: disk away"]
    assert row["request_id"] is None


def test_a_health_503_is_persisted_with_its_code(make_app, keys):
    client = make_app(min_free_bytes=2**62).test_client()
    client.get("/health")
    errors = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()["errors"]
    assert errors[0]["code"] == "SERVICE_UNAVAILABLE"
    assert "filesystem" in errors[0]["message"]


def test_errors_never_hold_keys_or_bodies(client, keys, db):
    client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "boom", "context": {"secret": "hunter2-body-value"}},
    )
    client.get("/diagnostics/errors", headers={"X-API-Key": "wrong-" + keys.user})
    dump = "\n".join(str(row) for row in db("SELECT * FROM errors"))
    assert dump and keys.user not in dump and keys.admin not in dump
    assert "hunter2-body-value" not in dump


def test_errors_limit_defaults_to_10_and_pages(client, keys):
    for _ in range(12):
        client.post("/mcp/execute", json={"action": "boom"}, headers=keys.headers())
    response = client.get("/diagnostics/errors", headers=keys.headers("admin"))
    assert len(response.get_json()["errors"]) == 10
    assert response.headers["X-Total-Count"] == "12"
    assert 'rel="next"' in response.headers["Link"]


@pytest.mark.parametrize("query", ["limit=101", "limit=0", "since=not-a-date", "since=2025-13-45"])
def test_bad_errors_parameters_are_400(client, keys, query):
    assert_envelope(
        client.get(f"/diagnostics/errors?{query}", headers=keys.headers("admin")),
        400,
        "INVALID_REQUEST",
    )


def test_errors_since_filters(client, keys):
    client.post("/mcp/execute", json={"action": "boom"}, headers=keys.headers())
    body = client.get(
        "/diagnostics/errors?since=2099-01-01T00:00:00Z", headers=keys.headers("admin")
    ).get_json()
    assert body == {"errors": [], "total": 0}
