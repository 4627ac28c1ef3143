"""Hostile input: property-based fuzzing of bodies and query parameters, and the classic
attacks. Every answer is the right 4xx envelope (or a success), never a 5xx or a trace."""

import asyncio
import json
import logging
import os
import socket
import string

import httpx2
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_data_processor import assert_failed
from tests.test_http import assert_envelope

# The same inputs every run in CI (a failing build must be reproducible); a local run with
# HYPOTHESIS_RANDOM=1 explores new ones.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=not os.environ.get("HYPOTHESIS_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
commands = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["echo", "test", "status", "process_data", "analyze", "nope"])
        | st.text(max_size=10)
        | json_values,
        "params": json_values
        | st.dictionaries(
            st.sampled_from(["message", "input", "format", "options", "top", "x"]),
            json_values,
            max_size=4,
        ),
        "context": json_values,
        "timeout": st.integers(-5, 400) | json_values,
        "async": st.booleans() | json_values,
    },
)


@pytest.fixture
def client(make_app):
    return make_app(
        rate_limit_execute="1000000/minute", rate_limit_default="1000000/minute", batch_max=5
    ).test_client()


def check_answer(response):
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        body = response.get_json()
        if isinstance(body.get("error"), str):  # a command that refused its input
            assert body["status"] == "failed" and body["command_id"].startswith("cmd_")
        else:
            assert_envelope(response, response.status_code, body["error"]["code"])


@FUZZ
@given(body=commands | st.lists(commands, max_size=7) | json_values)
def test_fuzzed_execute_bodies_never_5xx(client, keys, body):
    check_answer(client.post("/mcp/execute", json=body, headers=keys.headers()))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzzed_raw_bytes_never_5xx(client, keys, raw):
    check_answer(
        client.post(
            "/mcp/execute", data=raw, content_type="application/json", headers=keys.headers()
        )
    )


query_text = st.text(alphabet=string.printable + "ü€\x00", max_size=30)


@FUZZ
@given(page=query_text, limit=query_text, since=query_text, status=query_text, action=query_text)
def test_fuzzed_query_parameters_never_5xx(client, keys, page, limit, since, status, action):
    admin = keys.headers("admin")
    query = {"page": page, "limit": limit, "since": since, "status": status, "action": action}
    for path in ("/mcp/executions", "/diagnostics/errors", "/plugins", "/mcp/commands"):
        check_answer(client.get(path, query_string=query, headers=admin))


@FUZZ
@given(message=json_values)
def test_fuzzed_mcp_messages_never_5xx(client, keys, message):
    response = client.post(
        "/mcp",
        json=message,
        headers={"X-API-Key": keys.user, "Accept": "application/json, text/event-stream"},
    )
    assert response.status_code < 500
    if response.status_code not in (202,):
        answer = response.get_json()  # an array answers a (2025-03-26) batch
        assert all(
            a["jsonrpc"] == "2.0" for a in (answer if isinstance(answer, list) else [answer])
        )


@FUZZ
@given(arguments=json_values, name=st.sampled_from(["echo", "process_data", "analyze", "x"]))
def test_fuzzed_tool_arguments_are_results_not_crashes(client, keys, arguments, name):
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    response = client.post(
        "/mcp", json=message, headers={"X-API-Key": keys.user, "Accept": "application/json"}
    )
    assert response.status_code == 200
    if name == "x":  # no such tool: a protocol error whatever the arguments
        assert response.get_json()["error"]["code"] == -32602
    else:
        assert "result" in response.get_json()


@FUZZ
@given(
    input=st.text(max_size=300),
    fmt=st.sampled_from(["json", "csv", "xml"]),
    validate=st.booleans(),
    transform=st.booleans(),
)
def test_fuzzed_process_data_inputs(client, keys, input, fmt, validate, transform):
    for action in ("process_data", "analyze"):
        params = {"input": input, "format": fmt}
        if action == "process_data":
            params["options"] = {"validate": validate, "transform": transform}
        check_answer(
            client.post(
                "/mcp/execute", json={"action": action, "params": params}, headers=keys.headers()
            )
        )


def test_deeply_nested_json_is_400(client, keys):
    body = "[" * 100_000 + "]" * 100_000
    response = client.post(
        "/mcp/execute", data=body, content_type="application/json", headers=keys.headers()
    )
    assert_envelope(response, 400, "INVALID_REQUEST")


def test_deeply_nested_json_data_is_a_clear_answer(client, keys):
    nested = "[" * 50_000 + "]" * 50_000
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "process_data", "params": {"input": nested}},
    )
    assert assert_failed(response, 400).startswith("input is not valid json: nested too deeply")


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "x" * 5000, "\x00", "ü"])
def test_hostile_request_ids_are_replaced(client, value):
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path="/health").get_environ()
    environ["HTTP_X_REQUEST_ID"] = value  # raw, as a proxy could pass it through
    from werkzeug.test import run_wsgi_app

    _, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    request_id = dict(headers)["X-Request-ID"]
    assert request_id != value and len(request_id) == 32 and "\n" not in request_id


@pytest.mark.parametrize(
    "path",
    [
        "/plugins/..%2F..%2Fetc%2Fpasswd",
        "/plugins/%2e%2e",
        "/plugins/Core%00.py",
        "/plugins/%3Cscript%3E",
        "/plugins/" + "A" * 5000,
        "/plugins/Core%0d%0aX-Injected:1",
    ],
)
def test_odd_plugin_names_are_404(client, keys, path):
    response = client.get(path, headers=keys.headers())
    assert_envelope(response, 404, "NOT_FOUND")
    assert "X-Injected" not in response.headers


def test_huge_csv_over_max_size_is_413_and_ragged_csv_is_400(make_app, keys):
    client = make_app(plugin_config={"DataProcessor": {"max_size": 2**20}}).test_client()
    huge = "a,b\n" + "1,2\n" * 300_000
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "process_data", "params": {"input": huge, "format": "csv"}},
    )
    assert "the limit is 1048576" in assert_failed(response, 413)
    ragged = "a,b\n1,2\n" + ",".join(["x"] * 50) + "\n"
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "analyze", "params": {"input": ragged, "format": "csv"}},
    )
    assert "row has 50 fields" in assert_failed(response, 400)


def test_body_over_the_limit_is_refused_before_it_is_read_over_the_wire(server_factory, keys):
    """Real gunicorn: a 1 GiB declared body is refused at once, without sending it."""
    import socket
    import time

    server = server_factory(workers=1, WAYGATE_MAX_BODY_BYTES="65536")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /mcp/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + keys.user.encode() + b"\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + b"{" * 1000
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    elapsed = time.monotonic() - started
    head, _, payload = reply.decode(errors="replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert elapsed < 2
    body = json.loads(payload)
    assert (
        body["error"]["code"] == "INVALID_REQUEST"
        and body["error"]["details"]["max_bytes"] == 65536
    )


# What Python says when it gives up; none of it may reach a client.
INTERPRETER_WORDING = ("recursion", "fsum", "int_max_str_digits", "Exceeds the limit", "overflow")
HUGE_INT = "9" * 5000


def assert_no_interpreter_wording(response):
    text = response.get_data(as_text=True)
    assert not [w for w in INTERPRETER_WORDING if w.lower() in text.lower()], text[:300]


def nothing_logged_at_error(client, keys):
    errors = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()
    return errors["total"] == 0


def test_a_body_with_a_5000_digit_integer_is_400(client, keys):
    response = client.post(
        "/mcp/execute",
        data='{"action": "echo", "params": {"message": "x"}, "n": ' + HUGE_INT + "}",
        content_type="application/json",
        headers=keys.headers(),
    )
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["message"] == "malformed JSON: a number has more than 4300 digits"
    assert error["details"] == {"line": 1, "column": 53}
    assert_no_interpreter_wording(response)
    assert nothing_logged_at_error(client, keys)


def test_an_mcp_message_with_a_5000_digit_id_is_a_clean_parse_error(client, keys):
    response = client.post(
        "/mcp",
        data='{"jsonrpc": "2.0", "method": "ping", "id": ' + HUGE_INT + "}",
        content_type="application/json",
        headers=keys.headers(Accept="application/json, text/event-stream"),
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == -32700
    assert_no_interpreter_wording(response)


@pytest.mark.parametrize(
    "action, params, message",
    [
        (
            "process_data",
            {"input": "<a>" * 2000 + "</a>" * 2000, "format": "xml"},
            "input is not valid xml: nested too deeply (more than 200 levels)",
        ),
        (
            "analyze",
            {"input": "<a>" * 2000 + "</a>" * 2000, "format": "xml"},
            "input is not valid xml: nested too deeply (more than 200 levels)",
        ),
        (
            "process_data",
            {"input": "[" * 900 + "]" * 900},
            "input is not valid json: nested too deeply (more than 200 levels)",
        ),
        (
            "analyze",
            {"input": '[{"a": Infinity}, {"a": -Infinity}]'},
            "input is not valid json: Infinity is not a JSON value",
        ),
        (
            "process_data",
            {"input": '[{"a": NaN}]'},
            "input is not valid json: NaN is not a JSON value",
        ),
        (
            "analyze",
            {"input": '[{"a": 1e400}]'},
            "input is not valid json: number 1e400 is out of range",
        ),
        (
            "process_data",
            {"input": '{"a": ' + HUGE_INT + "}"},
            "input is not valid json: a number has more than 4300 digits",
        ),
        (
            "analyze",
            {"input": '[{"a": ' + HUGE_INT + "}]"},
            "input is not valid json: a number has more than 4300 digits",
        ),
    ],
)
def test_data_python_cannot_hold_is_refused_as_input(client, keys, action, params, message):
    response = client.post(
        "/mcp/execute", json={"action": action, "params": params}, headers=keys.headers()
    )
    assert assert_failed(response, 400) == message
    assert_no_interpreter_wording(response)
    assert nothing_logged_at_error(client, keys)


@pytest.mark.parametrize(
    "data, fmt, mean",
    [
        ('[{"a": 1e308}, {"a": 1e308}]', "json", 1e308),  # the sum overflows, the mean does not
        ('[{"a": 1e308}, {"a": -1e308}, {"a": 1e308}]', "json", 1e308 / 3),
        ('[{"a": ' + "9" * 400 + '}, {"a": 1}]', "json", None),  # beyond a double: null
        ("a\n" + "9" * 400 + "\n1\n", "csv", None),
    ],
)
def test_analyze_means_beyond_double_range_are_finite_or_null(client, keys, data, fmt, mean):
    response = client.post(
        "/mcp/execute",
        json={"action": "analyze", "params": {"input": data, "format": fmt}},
        headers=keys.headers(),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    field = response.get_json()["result"]["fields"]["a"]
    assert field["mean"] == (pytest.approx(mean) if mean is not None else None)
    assert nothing_logged_at_error(client, keys)
    stats = client.get("/plugins/DataProcessor", headers=keys.headers()).get_json()["statistics"]
    assert stats["errors_total"] == 0


BODY_LIMIT = 1024 * 1024


@pytest.fixture
def small_body_server(server_factory):
    return server_factory(workers=1, WAYGATE_MAX_BODY_BYTES=str(BODY_LIMIT))


def echo_body(size: int) -> bytes:
    """A valid command followed by spaces: valid JSON of exactly ``size`` bytes."""
    command = b'{"action": "echo", "params": {"message": "ran"}}'
    return command + b" " * (size - len(command))


async def post_async(url: str, key: str, content) -> tuple[int, dict]:
    """POST as the MCP SDK does: an async httpx client that sends the whole body first."""
    headers = {"X-API-Key": key, "Content-Type": "application/json", "Accept": "application/json"}
    async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
        response = await http.post(url, content=content)
        return response.status_code, response.json()


def chunked(body: bytes):
    async def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    return chunks()


def executions(server, keys) -> int:
    listing = requests.get(server.url + "/mcp/executions", headers=keys.headers("admin"), timeout=5)
    return listing.json()["total"]


def test_a_chunked_body_over_the_limit_is_413_and_nothing_runs(small_body_server, keys):
    url = small_body_server.url + "/mcp/execute"
    status, body = asyncio.run(post_async(url, keys.user, chunked(echo_body(BODY_LIMIT + 1))))
    assert status == 413, body
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert body["error"]["details"] == {"max_bytes": BODY_LIMIT}
    assert executions(small_body_server, keys) == 0
    # a chunked body within the limit still runs, the last byte included
    status, body = asyncio.run(post_async(url, keys.user, chunked(echo_body(BODY_LIMIT))))
    assert (status, body["result"]) == (200, {"result": "ran"})


@pytest.mark.parametrize("path", ["/mcp/execute", "/mcp"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_async_client_reads_the_413_not_a_reset(small_body_server, keys, path, framing):
    """The server answers before it has read the body; the client sends all 8 MiB first."""
    body = echo_body(8 * BODY_LIMIT)
    content = body if framing == "content-length" else chunked(body)
    status, answer = asyncio.run(post_async(small_body_server.url + path, keys.user, content))
    assert status == 413
    error = answer["error"]["data"] if path == "/mcp" else answer["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert executions(small_body_server, keys) == 0


@pytest.mark.parametrize(
    "chunks",
    [b'5\r\n{"a":\r\nZZ\r\n', b'5\r\n{"a"1\r\n'],
    ids=["bad chunk size", "ends early"],
)
def test_a_malformed_chunked_body_is_400(small_body_server, keys, chunks):
    with socket.create_connection(("127.0.0.1", small_body_server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /mcp/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + keys.user.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
        )
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400"), head
    assert json.loads(body)["error"]["message"] == "malformed chunked request body"
    assert "ERROR" not in small_body_server.log()


# -- text that is not Unicode, and MCP parameters Python cannot hold ---------------------------
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def errors_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def held_client(plugin_dist, make_app):
    """Testing's ``wipe`` (destructiveHint) waits for approval."""
    return make_app(rate_limit_execute="1000000/minute").test_client()


def held_wipe(client, keys) -> str:
    held = client.post(
        "/mcp/execute", json={"action": "wipe", "params": {"target": "db1"}}, headers=keys.headers()
    )
    assert held.status_code == 202, held.get_data(as_text=True)
    return held.get_json()["command_id"]


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"action": "wipe", "params": {"target": "a\\ud800"}}', "params.target"),
        (
            '{"action": "echo", "params": {"message": "x"}, "context": {"note": "\\udc00"}}',
            "context.note",
        ),
        (
            '{"action": "process_data", "params": {"input": "a\\ud800", "format": "json"}}',
            "params.input",
        ),
        ('{"action": "analyze", "params": {"input": "a\\ud800b"}}', "params.input"),
        (
            '[{"action": "echo"}, {"action": "echo", "params": {"message": "\\ud800"}}]',
            "[1].params.message",
        ),
    ],
)
def test_a_lone_surrogate_in_a_command_is_400_naming_the_field(
    held_client, keys, caplog, body, field
):
    response = held_client.post(
        "/mcp/execute", data=body, content_type="application/json", headers=keys.headers()
    )
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"] == {"field": field}
    assert "lone surrogate" in error["message"] and field in error["message"]
    assert_no_interpreter_wording(response)
    assert errors_logged(caplog) == []
    assert nothing_logged_at_error(held_client, keys)
    listed = held_client.get("/mcp/executions?action=wipe", headers=keys.headers("admin"))
    assert listed.get_json()["total"] == 0  # nothing held, nothing stored


@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_a_lone_surrogate_in_a_decision_reason_is_400_and_the_request_stays_held(
    held_client, keys, caplog, verb
):
    command_id = held_wipe(held_client, keys)
    response = held_client.post(
        f"/mcp/executions/{command_id}/{verb}",
        data='{"reason": "change \\ud83d 42"}',
        content_type="application/json",
        headers=keys.headers("admin"),
    )
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"] == {"field": "reason"}
    state = held_client.get(f"/mcp/executions/{command_id}", headers=keys.headers())
    assert state.get_json()["status"] == "awaiting_approval"
    assert errors_logged(caplog) == [] and nothing_logged_at_error(held_client, keys)


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "wipe",'
         b' "arguments": {"target": "\\ud800"}}}', "params.arguments.target"),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "analyze",'
         b' "arguments": {"input": "a\\udfff"}}}', "params.arguments.input"),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "triage",'
         b' "arguments": {"service": "\\ud800"}}}', "params.arguments.service"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_an_mcp_message_is_a_parse_error_naming_the_field(
    held_client, keys, caplog, raw, field
):
    response = held_client.post(
        "/mcp", data=raw, content_type="application/json", headers=keys.headers(**MCP_HEADERS)
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["id"] == 4
    assert body["error"]["code"] == -32700
    assert field in body["error"]["message"]
    assert body["error"]["data"]["details"] == {"field": field}
    assert errors_logged(caplog) == [] and nothing_logged_at_error(held_client, keys)
    listed = held_client.get("/mcp/executions", headers=keys.headers("admin"))
    assert listed.get_json()["total"] == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"action": "wipe", "params": {"target": "db1", "count": NaN}}', "params.count"),
        ('{"action": "wipe", "params": {"target": "db1", "n": [1, -Infinity]}}', "params.n[1]"),
        ('{"action": "wipe", "params": {"target": "db1", "count": 1e999}}', "params.count"),
        ('{"action": "echo", "params": {"message": "x"}, "timeout": 1e999}', "timeout"),
    ],
)
def test_a_number_json_cannot_hold_is_400_naming_the_field(held_client, keys, caplog, body, field):
    """Before: NaN, Infinity and 1e999 were taken; a held request showed the approver null
    where the command would get NaN or infinity (and an upstream tool null)."""
    response = held_client.post(
        "/mcp/execute", data=body, content_type="application/json", headers=keys.headers()
    )
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"] == {"field": field}
    assert "is not a finite number" in error["message"] and field in error["message"]
    assert_no_interpreter_wording(response)
    assert errors_logged(caplog) == [] and nothing_logged_at_error(held_client, keys)
    listed = held_client.get("/mcp/executions?action=wipe", headers=keys.headers("admin"))
    assert listed.get_json()["total"] == 0  # nothing held, nothing stored


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "wipe",'
         b' "arguments": {"target": "db1", "count": 1e999}}}', "params.arguments.count"),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo",'
         b' "arguments": {"message": "hi"}, "_meta": {"waygate/timeout": -1e999}}}',
         "params._meta.waygate/timeout"),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "wipe",'
         b' "arguments": {"target": NaN}}}', "params.arguments.target"),
    ],
)  # fmt: skip
def test_a_number_json_cannot_hold_in_an_mcp_message_is_a_parse_error_naming_the_field(
    held_client, keys, caplog, raw, field
):
    response = held_client.post(
        "/mcp", data=raw, content_type="application/json", headers=keys.headers(**MCP_HEADERS)
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["id"] == 4 and body["error"]["code"] == -32700
    assert body["error"]["data"]["details"] == {"field": field}
    assert errors_logged(caplog) == [] and nothing_logged_at_error(held_client, keys)
    listed = held_client.get("/mcp/executions", headers=keys.headers("admin"))
    assert listed.get_json()["total"] == 0


def test_an_invalid_utf8_mcp_body_says_so(client, keys, caplog):
    raw = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "x": "\xff"}'
    response = client.post(
        "/mcp", data=raw, content_type="application/json", headers=keys.headers(**MCP_HEADERS)
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == -32700
    assert error["message"] == "Parse error: request body is not valid UTF-8"
    assert error["data"]["details"] == {"position": raw.index(b"\xff")}
    # REST says the same of the same bytes
    rest = client.post(
        "/mcp/execute", data=raw, content_type="application/json", headers=keys.headers()
    )
    assert (
        assert_envelope(rest, 400, "INVALID_REQUEST")["message"]
        == "request body is not valid UTF-8"
    )
    assert errors_logged(caplog) == [] and nothing_logged_at_error(client, keys)


def test_mcp_bodies_are_nested_at_most_64_deep_like_rest(client, keys, caplog):
    def ping(depth):
        params = {"x": json.loads("[" * depth + "]" * depth)} if depth else {}
        return client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 9, "method": "ping", "params": params},
            headers=keys.headers(**MCP_HEADERS),
        )

    assert ping(62).status_code == 200  # 62 + the message and its params: 64 levels
    refused = ping(63)
    assert refused.status_code == 400
    body = refused.get_json()
    assert body["id"] == 9 and body["error"]["code"] == -32600
    assert body["error"]["message"] == "JSON nested deeper than 64 levels"
    assert errors_logged(caplog) == [] and nothing_logged_at_error(client, keys)


ECHO_HI = {"name": "echo", "arguments": {"message": "hi"}}


@pytest.mark.parametrize(
    "method, params",
    [
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": []}, "argument": {}}),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": {"x": 1}}, "argument": {}}),
    ],
)
def test_mcp_params_python_cannot_hold_are_json_rpc_errors(client, keys, caplog, method, params):
    raw = json.dumps({"jsonrpc": "2.0", "id": 5, "method": method, "params": params})
    response = client.post(
        "/mcp", data=raw, content_type="application/json", headers=keys.headers(**MCP_HEADERS)
    )
    assert response.status_code == 200  # handshake era: errors met while handling travel as 200
    body = response.get_json()
    assert body["id"] == 5 and body["error"]["code"] == -32602, body
    assert_no_interpreter_wording(response)
    assert errors_logged(caplog) == [] and nothing_logged_at_error(client, keys)


# -- date-times at the edge of the range: one parser, 400 outside it ---------------------------
EDGE_TIMES = [
    "9999-12-31T23:59:59-23:59",  # year 10000 once in UTC
    "0001-01-01T00:00:00+23:59",  # year 0 once in UTC
    "10000-01-01T00:00:00Z",
    "2025-01-14T10:00:00" + "0" * 5000,
]


@pytest.mark.parametrize("since", EDGE_TIMES)
@pytest.mark.parametrize("path", ["/key-events", "/mcp/executions", "/diagnostics/errors"])
def test_a_since_outside_the_supported_range_is_400(client, keys, caplog, path, since):
    response = client.get(path, query_string={"since": since}, headers=keys.headers("admin"))
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["parameter"] == "since"
    assert error["details"]["range"] == "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
    assert_no_interpreter_wording(response)
    assert errors_logged(caplog) == [] and nothing_logged_at_error(client, keys)


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2025-01-14"])
def test_a_since_at_the_ends_of_the_range_is_taken(client, keys, since):
    response = client.get(f"/mcp/executions?since={since}", headers=keys.headers("admin"))
    assert response.status_code == 200


@pytest.mark.parametrize("expires_at", EDGE_TIMES)
def test_an_expiry_outside_the_supported_range_is_400(client, keys, caplog, expires_at):
    admin = keys.headers("admin")
    created = client.post("/keys", json={"name": "edge", "expires_at": expires_at}, headers=admin)
    error = assert_envelope(created, 400, "INVALID_REQUEST")
    assert list(error["details"]["fields"]) == ["expires_at"]
    assert "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z" in error["message"]
    assert client.post("/keys", json={"name": "edge"}, headers=admin).status_code == 201
    changed = client.patch("/keys/edge", json={"expires_at": expires_at}, headers=admin)
    assert_envelope(changed, 400, "INVALID_REQUEST")
    assert client.get("/keys/edge", headers=admin).get_json()["expires_at"] is None
    assert_no_interpreter_wording(created)
    assert_no_interpreter_wording(changed)
    assert errors_logged(caplog) == [] and nothing_logged_at_error(client, keys)
