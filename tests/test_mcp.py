"""POST /mcp: the MCP wire contract (both eras), raw-HTTP error paths and tool semantics."""

import base64
import json
import time

import pytest
import requests

from tests.test_http import assert_envelope
from tests.test_metrics import sample

pytestmark = pytest.mark.both_backends

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
CAPABILITIES = {
    "tools": {"listChanged": False},
    "prompts": {"listChanged": False},
    "resources": {"listChanged": False, "subscribe": False},
    "completions": {},
}
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
    if name is None and method in ("prompts/get", "resources/read"):  # as clients do
        name = (params or {}).get("name" if method == "prompts/get" else "uri")
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


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
def test_other_methods_are_json_rpc_405_with_allow_post(client, keys, method):
    response = client.open("/mcp", method=method, headers={"X-API-Key": keys.user})
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.content_type == "application/json"
    assert error_of(response)["code"] == -32600
    assert error_of(response)["data"]["code"] == "METHOD_NOT_ALLOWED"


def transport_error_data(response):
    data = error_of(response)["data"]
    assert data["request_id"] == response.headers["X-Request-ID"]
    return data


def test_transport_errors_carry_the_envelope_in_error_data(rpc):
    forbidden = rpc(request("ping"), headers={"Origin": "http://evil.example"})
    assert transport_error_data(forbidden)["code"] == "FORBIDDEN"
    assert transport_error_data(forbidden)["details"] == {"origin": "http://evil.example"}
    parse = rpc(None, raw='{"jsonrpc": "2.0", "id": 1,')
    assert error_of(parse)["code"] == -32700
    assert transport_error_data(parse)["code"] == "INVALID_REQUEST"
    unacceptable = rpc(request("ping"), headers={"Accept": "text/html"})
    assert transport_error_data(unacceptable)["code"] == "INVALID_REQUEST"


def test_refusals_before_the_body_is_parsed_still_answer_its_id(client, make_app, keys):
    message = json.dumps({"jsonrpc": "2.0", "id": "req-9", "method": "tools/list"})
    unauthorized = client.post("/mcp", data=message, content_type="application/json")
    assert unauthorized.status_code == 403 and unauthorized.get_json()["id"] == "req-9"
    small = make_app(max_body_bytes=1024).test_client()
    padded = message[:-1] + ', "params": {"pad": "' + "x" * 4096 + '"}}'
    too_large = small.post(
        "/mcp", data=padded, content_type="application/json", headers=keys.headers()
    )
    assert too_large.status_code == 413 and too_large.get_json()["id"] == "req-9"


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
        "ping",
    ],
)
def test_invalid_json_rpc_is_400_invalid_request(rpc, message):
    response = rpc(message)
    assert response.status_code == 400
    assert error_of(response)["code"] == -32600


# -- JSON-RPC batches: 2025-03-26 only -----------------------------------------------------------


def test_a_2025_03_26_batch_is_answered_message_by_message_in_order(rpc, client, keys):
    # 2025-03-26 clients send no MCP-Protocol-Version header; that revision had batches
    batch = [
        request("ping", id="a"),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},  # no answer
        request("tools/call", {"name": "echo", "arguments": {"message": "hi"}}, id=2),
        request("tools/call", {"name": "nope"}, id=3),  # the same error as alone
        {"jsonrpc": "1.0", "id": 4, "method": "ping"},  # the same shape check as alone
        [request("ping", id=5)],
    ]
    response = rpc(batch)
    assert response.status_code == 200
    answers = response.get_json()
    assert [a["id"] for a in answers] == ["a", 2, 3, 4, None]
    assert answers[0]["result"] == {}
    assert answers[1]["result"]["structuredContent"] == {"result": "hi"}
    assert answers[2]["error"]["code"] == -32602
    assert answers[3]["error"]["code"] == -32600 and answers[4]["error"]["code"] == -32600
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()
    assert [(e["action"], e["mode"]) for e in executions["executions"]] == [("echo", "mcp")]


def test_a_batchs_tool_calls_are_timed_from_the_batchs_start(plugin_dist, make_app, keys):
    # run one after another, each with its own timeout, 20 calls held one request thread
    # 20 timeouts long (100 minutes with waygate/timeout at its maximum); counted from the
    # batch's start, a batch lasts no longer than its slowest call could alone
    client = make_app(mcp_tool_timeout=2).test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    calls = [
        request("tools/call", {"name": "sleep", "arguments": {"seconds": 1.2}}, id=i)
        for i in range(4)
    ]
    started = time.monotonic()
    answers = client.post("/mcp", json=calls, headers=headers).get_json()
    assert time.monotonic() - started < 3.5
    assert [a["id"] for a in answers] == [0, 1, 2, 3]
    assert answers[0]["result"]["isError"] is False, answers[0]
    assert all(a["result"]["isError"] for a in answers[2:])
    assert "was not run" in answers[3]["result"]["content"][0]["text"]


def test_a_batch_of_notifications_only_is_202(rpc):
    response = rpc([{"jsonrpc": "2.0", "method": "notifications/initialized"}] * 2)
    assert response.status_code == 202 and response.get_data() == b""


@pytest.mark.parametrize("size", [0, 21])
def test_a_batch_is_bounded(rpc, size):
    response = rpc([request("ping", id=i) for i in range(size)])
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == -32600 and error["data"] == {"max": 20, "received": size}


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", MODERN])
def test_later_revisions_refuse_batches(rpc, version):
    response = rpc([request("ping")], headers={"MCP-Protocol-Version": version})
    assert response.status_code == 400
    assert error_of(response)["code"] == -32600
    assert "not part of MCP " + version in error_of(response)["message"]


def test_a_foreign_origin_is_403(rpc):
    response = rpc(request("ping"), headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert error_of(response)["code"] == -32600


def test_an_allowed_origin_passes(rpc):
    assert rpc(request("ping"), headers={"Origin": "http://localhost:3000"}).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1:8103", "localhost:8103", "[::1]:8103"])
def test_the_servers_own_loopback_origin_passes(rpc, host):
    response = rpc(request("ping"), headers={"Host": host, "Origin": f"http://{host}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "host, origin",
    [
        ("evil.example.com", "http://evil.example.com"),  # DNS rebinding: both name the attacker
        ("127.0.0.1:8103", "http://127.0.0.1:9999"),  # another local port is another origin
        ("127.0.0.1:8103", "https://127.0.0.1:8103"),
    ],
)
def test_same_origin_passes_only_for_this_loopback_server(rpc, host, origin):
    response = rpc(request("ping"), headers={"Host": host, "Origin": origin})
    assert response.status_code == 403
    assert error_of(response)["data"]["code"] == "FORBIDDEN"


@pytest.mark.sqlite_only  # no storage involved
@pytest.mark.parametrize(
    "host, origin",
    [
        ("127.0.0.1:8103", "http://localhost:8103"),
        ("127.0.0.1:8103", "http://[::1]:8103"),
        ("localhost:8103", "http://127.0.0.1:8103"),
        ("[::1]:8103", "http://LOCALHOST:8103"),
        ("127.0.0.1", "http://localhost:80"),
    ],
)
def test_the_loopback_names_are_one_origin_for_a_loopback_server(rpc, host, origin):
    assert rpc(request("ping"), headers={"Host": host, "Origin": origin}).status_code == 200


@pytest.mark.sqlite_only  # no storage involved
@pytest.mark.parametrize(
    "host, origin",
    [
        ("127.0.0.1:8103", "http://localhost:9999"),  # another port: another origin
        ("127.0.0.1:8103", "https://localhost:8103"),  # another scheme
        ("127.0.0.1:8103", "http://localhost.evil.example:8103"),
        ("127.0.0.1:8103", "http://127.0.0.2.nip.io:8103"),
        ("127.0.0.1:8103", "http://localhost:8103/path"),  # not an origin
        ("127.0.0.1:8103", "http://localhost:x"),
        ("127.0.0.1:8103", "http://evil@localhost:8103"),
        ("127.0.0.1:8103", "null"),
    ],
)
def test_other_origins_stay_refused_on_loopback(rpc, host, origin):
    response = rpc(request("ping"), headers={"Host": host, "Origin": origin})
    assert response.status_code == 403
    assert error_of(response)["data"]["code"] == "FORBIDDEN"


@pytest.mark.sqlite_only
def test_a_server_bound_to_127_0_0_1_takes_localhost_as_its_origin(server_factory, keys):
    """Real gunicorn bound to 127.0.0.1:PORT, called as browsers and the MCP Inspector do
    from a page on http://localhost:PORT; a foreign origin stays refused."""
    server = server_factory(workers=1)
    port = server.port

    def ping(origin):
        return requests.post(
            server.url + "/mcp",
            json=request("ping"),
            headers={**keys.headers(), "Accept": ACCEPT, "Origin": origin},
            timeout=10,
        )

    for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
        assert ping(origin).status_code == 200, origin
    for origin in ("http://evil.example", f"http://evil.example:{port}", "http://localhost:1"):
        refused = ping(origin)
        assert refused.status_code == 403, origin
        assert refused.json()["error"]["data"]["code"] == "FORBIDDEN"
    assert " ERROR " not in server.log()


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_a_plain_refusal_without_an_oauth_challenge(client, key):
    # To an MCP client a 401 means "go and do OAuth" (clients start discovery and dynamic
    # registration on it); Waygate offers no OAuth, so it refuses with 403 and says why.
    headers = {"Accept": ACCEPT}
    if key:
        headers["X-API-Key"] = key
    response = client.post("/mcp", json=request("ping"), headers=headers)
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response.headers
    error = error_of(response)
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert "X-API-Key" in error["message"] and "no OAuth" in error["message"]
    assert response.get_json()["id"] == 1


def test_no_oauth_metadata_is_published(client):
    for path in (
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-authorization-server",
    ):
        assert client.get(path).status_code == 404


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
    assert "Content-Type" not in response.headers


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
    # 2025-11-25 had tasks in core (experimental): it alone declares them at initialize
    tasks = {"tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}
    assert result["capabilities"] == (
        {**CAPABILITIES, **tasks} if agreed == "2025-11-25" else CAPABILITIES
    )
    assert result["serverInfo"]["name"] == "waygate" and result["serverInfo"]["version"]


def test_ping(rpc):
    response = rpc(request("ping"), headers={"MCP-Protocol-Version": "2025-06-18"})
    assert response.get_json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_unknown_method_in_the_handshake_era_is_200_method_not_found(rpc):
    response = rpc(request("nothing/here"), headers={"MCP-Protocol-Version": "2025-11-25"})
    assert response.status_code == 200
    assert error_of(response)["code"] == -32601


def test_server_discover_without_a_modern_header_is_method_not_found(rpc):
    response = rpc(request("server/discover"))
    assert response.status_code == 200 and error_of(response)["code"] == -32601


SERVED = ["2025-03-26", "2025-06-18", "2025-11-25", MODERN]


@pytest.mark.parametrize("version", ["1999-01-01", "2024-11-05"])
def test_an_unknown_protocol_version_is_unsupported_listing_every_served_revision(rpc, version):
    # no _meta: the version is judged first, whatever era's rules it might have followed
    response = rpc(request("tools/list"), headers={"MCP-Protocol-Version": version})
    assert response.status_code == 400
    assert error_of(response)["code"] == -32022
    assert error_of(response)["data"] == {"supported": SERVED, "requested": version}


# -- the 2026-07-28 revision -------------------------------------------------------------------


def test_server_discover(rpc):
    message, headers = modern("server/discover")
    result = rpc(message, headers=headers).get_json()["result"]
    # the same list as the unsupported-version error's: one list of served revisions
    assert result["supportedVersions"] == SERVED
    assert result["resultType"] == "complete"
    # subscriptions/listen carries list changes and resource updates (tests/test_mcp_notify.py)
    listening = {"listChanged": True}
    assert result["capabilities"] == {
        **CAPABILITIES,
        "extensions": {"io.modelcontextprotocol/tasks": {}},
        "tools": listening,
        "prompts": listening,
        "resources": {**listening, "subscribe": True},
    }
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "waygate"
    assert result["cacheScope"] == "private" and result["ttlMs"] == 0


def test_the_server_icon_is_in_initialize_and_server_discover(plugin_dist, make_app, keys):
    icon = "https://waygate.example.com/icon.svg"
    client = make_app(mcp_icon=icon).test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    init = client.post(
        "/mcp", json=request("initialize", {"protocolVersion": "2025-11-25"}), headers=headers
    ).get_json()["result"]
    assert init["serverInfo"]["icons"] == [{"src": icon}]
    message, routing = modern("server/discover")
    found = client.post("/mcp", json=message, headers={**headers, **routing}).get_json()
    assert found["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["icons"] == [
        {"src": icon}
    ]
    message, routing = modern("tools/list")  # other results: name and version only
    listed = client.post("/mcp", json=message, headers={**headers, **routing}).get_json()
    assert "icons" not in listed["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]


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
        {"Mcp-Method": "tools/list"},  # the body says server/discover
        {"Mcp-Name": "test"},  # the body calls echo
    ],
)
def test_a_routing_header_that_disagrees_is_header_mismatch(rpc, override):
    if "Mcp-Name" in override:
        message, headers = modern(
            "tools/call", {"name": "echo", "arguments": {"message": "x"}}, name="echo"
        )
    else:
        message, headers = modern("server/discover")
    response = rpc(message, headers={**headers, **override})
    assert response.status_code == 400 and error_of(response)["code"] == -32020


def test_an_unknown_modern_version_is_unsupported_with_the_supported_list(rpc):
    message, headers = modern("ping", version="2027-03-01")
    response = rpc(message, headers=headers)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == -32022
    assert error["data"] == {"supported": SERVED, "requested": "2027-03-01"}


def test_ping_is_gone_in_the_modern_era(rpc):
    message, headers = modern("ping")
    response = rpc(message, headers=headers)
    assert response.status_code == 404 and error_of(response)["code"] == -32601


def test_an_unknown_tool_is_invalid_params_in_both_eras(rpc):
    handshake = rpc(request("tools/call", {"name": "nope", "arguments": {}}))
    assert handshake.status_code == 200 and error_of(handshake)["code"] == -32602
    message, headers = modern("tools/call", {"name": "nope", "arguments": {}}, name="nope")
    response = rpc(message, headers=headers)
    assert response.status_code == 400 and error_of(response)["code"] == -32602
    assert "nope" in error_of(response)["message"]


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


def test_tool_calls_share_one_rate_limit_budget_per_key_with_mcp_execute(
    plugin_dist, make_app, keys
):
    client = make_app(rate_limit_execute="3/minute").test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    echo = request("tools/call", {"name": "echo", "arguments": {"message": "x"}}, id=7)
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 200
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 200
    assert client.post("/mcp", json=echo, headers=headers).status_code == 200
    limited = client.post("/mcp", json=echo, headers=headers)
    assert limited.status_code == 429
    assert error_of(limited)["data"]["code"] == "RATE_LIMITED"
    assert limited.get_json()["id"] == 7
    assert client.post("/mcp/execute", json={"action": "test"}, headers=headers).status_code == 429


def test_a_batch_counts_each_command_against_the_execute_budget(plugin_dist, make_app, keys):
    # a key's limit counts the commands it runs, not the requests that carry them: else a
    # batch of 50 (REST) or 20 (a 2025-03-26 JSON-RPC batch) multiplies it
    client = make_app(rate_limit_execute="5/minute").test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    batch = [{"action": "echo", "params": {"message": str(i)}} for i in range(3)]
    ran = client.post("/mcp/execute", json=batch, headers=headers)
    assert ran.status_code == 200 and ran.headers["X-RateLimit-Remaining"] == "2"
    over = client.post("/mcp/execute", json=batch, headers=headers)  # 6 of 5: none runs
    assert_envelope(over, 429, "RATE_LIMITED")
    storage = client.application.extensions["waygate"].storage
    assert storage.conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0] == 3


def test_a_json_rpc_batch_counts_each_tool_call_against_the_execute_budget(
    plugin_dist, make_app, keys
):
    client = make_app(rate_limit_execute="5/minute").test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    calls = [
        request("tools/call", {"name": "echo", "arguments": {"message": str(i)}}, id=i)
        for i in range(3)
    ]
    listed = [request("tools/list", id=10 + i) for i in range(4)]  # lists are not commands
    ran = client.post("/mcp", json=calls + listed, headers=headers)
    assert ran.status_code == 200 and len(ran.get_json()) == 7
    assert ran.headers["X-RateLimit-Remaining"] == "2"
    over = client.post("/mcp", json=calls, headers=headers)
    assert over.status_code == 429 and error_of(over)["data"]["code"] == "RATE_LIMITED"


def test_a_client_session_does_not_spend_the_execute_budget(plugin_dist, make_app, keys):
    client = make_app(rate_limit_execute="1/minute").test_client()
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    session = [
        request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        request("tools/list"),
        request("ping"),
    ]
    for message in session * 3:
        assert client.post("/mcp", json=message, headers=headers).status_code in (200, 202)
    echo = request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    assert client.post("/mcp", json=echo, headers=headers).status_code == 200
    assert client.post("/mcp", json=echo, headers=headers).status_code == 429
    assert client.post("/mcp", json=request("tools/list"), headers=headers).status_code == 200


def test_tools_list_follows_plugin_reloads(rpc, plugin_dist, client, keys):
    from tests.test_plugins import PLUGIN_SOURCE

    assert "hello" not in tools_by_name(rpc)
    plugin_dist.write_module("hello_plugin", PLUGIN_SOURCE.format(version="1.0.0", greeting="hi"))
    plugin_dist.register("Hello", "hello_plugin:Hello")
    client.post("/plugins/reload", headers=keys.headers("admin"))
    assert "hello" in tools_by_name(rpc)
    assert call(rpc, "hello", {})["content"][0]["text"] == "hi"


# -- rich results ------------------------------------------------------------------------------


def test_content_blocks_are_mcp_content_with_structured_content_beside_them(rpc):
    result = call(rpc, "chart", {})
    assert result["isError"] is False
    text, image = result["content"]
    assert text == {"type": "text", "text": "one bar"}
    assert image["type"] == "image" and image["mimeType"] == "image/png"
    assert base64.b64decode(image["data"]).startswith(b"\x89PNG")
    assert result["structuredContent"] == {"bars": 1}
    assert tools_by_name(rpc)["chart"]["outputSchema"]["required"] == ["bars"]
    picture = call(rpc, "picture", {})
    assert [block["type"] for block in picture["content"]] == ["image"]
    assert "structuredContent" not in picture


def test_rest_answers_content_blocks_as_json_with_base64_data(client, keys):
    response = client.post("/mcp/execute", json={"action": "chart"}, headers=keys.headers())
    assert response.status_code == 200
    result = response.get_json()["result"]
    assert result["structured"] == {"bars": 1}
    assert result["content"][1]["mimeType"] == "image/png"
    assert base64.b64decode(result["content"][1]["data"]).startswith(b"\x89PNG")


# -- prompts and resources ---------------------------------------------------------------------


def rpc_result(rpc, method, params=None):
    body = rpc(request(method, params)).get_json()
    assert "result" in body, body
    return body["result"]


def test_prompts_are_listed_in_a_stable_order_with_their_arguments(rpc):
    prompts = rpc_result(rpc, "prompts/list")["prompts"]
    assert [p["name"] for p in prompts] == sorted(p["name"] for p in prompts)
    triage = next(p for p in prompts if p["name"] == "triage")
    assert triage["arguments"] == [
        {"name": "service", "description": "The failing service", "required": True},
        {"name": "severity", "description": "SEV1-SEV4", "required": False},
    ]


def test_a_prompt_template_is_filled_in(rpc):
    result = rpc_result(rpc, "prompts/get", {"name": "triage", "arguments": {"service": "api"}})
    assert result["messages"] == [
        {
            "role": "user",
            "content": {
                "type": "text",
                "text": "Triage api (severity ): check its dashboard first.",
            },
        }
    ]
    rich = rpc_result(rpc, "prompts/get", {"name": "show_chart"})["messages"]
    assert [(m["role"], m["content"]["type"]) for m in rich] == [
        ("user", "image"),
        ("assistant", "text"),
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"name": "nope"},
        {"name": "triage"},  # service is required
        {"name": "triage", "arguments": {"service": 3}},
    ],
)
def test_prompt_mistakes_are_invalid_params(rpc, params):
    response = rpc(request("prompts/get", params))
    assert error_of(response)["code"] == -32602


def test_resources_and_templates_are_listed_and_read(rpc):
    listed = rpc_result(rpc, "resources/list")["resources"]
    assert [r["uri"] for r in listed] == ["logo://png", "runbook://disk-full"]
    templates = rpc_result(rpc, "resources/templates/list")["resourceTemplates"]
    assert templates == [
        {
            "uriTemplate": "ticket://{id}/summary",
            "name": "Ticket summary",
            "description": "",
            "mimeType": "text/plain",
        }
    ]
    text = rpc_result(rpc, "resources/read", {"uri": "runbook://disk-full"})["contents"]
    assert text == [
        {"uri": "runbook://disk-full", "mimeType": "text/plain", "text": "Free space first."}
    ]
    blob = rpc_result(rpc, "resources/read", {"uri": "logo://png"})["contents"][0]
    assert base64.b64decode(blob["blob"]).startswith(b"\x89PNG")
    ticket = rpc_result(rpc, "resources/read", {"uri": "ticket://7/summary"})["contents"][0]
    assert ticket["uri"] == "ticket://7/summary" and ticket["text"] == "Disk full on web1"


def test_an_unknown_resource_is_not_found_and_a_failing_reader_an_internal_error(rpc):
    missing = rpc(request("resources/read", {"uri": "runbook://nope"}))
    assert error_of(missing)["code"] == -32002
    failing = rpc(request("resources/read", {"uri": "ticket://8/summary"}))
    assert error_of(failing)["code"] == -32603
    assert "no such ticket" in error_of(failing)["message"]


def test_modern_lists_carry_caching_hints(rpc):
    for method, key in (("prompts/list", "prompts"), ("resources/list", "resources")):
        message, headers = modern(method)
        result = rpc(message, headers=headers).get_json()["result"]
        assert key in result and result["ttlMs"] == 0 and result["cacheScope"] == "private"
        assert result["resultType"] == "complete"


SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"


def test_modern_reads_carry_caching_hints_and_every_result_the_server_identity(rpc):
    # resources/read is cacheable in 2026-07-28 (ttlMs and cacheScope are required there: the
    # TypeScript client 2.x refused the result without them); prompts/get and tools/call are
    # not cacheable, yet every modern result names the server in _meta
    cases = [
        ("resources/read", {"uri": "runbook://disk-full"}, None, True),
        ("resources/templates/list", {}, None, True),
        ("prompts/get", {"name": "triage", "arguments": {"service": "api"}}, None, False),
        ("tools/call", {"name": "echo", "arguments": {"message": "x"}}, "echo", False),
    ]
    for method, params, name, cacheable in cases:
        message, headers = modern(method, params, name=name)
        result = rpc(message, headers=headers).get_json()["result"]
        assert result["resultType"] == "complete", method
        assert result["_meta"][SERVER_INFO_KEY]["name"] == "waygate", method
        assert ("ttlMs" in result and result["cacheScope"] == "private") is cacheable, method
    # the handshake era has none of these fields
    legacy = rpc(request("resources/read", {"uri": "runbook://disk-full"})).get_json()["result"]
    assert not {"ttlMs", "cacheScope", "resultType", "_meta"} & set(legacy)


def test_an_unknown_resource_is_invalid_params_in_2026_07_28(rpc):
    message, headers = modern("resources/read", {"uri": "runbook://nope"})
    response = rpc(message, headers=headers)
    assert error_of(response)["code"] == -32602  # -32002 before 2026-07-28 (above)
    assert error_of(response)["data"] == {"uri": "runbook://nope"}


def test_prompt_renders_and_resource_reads_are_audited_and_counted(rpc, client, keys):
    rpc_result(rpc, "prompts/get", {"name": "triage", "arguments": {"service": "api"}})
    rpc_result(rpc, "resources/read", {"uri": "ticket://7/summary"})
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()[
        "executions"
    ]
    assert [(e["action"], e["mode"], e["key_name"]) for e in executions[:2]] == [
        ("resources/read:ticket://{id}/summary", "mcp", "ops-user"),
        ("prompts/get:triage", "mcp", "ops-user"),
    ]
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        sample(text, "waygate_commands_total", action="prompts/get:triage", status="success") >= 1
    )


def test_reads_need_a_key_like_everything_else(client):
    response = client.post("/mcp", json=request("resources/list"), headers={"Accept": ACCEPT})
    assert response.status_code == 403


def test_a_scoped_key_sees_only_the_prompts_and_resources_its_patterns_match(client, keys):
    _, scoped = keys.store.create("agent", allow=["triage", "Testing.runbook*"])
    headers = {"Accept": ACCEPT, "X-API-Key": scoped}

    def answer(method, params=None):
        return client.post("/mcp", json=request(method, params), headers=headers).get_json()

    assert [p["name"] for p in answer("prompts/list")["result"]["prompts"]] == ["triage"]
    assert [r["uri"] for r in answer("resources/list")["result"]["resources"]] == [
        "runbook://disk-full"
    ]
    assert answer("resources/templates/list")["result"]["resourceTemplates"] == []
    hidden = answer("prompts/get", {"name": "show_chart"})
    assert hidden["error"]["code"] == -32602 and "Unknown prompt" in hidden["error"]["message"]
    assert answer("resources/read", {"uri": "logo://png"})["error"]["code"] == -32002
    assert "contents" in answer("resources/read", {"uri": "runbook://disk-full"})["result"]


# -- progress ----------------------------------------------------------------------------------


def events_of(response):
    """The JSON-RPC messages of an SSE answer, in order."""
    assert response.mimetype == "text/event-stream"
    text = response.get_data(as_text=True)
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


def steps_call(progress_token: str | None = "t-1", **arguments):  # noqa: S107
    params = {"name": "steps", "arguments": arguments}
    if progress_token is not None:
        params["_meta"] = {"progressToken": progress_token}
    return request("tools/call", params, id=5)


def test_a_call_with_a_progress_token_streams_progress_then_the_result(rpc):
    response = rpc(steps_call(count=3))
    assert response.status_code == 200
    *notes, final = events_of(response)
    assert [n["method"] for n in notes] == ["notifications/progress"] * 3
    assert [n["params"] for n in notes] == [
        {"progressToken": "t-1", "progress": step, "total": 3, "message": f"step {step}"}
        for step in (1, 2, 3)
    ]
    assert final["id"] == 5 and final["result"]["structuredContent"] == {"steps": 3}


def test_modern_streamed_results_are_complete(rpc):
    params = {"name": "steps", "arguments": {"count": 1}, "_meta": {"progressToken": 9}}
    message, headers = modern("tools/call", params, name="steps")
    message["params"]["_meta"] = {**META, "progressToken": 9}
    *notes, final = events_of(rpc(message, headers=headers))
    assert notes[0]["params"]["progressToken"] == 9
    assert final["result"]["resultType"] == "complete"


@pytest.mark.parametrize(
    "message, accept",
    [
        (steps_call(progress_token=None), ACCEPT),  # no token: nobody asked for progress
        (steps_call(), "application/json"),  # cannot take a stream
    ],
)
def test_without_a_token_or_a_stream_the_answer_is_json(rpc, message, accept):
    response = rpc(message, headers={"Accept": accept})
    assert response.mimetype == "application/json"
    assert response.get_json()["result"]["structuredContent"] == {"steps": 3}


def test_a_streamed_call_is_audited_like_any_other(rpc, client, keys):
    events_of(rpc(steps_call(count=1)))
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()
    latest = executions["executions"][0]
    assert (latest["action"], latest["mode"], latest["status"]) == ("steps", "mcp", "success")


def test_invalid_arguments_in_a_streamed_call_are_answered_at_once_as_json(rpc):
    response = rpc(steps_call(count="many"))
    assert response.mimetype == "application/json"
    assert response.get_json()["result"]["isError"] is True


def test_report_progress_refuses_what_is_not_a_number():
    from waygate.sdk import ExecutionContext

    ctx = ExecutionContext("cmd_x", None, deadline=0.0, logger=None)
    with pytest.raises(TypeError):
        ctx.report_progress("half")
    ctx.report_progress(1, 2, "half")
    assert ctx.progress == {"progress": 1, "total": 2, "message": "half"}


def test_prompt_arguments_complete_from_their_suggestions(rpc):
    def complete(name, argument, value):
        params = {
            "ref": {"type": "ref/prompt", "name": name},
            "argument": {"name": argument, "value": value},
        }
        return rpc(request("completion/complete", params)).get_json()

    assert complete("triage", "severity", "SEV")["result"]["completion"] == {
        "values": ["SEV1", "SEV2", "SEV3", "SEV4"],
        "total": 4,
        "hasMore": False,
    }
    assert complete("triage", "severity", "SEV4")["result"]["completion"]["values"] == ["SEV4"]
    assert complete("triage", "service", "a")["result"]["completion"]["values"] == []
    assert complete("nope", "x", "")["error"]["code"] == -32602
