"""2026-07-28 routing headers compared with the body: Mcp-Name (tools/call, prompts/get,
resources/read) and the Mcp-Param-* headers of x-mcp-header arguments, base64 sentinel
included. waygate.mcp.headers writes out the official SDK's rules (mcp.shared.inbound) so as
not to load the SDK in every worker: checked here against the SDK itself."""

from __future__ import annotations

import base64

import pytest

from waygate.mcp import headers

MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"
SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "dry": {"type": "boolean", "x-mcp-header": "Dry"},
        "where": {
            "type": "object",
            "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}},
        },
    },
}


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


VALUES = [
    "us-west1",
    b64("Hello, 世界"),
    "=?base64?SGVsbG8?=",
    "=?base64?SGVs!!!bG8=?=",
    "=?base64?SGVsbG8=",
    "SGVsbG8=",
    b64(" padded "),
    "",
    "caf\u00e9",
    None,
]


@pytest.mark.parametrize("value", VALUES)
def test_decoding_agrees_with_the_sdk(value):
    from mcp.shared.inbound import decode_header_value

    expected = decode_header_value(value)
    if value is not None and expected == value and not value.isascii():
        expected = None  # unencoded non-ASCII: the spec says reject; the SDK leaves it to HTTP
    assert headers.decoded(value) == expected


CASES = [
    ({"region": "us-west1"}, [("Mcp-Param-Region", "us-west1")]),
    ({"region": "us-west1"}, [("mcp-param-region", "us-west1")]),  # names: any case
    ({"region": "us-west1"}, []),  # missing header
    ({}, [("Mcp-Param-Region", "us-west1")]),  # header without argument
    ({"region": None}, []),
    ({"region": "Hello, 世界"}, [("Mcp-Param-Region", b64("Hello, 世界"))]),
    ({"region": "Hello"}, [("Mcp-Param-Region", "=?base64?SGVsbG8?=")]),  # bad padding
    ({"region": "a"}, [("Mcp-Param-Region", "a"), ("Mcp-Param-Region", "a")]),  # twice
    ({"count": 42}, [("Mcp-Param-Count", "42.0")]),  # numerically equal
    ({"count": 42}, [("Mcp-Param-Count", "42.5")]),
    ({"count": 42}, [("Mcp-Param-Count", "4.2e1")]),
    ({"dry": True}, [("Mcp-Param-Dry", "true")]),
    ({"dry": True}, [("Mcp-Param-Dry", "True")]),
    ({"where": {"zone": "z1"}}, [("Mcp-Param-Zone", "z1")]),
    ({"where": {"zone": "z1"}}, [("Mcp-Param-Zone", "z2")]),
    ({"where": "flat"}, [("Mcp-Param-Zone", "flat")]),
    ({"region": ["list"]}, []),
]


@pytest.mark.parametrize(("arguments", "sent"), CASES)
def test_param_headers_are_judged_as_the_sdk_judges_them(arguments, sent):
    from mcp.shared.inbound import validate_mcp_param_headers

    sdk = validate_mcp_param_headers(SCHEMA, arguments, dict(sent))
    if len(sent) == 2:  # a dict cannot hold a repeated header: the SDK sees one
        sdk = "repeated"
    assert (headers.param_mismatch(SCHEMA, arguments, tuple(sent)) is None) == (sdk is None)


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {"type": "object", "properties": {"n": {"type": "number", "x-mcp-header": "N"}}},
        {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "bad name"}}},
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "x-mcp-header": "A"},
                "b": {"type": "string", "x-mcp-header": "a"},
            },
        },
        {"type": "object", "items": {"type": "string", "x-mcp-header": "I"}},
        {
            "type": "object",
            "anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}],
        },
        {"type": "object", "x-mcp-header": "Root"},
    ],
)
def test_annotation_validity_agrees_with_the_sdk(schema):
    from mcp.shared.inbound import find_invalid_x_mcp_header

    assert (headers.invalid_annotation(schema) is None) == (
        find_invalid_x_mcp_header(schema) is None
    )


# -- over HTTP --------------------------------------------------------------------------------

PLUGIN = """
from waygate.sdk import Command, Plugin

class Regions(Plugin):
    name = "Regions"
    version = "1.0.0"
    description = "x-mcp-header"
    author = "tests"

    def commands(self):
        schema = {"type": "object", "required": ["region"], "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}}}
        return [Command("in_region", "x", schema, lambda p, ctx: p["region"])]
"""


@pytest.fixture
def client(plugin_dist, make_app):
    plugin_dist.write_module("regions_plugin", PLUGIN)
    plugin_dist.register("Regions", "regions_plugin:Regions")
    return make_app().test_client()


def call(client, keys, method, params, **extra):
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    sent = {
        "Accept": ACCEPT,
        "X-API-Key": keys.user,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        **extra,
    }
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
    return client.post("/mcp", json=body, headers=sent)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("eu-1", True),
        (b64("eu-1"), True),
        (None, False),
        ("us-1", False),
        ("=?base64?ZXUtMQ?=", False),
        ("=?base64?\u00e9?=", False),  # a byte past ASCII in the base64 (HTTP gives latin-1)
    ],
)
def test_a_tools_mcp_param_header_must_match_its_argument(client, keys, header, accepted):
    extra = {"Mcp-Name": "in_region"}
    if header is not None:
        extra["Mcp-Param-Region"] = header
    response = call(
        client, keys, "tools/call", {"name": "in_region", "arguments": {"region": "eu-1"}}, **extra
    )
    if accepted:
        assert response.status_code == 200 and response.get_json()["result"]["isError"] is False
    else:
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == -32020
        assert "Mcp-Param-Region" in response.get_json()["error"]["message"]


def test_mcp_name_is_checked_for_reads_and_prompts_too_and_may_be_base64(client, keys):
    # before: only tools/call's Mcp-Name was compared
    uri = "runbook://disk-full"
    assert (
        call(client, keys, "resources/read", {"uri": uri}, **{"Mcp-Name": uri}).status_code == 200
    )
    assert (
        call(client, keys, "resources/read", {"uri": uri}, **{"Mcp-Name": b64(uri)}).status_code
        == 200
    )
    for wrong in ({"Mcp-Name": "runbook://other"}, {}, {"Mcp-Name": "=?base64?\u00e9\u00e9?="}):
        response = call(client, keys, "resources/read", {"uri": uri}, **wrong)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == -32020
    prompt = {"name": "triage", "arguments": {"service": "api"}}
    assert call(client, keys, "prompts/get", prompt, **{"Mcp-Name": "triage"}).status_code == 200
    response = call(client, keys, "prompts/get", prompt, **{"Mcp-Name": "show_chart"})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == -32020
