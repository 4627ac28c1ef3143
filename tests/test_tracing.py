"""Traces for real: gunicorn exports OTLP/HTTP to a loopback receiver that decodes the protobuf
with the official opentelemetry-proto package; the span trees, the audit rows' trace ids and
the log lines are what an operator would look at."""

from __future__ import annotations

import gzip
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.test_mcp import ACCEPT, META, MODERN

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER


class Receiver:
    """An OTLP/HTTP trace receiver on a loopback port: keeps every span it is sent."""

    def __init__(self):
        self.spans: list[dict] = []
        self.service_names: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                for attr in resource_spans.resource.attributes:
                    if attr.key == "service.name":
                        self.service_names.add(attr.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(_span(s) for s in scope_spans.spans)

    def wait_for(self, predicate, what: str, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; received {len(spans)} spans")

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _span(s) -> dict:
    return {
        "name": s.name,
        "trace_id": s.trace_id.hex(),
        "span_id": s.span_id.hex(),
        "parent": s.parent_span_id.hex() or None,
        "kind": s.kind,
        "attributes": {a.key: _value(a.value) for a in s.attributes},
        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
        "error": s.status.code == 2,  # STATUS_CODE_ERROR
    }


def _value(v):
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(trace_id: str):
    return lambda spans: [s for s in spans if s["trace_id"] == trace_id]


def one(spans: list[dict], **match) -> dict:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s["name"], s["parent"]) for s in spans])
    return found[0]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def traced_server(server_factory, plugin_dist, keys):
    plugin_dist.register("Tracing", "tests.plugin_fixtures:TracingPlugin")

    def start(endpoint: str, **env):
        return server_factory(
            workers=2,
            PYTHONPATH=str(plugin_dist.root),
            WAYGATE_TRACING="true",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="waygate-under-test",
            OTEL_BSP_SCHEDULE_DELAY="50",  # export within moments, not the default 5 s
            **env,
        )

    return start


def audit_row(server, keys, command_id: str) -> dict:
    listed = requests.get(
        server.url + "/mcp/executions?limit=100", headers=keys.headers("admin"), timeout=5
    ).json()["executions"]
    return next(row for row in listed if row["command_id"] == command_id)


def test_rest_execute_continues_the_callers_trace_down_to_the_plugin(receiver, traced_server, keys):
    server = traced_server(receiver.endpoint)
    header, trace_id, client_span = traceparent()
    response = requests.post(
        server.url + "/mcp/execute",
        json={"action": "traced"},
        headers=keys.headers(traceparent=header),
        timeout=10,
    )
    assert response.status_code == 200
    command_id = response.json()["command_id"]
    spans = receiver.wait_for(lambda s: len(of_trace(trace_id)(s)) >= 5, "REST execute trace")
    spans = of_trace(trace_id)(spans)
    request = one(spans, parent=client_span)
    assert request["name"] == "POST /mcp/execute" and request["kind"] == SERVER_KIND
    attrs = request["attributes"]
    assert attrs["http.route"] == "/mcp/execute"
    assert attrs["http.response.status_code"] == 200 and attrs["http.request.method"] == "POST"
    assert attrs["waygate.key_id"] == keys.store.authenticate(keys.user).id
    one(spans, name="waygate.ratelimit.hit", parent=request["span_id"])
    command = one(spans, name="command traced", parent=request["span_id"])
    assert command["attributes"] == {
        "waygate.command": "traced",
        "waygate.plugin": "Tracing",
        "waygate.command_id": command_id,
        "waygate.mode": "sync",
        "waygate.timeout_s": 30,
        "waygate.key_id": keys.store.authenticate(keys.user).id,
        "waygate.outcome": "success",
        "waygate.duration_ms": command["attributes"]["waygate.duration_ms"],
    }
    one(spans, name="waygate.audit.commit", parent=command["span_id"])
    one(spans, name="plugin.outgoing", parent=command["span_id"])  # the plugin's own span
    # ctx.trace_headers() continues the command span for the plugin's outgoing calls
    assert response.json()["result"]["headers"]["traceparent"].split("-")[1:3] == [
        trace_id,
        command["span_id"],
    ]
    assert receiver.service_names == {"waygate-under-test"}
    # the key itself is in no attribute of any span
    every_value = json.dumps([s["attributes"] for s in receiver.spans])
    assert keys.user not in every_value and keys.admin not in every_value
    # audit row -> trace
    assert audit_row(server, keys, command_id)["trace_id"] == trace_id
    # the plugin's log line names the trace and the command span
    deadline = time.monotonic() + 5
    while "calling out" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in server.log().splitlines() if "calling out" in line)
    assert f"trace_id={trace_id} span_id={command['span_id']}" in line

    # a refused request has its span too: status 401, no key id, and never the wrong key
    header, refused_trace, _ = traceparent()
    wrong_key = "x" * 32
    response = requests.post(
        server.url + "/mcp/execute",
        json={"action": "echo"},
        headers={"X-API-Key": wrong_key, "traceparent": header},
        timeout=10,
    )
    assert response.status_code == 401
    refused = one(
        of_trace(refused_trace)(
            receiver.wait_for(lambda s: of_trace(refused_trace)(s), "401 request span")
        ),
        kind=SERVER_KIND,
    )
    assert refused["attributes"]["http.response.status_code"] == 401
    assert "waygate.key_id" not in refused["attributes"]
    assert wrong_key not in json.dumps(refused["attributes"])


def test_mcp_tools_call_continues_the_trace_in_meta(receiver, traced_server, keys):
    server = traced_server(receiver.endpoint)
    header, trace_id, client_span = traceparent()
    response = requests.post(
        server.url + "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "echo",
                "arguments": {"message": "hi"},
                "_meta": {**META, "traceparent": header, "tracestate": "vendor=1"},
            },
        },
        headers=keys.headers(
            Accept=ACCEPT,
            **{"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "echo"},
        ),
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["result"]["isError"] is False
    spans = receiver.wait_for(
        lambda s: (
            of_trace(trace_id)(s)
            and any(x["name"] == "POST /mcp" and x["kind"] == SERVER_KIND for x in s)
        ),
        "MCP trace",
    )
    command = one(of_trace(trace_id)(spans), name="command echo")
    assert command["parent"] == client_span
    assert command["attributes"]["waygate.mode"] == "mcp"
    # linked to the HTTP request span, which carried no traceparent header
    request = one(spans, name="POST /mcp", kind=SERVER_KIND)
    assert command["links"] == [(request["trace_id"], request["span_id"])]
    rows = requests.get(
        server.url + "/mcp/executions?action=echo", headers=keys.headers("admin"), timeout=5
    ).json()["executions"]
    assert rows[0]["mode"] == "mcp" and rows[0]["trace_id"] == trace_id


def test_a_batch_is_one_request_span_with_a_span_per_item(receiver, traced_server, keys):
    server = traced_server(receiver.endpoint)
    header, trace_id, client_span = traceparent()
    response = requests.post(
        server.url + "/mcp/execute",
        json=[{"action": "echo", "params": {"message": "a"}}, {"action": "status"}, {"nope": 1}],
        headers=keys.headers(traceparent=header),
        timeout=10,
    )
    assert [item["status"] for item in response.json()] == ["success", "success", "failed"]
    spans = of_trace(trace_id)(
        receiver.wait_for(lambda s: len(of_trace(trace_id)(s)) >= 7, "batch trace")
    )
    request = one(spans, parent=client_span, kind=SERVER_KIND)
    items = [s for s in spans if s["parent"] == request["span_id"] and "command" in s["name"]]
    assert sorted(s["name"] for s in items) == [
        "command (rejected)",
        "command echo",
        "command status",
    ]
    assert all(
        s["attributes"]["waygate.mode"] == "batch" for s in items if "rejected" not in s["name"]
    )
    assert one(items, name="command (rejected)")["error"] is True
    for item in response.json()[:2]:
        assert audit_row(server, keys, item["command_id"])["trace_id"] == trace_id


def test_an_async_execution_has_its_own_trace_linked_to_the_request(receiver, traced_server, keys):
    server = traced_server(receiver.endpoint)
    header, trace_id, client_span = traceparent()
    response = requests.post(
        server.url + "/mcp/execute",
        json={"action": "echo", "params": {"message": "later"}, "async": True},
        headers=keys.headers(traceparent=header),
        timeout=10,
    )
    assert response.status_code == 202
    command_id = response.json()["command_id"]
    spans = receiver.wait_for(
        lambda s: (
            any(x["attributes"].get("waygate.command_id") == command_id for x in s)
            and of_trace(trace_id)(s)
        ),
        "async execution span",
    )
    request = one(of_trace(trace_id)(spans), parent=client_span)
    command = one(spans, name="command echo")
    assert command["parent"] is None and command["trace_id"] != trace_id
    assert command["links"] == [(trace_id, request["span_id"])]
    assert command["attributes"]["waygate.mode"] == "async"
    assert command["attributes"]["waygate.outcome"] == "success"
    one(spans, name="waygate.audit.commit", parent=command["span_id"])
    assert audit_row(server, keys, command_id)["trace_id"] == command["trace_id"]


def test_a_receiver_that_does_not_answer_costs_the_requests_nothing(traced_server, keys):
    # A receiver that accepts connections and never answers: each export waits its timeout.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        server = traced_server(endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="5")
        command_ids = []
        for n in range(30):
            started = time.monotonic()
            response = requests.post(
                server.url + "/mcp/execute",
                json={"action": "echo", "params": {"message": str(n)}},
                headers=keys.headers(),
                timeout=10,
            )
            # answered well within the exporter's 5 s timeout: export is off the request path
            assert response.status_code == 200 and time.monotonic() - started < 1.0
            command_ids.append(response.json()["command_id"])
        for command_id in command_ids:
            row = audit_row(server, keys, command_id)
            assert row["status"] == "success" and len(row["trace_id"]) == 32


# -- tracing off (the default): nothing of it runs --------------------------------------------


def test_with_tracing_off_no_span_is_made_and_audit_rows_have_no_trace_id(client, keys):
    from waygate import tracing

    assert not tracing.enabled()
    from waygate.web import request_spans

    hooks = client.application.before_request_funcs[None]
    assert request_spans._start not in hooks  # no server-span hook on the request path
    header, _, _ = traceparent()
    response = client.post(
        "/mcp/execute",
        json={"action": "echo", "params": {"message": "hi"}},
        headers=keys.headers(traceparent=header),
    )
    assert response.status_code == 200 and "traceparent" not in response.headers
    rows = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()
    assert rows["executions"][0]["trace_id"] is None
    assert tracing.start_command("echo", "Core", "cmd_x", "sync", 30, None) is None


def test_a_plugin_gets_no_trace_headers_while_tracing_is_off():
    from waygate.sdk import ExecutionContext

    ctx = ExecutionContext(command_id="cmd_x", key_name=None, deadline=0.0, logger=None)
    assert ctx.trace_context is None and ctx.trace_headers() == {}


# -- the MCP _meta rules, on an in-memory tracer -----------------------------------------------


@pytest.fixture
def memory_spans(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from waygate import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("tests"))
    return exporter


def command_under(meta):
    from waygate import tracing

    with tracing.continue_meta(meta):
        span = tracing.start_command("echo", "Core", "cmd_x", "mcp", 30, None)
    span.end()
    return span


def test_a_malformed_traceparent_in_meta_is_ignored(memory_spans):
    for meta in ({"traceparent": "not-a-traceparent"}, {"traceparent": 42}, "not a dict"):
        span = command_under(meta)
        assert span.parent is None and not span.links


def test_a_meta_naming_the_requests_own_trace_keeps_the_request_span_as_parent(memory_spans):
    from opentelemetry import trace

    from waygate import tracing

    with tracing.span("POST /mcp"):
        request = trace.get_current_span().get_span_context()
        same_trace = f"00-{request.trace_id:032x}-{secrets.token_hex(8)}-01"
        span = command_under({"traceparent": same_trace})
    assert span.parent.span_id == request.span_id and not span.links
