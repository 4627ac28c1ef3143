"""A real server on PostgreSQL when the database or Redis goes away: refusals that say so, in
bounded time, and recovery without a restart when they come back.

PostgreSQL here is a cluster of the test's own (it is stopped and frozen), not the shared one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from tests.conftest import BIN
from tests.pgcluster import PgCluster

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 2000
# the configured waits, and a margin for a loaded machine
BOUND_S = max(CONNECT_TIMEOUT_S, STATEMENT_TIMEOUT_MS / 1000 + 1) + 1.5


@pytest.fixture
def own_cluster():
    cluster = PgCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_server(own_cluster, server_factory, data_dir):
    """A 2-worker server on a migrated database of its own cluster, and a user key."""
    url = own_cluster.create_database("waygate")
    env = {
        "WAYGATE_DATABASE_URL": url,
        "WAYGATE_DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
        "WAYGATE_DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
        "WAYGATE_DATA_DIR": str(data_dir),
    }
    waygate("migrate", env=env)
    key = waygate("keys", "create", "--name", "ops-user", env=env).splitlines()[-1]

    def start(**extra):
        return server_factory(workers=2, **env, **extra), key

    return start


def waygate(*args: str, env: dict) -> str:
    done = subprocess.run(
        [str(BIN / "waygate"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def timed(method: str, url: str, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=30, **kwargs)
    return response, time.monotonic() - started


def execute(server, key: str) -> tuple[requests.Response, float]:
    body = {"action": "echo", "params": {"message": "hi"}}
    return timed("POST", server.url + "/mcp/execute", json=body, headers={"X-API-Key": key})


def assert_database_refusals(server, key: str) -> None:
    """/health 503 naming the database; a command 503 with Retry-After; both in bounded time."""
    health, took = timed("GET", server.url + "/health")
    assert health.status_code == 503, health.text
    reason = health.json()["checks"]["database"]
    assert reason.startswith("failed: the database does not answer"), health.json()
    assert took < BOUND_S, f"/health took {took:.1f} s"
    refused, took = execute(server, key)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert set(error) >= {"code", "message", "details", "timestamp", "request_id"}
    assert int(refused.headers["Retry-After"]) > 0
    assert took < BOUND_S, f"/mcp/execute took {took:.1f} s"
    for secret_part in ("postgresql://", "password"):
        assert secret_part not in refused.text and secret_part not in health.text


def assert_recovers_without_restart(server, key: str, pids: set[int]) -> None:
    deadline = time.monotonic() + 15
    while (response := execute(server, key)[0]).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    assert response.json()["status"] == "success"
    # every worker finds the database again (each probes once its own refusals have passed)
    while (health := requests.get(server.url + "/health", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.2)
    assert health.json()["checks"]["database"] == "ok", health.text
    assert server.proc.poll() is None and set(server.worker_pids()) == pids


def test_postgresql_stopped_refuses_with_503_then_recovers(pg_server, own_cluster):
    server, key = pg_server()
    assert execute(server, key)[0].status_code == 200
    pids = set(server.worker_pids())
    own_cluster.stop("immediate")
    for _ in range(2):  # each worker, probably; every answer must be a bounded refusal
        assert_database_refusals(server, key)
    own_cluster.start()
    assert_recovers_without_restart(server, key, pids)


def test_postgresql_that_answers_nothing_does_not_hang_requests(pg_server, own_cluster):
    # A frozen server (SIGSTOP) accepts TCP connections and never answers: only Waygate's own
    # timeouts end the wait, for new connections and for pooled ones alike.
    server, key = pg_server()
    assert execute(server, key)[0].status_code == 200
    pids = set(server.worker_pids())
    frozen = cluster_pids(own_cluster)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert_database_refusals(server, key)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert_recovers_without_restart(server, key, pids)


def cluster_pids(cluster: PgCluster) -> list[int]:
    """The postmaster (first line of postmaster.pid) and its children."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *map(int, children.stdout.split())]


def stop_redis(proc) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_down_fails_open_by_default_on_postgresql(pg_server, redis_server):
    uri, proc = redis_server
    server, key = pg_server(WAYGATE_RATELIMIT_STORAGE_URI=uri)
    assert execute(server, key)[0].status_code == 200
    stop_redis(proc)
    passed, took = execute(server, key)
    assert passed.status_code == 200 and took < BOUND_S
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health["checks"]["cache"].startswith("failed")
    assert health["checks"]["database"] == "ok"


def test_redis_down_fails_closed_when_configured_on_postgresql(pg_server, redis_server):
    uri, proc = redis_server
    server, key = pg_server(WAYGATE_RATELIMIT_STORAGE_URI=uri, WAYGATE_RATELIMIT_FAIL_OPEN="false")
    assert execute(server, key)[0].status_code == 200
    stop_redis(proc)
    refused, took = execute(server, key)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert took < BOUND_S
