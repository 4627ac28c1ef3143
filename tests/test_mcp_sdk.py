"""The official MCP Python SDK as a real client: over HTTP against real gunicorn in both of its
connect modes, and over stdio against `waygate mcp stdio`."""

import asyncio
import os
import sqlite3

import httpx2
import mcp
import pytest
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
