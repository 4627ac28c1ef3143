"""GET /, /health and /ready as the spec shows them, and health checks that really fail."""

import shutil
import sqlite3
import time

import pytest

from waygate.lifecycle import STARTED_AT_ENV
from waygate.plugins import PluginInfo, PluginSet

pytestmark = pytest.mark.both_backends


def test_index_matches_the_spec(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json() == {
        "service": "Waygate MCP",
        "version": "2.0.0",
        "status": "operational",
        "mode": "local_vm",
        "description": "Enterprise-grade MCP Server Framework",
        "documentation": "/docs",
    }


def test_health_reports_every_check_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "cache": "ok", "filesystem": "ok", "plugins": "ok"}
    assert body["version"] == "2.0.0"
    assert isinstance(body["uptime_seconds"], int)
    assert body["timestamp"].endswith("Z")


def test_uptime_counts_from_the_service_start_not_the_app(client, monkeypatch):
    monkeypatch.setenv(STARTED_AT_ENV, repr(time.time() - 3600))
    assert client.get("/health").get_json()["uptime_seconds"] >= 3600


def test_filesystem_below_the_free_space_floor_is_503_naming_it(make_app):
    client = make_app(min_free_bytes=2**62).test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["filesystem"].startswith("failed: free space")
    assert body["checks"]["database"] == "ok"
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "filesystem" in body["error"]["message"]
    assert "filesystem" in body["error"]["details"]["failed"]


def test_unwritable_data_dir_fails_the_filesystem_check(app, data_dir):
    # Permissions do not stop root (CI runs as root), so take the directory away instead:
    # a data dir that has become a plain file takes no writes from anyone.
    shutil.rmtree(data_dir)
    data_dir.write_text("not a directory")
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["filesystem"].startswith(
        "failed: data dir is not writable"
    )


def test_rate_limit_storage_that_does_not_answer_fails_cache(app, monkeypatch):
    storage = app.extensions["waygate.limiter"].storage

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    # the request's own hit fails: the table's (one host, the default) or the database's
    if hasattr(storage, "table"):
        monkeypatch.setattr(storage.table, "hit", broken)
    else:
        monkeypatch.setattr(storage._store, "execute_write", broken)
    monkeypatch.setattr(storage, "check", lambda: False)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["cache"] == "failed: rate-limit storage does not answer"


def test_a_failed_plugin_fails_the_plugins_check(app):
    registry = app.extensions["waygate"].plugins
    broken = PluginInfo(name="Broken", status="failed", error="import failed: ImportError: nope")
    registry._current = PluginSet(
        plugins={"Broken": broken}, commands={}, command_plugin={}, loaded_at=time.time()
    )
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert (
        response.get_json()["checks"]["plugins"]
        == "failed: Broken: import failed: ImportError: nope"
    )


@pytest.mark.sqlite_only
def test_database_failure_is_503_naming_database(app, data_dir):
    storage = app.extensions["waygate"].storage
    storage.conn.close()  # a closed connection: every query now raises
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("failed: ProgrammingError")


def test_ready_is_200_once_started(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"ready": True}


def test_ready_is_503_while_draining(app):
    app.extensions["waygate"].readiness.begin_draining()
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["ready"] is False
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"]["details"] == {"state": "draining"}
