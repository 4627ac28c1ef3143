"""Input requests with real parts: the official Python SDK client answering a Waygate tool's
questions over HTTP (gunicorn, 2 workers) and over `waygate mcp stdio`; the rounds of one call
taken by different workers; stdio progress notifications as over HTTP."""

from __future__ import annotations

import json
import os

import mcp
import mcp_types as types
import pytest
import requests
from mcp import StdioServerParameters

from tests.conftest import BIN, ROOT
from tests.test_mcp_sdk import connect, run

MODERN = "2026-07-28"


@pytest.fixture
def asking_server(plugin_dist, server_factory):
    plugin_dist.register("Asking", "tests.input_plugin:AskingPlugin")
    return server_factory(workers=2, PYTHONPATH=str(plugin_dist.root))


def answers():
    """The SDK client's callbacks, and what they were asked."""
    asked = []

    async def elicit(context, params):
        asked.append(("elicit", params.message))
        if "colour" in params.message.lower():
            return types.ElicitResult(action="accept", content={"choice": "green"})
        if "name" in params.message.lower():
            return types.ElicitResult(action="accept", content={"name": "Ada"})
        return types.ElicitResult(action="accept", content={"confirm": True})

    return asked, elicit


def test_the_sdk_client_answers_a_tool_s_questions_over_http(asking_server, keys):
    asked, elicit = answers()

    async def scenario():
        http, client = connect(asking_server.url + "/mcp", keys.user, "auto")
        client.elicitation_callback = elicit
        async with http, client:
            restarted = await client.call_tool("restart", {"target": "db"})
            wizard = await client.call_tool("wizard", {})
            return restarted, wizard

    restarted, wizard = run(scenario())
    assert restarted.is_error is False
    assert restarted.structured_content["restarted"] is True
    assert wizard.structured_content == {"colour": "green", "name": "Ada"}
    assert [kind for kind, _ in asked] == ["elicit"] * 3
    assert asked[0][1].startswith("Restart db?")


def _post(url, key, params, id=1):
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    }
    message = {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {**params, "_meta": meta},
    }
    headers = {
        "X-API-Key": key,
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": params["name"],
        "Connection": "close",  # a new connection each time: any worker may take it
    }
    return requests.post(url, data=json.dumps(message), headers=headers, timeout=10).json()


def test_the_second_round_is_verified_by_another_worker(asking_server, keys):
    url, call = asking_server.url + "/mcp", {"name": "restart", "arguments": {"target": "db"}}
    first = _post(url, keys.user, call)
    assert "result" in first, first
    first = first["result"]
    asker = int(first["inputRequests"]["confirm-1"]["params"]["message"].split()[-1][:-1])
    retry = {
        **call,
        "inputResponses": {"confirm-1": {"action": "accept", "content": {"confirm": True}}},
        "requestState": first["requestState"],
    }
    answered_by = set()
    for attempt in range(60):  # the state is good for any number of retries until it expires
        done = _post(url, keys.user, retry, id=2 + attempt)["result"]
        assert done["structuredContent"]["restarted"] is True
        answered_by.add(done["structuredContent"]["pid"])
        if answered_by - {asker}:
            break
    assert answered_by - {asker}, "every retry reached the worker that asked"
    assert {asker} | answered_by <= set(asking_server.worker_pids())
    # and a tampered state is refused by whichever worker takes it
    tampered = {**retry, "requestState": first["requestState"] + "-TAMPERED"}
    assert _post(url, keys.user, tampered)["error"]["code"] == -32602


def _stdio(data_dir, plugin_dist):
    return StdioServerParameters(
        command=str(BIN / "waygate"),
        args=["mcp", "stdio", "--as", "desktop"],
        env={
            **os.environ,
            "WAYGATE_DATA_DIR": str(data_dir),
            "PYTHONPATH": f"{plugin_dist.root}:{ROOT}",
        },
    )


def test_stdio_sends_progress_notifications_and_carries_input_requests(data_dir, plugin_dist):
    plugin_dist.register("Asking", "tests.input_plugin:AskingPlugin")
    heard = []
    asked, elicit = answers()

    async def on_progress(progress, total, message):
        heard.append((progress, total, message))

    async def scenario(mode):
        async with mcp.Client(_stdio(data_dir, plugin_dist), mode=mode) as client:
            stepped = await client.call_tool(
                "steps", {"count": 3, "pause": 0.05}, progress_callback=on_progress
            )
            return stepped

    for mode in ("legacy", "auto"):
        heard.clear()
        stepped = run(scenario(mode))
        assert stepped.structured_content == {"steps": 3}
        assert heard == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]

    async def ask():
        client = mcp.Client(_stdio(data_dir, plugin_dist), mode="auto")
        client.elicitation_callback = elicit
        async with client:
            return await client.call_tool("restart", {"target": "db"})

    restarted = run(ask())
    assert restarted.structured_content["restarted"] is True
    assert asked and asked[0][1].startswith("Restart db?")
