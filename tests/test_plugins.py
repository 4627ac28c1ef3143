"""Plugin discovery, failures that never stop the server, the engine endpoints and reload."""

import threading
import time

import pytest

from tests.test_http import assert_envelope

pytestmark = pytest.mark.both_backends


@pytest.fixture
def broken_dist(plugin_dist):
    plugin_dist.register("Missing", "tests.no_such_module:Plugin")
    plugin_dist.register("BadMetadata", "tests.plugin_fixtures:BadMetadataPlugin")
    plugin_dist.register("Duplicate", "tests.plugin_fixtures:DuplicatePlugin")
    plugin_dist.register("Raising", "tests.plugin_fixtures:RaisingPlugin")
    plugin_dist.register("Misnamed", "tests.plugin_fixtures:TestingPlugin")
    plugin_dist.register("TriageCopy", "tests.plugin_fixtures:ClashingPromptPlugin")
    plugin_dist.register("BadResource", "tests.plugin_fixtures:BadResourcePlugin")
    return plugin_dist


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


def test_broken_plugins_are_reported_failed_and_the_server_runs(broken_dist, make_app, keys):
    client = make_app().test_client()
    body = client.get("/plugins?limit=100", headers=keys.headers()).get_json()
    by_name = {p["name"]: p for p in body["plugins"]}
    assert by_name["Core"]["status"] == "active"
    assert by_name["Testing"]["status"] == "active"
    failed = {name: p["error"] for name, p in by_name.items() if p["status"] == "failed"}
    assert failed["Missing"].startswith("import failed: ModuleNotFoundError")
    assert failed["BadMetadata"] == "metadata 'version' must be a non-empty string"
    assert failed["Duplicate"] == "command name 'echo' is already taken by plugin Core"
    assert failed["Raising"] == "initialisation failed: ValueError: cannot build commands"
    assert "does not match its entry point name 'Misnamed'" in failed["Misnamed"]
    assert failed["TriageCopy"] == "prompt name 'triage' is already taken by plugin Testing"
    assert failed["BadResource"].startswith("resource 'no-scheme' needs a URI")
    assert body["total"] == len(by_name)
    # still serving, and honest about it
    echo = client.post(
        "/mcp/execute", json={"action": "echo", "params": {"message": "hi"}}, headers=keys.headers()
    )
    assert echo.get_json()["result"] == {"result": "hi"}
    assert client.get("/mcp/status", headers=keys.headers()).get_json()["engine"] == "degraded"
    assert client.get("/health").status_code == 503


def test_plugins_list_matches_the_spec_shape(client, keys):
    response = client.get("/plugins", headers=keys.headers())
    body = response.get_json()
    dp = next(p for p in body["plugins"] if p["name"] == "DataProcessor")
    assert dp["version"] == "1.0.0" and dp["status"] == "active"
    assert dp["capabilities"] == ["process", "transform", "validate"]
    assert dp["config"] == {"max_size": 10485760, "formats": ["json", "xml", "csv"]}
    assert response.headers["X-Total-Count"] == str(body["total"])


def test_plugin_config_overrides_defaults(plugin_dist, make_app, keys):
    client = make_app(plugin_config={"DataProcessor": {"max_size": 1024}}).test_client()
    config = client.get("/plugins/DataProcessor", headers=keys.headers()).get_json()["config"]
    assert config["max_size"] == 1024 and config["formats"] == ["json", "xml", "csv"]


def test_plugin_statistics_count_calls_errors_and_duration(client, keys):
    for _ in range(3):
        client.post("/mcp/execute", json={"action": "boom"}, headers=keys.headers())
    client.post(
        "/mcp/execute", json={"action": "sleep", "params": {"seconds": 0.1}}, headers=keys.headers()
    )
    stats = client.get("/plugins/Testing", headers=keys.headers()).get_json()["statistics"]
    assert stats["calls_total"] == 4 and stats["errors_total"] == 3
    assert stats["avg_duration_ms"] >= 20


def test_statistics_survive_a_restart(client, keys, make_app):
    client.post("/mcp/execute", json={"action": "test"}, headers=keys.headers())
    again = make_app().test_client()  # another process, as far as its totals go

    def calls():
        return again.get("/plugins/Core", headers=keys.headers()).get_json()["statistics"][
            "calls_total"
        ]

    # the first app's totals are folded in within a moment (waygate/totals.py)
    deadline = time.monotonic() + 2
    while calls() != 1:
        assert time.monotonic() < deadline, "the first app's call was never counted"
        time.sleep(0.02)


@pytest.mark.parametrize("name", ["Nope", "..%2F..%2Fetc%2Fpasswd", "Core%00", "%E2%98%83"])
def test_unknown_plugin_is_404(client, keys, name):
    assert_envelope(client.get(f"/plugins/{name}", headers=keys.headers()), 404, "NOT_FOUND")


def test_mcp_status_tells_the_truth(client, keys):
    body = client.get("/mcp/status", headers=keys.headers()).get_json()
    assert body["engine"] == "operational"
    assert body["plugins_loaded"] == 3
    assert {"test", "echo", "status", "process_data", "analyze"} <= set(body["commands_available"])
    assert body["capabilities"] == {"async": True, "batch": True, "streaming": False}


def test_mcp_commands_describes_parameters_from_the_schemas(client, keys):
    body = client.get("/mcp/commands", headers=keys.headers()).get_json()
    commands = {c["name"]: c for c in body["commands"]}
    assert body["total"] == len(commands)
    assert commands["test"]["parameters"]["message"] == {
        "type": "string",
        "required": False,
        "description": "Test message",
        "default": "ok",
    }
    process = commands["process_data"]["parameters"]
    assert process["input"]["required"] is True and process["input"]["type"] == "string"
    assert process["format"]["enum"] == ["json", "xml", "csv"]
    assert process["format"]["default"] == "json"
    assert process["options"]["properties"]["validate"]["type"] == "boolean"


def test_engine_endpoints_need_a_key(client):
    for path in ("/plugins", "/plugins/Core", "/mcp/status", "/mcp/commands"):
        assert_envelope(client.get(path), 401, "UNAUTHORIZED")


# -- reload ------------------------------------------------------------------------------------

PLUGIN_SOURCE = """
from marshmallow import Schema
from waygate.sdk import Command, Plugin


class Hello(Plugin):
    name = "Hello"
    version = "{version}"
    description = "says hello"
    author = "tests"

    def commands(self):
        return [Command("hello", "Greets", Schema.from_dict({{}}), lambda p, ctx: "{greeting}")]
"""


def test_reload_needs_an_admin_key(client, keys):
    assert_envelope(client.post("/plugins/reload"), 401, "UNAUTHORIZED")
    assert_envelope(client.post("/plugins/reload", headers=keys.headers("user")), 403, "FORBIDDEN")


def test_reload_sees_new_changed_and_removed_plugins(plugin_dist, client, keys):
    hello = {"action": "hello"}
    assert client.post("/mcp/execute", json=hello, headers=keys.headers()).status_code == 400

    plugin_dist.write_module("hello_plugin", PLUGIN_SOURCE.format(version="1.0.0", greeting="hi"))
    plugin_dist.register("Hello", "hello_plugin:Hello")
    response = client.post("/plugins/reload", headers=keys.headers("admin"))
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "plugins_reloaded"
    assert "Hello" in body["loaded"] and body["count"] == len(body["loaded"])
    assert body["failed"] == [] and isinstance(body["duration_ms"], int)
    assert (
        client.post("/mcp/execute", json=hello, headers=keys.headers()).get_json()["result"] == "hi"
    )

    plugin_dist.write_module(
        "hello_plugin", PLUGIN_SOURCE.format(version="2.0.0", greeting="hello")
    )
    client.post("/plugins/reload", headers=keys.headers("admin"))
    assert client.get("/plugins/Hello", headers=keys.headers()).get_json()["version"] == "2.0.0"
    assert (
        client.post("/mcp/execute", json=hello, headers=keys.headers()).get_json()["result"]
        == "hello"
    )

    plugin_dist.unregister("Hello")
    body = client.post("/plugins/reload", headers=keys.headers("admin")).get_json()
    assert "Hello" not in body["loaded"]
    assert_envelope(client.get("/plugins/Hello", headers=keys.headers()), 404, "NOT_FOUND")


def test_a_running_command_finishes_on_the_plugin_it_started_with(plugin_dist, client, keys):
    results = {}

    def slow():
        results["r"] = client.post(
            "/mcp/execute",
            headers=keys.headers(),
            json={"action": "sleep", "params": {"seconds": 0.5}},
        )

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.1)
    plugin_dist.unregister("Testing")
    client.post("/plugins/reload", headers=keys.headers("admin"))
    thread.join()
    assert results["r"].get_json()["status"] == "success"
    assert (
        client.post("/mcp/execute", json={"action": "sleep"}, headers=keys.headers()).status_code
        == 400
    )


def test_plugin_config_secrets_are_redacted_for_every_key_everywhere(plugin_dist, make_app, keys):
    plugin_dist.register("Vault", "tests.plugin_fixtures:SecretConfigPlugin")
    operator = {
        "Vault": {
            "api_token": "tok-SECRET-1",  # secret by its name
            "dsn": "postgresql://u:SECRET-2@db/x",  # declared secret by the plugin
            "upstream": {"url": "https://y", "Password": "SECRET-3"},  # nested, any case
            "region": "eu-central",
        },
        "DataProcessor": {"max_size": 1024, "private_key": "SECRET-4"},
    }
    client = make_app(plugin_config=operator).test_client()
    expected = {
        "region": "eu-central",
        "dsn": "***",
        "api_token": "***",
        "upstream": {"url": "https://y", "Password": "***"},
    }
    for who in ("admin", "user"):
        headers = keys.headers(who)
        listed = client.get("/plugins?limit=100", headers=headers)
        by_name = {p["name"]: p for p in listed.get_json()["plugins"]}
        assert by_name["Vault"]["config"] == expected
        assert by_name["DataProcessor"]["config"]["private_key"] == "***"
        one = client.get("/plugins/Vault", headers=headers)
        assert one.get_json()["config"] == expected
        for body in (listed, one):
            assert "SECRET" not in body.get_data(as_text=True)
    # the plugin itself still gets the real values
    ran = client.post("/mcp/execute", json={"action": "vault_region"}, headers=keys.headers())
    assert ran.get_json()["result"] == {"region": "eu-central", "token_length": 12}
    assert "SECRET" not in repr(client.application.extensions["waygate"].config)


def test_a_scoped_key_sees_only_its_commands_in_plugins(client, keys):
    _, scoped = keys.store.create("echo-only", "user", allow=["echo"])
    listed = client.get("/plugins?limit=100", headers={"X-API-Key": scoped}).get_json()
    commands = {p["name"]: p["commands"] for p in listed["plugins"]}
    assert commands["Core"] == ["echo"]
    assert commands["DataProcessor"] == [] and commands["Testing"] == []
    one = client.get("/plugins/Core", headers={"X-API-Key": scoped}).get_json()
    assert one["commands"] == ["echo"]
    # an unscoped key sees them all
    admin = client.get("/plugins/Core", headers=keys.headers()).get_json()
    assert len(admin["commands"]) > 1


def test_a_command_named_like_another_plugins_cannot_load(plugin_dist, make_app, keys):
    plugin_dist.register("Shadow", "tests.plugin_fixtures:ShadowPlugin")
    client = make_app().test_client()
    shadow = client.get("/plugins/Shadow", headers=keys.headers()).get_json()
    assert shadow["status"] == "failed"
    assert "'Core.shadow' must not contain '.'" in shadow["error"]
    _, core_only = keys.store.create("core-only", "user", allow=["Core.*"])
    ran = client.post(
        "/mcp/execute", json={"action": "Core.shadow"}, headers={"X-API-Key": core_only}
    )
    assert ran.status_code == 400
    assert ran.get_json()["error"]["code"] == "INVALID_REQUEST"
