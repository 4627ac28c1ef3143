"""The OpenAPI document: generated from the code, committed, served, rendered and fuzzed."""

import os
import re
import subprocess
import tempfile

import yaml

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
    command = document["components"]["schemas"]["MCPCommand"]
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


def test_docs_render_in_headless_chromium_from_the_server_alone(server_factory):
    server = server_factory(workers=1)
    page = server.url + "/docs"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = result.stdout
    assert "swagger-ui" in dom, result.stderr[-2000:]
    # the operations rendered from /openapi.json, by path
    for path in ("/mcp/execute", "/health", "/plugins/{plugin_name}", "/diagnostics/errors"):
        assert re.search(r'data-path="' + re.escape(path) + '"', dom), path
    assert "Waygate MCP API" in dom
    # nothing came from anywhere but the server itself
    assert "cdn" not in dom.lower().replace("cdnjs", "")


def test_docs_page_csp_allows_only_its_own_origin(client):
    response = client.get("/docs")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'self'")
    assert "http" not in csp and "*" not in csp
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/health").headers["Content-Security-Policy"] == "default-src 'self'"


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(server_factory, keys, tmp_path):
    server = server_factory(
        workers=2,
        WAYGATE_RATE_LIMIT_EXECUTE="1000000/minute",
        WAYGATE_RATE_LIMIT_DEFAULT="1000000/minute",
        WAYGATE_RATE_LIMIT_HEALTH="1000000/minute",
        WAYGATE_RATE_LIMIT_METRICS="1000000/minute",
    )
    checks = ",".join(
        [
            "not_a_server_error",  # no 5xx
            "status_code_conformance",  # no undocumented status code
            "content_type_conformance",
            "response_schema_conformance",  # no response outside the documented schema
            "response_headers_conformance",
            "negative_data_rejection",  # invalid input is refused
            "missing_required_header",
            "ignored_auth",  # endpoints that need a key refuse requests without
        ]
    )
    # Not run: positive_data_acceptance (a schema cannot say "action names a loaded plugin's
    # command" or "input is valid JSON text", so schema-valid requests are rightly refused)
    # and unsupported_method (Flask answers OPTIONS itself, for CORS preflights).
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            server.url + "/openapi.json",
            "--checks",
            checks,
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
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:]
