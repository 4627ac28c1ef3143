"""The command engine across real gunicorn workers."""

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.test_plugins import PLUGIN_SOURCE

# gthread workers take whatever connections they can, so one worker may serve a whole test's
# traffic; with few connections per worker, concurrent clients reach every worker.
SPREAD = "--worker-connections 2"


@pytest.fixture
def engine_server(plugin_dist, server_factory, keys):
    def start(workers=3, **env):
        env.setdefault("GUNICORN_CMD_ARGS", SPREAD)
        return server_factory(workers=workers, PYTHONPATH=str(plugin_dist.root), **env)

    return start


def pids_serving(server, keys, calls: int) -> set[int]:
    """The worker pids that answered ``calls`` concurrent `pid` commands (held 50 ms each, so
    concurrent clients spread over the workers)."""
    body = {"action": "pid", "params": {"seconds": 0.05}}
    with ThreadPoolExecutor(6) as pool:
        return set(
            pool.map(lambda _: execute(server, keys, body).json()["result"]["pid"], range(calls))
        )


def execute(server, keys, body, role="user", timeout=10):
    return requests.post(
        server.url + "/mcp/execute", json=body, headers=keys.headers(role), timeout=timeout
    )


def test_statistics_from_three_workers_add_up(engine_server, keys):
    server = engine_server(workers=3)
    pids = pids_serving(server, keys, 60)
    assert len(pids) >= 2, "the calls should have reached several workers"
    # each worker folds its calls into the totals within a moment (waygate/totals.py)
    deadline = time.monotonic() + 3
    while True:
        stats = requests.get(
            server.url + "/plugins/Testing", headers=keys.headers(), timeout=5
        ).json()["statistics"]
        if stats["calls_total"] == 60 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stats["calls_total"] == 60 and stats["errors_total"] == 0


def test_a_new_plugin_appears_on_every_worker_after_one_reload(engine_server, keys, plugin_dist):
    server = engine_server(workers=3)
    assert execute(server, keys, {"action": "hello"}).status_code == 400
    plugin_dist.write_module("hello_plugin", PLUGIN_SOURCE.format(version="1.0.0", greeting="hi"))
    plugin_dist.register("Hello", "hello_plugin:Hello")
    reload = requests.post(
        server.url + "/plugins/reload", headers=keys.headers("admin"), timeout=10
    )
    assert "Hello" in reload.json()["loaded"]
    time.sleep(1.0)  # the promise: no worker serves the old set 1 s after the reload answered
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(lambda _: execute(server, keys, {"action": "hello"}).status_code, range(30))
        )
    pids = pids_serving(server, keys, 30)
    assert statuses == [200] * 30
    assert len(pids) >= 2


def test_a_timeout_answers_in_time_while_other_requests_are_served(engine_server, keys):
    server = engine_server(workers=1)
    result = {}

    def slow():
        started = time.monotonic()
        result["response"] = execute(
            server, keys, {"action": "stuck", "params": {"seconds": 3}, "timeout": 1}
        )
        result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    for _ in range(5):
        started = time.monotonic()
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 0.5
    thread.join()
    assert result["response"].status_code == 408
    assert result["response"].json()["status"] == "timeout"
    assert result["elapsed"] < 1.5


def test_an_async_command_on_a_killed_worker_ends_failed(engine_server, keys):
    server = engine_server(workers=2)
    accepted = execute(
        server, keys, {"action": "stuck", "params": {"seconds": 60}, "timeout": 120, "async": True}
    )
    assert accepted.status_code == 202
    location = server.url + accepted.headers["Location"]
    listing = requests.get(
        server.url + "/mcp/executions?action=stuck", headers=keys.headers("admin"), timeout=5
    ).json()
    worker = listing["executions"][0]["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = requests.get(location, headers=keys.headers(), timeout=5).json()
        if body["status"] == "failed":
            break
        time.sleep(0.1)
    assert body["status"] == "failed"
    assert body["error"] == f"the worker (pid {worker}) running this command exited"


def test_a_revoked_key_is_refused_by_every_worker_at_once(engine_server, keys):
    server = engine_server(workers=3)
    assert all(
        requests.get(server.url + "/mcp/status", headers=keys.headers(), timeout=5).status_code
        == 200
        for _ in range(10)
    )
    keys.store.revoke("ops-user")
    statuses = [
        requests.get(server.url + "/mcp/status", headers=keys.headers(), timeout=5).status_code
        for _ in range(30)
    ]
    assert statuses == [401] * 30


def test_a_stuck_handler_does_not_hold_graceful_shutdown(engine_server, keys):
    server = engine_server(workers=1, GUNICORN_CMD_ARGS="--graceful-timeout 2")

    def stuck_request():
        # the worker goes away at the graceful timeout, taking this connection with it
        with contextlib.suppress(requests.ConnectionError):
            execute(
                server,
                keys,
                {"action": "stuck", "params": {"seconds": 60}, "timeout": 120},
                timeout=30,
            )

    threading.Thread(target=stuck_request, daemon=True).start()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=15)
    assert time.monotonic() - started < 4.5


def test_executions_left_open_by_a_previous_run_end_failed_on_start(
    plugin_dist, server_factory, keys
):
    from waygate.audit import AuditLog

    audit = AuditLog(keys.store.storage)
    audit.accept(
        command_id="cmd_before_restart",
        action="sleep",
        plugin="Testing",
        key_name="ops-user",
        key_id=keys.store.authenticate(keys.user).id,
        timeout_s=300,
        created_at="2026-01-01T00:00:00.000Z",
    )
    server = server_factory(workers=1, PYTHONPATH=str(plugin_dist.root))
    body = requests.get(
        server.url + "/mcp/executions/cmd_before_restart", headers=keys.headers(), timeout=5
    ).json()
    assert body["status"] == "failed"
    assert body["error"] == "the service restarted while this command ran"
