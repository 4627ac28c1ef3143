"""MCP tasks across real gunicorn workers (issue 29 item 2): a task created through one worker
is read, cancelled and approved through another; the task lives in the database, and the
worker running it hears a cancellation sent to any worker."""

from __future__ import annotations

import time

import pytest
import requests

EXT = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: {}}},
}


@pytest.fixture
def server(plugin_dist, server_factory, keys):
    plugin_dist.register(
        "ConformanceTasks", "tests.conformance_tasks_plugin:ConformanceTasksPlugin"
    )
    return server_factory(
        workers=2,
        PYTHONPATH=str(plugin_dist.root),
        # connections stay with their worker while a test holds them idle (not SPREAD's
        # two connections per worker: gthread keeps none alive then)
        GUNICORN_CMD_ARGS="--keep-alive 120",
        WAYGATE_RATE_LIMIT_EXECUTE="10000/minute",
        WAYGATE_RATE_LIMIT_DEFAULT="10000/minute",
    )


def call(session, server, key, method, params):
    headers = {
        "X-API-Key": key,
        "Accept": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    name = params.get("name") if method == "tools/call" else params.get("taskId")
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}
    return session.post(f"{server.url}/mcp", json=body, headers=headers, timeout=30).json()


def pinned_sessions(server, key):
    """Two keep-alive connections held by different workers (each answers a quick call
    with its worker's pid, always the same on one connection). Which worker accepts a new
    connection is the kernel's choice, and one worker may win many in a row (an idle one
    waiting in accept while the other answers): new connections are tried until both have
    answered, the ones of an already seen worker kept open meanwhile (so that worker is busy
    holding them), within a bound."""
    by_pid: dict[int, requests.Session] = {}
    held: list[requests.Session] = []
    for _ in range(200):
        session = requests.Session()
        pids = {
            call(session, server, key, "tools/call", {"name": "pid", "arguments": {}})["result"][
                "structuredContent"
            ]["pid"]
            for _ in range(3)
        }
        pid = pids.pop() if len(pids) == 1 else None  # one connection, so one worker
        if pid is not None and pid not in by_pid:
            by_pid[pid] = session
        else:
            held.append(session)
        if len(by_pid) == 2:
            for extra in held:
                extra.close()
            return list(by_pid.items())
    raise AssertionError("could not reach two workers")


def test_a_task_made_on_one_worker_is_read_and_cancelled_through_another(server, keys):
    (pid_a, a), (pid_b, b) = pinned_sessions(server, keys.user)
    quick = call(a, server, keys.user, "tools/call", {"name": "slow_compute", "arguments": {}})
    task_id = quick["result"]["taskId"]
    read = call(b, server, keys.user, "tasks/get", {"taskId": task_id})["result"]
    assert read["taskId"] == task_id  # durable at once, for every worker
    done = wait(b, server, keys.user, task_id)
    assert done["status"] == "completed" and done["result"]["structuredContent"]["pid"] == pid_a

    # a long task runs in worker A; the cancel reaches worker B, and A stops it
    created = call(
        a, server, keys.user, "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}
    )["result"]
    task_id = created["taskId"]
    running_since = time.monotonic()
    ack = call(b, server, keys.user, "tasks/cancel", {"taskId": task_id})
    assert ack_only(ack["result"])
    assert call(a, server, keys.user, "tasks/get", {"taskId": task_id})["result"]["status"] == (
        "cancelled"
    )
    execution = ended(b, server, keys, task_id)
    assert execution["status"] == "failed" and execution["error"] == "cancelled by its requester"
    assert time.monotonic() - running_since < 10  # not the 60 s it would have slept
    assert pid_a != pid_b


def test_a_held_call_as_a_task_is_approved_on_another_worker_and_completes(server, keys):
    (_, a), (_, b) = pinned_sessions(server, keys.user)
    _, other = keys.store.create("other-user", "user")
    created = call(
        a, server, keys.user, "tools/call", {"name": "wipe", "arguments": {"target": "db9"}}
    )["result"]
    task_id = created["taskId"]
    assert created["status"] == "working"
    # another key neither sees nor cancels it
    for method in ("tasks/get", "tasks/cancel"):
        refused = call(b, server, other, method, {"taskId": task_id})["error"]
        assert refused == {"code": -32602, "message": "Failed to retrieve task: Task not found"}
    approved = b.post(
        f"{server.url}/mcp/executions/{task_id}/approve",
        headers={"X-API-Key": keys.admin},
        json={},
        timeout=10,
    )
    assert approved.status_code == 202
    done = wait(a, server, keys.user, task_id)
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"]["wiped"] == "db9"


def test_cancelling_a_held_task_on_another_worker_withdraws_the_request(server, keys):
    (_, a), (_, b) = pinned_sessions(server, keys.user)
    created = call(
        a, server, keys.user, "tools/call", {"name": "wipe", "arguments": {"target": "db8"}}
    )["result"]
    task_id = created["taskId"]
    assert ack_only(call(b, server, keys.user, "tasks/cancel", {"taskId": task_id})["result"])
    refused = a.post(
        f"{server.url}/mcp/executions/{task_id}/approve",
        headers={"X-API-Key": keys.admin},
        json={},
        timeout=10,
    )
    assert refused.status_code == 409
    execution = ended(a, server, keys, task_id)
    assert execution["status"] == "denied"
    assert execution["approval"]["reason"] == "withdrawn by the requester"


def wait(session, server, key, task_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = call(session, server, key, "tasks/get", {"taskId": task_id})["result"]
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"{task_id} did not end")


def ended(session, server, keys, command_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = session.get(
            f"{server.url}/mcp/executions/{command_id}",
            headers={"X-API-Key": keys.user},
            timeout=10,
        ).json()
        if body["status"] not in ("pending", "running", "awaiting_approval"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{command_id} did not end")


def test_a_task_made_on_one_host_is_cancelled_and_another_approved_from_the_other(
    pg_migrated_url, plugin_dist, tmp_path
):
    """Two hosts (own data dirs, one PostgreSQL): the task row is where both look."""
    from tests.conftest import Server
    from waygate.config import Config
    from waygate.keystore import KeyStore
    from waygate.storage import open_storage

    plugin_dist.register(
        "ConformanceTasks", "tests.conformance_tasks_plugin:ConformanceTasksPlugin"
    )
    storage = open_storage(Config(data_dir=tmp_path / "keys", database_url=pg_migrated_url))
    try:
        store = KeyStore(storage)
        _, user = store.create("cross-user", "user")
        _, admin = store.create("cross-admin", "admin")
    finally:
        storage.close()
    hosts = []
    try:
        for name in ("a", "b"):
            data_dir = tmp_path / name
            data_dir.mkdir()
            env = {
                "WAYGATE_DATABASE_URL": pg_migrated_url,
                "WAYGATE_INSTANCE_ID": f"host-{name}",
                "PYTHONPATH": str(plugin_dist.root),
                "WAYGATE_RATE_LIMIT_EXECUTE": "10000/minute",
                "WAYGATE_RATE_LIMIT_DEFAULT": "10000/minute",
            }
            hosts.append(Server(data_dir=data_dir, workers=1, env=env).start())
        host_a, host_b = hosts
        a, b = requests.Session(), requests.Session()
        created = call(
            a, host_a, user, "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}
        )["result"]
        started = time.monotonic()
        ack = call(b, host_b, user, "tasks/cancel", {"taskId": created["taskId"]})
        assert ack_only(ack["result"])
        execution = ended(a, host_a, _Keys(user), created["taskId"])
        assert execution["error"] == "cancelled by its requester"
        assert time.monotonic() - started < 10  # host A stopped it, told through the database
        held = call(
            b, host_b, user, "tools/call", {"name": "wipe", "arguments": {"target": "db7"}}
        )["result"]
        approved = a.post(
            f"{host_a.url}/mcp/executions/{held['taskId']}/approve",
            headers={"X-API-Key": admin},
            json={},
            timeout=10,
        )
        assert approved.status_code == 202
        done = wait(b, host_b, user, held["taskId"])
        assert done["result"]["structuredContent"]["wiped"] == "db7"
    finally:
        for host in hosts:
            host.stop()


class _Keys:
    def __init__(self, user):
        self.user = user


def ack_only(result: dict) -> bool:
    """A tasks/cancel ack: ``resultType: complete`` and the server's identity, no task fields."""
    return (
        result
        == {
            "resultType": "complete",
            "_meta": {
                "io.modelcontextprotocol/serverInfo": result["_meta"][
                    "io.modelcontextprotocol/serverInfo"
                ]
            },
        }
        and result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "waygate"
    )
