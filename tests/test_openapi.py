"""The OpenAPI document: generated from the code, committed, served, rendered and fuzzed."""

import os
import re
import subprocess

import yaml

from tests.browser import OriginWatch, new_page
from tests.conftest import BIN, ROOT


def test_the_committed_openapi_yaml_is_what_the_code_generates(tmp_path):
    out = tmp_path / "openapi.yaml"
    result = subprocess.run(
        [str(BIN / "waygate"), "openapi", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == (ROOT / "openapi.yaml").read_text(), (
        "openapi.yaml is stale: run `.venv/bin/waygate openapi` and commit it"
    )


def test_every_route_is_documented_with_its_errors(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in (
        "/",
        "/health",
        "/ready",
        "/metrics",
        "/mcp/execute",
        "/mcp/status",
        "/mcp/commands",
        "/mcp/executions",
        "/mcp/executions/{command_id}",
        "/plugins",
        "/plugins/{plugin_name}",
        "/plugins/reload",
        "/diagnostics/connection",
        "/diagnostics/performance",
        "/diagnostics/errors",
        "/mcp",
        "/openapi.json",
    ):
        assert path in paths, path
    execute = paths["/mcp/execute"]["post"]
    assert {"200", "202", "400", "401", "408", "413", "429", "500", "503"} <= set(
        execute["responses"]
    )
    assert execute["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "X-RateLimit-Remaining" in execute["responses"]["200"]["headers"]
    assert "Retry-After" in execute["responses"]["429"]["headers"]
    listing = paths["/mcp/executions"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"page", "limit", "since", "status"}
    assert "403" in listing["responses"]
    assert "Link" in listing["responses"]["200"]["headers"]
    assert paths["/health"]["get"]["security"] == []
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "32-character alphanumeric key",
    }
    command = document["components"]["schemas"]["MCPCommand.status"]  # no required params
    assert command["required"] == ["action"]
    assert command["properties"]["timeout"] == {
        "type": "integer",
        "default": 30,
        "minimum": 1,
        "maximum": 300,
        "description": "Timeout in seconds",
    }


def test_openapi_yaml_parses_and_matches_the_served_document(client):
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    assert committed["info"]["version"] == "2.0.0"
    assert set(committed["paths"]) == set(client.get("/openapi.json").get_json()["paths"])


def test_docs_render_in_headless_chromium_from_the_server_alone(server_factory, browser):
    server = server_factory(workers=1)
    with new_page(browser) as page:
        watch = OriginWatch(page, server.url)
        page.goto(server.url + "/docs")
        page.locator('.opblock-summary-path[data-path="/health"]').wait_for(timeout=30_000)
        dom = page.content()
    assert "swagger-ui" in dom
    # the operations rendered from /openapi.json, by path
    for path in ("/mcp/execute", "/health", "/plugins/{plugin_name}", "/diagnostics/errors"):
        assert re.search(r'data-path="' + re.escape(path) + '"', dom), path
    assert "Waygate MCP API" in dom
    # nothing came from anywhere but the server itself
    assert watch.requests and not watch.foreign, watch.foreign


def test_docs_page_csp_allows_only_its_own_origin(client):
    response = client.get("/docs")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'self'")
    assert "http" not in csp and "*" not in csp
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/health").headers["Content-Security-Policy"] == "default-src 'self'"


def test_schemathesis_passes_every_check(server_factory, keys, tmp_path):
    server = server_factory(
        workers=2,
        WAYGATE_RATE_LIMIT_EXECUTE="1000000/minute",
        WAYGATE_RATE_LIMIT_DEFAULT="1000000/minute",
        WAYGATE_RATE_LIMIT_HEALTH="1000000/minute",
        WAYGATE_RATE_LIMIT_METRICS="1000000/minute",
    )
    # Every check (schemathesis runs them all unless told otherwise; `--checks all` would
    # also override the per-operation setting below). On POST /mcp/execute alone,
    # positive_data_acceptance gives way to tests/schemathesis_hooks.py's check: a schema-valid
    # command reaches its handler, which may still refuse text that does not parse in its
    # stated format (the document cannot say "input is JSON text").
    (tmp_path / "schemathesis.toml").write_text(
        "[[operations]]\n"
        'include-path = "/mcp/execute"\n'
        'include-method = "POST"\n'
        "checks.positive_data_acceptance.enabled = false\n"
    )
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            server.url + "/openapi.json",
            "-H",
            f"X-API-Key: {keys.admin}",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "20261124",
            "--generation-database",
            "none",  # the same cases every run
        ],
        cwd=tmp_path,  # its crash cache stays out of the repository and out of the next run
        capture_output=True,
        text=True,
        timeout=400,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stdout[-6000:]


def test_the_served_document_points_at_the_service_itself(client):
    document = client.get("/openapi.json").get_json()
    assert document["servers"][0]["url"] == "/"  # relative: wherever it was served from


def test_mcp_command_names_the_loaded_commands_with_their_params(plugin_dist, make_app, keys):
    client = make_app().test_client()
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    actions = {
        ref["$ref"].rsplit("/", 1)[1].removeprefix("MCPCommand.")
        for ref in schemas["MCPCommand"]["oneOf"]
    }
    assert {"echo", "process_data", "sleep"} <= actions
    process = schemas["MCPCommand.process_data"]
    assert process["properties"]["action"]["enum"] == ["process_data"]
    assert process["properties"]["params"]["required"] == ["input"]
    assert "params" in process["required"]  # its params have a required field
    # a plugin loaded by a reload is in the next document
    plugin_dist.register("DiskFree", "tests.plugin_fixtures:RaisingPlugin")
    plugin_dist.unregister("Testing")
    reloaded = client.post("/plugins/reload", headers=keys.headers("admin"))
    assert reloaded.status_code == 200
    after = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert "MCPCommand.sleep" not in after and "MCPCommand.echo" in after


def test_get_and_delete_mcp_are_not_operations_and_options_lists_what_is_served(client):
    document = client.get("/openapi.json").get_json()
    assert set(document["paths"]["/mcp"]) == {"post"}
    assert client.options("/mcp").headers["Allow"] == "OPTIONS, POST"
    # /plugins/{plugin_name} would match "reload" too: it is not a method of /plugins/reload
    assert client.options("/plugins/reload").headers["Allow"] == "OPTIONS, POST"
    assert client.options("/plugins/Core").headers["Allow"] == "GET, HEAD, OPTIONS"


def test_docs_try_it_out_calls_the_service_on_its_own_port(server_factory, browser):
    """Swagger UI in headless Chromium, on a port other than 8000: "Try it out" on
    GET /health, then Execute, reaches this server."""
    server = server_factory(workers=1)
    assert server.port != 8000
    with new_page(browser) as page:
        page.goto(server.url + "/docs")
        block = page.locator(".opblock").filter(
            has=page.locator('.opblock-summary-path[data-path="/health"]')
        )
        block.locator(".opblock-summary-control").first.click()
        block.get_by_role("button", name="Try it out").click()
        with page.expect_response(server.url + "/health") as answer:
            block.get_by_role("button", name="Execute").click()
        status = block.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=30_000)
        assert answer.value.status == 200
        assert status.inner_text().strip() == "200"
        assert block.locator(".request-url pre").inner_text().strip() == server.url + "/health"
        body = block.locator(".live-responses-table tbody .response-col_description").first
        assert '"healthy"' in body.inner_text()
