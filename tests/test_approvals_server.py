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
