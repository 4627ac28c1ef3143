"""POST /mcp: the MCP wire contract, raw-HTTP error paths and tool semantics."""

import json

import pytest

from tests.test_metrics import sample

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


@pytest.fixture
def rpc(client, keys):
    def post(message, headers=None, raw=None, key="user", content_type="application/json"):
        base = {"Accept": ACCEPT}
        if key:
            base["X-API-Key"] = getattr(keys, key)
        base.update(headers or {})
        data = raw if raw is not None else json.dumps(message)
        return client.post("/mcp", data=data, headers=base, content_type=content_type)

    return post


def request(method, params=None, id=1):
    message = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def modern(method, params=None, name=None, version=MODERN, meta=None):
    headers = {"MCP-Protocol-Version": version, "Mcp-Method": method}
    if name:
        headers["Mcp-Name"] = name
    body = {
        **(params or {}),
        "_meta": meta
        if meta is not None
        else {**META, "io.modelcontextprotocol/protocolVersion": version},
    }
    return request(method, body), headers


def error_of(response):
    body = response.get_json()
    assert body["jsonrpc"] == "2.0" and "result" not in body
    return body["error"]


# -- the HTTP layer ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_get_and_delete_are_405_with_allow_post(client, keys, method):
    response = client.open("/mcp", method=method, headers={"X-API-Key": keys.user})
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert error_of(response)["code"] == -32600


def test_wrong_accept_is_406(rpc):
    response = rpc(request("ping"), headers={"Accept": "text/event-stream"})
    assert response.status_code == 406
    assert error_of(response)["code"] == -32600


def test_wrong_content_type_is_400(rpc):
    response = rpc(request("ping"), content_type="text/plain")
    assert response.status_code == 400
    assert "Content-Type" in error_of(response)["message"]


def test_malformed_json_is_400_parse_error(rpc):
    response = rpc(None, raw='{"jsonrpc": "2.0", "id": 1,')
    assert response.status_code == 400
    assert error_of(response)["code"] == -32700
    assert response.get_json()["id"] is None


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "method": "ping"},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        {"jsonrpc": "2.0", "id": None, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],
        "ping",
    ],
)
def test_invalid_json_rpc_is_400_invalid_request(rpc, message):
    response = rpc(message)
    assert response.status_code == 400
    assert error_of(response)["code"] == -32600


def test_a_foreign_origin_is_403(rpc):
    response = rpc(request("ping"), headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert error_of(response)["code"] == -32600


def test_an_allowed_origin_passes(rpc):
    assert rpc(request("ping"), headers={"Origin": "http://localhost:3000"}).status_code == 200


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_401_with_www_authenticate(client, key):
    headers = {"Accept": ACCEPT}
    if key:
        headers["X-API-Key"] = key
    response = client.post("/mcp", json=request("ping"), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["data"]["code"] == "UNAUTHORIZED"


def test_bearer_authorization_works(client, keys):
    response = client.post(
        "/mcp",
        json=request("ping"),
        headers={"Accept": ACCEPT, "Authorization": f"Bearer {keys.user}"},
    )
    assert response.get_json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_a_notification_is_202_without_a_body(rpc):
    response = rpc(
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={"MCP-Protocol-Version": "2025-11-25"},
    )
    assert response.status_code == 202 and response.get_data() == b""


# -- handshake era -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, agreed",
    [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("2099-01-01", "2025-11-25"),
    ],
)
def test_initialize_negotiates_the_version(rpc, asked, agreed):
    response = rpc(
        request(
            "initialize",
            {
                "protocolVersion": asked,
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
    )
    result = response.get_json()["result"]
    assert response.status_code == 200
    assert result["protocolVersion"] == agreed
    assert result["capabilities"] == {"tools": {"listChanged": False}}
    assert result["serverInfo"]["name"] == "waygate" and result["serverInfo"]["version"]


def test_ping(rpc):
    response = rpc(request("ping"), headers={"MCP-Protocol-Version": "2025-06-18"})
    assert response.get_json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_unknown_method_in_the_handshake_era_is_200_method_not_found(rpc):
    response = rpc(request("resources/list"), headers={"MCP-Protocol-Version": "2025-11-25"})
    assert response.status_code == 200
    assert error_of(response)["code"] == -32601


def test_server_discover_without_a_modern_header_is_method_not_found(rpc):
    response = rpc(request("server/discover"))
    assert response.status_code == 200 and error_of(response)["code"] == -32601


def test_an_unsupported_protocol_version_header_is_400(rpc):
    response = rpc(request("ping"), headers={"MCP-Protocol-Version": "1999-01-01"})
    assert response.status_code == 400
    assert error_of(response)["code"] == -32602


# -- the 2026-07-28 revision -------------------------------------------------------------------


def test_server_discover(rpc):
    message, headers = modern("server/discover")
    result = rpc(message, headers=headers).get_json()["result"]
    assert result["supportedVersions"] == [MODERN]
    assert result["resultType"] == "complete"
    assert result["capabilities"] == {"tools": {"listChanged": False}}
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "waygate"
    assert result["cacheScope"] == "private" and result["ttlMs"] == 0


def test_modern_tools_list_carries_result_type_and_caching_hints(rpc):
    message, headers = modern("tools/list")
    result = rpc(message, headers=headers).get_json()["result"]
    assert result["resultType"] == "complete"
    assert result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert "echo" in {t["name"] for t in result["tools"]}


def test_modern_request_without_meta_is_invalid_params(rpc):
    response = rpc(
        request("tools/list"), headers={"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}
    )
    assert response.status_code == 400 and error_of(response)["code"] == -32602


@pytest.mark.parametrize(
    "override",
    [
        {"Mcp-Method": "tools/list"},  # the body says ping
        {"Mcp-Name": "test"},  # the body calls echo
    ],
)
def test_a_routing_header_that_disagrees_is_header_mismatch(rpc, override):
    if "Mcp-Name" in override:
        message, headers = modern(
            "tools/call", {"name": "echo", "arguments": {"message": "x"}}, name="echo"
        )
    else:
        message, headers = modern("ping")
    response = rpc(message, headers={**headers, **override})
    assert response.status_code == 400 and error_of(response)["code"] == -32020


def test_an_unknown_modern_version_is_unsupported_with_the_supported_list(rpc):
    message, headers = modern("ping", version="2027-03-01")
    response = rpc(message, headers=headers)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == -32022
    assert error["data"] == {"supported": [MODERN], "requested": "2027-03-01"}


def test_initialize_in_the_modern_era_is_404_method_not_found(rpc):
    message, headers = modern("initialize", {"protocolVersion": MODERN})
    response = rpc(message, headers=headers)
    assert response.status_code == 404 and error_of(response)["code"] == -32601


def test_modern_notifications_are_accepted_and_dropped(rpc):
    response = rpc(
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        headers={"MCP-Protocol-Version": MODERN},
    )
    assert response.status_code == 202


# -- tools -------------------------------------------------------------------------------------


def tools_by_name(rpc):
    return {t["name"]: t for t in rpc(request("tools/list")).get_json()["result"]["tools"]}


def test_tools_describe_every_command_from_its_schema(rpc):
    tools = tools_by_name(rpc)
    assert {"test", "echo", "status", "process_data", "analyze", "sleep"} <= set(tools)
    process = tools["process_data"]
    schema = process["inputSchema"]
    assert schema["type"] == "object" and schema["required"] == ["input"]
    assert schema["properties"]["format"]["enum"] == ["json", "xml", "csv"]
    assert schema["properties"]["format"]["default"] == "json"
    assert schema["properties"]["input"]["description"] == "Input data to process"
    assert process["title"] == "Process data"
    assert process["annotations"]["readOnlyHint"] is True
    assert tools["echo"]["outputSchema"]["properties"] == {"result": {"type": "string"}}


def call(rpc, name, arguments):
    return rpc(request("tools/call", {"name": name, "arguments": arguments})).get_json()["result"]


def test_tools_call_returns_text_and_structured_content(rpc):
    result = call(rpc, "echo", {"message": "hi"})
    assert result["isError"] is False
    assert result["structuredContent"] == {"result": "hi"}
    assert json.loads(result["content"][0]["text"]) == {"result": "hi"}


@pytest.mark.parametrize(
    "name, arguments, says",
    [
        ("echo", {}, "Invalid arguments for echo"),
        ("echo", {"message": 3}, "Not a valid string"),
        ("boom", {}, "boom failed: kaboom"),
        ("sleep", {"seconds": 40}, "sleep timeout"),
        ("nope", {}, "Unknown tool: nope"),
        ("process_data", {"input": "sample data"}, "input is not valid json"),
    ],
)
def test_execution_problems_are_is_error_results(
    rpc, app_services_of, client, name, arguments, says
):
    if name == "sleep":
        app_services_of(client).mcp.tool_timeout = 1
    result = call(rpc, name, arguments)
    assert result["isError"] is True
    assert says in result["content"][0]["text"]


def test_tool_calls_are_audited_counted_and_measured(rpc, client, keys, data_dir):
    call(rpc, "echo", {"message": "audited"})
    call(rpc, "boom", {})
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()[
        "executions"
    ]
    assert [(e["action"], e["mode"], e["status"], e["key_name"]) for e in executions[:2]] == [
        ("boom", "mcp", "failed", "ops-user"),
        ("echo", "mcp", "success", "ops-user"),
    ]
    stats = client.get("/plugins/Testing", headers=keys.headers()).get_json()["statistics"]
    assert stats["calls_total"] == 1 and stats["errors_total"] == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "waygate_commands_total", action="boom", status="failed") >= 1


def test_one_rate_limit_budget_per_key_with_mcp_execute(plugin_dist, make_app, keys):
    client = make_app(rate_limit_execute="3/minute").test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 200
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 200
    assert client.post("/mcp", json=request("ping"), headers=headers).status_code == 200
    limited = client.post("/mcp", json=request("ping"), headers=headers)
    assert limited.status_code == 429
    assert error_of(limited)["data"]["code"] == "RATE_LIMITED"
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 429


def test_tools_list_follows_plugin_reloads(rpc, plugin_dist, client, keys):
    from tests.test_plugins import PLUGIN_SOURCE

    assert "hello" not in tools_by_name(rpc)
    plugin_dist.write_module("hello_plugin", PLUGIN_SOURCE.format(version="1.0.0", greeting="hi"))
    plugin_dist.register("Hello", "hello_plugin:Hello")
    client.post("/plugins/reload", headers=keys.headers("admin"))
    assert "hello" in tools_by_name(rpc)
    assert call(rpc, "hello", {})["content"][0]["text"] == "hi"
