"""Plugin commands whose parameters are JSON Schema 2020-12 (beside marshmallow), and icons:
declared by a real plugin module, served by the app, called over REST and MCP alike."""

from __future__ import annotations

import http.server
import itertools
import threading
import time

import pytest

from tests.test_http import assert_envelope

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"

CONTACT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "phone": {"type": "string", "pattern": "^[0-9+ ]{3,20}$"},
        "email": {"type": "string"},
        "code": {"type": "string", "pattern": "^(a|a?)+$"},
        "codes": {"type": "array", "items": {"type": "string", "pattern": "^(a|aa)+$"}},
        "labels": {"type": "array", "items": {"type": "object"}, "uniqueItems": True},
    },
    "required": ["name"],
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "additionalProperties": False,
}

SOURCE = """
from waygate.sdk import Command, Icon, Plugin, Prompt, Resource

CONTACT = {contact!r}
OUTPUT = {{"type": "object", "properties": {{"saved": {{"type": "string"}}}}}}


class Contacts(Plugin):
    name = "Contacts"
    version = "1.0.0"
    description = "JSON Schema params"
    author = "tests"
    icons = (Icon("data:image/png;base64,iVBORw0KGgo=", "image/png", ("16x16",)),)

    def commands(self):
        return [
            Command("save_contact", "Saves a contact", CONTACT,
                    lambda params, ctx: {{"saved": params["name"]}}, output_schema=OUTPUT,
                    icons=(Icon("https://example.com/contact.svg", "image/svg+xml", ("any",),
                                "dark"),)),
        ]

    def prompts(self):
        return [Prompt("greet_contact", "Greets", template="Hello")]

    def resources(self):
        return [Resource("contacts://all", "All contacts", lambda values: "[]")]
"""


_modules = itertools.count()


def load_broken(plugin_dist, make_app, params, icons="()"):
    """The Broken plugin of a module of its own (an imported module stays cached), loaded."""
    module = f"broken_plugin_{next(_modules)}"
    plugin_dist.write_module(module, broken(params, icons))
    plugin_dist.register("Broken", f"{module}:Broken")
    return make_app().test_client()


def broken(params, icons="()"):
    return f"""
from waygate.sdk import Command, Icon, Plugin


class Broken(Plugin):
    name = "Broken"
    version = "1.0.0"
    description = "a bad declaration"
    author = "tests"
    icons = {icons}

    def commands(self):
        return [Command("broken_cmd", "x", {params}, lambda params, ctx: None)]
"""


@pytest.fixture
def client(plugin_dist, make_app):
    plugin_dist.write_module("contacts_plugin", SOURCE.format(contact=CONTACT))
    plugin_dist.register("Contacts", "contacts_plugin:Contacts")
    return make_app().test_client()


def execute(client, keys, params):
    return client.post(
        "/mcp/execute", json={"action": "save_contact", "params": params}, headers=keys.headers()
    )


def rpc(client, keys, method, params=None, version=None):
    headers = {"Accept": ACCEPT, "X-API-Key": keys.user}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": dict(params or {})}
    if version == MODERN:
        headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
        if method == "tools/call":
            headers["Mcp-Name"] = params["name"]
        body["params"]["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return client.post("/mcp", json=body, headers=headers).get_json()


def test_the_declared_schema_is_the_tools_input_schema_as_written(client, keys):
    tools = {t["name"]: t for t in rpc(client, keys, "tools/list")["result"]["tools"]}
    assert tools["save_contact"]["inputSchema"] == CONTACT  # $schema, $defs, $anchor kept
    assert tools["save_contact"]["outputSchema"]["properties"] == {"saved": {"type": "string"}}


def test_rest_describes_the_parameters_and_openapi_stays_resolvable(client, keys):
    commands = client.get("/mcp/commands", headers=keys.headers()).get_json()["commands"]
    described = {c["name"]: c for c in commands}["save_contact"]["parameters"]
    assert described["name"] == {"type": "string", "required": True}
    assert described["address"] == {"type": "any", "required": False}  # a $ref: not followed
    document = client.get("/openapi.json").get_json()
    params = document["components"]["schemas"]["MCPCommand.save_contact"]["properties"]["params"]
    # the $ref would resolve against the OpenAPI document: tools/list has the exact schema
    assert params["type"] == "object" and "$defs" not in params and "$ref" not in str(params)


def test_arguments_are_validated_on_rest_and_mcp_with_the_marshmallow_error_shapes(client, keys):
    ok = execute(client, keys, {"name": "Ann", "email": "a@example.com"})
    assert ok.status_code == 200 and ok.get_json()["result"] == {"saved": "Ann"}

    wrong = assert_envelope(
        execute(client, keys, {"name": "Ann", "phone": "call me", "address": {"city": 5}}),
        400,
        "INVALID_REQUEST",
    )
    assert wrong["message"] == "invalid parameters for save_contact"
    assert set(wrong["details"]["params"]) == {"phone", "address"}
    extra = assert_envelope(
        execute(client, keys, {"name": "Ann", "email": "e", "admin": True}), 400, "INVALID_REQUEST"
    )
    assert "admin" in extra["details"]["params"]["_schema"][0]
    missing = assert_envelope(execute(client, keys, {"email": "e"}), 400, "MISSING_PARAMETER")
    assert missing["details"]["params"] == {"name": ["Missing data for required field."]}
    assert missing["message"] == "missing required parameter(s) for save_contact: name"

    for version in (None, MODERN):  # MCP: the same check, as an isError result
        called = rpc(
            client, keys, "tools/call", {"name": "save_contact", "arguments": {"email": 7}}, version
        )["result"]
        assert called["isError"] is True
        assert called["content"][0]["text"].startswith("Invalid arguments for save_contact")
        assert "email" in called["content"][0]["text"]
        good = rpc(
            client,
            keys,
            "tools/call",
            {"name": "save_contact", "arguments": {"name": "Bo", "phone": "+1 555"}},
            version,
        )["result"]
        assert good["isError"] is False and good["structuredContent"] == {"saved": "Bo"}
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()
    assert [e["status"] for e in executions["executions"]][:3] == ["success"] * 3  # refused: none


def test_a_backtracking_pattern_cannot_hold_a_worker(client, keys):
    # "^(a|a?)+$" against 3000 a's and a "!" backtracks for ages under Python's re; matched
    # under a time budget it is a refused argument within a fraction of a second
    started = time.monotonic()
    response = execute(client, keys, {"name": "x", "email": "e", "code": "a" * 3000 + "!"})
    assert time.monotonic() - started < 2
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert "took too long" in error["details"]["params"]["code"][0]
    assert execute(client, keys, {"name": "x", "email": "e", "code": "aaa"}).status_code == 200


def test_many_backtracking_values_share_one_budget(client, keys):
    # each value alone is stopped at the per-match budget; 300 of them in one call must not
    # add up to 300 budgets (15 s of a worker's thread for a 20 KB body)
    started = time.monotonic()
    codes = ["a" * 60 + "b"] * 300
    response = execute(client, keys, {"name": "x", "email": "e", "codes": codes})
    assert time.monotonic() - started < 2
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert "took too long" in error["details"]["params"]["codes"][0]
    assert (
        execute(client, keys, {"name": "x", "email": "e", "codes": ["aa"] * 300}).status_code == 200
    )


def test_unique_items_is_checked_in_linear_time(client, keys):
    # jsonschema compares every pair when the items do not sort (objects, mixed types),
    # whatever "items" says: 6,000 small objects held a thread for about 24 s
    started = time.monotonic()
    labels = [{"n": i} for i in range(4000)] + [{"n": 0.0}]
    response = execute(client, keys, {"name": "x", "email": "e", "labels": labels})
    assert time.monotonic() - started < 2
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"]["params"]["labels"][0].endswith("has non-unique elements")
    labels = [{"n": i, "m": 1} for i in range(4000)] + [{"m": 1, "n": True}]  # true is not 1
    unique = execute(client, keys, {"name": "x", "email": "e", "labels": labels})
    assert unique.status_code == 200


@pytest.fixture
def counting_http_server():
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("params", "icons", "reason"),
    [
        ('{"type": "object", "properties": {"a": {"type": "strin"}}}', "()", "not valid JSON"),
        ('{"type": "object", "properties": {"a": {"pattern": "(("}}}', "()", "not valid JSON"),
        ('{"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}', "()", "not resolve"),
        ('{"type": "array"}', "()", "type object"),
        (
            '{"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"}',
            "()",
            "dialect",
        ),
        (
            '{"type": "object", "properties": {"n": {"type": "number", "x-mcp-header": "N"}}}',
            "()",
            "x-mcp-header needs type string",
        ),
        ("{}", '(Icon("javascript:alert(1)"),)', "https:// URL or a data:image/"),
        ("{}", '(Icon("http://example.com/i.png"),)', "https:// URL or a data:image/"),
        ("{}", '(Icon("https://example.com/i.png", theme="pink"),)', "theme"),
    ],
)
def test_a_bad_schema_or_icon_is_a_load_error(plugin_dist, make_app, keys, params, icons, reason):
    if params == "{}":
        params = '{"type": "object"}'
    client = load_broken(plugin_dist, make_app, params, icons)
    info = client.get("/plugins/Broken", headers=keys.headers()).get_json()
    assert info["status"] == "failed" and reason in info["error"], info
    assert client.get("/plugins/Testing", headers=keys.headers()).get_json()["status"] == "active"


def test_a_remote_ref_is_a_load_error_and_is_never_fetched(
    plugin_dist, make_app, keys, counting_http_server
):
    url, hits = counting_http_server
    client = load_broken(
        plugin_dist,
        make_app,
        f'{{"type": "object", "properties": {{"a": {{"$ref": "{url}/s.json"}}}}}}',
    )
    info = client.get("/plugins/Broken", headers=keys.headers()).get_json()
    assert info["status"] == "failed" and "nothing is fetched" in info["error"]
    assert hits == []


def test_an_upstream_tools_remote_ref_is_not_fetched_either(counting_http_server):
    # jsonschema's default registry fetches a remote $ref with urllib; an upstream's inputSchema
    # is another server's word: its arguments go unchecked here rather than fetch anything
    from waygate.upstreams import params_class

    url, hits = counting_http_server
    params = params_class("remote", {"properties": {"a": {"$ref": f"{url}/s.json"}}})
    assert params().load({"a": 5}) == {"a": 5}
    assert hits == []


def test_icons_from_plugin_metadata_on_tools_prompts_and_resources(client, keys):
    tools = {t["name"]: t for t in rpc(client, keys, "tools/list")["result"]["tools"]}
    assert tools["save_contact"]["icons"] == [
        {
            "src": "https://example.com/contact.svg",
            "mimeType": "image/svg+xml",
            "sizes": ["any"],
            "theme": "dark",
        }
    ]
    plugin_icon = [
        {"src": "data:image/png;base64,iVBORw0KGgo=", "mimeType": "image/png", "sizes": ["16x16"]}
    ]  # the plugin's own, for whatever has none
    prompts = rpc(client, keys, "prompts/list", version=MODERN)["result"]["prompts"]
    assert [p["icons"] for p in prompts if p["name"] == "greet_contact"] == [plugin_icon]
    resources = rpc(client, keys, "resources/list")["result"]["resources"]
    assert [r["icons"] for r in resources if r["uri"] == "contacts://all"] == [plugin_icon]
    assert "icons" not in tools["echo"]  # the Testing plugin declares none
