"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
tests/conformance/ with the Node 22 it runs on, installed by scripts/install-conformance)
against real gunicorn, for the requirement sets of revisions 2026-07-28 and 2025-11-25; and
two real 2026-07-28 clients from npm (the TypeScript client 2.x, the MCP Inspector CLI)
reading a resource.

The suite cannot send headers, so it reaches the server through a loopback proxy that adds
the key (tests/keyproxy.py): authentication stays on. The server loads the suite's fixtures
from tests/conformance_plugin.py (and the task, trigger and input fixtures) like any installed
plugin. One server and one run of each requirement set serve the whole module. Every check
must pass, the tasks extension's scenarios included, except those of features Waygate
deliberately does not offer (README, "MCP clients": NOT_OFFERED) and the checks BY_DESIGN.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.conftest import ROOT, PluginDist, Server
from tests.keyproxy import KeyProxy
from waygate.config import Config
from waygate.keystore import KeyStore
from waygate.storage import open_storage

TOOLS = ROOT / "tests" / "conformance" / "node_modules"
NODE_BIN = TOOLS / ".bin"  # node 22 from npm first on PATH: for these tools only
SUITE = NODE_BIN / "conformance"
REVISIONS = ("2026-07-28", "2025-11-25")

pytestmark = pytest.mark.skipif(
    not (NODE_BIN / "node").exists() or not SUITE.exists(),
    reason="the conformance suite and its Node 22 are installed by `make install-test`",
)

# Scenario -> why Waygate does not offer it: 2025-era features that need a session or a
# server-to-client channel, which a stateless server over the handshake-era transports has not.
NOT_OFFERED = {
    "2025-11-25": {
        "tools-call-sampling": "sampling: a server-to-client request in the middle of a call",
        "tools-call-elicitation": "elicitation: a server-to-client request",
        "elicitation-sep1034-defaults": "elicitation: a server-to-client request",
        "elicitation-sep1330-enums": "elicitation: a server-to-client request",
        "resources-subscribe": "subscriptions need a session and a push channel",
        "resources-unsubscribe": "subscriptions need a session and a push channel",
        "server-sse-multiple-streams": "sessions: the server is stateless (no Mcp-Session-Id)",
        "server-sse-polling": "sessions: the server is stateless (no Mcp-Session-Id)",
        "logging-set-level": "logging: a log level is session state; plugin logs go to the"
        " server log",
        "tools-call-with-logging": "logging: see logging-set-level",
    },
    "2026-07-28": {},
}

# The extension's scenarios (io.modelcontextprotocol/tasks): every one runs and must pass, but
# for these checks, by design: (revision, "scenario/check") -> why.
TASK_SCENARIOS = {
    f"tasks-{name}"
    for name in (
        "lifecycle",
        "capability-negotiation",
        "wire-fields",
        "request-state-removal",
        "mrtr-input",
        "request-headers",
        "dispatch-and-envelope",
        "required-task-error",
        "mrtr-composition",
    )
}
BY_DESIGN = {
    ("2026-07-28", "tasks-lifecycle/sep-2663-tasks-get-status-failed"): "its fixture is a tool"
    " that fails with a protocol error while it runs; a Waygate command's failures are tool"
    " results (isError, the task completed), which the scenario's own tool-error check wants",
}

# Every scenario of each requirement set (0.2.0-alpha.12), so that one the suite silently
# skipped cannot pass.
_BOTH = {
    "completion-complete",
    "dns-rebinding-protection",
    "json-schema-2020-12",
    "server-sse-multiple-streams",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-error",
    "tools-call-with-progress",
    "resources-list",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
}
SCENARIOS = {
    "2026-07-28": _BOTH
    | {
        "server-stateless",
        "sep-2164-resource-not-found",
        "caching",
        "http-header-validation",
        "http-custom-header-server-validation",
        "tasks-status-notifications",
        "input-required-result-unsupported-methods",
        "input-required-result-validate-input",
        "input-required-result-basic-elicitation",
        "input-required-result-basic-sampling",
        "input-required-result-basic-list-roots",
        "input-required-result-request-state",
        "input-required-result-multiple-input-requests",
        "input-required-result-multi-round",
        "input-required-result-missing-input-response",
        "input-required-result-non-tool-request",
        "input-required-result-result-type",
        "input-required-result-tampered-state",
        "input-required-result-capability-check",
        "input-required-result-ignore-extra-params",
    }
    | TASK_SCENARIOS,
    "2025-11-25": _BOTH
    | {
        "server-initialize",
        "server-session-lifecycle",
        "server-sse-polling",
        "logging-set-level",
        "ping",
        "tools-call-with-logging",
        "tools-call-sampling",
        "tools-call-elicitation",
        "elicitation-sep1034-defaults",
        "elicitation-sep1330-enums",
        "resources-subscribe",
        "resources-unsubscribe",
    },
}


def node_env(home) -> dict[str, str]:
    """The environment of the npm tools: their Node 22 first on PATH, a HOME of their own
    (the Inspector keeps a catalog there)."""
    return {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}


@pytest.fixture(scope="module")
def conformance_server(tmp_path_factory, starts_servers):
    """A real gunicorn (2 workers) with the suite's fixtures, and a user key: ``(server, key)``."""
    root = tmp_path_factory.mktemp("conformance")
    data = root / "data"
    data.mkdir()
    storage = open_storage(Config(data_dir=data))
    storage.migrate()
    _, key = KeyStore(storage).create("conformance", "user")
    storage.close()
    site = PluginDist(root / "site")
    site.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    site.register("Conformance", "tests.conformance_plugin:ConformancePlugin")
    # the hooks that change the tool and prompt lists while the suite listens (2026-07-28)
    site.register("ConformanceTriggers", "tests.conformance_triggers:ConformanceTriggersPlugin")
    # the task scenarios' fixtures (io.modelcontextprotocol/tasks, suite 0.2)
    site.register("ConformanceTasks", "tests.conformance_tasks_plugin:ConformanceTasksPlugin")
    # The suite keeps a subscriptions/listen stream open once it has read the frames it
    # wanted (it does not cancel it), and it is one key: more than the default 2 per worker.
    env = {"PYTHONPATH": str(site.root), "WAYGATE_MCP_LISTENS_PER_KEY": "4"}
    server = Server(data_dir=data, workers=2, env=env).start()
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def suite_checks(conformance_server, tmp_path_factory) -> dict[str, dict[str, list[dict]]]:
    """Both requirement sets, one after the other through one key-adding proxy: revision ->
    scenario -> its checks. Not at once: the 2026-07-28 listen scenario changes the tool list
    (its trigger tools), which another run's tools-list check would see mid-way."""
    server, key = conformance_server
    out = tmp_path_factory.mktemp("suite")
    logs = {}
    with KeyProxy(server.port, key) as proxy:
        for revision in REVISIONS:
            logs[revision] = subprocess.run(
                [
                    str(SUITE),
                    "server",
                    "--url",
                    proxy.url + "/mcp",
                    "--requirements",
                    revision,
                    "-o",
                    str(out / revision),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=out,
                env=node_env(out),
                timeout=300,
            ).stdout
    checks: dict[str, dict[str, list[dict]]] = {}
    for revision in REVISIONS:
        found = checks.setdefault(revision, {})
        for path in (out / revision).glob("server-*/checks.json"):
            # server-<scenario>-<ISO timestamp with dashes>
            scenario = re.match(r"server-(.+)-\d{4}-\d\d-\d\dT", path.parent.name).group(1)
            found[scenario] = json.loads(path.read_text())
        assert found, logs[revision]
    return checks


def failing(checks: list[dict]) -> list[dict]:
    return [c for c in checks if c["status"] in ("FAILURE", "WARNING")]


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_official_conformance_suite_passes_but_for_features_not_offered(suite_checks, revision):
    checks = suite_checks[revision]
    assert set(checks) == SCENARIOS[revision]
    unexpected = {}
    for scenario, found in sorted(checks.items()):
        if scenario in NOT_OFFERED[revision]:
            continue
        bad = [
            f"{c['id']}: {c.get('errorMessage') or c['status']}"
            for c in failing(found)
            if (revision, f"{scenario}/{c['id']}") not in BY_DESIGN
        ]
        if bad:
            unexpected[scenario] = bad
    assert unexpected == {}
    # a scenario with no check at all proves nothing, except those that declare themselves
    # not applicable to a stateless server (no session, no task to notify about)
    empty = {s for s, found in checks.items() if not found}
    assert empty <= {"server-session-lifecycle", "tasks-status-notifications"}, empty


def test_every_feature_not_offered_is_in_the_readme_with_its_reason():
    readme = (ROOT / "README.md").read_text()
    for scenario in NOT_OFFERED["2025-11-25"]:
        assert f"`{scenario}`" in readme, scenario


def test_the_typescript_client_2_reads_a_resource_under_2026_07_28(conformance_server, tmp_path):
    # before: "Invalid result for resources/read" (ttlMs and cacheScope are required there)
    server, key = conformance_server
    done = subprocess.run(
        [
            str(NODE_BIN / "node"),
            str(ROOT / "tests" / "conformance" / "read_resource.mjs"),
            server.url + "/mcp",
            key,
            "test://static-text",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=TOOLS.parent,
        env=node_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["protocolVersion"] == "2026-07-28"
    assert answer["result"]["contents"] == [
        {
            "uri": "test://static-text",
            "mimeType": "text/plain",
            "text": "This is the content of the static text resource.",
        }
    ]


def test_the_mcp_inspector_cli_reads_a_resource_under_2026_07_28(conformance_server, tmp_path):
    server, key = conformance_server
    done = subprocess.run(
        [
            str(NODE_BIN / "mcp-inspector"),
            "--cli",
            server.url + "/mcp",
            "--transport",
            "http",
            "--protocol-era",
            "modern",
            "--method",
            "resources/read",
            "--uri",
            "test://template/42/data",
            "--header",
            f"X-API-Key: {key}",
            "--format",
            "json",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=node_env(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)["result"]
    # the 2026-07-28 era's fields: a handshake-era answer has none of them
    assert result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "waygate"
    assert json.loads(result["contents"][0]["text"])["id"] == "42"
