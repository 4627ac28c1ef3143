"""Approvals across real gunicorn workers and with the official MCP SDK client (issue 17)."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.test_engine_server import SPREAD, execute
from tests.test_mcp_sdk import connect, run

WIPE = {"action": "wipe", "params": {"target": "db1", "seconds": 0.05}}


@pytest.fixture
def engine_server(plugin_dist, server_factory, keys):
    """gunicorn with the Testing plugin (its destructive `wipe`), connections spread."""
    return lambda workers: server_factory(
        workers=workers,
        PYTHONPATH=str(plugin_dist.root),
        GUNICORN_CMD_ARGS=SPREAD,
        WAYGATE_RATE_LIMIT_EXECUTE="10000/minute",
        WAYGATE_RATE_LIMIT_DEFAULT="10000/minute",
    )


def approve(server, headers, command_id):
    return requests.post(
        f"{server.url}/mcp/executions/{command_id}/approve", headers=headers, timeout=10
    )


def ended(server, keys, command_id):
    for _ in range(300):
        body = requests.get(
            f"{server.url}/mcp/executions/{command_id}", headers=keys.headers(), timeout=10
        ).json()
        if body["status"] not in ("pending", "running"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"{command_id} did not end")


def trail(server, keys, command_id):
    response = requests.get(
        f"{server.url}/mcp/executions/{command_id}/events",
        headers=keys.headers("admin"),
        timeout=10,
    )
    return {event["event"]: event for event in response.json()["events"]}


def test_a_request_held_on_one_worker_is_approved_and_run_on_another(engine_server, keys):
    server = engine_server(workers=3)
    crossed = []
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):  # concurrent clients spread over the workers; rarely all on one
            ids = list(
                pool.map(lambda _: execute(server, keys, WIPE).json()["command_id"], range(12))
            )
            answers = list(pool.map(lambda i: approve(server, keys.headers("admin"), i), ids))
            assert {a.status_code for a in answers} == {202}
            for command_id in ids:
                done = ended(server, keys, command_id)
                assert done["status"] == "success" and done["result"]["wiped"] == "db1"
                steps = trail(server, keys, command_id)
                # it ran in the worker that approved it, whatever worker stored the request
                assert done["result"]["pid"] == steps["approved"]["worker_pid"]
                if steps["requested"]["worker_pid"] != steps["approved"]["worker_pid"]:
                    crossed.append(command_id)
            if crossed:
                break
    assert crossed, "no request was approved on another worker than the one that held it"


def test_the_sdk_client_requests_and_fetches_the_result_after_another_key_approves(
    engine_server, keys
):
    server = engine_server(workers=2)

    async def scenario():
        http, client = connect(server.url + "/mcp", keys.user, "legacy")
        async with http, client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            held = await client.call_tool("wipe", {"target": "db9"})
            command_id = held.structured_content["command_id"]
            refused = await asyncio.to_thread(approve, server, keys.headers("user"), command_id)
            approved = await asyncio.to_thread(approve, server, keys.headers("admin"), command_id)
            for _ in range(200):
                read = await client.call_tool("waygate_execution", {"command_id": command_id})
                if read.structured_content["status"] not in ("pending", "running"):
                    break
                await asyncio.sleep(0.05)
            return tools, held, refused.status_code, approved.status_code, read

    tools, held, refused, approved, read = run(scenario())
    assert tools["wipe"].meta == {"waygate/approvalRequired": True}
    assert "Requires approval" in tools["wipe"].description
    assert tools["waygate_execution"].annotations.read_only_hint is True
    assert held.is_error is False
    assert held.structured_content["status"] == "awaiting_approval"
    assert "needs approval" in held.content[0].text
    assert (refused, approved) == (403, 202)  # the user key may not decide; an admin may
    assert read.is_error is False
    assert read.structured_content["status"] == "success"
    assert read.structured_content["result"]["wiped"] == "db9"
    assert read.structured_content["result"]["key_name"] == "ops-user"


def test_metrics_count_the_work_of_every_door_as_the_audit_does(engine_server, keys, data_dir):
    """REST, MCP over HTTP, MCP over stdio and commands the CLI approves and runs in its own
    process: /metrics on the server counts each execution and approval the audit holds."""
    import json
    import os
    import sqlite3
    import subprocess

    from tests.conftest import BIN, ROOT
    from tests.test_metrics import sample

    server = engine_server(workers=2)
    cli_env = {  # the CLI as an operator runs it on the server's host, with its plugins
        **os.environ,
        "WAYGATE_DATA_DIR": str(data_dir),
        "PYTHONPATH": f"{server.env['PYTHONPATH']}:{ROOT}",
    }
    echo = {"action": "echo", "params": {"message": "hi"}}
    assert [execute(server, keys, echo).status_code for _ in range(3)] == [200] * 3
    mcp = requests.post(
        server.url + "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "over mcp"}},
        },
        headers={**keys.headers(), "Accept": "application/json, text/event-stream"},
        timeout=10,
    )
    assert mcp.status_code == 200 and "error" not in mcp.json(), mcp.text
    held = [execute(server, keys, WIPE).json()["command_id"] for _ in range(4)]
    assert approve(server, keys.headers("admin"), held[0]).status_code == 202
    ended(server, keys, held[0])
    for command_id in held[1:3]:  # run by the CLI, in its own process
        done = subprocess.run(
            [str(BIN / "waygate"), "approvals", "approve", command_id, "--as", "ops-admin"],
            env=cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # no "not counted in the service's metrics" warning
    denied = subprocess.run(
        [str(BIN / "waygate"), "approvals", "deny", held[3], "--as", "ops-admin"],
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 0, denied.stderr
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "over stdio"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "wipe", "arguments": {"target": "db5"}},
        },
    ]
    stdio = subprocess.run(
        [str(BIN / "waygate"), "mcp", "stdio"],
        input="".join(json.dumps(m) + "\n" for m in messages),
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stdio.returncode == 0, stdio.stderr
    assert stdio.stdout.count('"id": 3') + stdio.stdout.count('"id":3') == 1, stdio.stdout

    with sqlite3.connect(data_dir / "waygate.db") as db:
        audit = dict(
            ((action, status), n)
            for action, status, n in db.execute(
                "SELECT action, status, count(*) FROM executions GROUP BY action, status"
            )
        )
    assert audit == {
        ("echo", "success"): 5,  # 3 REST, 1 MCP, 1 stdio
        ("wipe", "success"): 3,  # approved over REST once, with the CLI twice
        ("wipe", "denied"): 1,
        ("wipe", "awaiting_approval"): 1,  # held over stdio
    }
    text = requests.get(server.url + "/metrics", timeout=10).text
    for (action, status), n in audit.items():
        if status in ("success", "failed", "timeout"):  # executions that ran
            assert sample(text, "waygate_commands_total", action=action, status=status) == n
    assert sample(text, "waygate_approvals_requested_total") == 5
    assert sample(text, "waygate_approval_decisions_total", outcome="approved") == 3
    assert sample(text, "waygate_approval_decisions_total", outcome="denied") == 1
