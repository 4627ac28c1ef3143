"""The official MCP Python SDK as a real client: over HTTP against real gunicorn in both of its
connect modes, and over stdio against `waygate mcp stdio`."""

import asyncio
import os
import sqlite3
import time

import httpx2
import mcp
import pytest
import requests
from mcp import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import BIN


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def exercise(client):
    tools = await client.list_tools()
    names = {tool.name for tool in tools.tools}
    echo = await client.call_tool("echo", {"message": "hi"})
    processed = await client.call_tool(
        "process_data",
        {"input": "host,cpu\nweb1,0.5\n", "format": "csv", "options": {"transform": True}},
    )
    invalid = await client.call_tool("echo", {"message": 42})
    return names, echo, processed, invalid


def check(names, echo, processed, invalid):
    assert {"test", "echo", "status", "process_data", "analyze"} <= names
    assert echo.is_error is False
    assert echo.structured_content == {"result": "hi"}
    assert processed.is_error is False
    assert processed.structured_content["data"] == [{"host": "web1", "cpu": "0.5"}]
    assert invalid.is_error is True
    assert "Not a valid string" in invalid.content[0].text


@pytest.fixture
def server(server_factory):
    return server_factory(workers=2)


def connect(url, key, mode):
    http = httpx2.AsyncClient(headers={"X-API-Key": key})
    return http, mcp.Client(streamable_http_client(url, http_client=http), mode=mode)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_sdk_lists_and_calls_tools(server, keys, mode):
    async def scenario():
        http, client = connect(server.url + "/mcp", keys.user, mode)
        async with http, client:
            return await exercise(client)

    check(*run(scenario()))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_sdk_is_refused_with_a_wrong_key(server, mode):
    async def scenario():
        http, client = connect(server.url + "/mcp", "x" * 32, mode)
        async with http, client:
            await client.list_tools()

    with pytest.raises(Exception) as refused:
        run(scenario())
    assert "invalid API key" in repr(refused.value) and "UNAUTHORIZED" in repr(refused.value)


# a `waygate mcp stdio` process
@pytest.mark.server
def test_the_sdk_stdio_client_against_waygate_mcp_stdio(data_dir):
    params = StdioServerParameters(
        command=str(BIN / "waygate"),
        args=["mcp", "stdio", "--as", "desktop"],
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
    )

    async def scenario():
        async with mcp.Client(params) as client:
            return await exercise(client)

    check(*run(scenario()))
    rows = (
        sqlite3.connect(data_dir / "waygate.db")
        .execute("SELECT DISTINCT key_name, mode FROM executions")
        .fetchall()
    )
    assert rows == [("desktop", "mcp")]


@pytest.fixture
def testing_server(plugin_dist, server_factory):
    return server_factory(workers=1, PYTHONPATH=str(plugin_dist.root))


def test_the_sdk_hears_progress_as_it_happens(testing_server, keys):
    heard = []

    async def on_progress(progress, total, message):
        heard.append((progress, total, message))

    async def scenario():
        http, client = connect(testing_server.url + "/mcp", keys.user, "legacy")
        async with http, client:
            return await client.call_tool(
                "steps", {"count": 3, "pause": 0.05}, progress_callback=on_progress
            )

    result = run(scenario())
    assert result.structured_content == {"steps": 3}
    assert heard == [(1.0, 3.0, "step 1"), (2.0, 3.0, "step 2"), (3.0, 3.0, "step 3")]


def test_a_client_that_leaves_a_stream_does_not_lose_the_record(testing_server, keys):
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "steps",
            "arguments": {"count": 4, "pause": 0.2},
            "_meta": {"progressToken": "gone"},
        },
    }
    headers = {"X-API-Key": keys.user, "Accept": "application/json, text/event-stream"}
    with requests.post(
        testing_server.url + "/mcp", json=message, headers=headers, stream=True, timeout=10
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = next(response.iter_lines(decode_unicode=True, delimiter="\n\n"))
        assert "notifications/progress" in first
    admin = {"X-API-Key": keys.admin}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        executions = requests.get(
            testing_server.url + "/mcp/executions?action=steps", headers=admin, timeout=5
        ).json()["executions"]
        if executions:
            break
        time.sleep(0.2)
    assert [(e["status"], e["mode"]) for e in executions] == [("success", "mcp")]


# a `waygate mcp stdio` process
@pytest.mark.server
def test_waygate_mcp_stdio_refuses_a_lone_surrogate_as_http_does(data_dir):
    """A line is read by the same rules as a body over HTTP: a lone surrogate is a parse error
    naming the field, before anything is stored or run, and the session goes on."""
    import json
    import subprocess

    lines = [
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
    ]
    bad = (
        '{"jsonrpc":"2.0","id":2,"method":"tools/call",'
        '"params":{"name":"echo","arguments":{"message":"a\\ud800"}}}'
    )
    good = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "fine"}},
    }
    stdin = "\n".join([*(json.dumps(m) for m in lines), bad, json.dumps(good)]) + "\n"
    done = subprocess.run(
        [str(BIN / "waygate"), "mcp", "stdio", "--as", "desktop"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
    )
    answers = {m["id"]: m for m in map(json.loads, done.stdout.splitlines()) if "id" in m}
    assert answers[None]["error"]["code"] == -32700
    assert answers[None]["error"]["data"] == {"field": "params.arguments.message"}
    assert answers[3]["result"]["structuredContent"] == {"result": "fine"}
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr
    rows = sqlite3.connect(data_dir / "waygate.db").execute("SELECT count(*) FROM executions")
    assert rows.fetchone() == (1,)


def test_waygate_mcp_stdio_answers_a_2025_03_26_batch_and_refuses_a_modern_one(data_dir):
    import json
    import subprocess

    def call(id, message, meta=None):
        params = {"name": "echo", "arguments": {"message": message}}
        if meta:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": meta,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}

    batches = [
        [call(1, "a"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, call(2, "b")],
        [call(3, "c", meta="2026-07-28")],  # 2026-07-28 has no batches
    ]
    done = subprocess.run(
        [str(BIN / "waygate"), "mcp", "stdio", "--as", "desktop"],
        input="".join(json.dumps(b) + "\n" for b in batches),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    arrays = [line for line in lines if isinstance(line, list)]
    assert [[(a["id"], a["result"]["structuredContent"]) for a in x] for x in arrays] == [
        [(1, {"result": "a"}), (2, {"result": "b"})]
    ]
    refused = [line for line in lines if isinstance(line, dict)]
    assert refused[0]["error"]["code"] == -32600 and "2026-07-28" in refused[0]["error"]["message"]
