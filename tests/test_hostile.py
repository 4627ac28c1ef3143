"""Hostile input: property-based fuzzing of bodies and query parameters, and the classic
attacks. Every answer is the right 4xx envelope (or a success), never a 5xx or a trace."""

import json
import os
import string

import pytest
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
        assert response.get_json()["jsonrpc"] == "2.0"


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


def test_escaped_lone_surrogates_are_valid_json(client, keys):
    body = '{"action": "echo", "params": {"message": "\\ud800"}}'
    response = client.post(
        "/mcp/execute", data=body, content_type="application/json", headers=keys.headers()
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "success"
