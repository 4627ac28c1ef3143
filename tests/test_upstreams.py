"""Upstream MCP servers behind the gate (issue 30), with real servers from the registries:
@modelcontextprotocol/server-filesystem (npm, stdio), @modelcontextprotocol/server-everything
(npm, Streamable HTTP, as a remote upstream) and mcp-server-time (PyPI, stdio), behind real
gunicorn with 2 workers, shared by the module."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import mcp
import psutil
import pytest
import requests
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import FIGURES, ROOT, Server, free_port
from waygate.config import Config
from waygate.keystore import KeyStore
from waygate.storage import open_storage
from waygate.upstreams import (
    UpstreamParams,
    command_name,
    effective_annotations,
    log_stderr,
    params_class,
    read_config,
)

NODE_MODULES = ROOT / "tests" / "upstreams" / "node_modules"
FILESYSTEM = NODE_MODULES / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK = ROOT / "tests" / "upstreams" / "loopback.mjs"
PROBE = ROOT / "tests" / "upstreams" / "probe_server.py"
ACCEPT = "application/json, text/event-stream"


# -- the file: validated, expanded, one bad entry alone ------------------------------------------


def write(tmp_path: Path, document) -> Path:
    path = tmp_path / "upstreams.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_the_mcp_servers_file_is_read_with_variables_from_the_environment(tmp_path):
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "files": {"command": "node", "args": ["fs.js", "${ROOT_DIR}"],
                          "env": {"TOKEN": "${SECRET}"}},
                "remote": {"url": "https://mcp.example.com/mcp",
                           "headers": {"Authorization": "Bearer ${SECRET}"}},
                "off": {"command": "x", "disabled": True},
            }
        },
    )  # fmt: skip
    read = read_config(path, {"ROOT_DIR": "/srv", "SECRET": "s3cr3t"})
    assert read.file_error is None and read.errors == {}
    assert set(read.specs) == {"files", "remote"}
    files, remote = read.specs["files"], read.specs["remote"]
    assert files.args == ("fs.js", "/srv") and files.env == {"TOKEN": "s3cr3t"}
    assert remote.headers == {"Authorization": "Bearer s3cr3t"}
    # what /plugins may show: as written, without env or header values
    assert "s3cr3t" not in json.dumps([files.shown, remote.shown])
    assert files.shown["args"] == ["fs.js", "${ROOT_DIR}"] and files.shown["env"] == ["TOKEN"]


def test_a_secret_written_into_an_upstream_url_is_not_shown(tmp_path):
    # before: /plugins (to any key) and the plugin's description showed the URL as written,
    # a password in its userinfo and an api_key in its query included
    url = "https://bob:hunter2@mcp.example.com/mcp?api_key=abc123&region=eu&token=${T}#top"
    read = read_config(write(tmp_path, {"mcpServers": {"remote": {"url": url}}}), {"T": "t0k"})
    remote = read.specs["remote"]
    assert remote.url == url.replace("${T}", "t0k")  # what is used is untouched
    assert remote.shown["url"] == (
        "https://bob:***@mcp.example.com/mcp?api_key=***&region=eu&token=${T}#top"
    )


def test_a_secret_written_into_a_stdio_upstreams_args_is_not_shown(tmp_path):
    # before: /plugins showed args as written, so a literal --token xyz reached every key
    args = [
        "server.js",
        "--token",
        "xyz",
        "--api-key=abc",
        "DB_PASSWORD=pw",
        "--region",
        "eu",
        "--secret",
        "${S}",
        "https://u:pw@h.example/x?key=k",
        "--verbose",
    ]
    read = read_config(
        write(tmp_path, {"mcpServers": {"local": {"command": "node", "args": args}}}), {"S": "s"}
    )
    local = read.specs["local"]
    assert local.args[:3] == ("server.js", "--token", "xyz")  # what runs is untouched
    assert local.shown["args"] == [
        "server.js",
        "--token",
        "***",
        "--api-key=***",
        "DB_PASSWORD=***",
        "--region",
        "eu",
        "--secret",
        "${S}",
        "https://u:***@h.example/x?key=***",
        "--verbose",
    ]


def test_each_broken_entry_is_reported_alone_with_a_clear_reason(tmp_path):
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "good": {"command": "node"},
                "no_var": {"url": "https://x.example/mcp", "headers": {"A": "${MISSING}"}},
                "both": {"command": "x", "url": "https://x.example/mcp"},
                "neither": {"args": []},
                "sse": {"type": "sse", "url": "https://x.example/sse"},
                "bad args": {"command": "x"},
                "a__b": {"command": "x"},
                "ftp": {"url": "ftp://x.example/"},
                "files\n": {"command": "node"},  # a name is anchored at both ends
                "port": {"url": "http://127.0.0.1:99999/mcp"},
            }
        },
    )
    read = read_config(path, {})
    assert set(read.specs) == {"good"}
    errors = read.errors
    assert errors["no_var"] == "headers.A: ${MISSING} is not set"
    assert "both command and url" in errors["both"]
    assert "needs command" in errors["neither"]
    assert "'sse' is not supported" in errors["sse"]
    assert "url must be an http:// or https:// URL" in errors["ftp"]
    assert any("must be 1-48 letters and digits" in e for k, e in errors.items() if "bad" in k)
    assert any("must be 1-48" in e for k, e in errors.items() if "a__b" in k)
    assert "must be 1-48" in errors["invalid:'files\\n'"]
    assert errors["port"] == "url has no valid host and port (a port is a number from 1 to 65535)"


@pytest.mark.parametrize(
    "content, reason",
    [("{not json", "is not valid JSON (line 1, column 2)"), ('{"servers": {}}', '"mcpServers"')],
)
def test_a_file_that_cannot_be_used_is_one_clear_error(tmp_path, content, reason):
    read = read_config(write(tmp_path, content), {})
    assert reason in read.file_error and not read.specs
    assert "cannot read" in read_config(tmp_path / "missing.json", {}).file_error


def test_command_names_are_predictable_and_one_glob_names_one_upstream():
    assert command_name("files", "read_file") == "files__read_file"
    assert command_name("k8s", "pods.list") == "k8s__pods_list"  # no "." in command names
    # upstream names never hold "__", so the first one ends the upstream's name
    assert command_name("a-b", "c__d").split("__", 1) == ["a-b", "c__d"]


def test_annotations_keep_mcp_defaults_explicit():
    assert effective_annotations(None) == {"destructiveHint": True}  # unknown: careful
    assert effective_annotations({"readOnlyHint": True}) == {"readOnlyHint": True}
    assert effective_annotations({"destructiveHint": False}) == {"destructiveHint": False}


def test_arguments_are_checked_against_the_input_schema_and_kept_exactly():
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "head": {"type": "number"}},
        "required": ["path"],
    }
    params = params_class("files__read", schema)()
    sent = {"path": "/x", "extra": [1, {"b": 2}]}
    assert params.load(sent) is sent
    with pytest.raises(Exception) as missing:
        params.load({"head": 1})
    assert missing.value.normalized_messages() == {"path": ["Missing data for required field."]}
    with pytest.raises(Exception) as wrong:
        params.load({"path": 3})
    assert "is not of type 'string'" in wrong.value.normalized_messages()["path"][0]
    assert issubclass(type(params), UpstreamParams)


@pytest.mark.parametrize("ref", ["#/nowhere", "http://127.0.0.1:1/schema.json"])
def test_a_ref_the_upstream_schema_cannot_resolve_is_its_fault_not_the_callers(ref, caplog):
    # a 500 before: the validator raised while checking the caller's arguments; a remote $ref
    # is refused when the schema is read, never fetched (tests/test_jsonschema_params.py
    # proves it with a server that counts requests)
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    params = params_class("hostile__badref", schema)()
    assert params.load({"a": 1}) == {"a": 1}  # unchecked, as for an invalid schema
    assert "tool hostile__badref: inputSchema: $ref" in caplog.text
    assert "not checked here" in caplog.text


def test_a_child_writing_stderr_without_newlines_cannot_fill_the_worker(caplog):
    # before: a whole line was read into memory before it was cut, so 30 MB (or 3 GB) of
    # stderr without a newline was held at once by the worker
    import logging
    import threading
    import tracemalloc

    read_fd, write_fd = os.pipe()

    def child() -> None:
        with os.fdopen(write_fd, "wb") as out:
            for _ in range(30):
                out.write(b"E" * (1024 * 1024))
            out.write(b"\nthe next line\n")

    writer = threading.Thread(target=child)
    tracemalloc.start()
    writer.start()
    with caplog.at_level(logging.INFO), os.fdopen(read_fd, "rb") as pipe:
        log_stderr(pipe, logging.getLogger("waygate.upstream.flood"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    writer.join()
    lines = [r.getMessage() for r in caplog.records if r.name == "waygate.upstream.flood"]
    assert lines == ["E" * 2000, "the next line"]
    assert peak < 4 * 1024 * 1024, peak


def test_a_malformed_result_is_said_without_the_libraries_wording():
    # before: "upstream hostile failed: ValidationError: 13 validation errors for CallToolResult"
    import mcp_types
    import pydantic

    from waygate.upstreams import _upstream_error

    with pytest.raises(pydantic.ValidationError) as caught:
        mcp_types.CallToolResult.model_validate({"content": [{"type": "bogus"}]})
    error = _upstream_error("hostile", caught.value)
    assert str(error) == (
        "upstream hostile failed: it answered with a CallToolResult that is not valid MCP"
    )
    assert error.status == 502


# -- behind real gunicorn ------------------------------------------------------------------------


def start_everything(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["node", "--import", LOOPBACK.as_uri(), str(EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=open(log, "wb"),  # noqa: SIM115 - the child holds it
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server-everything did not start: {log.read_text()}")


class Stack:
    def __init__(self, server: Server, base: Path, keys: dict[str, str], everything):
        self.server, self.base, self.keys, self.everything = server, base, keys, everything
        self.root, self.records = base / "files", base / "records"

    def h(self, who: str = "admin", **extra) -> dict[str, str]:
        return {"X-API-Key": self.keys[who], **extra}

    def execute(self, who: str, action: str, params: dict, **body):
        return requests.post(
            f"{self.server.url}/mcp/execute",
            json={"action": action, "params": params, **body},
            headers=self.h(who),
            timeout=30,
        )

    def rpc(self, who: str, method: str, params: dict | None = None, **headers):
        message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        return requests.post(
            f"{self.server.url}/mcp", json=message, headers=self.h(who, **headers), timeout=30
        )

    def upstream_children(self, marker: str) -> list[psutil.Process]:
        found = []
        for pid in self.server.worker_pids():
            for child in psutil.Process(pid).children(recursive=True):
                try:
                    if marker in " ".join(child.cmdline()):
                        found.append(child)
                except psutil.NoSuchProcess:
                    pass
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request, starts_servers):
    if not FILESYSTEM.exists():
        pytest.fail("the npm upstreams are not installed: run `make install-test`")
    base = tmp_path_factory.mktemp("upstreams")
    data_dir, root = base / "data", base / "files"
    data_dir.mkdir()
    root.mkdir()
    (base / "records").mkdir()
    (root / "notes.txt").write_text("first line\n")
    port = free_port()
    everything = start_everything(port, base / "everything.log")
    upstreams = {
        "mcpServers": {
            "files": {"command": "node", "args": [str(FILESYSTEM), str(root)]},
            "time": {"command": sys.executable,
                     "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
            "everything": {"url": f"http://127.0.0.1:{port}/mcp",
                           "headers": {"X-Token": "${EVERYTHING_TOKEN}"}},
            "probe": {"command": sys.executable, "args": [str(PROBE), str(base / "records")]},
            "broken": {"command": str(base / "no-such-server")},
            "misconfigured": {"command": "x", "url": "http://127.0.0.1:1/mcp"},
        }
    }  # fmt: skip
    (base / "upstreams.json").write_text(json.dumps(upstreams))
    storage = open_storage(Config(data_dir=data_dir))
    storage.migrate()
    store = KeyStore(storage)
    keys = {
        "admin": store.create("up-admin", "admin")[1],
        "approver": store.create("up-approver", "admin")[1],
        "reader": store.create("up-reader", allow=["files.*"], read_only=True)[1],
        "writer": store.create("up-writer", allow=["files.*"])[1],
    }
    storage.close()
    server = Server(
        data_dir=data_dir,
        workers=2,
        env={
            "WAYGATE_UPSTREAMS": str(base / "upstreams.json"),
            "EVERYTHING_TOKEN": "t0k3n",
            "WAYGATE_RATE_LIMIT_EXECUTE": "10000/minute",
            "WAYGATE_RATE_LIMIT_DEFAULT": "10000/minute",
            "WAYGATE_APPROVAL_EXEMPT": "files__create_directory",
            "WAYGATE_UPSTREAM_CONNECT_TIMEOUT_S": "25",
        },
    )
    started = time.monotonic()
    server.start(timeout=90)
    # on a loaded machine a worker may be ready before a child of its own answered (it joins
    # when it does): wait until every worker has them all up
    in_a_row, deadline = 0, time.monotonic() + 60
    while in_a_row < 6 and time.monotonic() < deadline:
        states = requests.get(server.url + "/health", headers={"Connection": "close"}, timeout=10)
        up = {n for n, s in states.json()["upstreams"].items() if s["status"] == "up"}
        in_a_row = in_a_row + 1 if up >= {"files", "time", "everything", "probe"} else 0
        time.sleep(0.1)
    boot_s = time.monotonic() - started
    stack = Stack(server, base, keys, everything)
    stack.everything_port = port
    request.config.stash.setdefault(FIGURES, {})["upstreams boot"] = {"s": round(boot_s, 1)}
    yield stack
    children = [c.pid for c in stack.upstream_children("")]
    server.stop()
    stack.everything.kill()
    stack.everything.wait()
    # no orphans: every upstream child of every worker is gone with its worker
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in children):
        time.sleep(0.1)
    alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"upstream children outlived gunicorn: {alive}"
    assert boot_s < 60


def test_each_upstream_is_a_plugin_and_its_tools_are_commands(stack):
    plugins = {
        p["name"]: p
        for p in requests.get(
            f"{stack.server.url}/plugins?per_page=100", headers=stack.h(), timeout=10
        ).json()["plugins"]
    }
    files = plugins["files"]
    assert files["status"] == "active" and "mcp-upstream" in files["capabilities"]
    assert {"files__list_directory", "files__write_file", "files__move_file"} <= set(
        files["commands"]
    )
    assert plugins["time"]["status"] == "active"
    assert plugins["everything"]["config"] == {
        "transport": "http",
        "url": plugins["everything"]["config"]["url"],
        "headers": ["X-Token"],  # the header's name, never its value
    }
    assert "t0k3n" not in json.dumps(plugins)
    assert plugins["misconfigured"]["status"] == "failed"
    assert "both command and url" in plugins["misconfigured"]["error"]
    commands = {
        c["name"]: c
        for c in requests.get(
            f"{stack.server.url}/mcp/commands", headers=stack.h(), timeout=10
        ).json()["commands"]
    }
    assert commands["files__write_file"]["approval_required"] is True
    assert commands["files__list_directory"]["approval_required"] is False
    assert commands["files__create_directory"]["approval_required"] is False  # exempted
    assert commands["files__list_directory"]["parameters"]["path"]["required"] is True
    assert commands["probe__plain"]["approval_required"] is True  # no annotations: careful
    document = requests.get(f"{stack.server.url}/openapi.json", timeout=10).json()
    assert "MCPCommand.files__list_directory" in document["components"]["schemas"]


def test_tools_list_carries_the_upstreams_schemas_titles_and_annotations(stack):
    tools = {t["name"]: t for t in stack.rpc("admin", "tools/list").json()["result"]["tools"]}
    read = tools["files__read_text_file"]
    assert read["inputSchema"]["required"] == ["path"]
    assert read["annotations"] == {"readOnlyHint": True, "openWorldHint": False}
    assert read["title"] == "Read Text File"
    assert tools["everything__get-structured-content"]["outputSchema"]["required"]
    write_tool = tools["files__write_file"]
    assert write_tool["annotations"]["destructiveHint"] is True
    assert write_tool["_meta"] == {"waygate/approvalRequired": True}


def test_a_directory_is_listed_through_rest_and_mcp(stack):
    listed = stack.execute("reader", "files__list_directory", {"path": str(stack.root)})
    assert listed.status_code == 200, listed.text
    assert "[FILE] notes.txt" in listed.json()["result"]["content"][0]["text"]
    called = stack.rpc(
        "reader",
        "tools/call",
        {"name": "files__list_directory", "arguments": {"path": str(stack.root)}},
    ).json()["result"]
    assert called["isError"] is False and "[FILE] notes.txt" in called["content"][0]["text"]
    # an upstream tool's own error comes back as its error, through both
    outside = stack.execute("reader", "files__read_text_file", {"path": "/etc/hostname"})
    assert outside.status_code == 400 and outside.json()["status"] == "failed"
    assert "Access denied" in outside.json()["error"]
    relayed = stack.rpc(
        "reader", "tools/call", {"name": "files__read_text_file", "arguments": {"path": "/etc/x"}}
    ).json()["result"]
    assert relayed["isError"] is True and "Access denied" in relayed["content"][0]["text"]
    # arguments that break the inputSchema never reach the upstream
    missing = stack.execute("reader", "files__list_directory", {})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MISSING_PARAMETER"
    # the audit rows (the key, the upstream as plugin, the mode), the metrics, the log
    rows = requests.get(
        f"{stack.server.url}/mcp/executions?action=files__list_directory",
        headers=stack.h(),
        timeout=10,
    ).json()["executions"]
    assert {(r["plugin"], r["key_name"], r["status"]) for r in rows} == {
        ("files", "up-reader", "success")
    }
    assert {r["mode"] for r in rows} >= {"sync", "mcp"}
    metrics = requests.get(f"{stack.server.url}/metrics", headers=stack.h(), timeout=10).text
    assert 'waygate_commands_total{action="files__list_directory",status="success"}' in metrics
    assert "waygate.upstream.files" in stack.server.log()  # the child's stderr, named
    assert "Secure MCP Filesystem Server running on stdio" in stack.server.log()


def test_a_write_waits_for_approval_and_lands_exactly_as_approved(stack):
    target = stack.root / "approved.txt"
    held = stack.execute("writer", "files__write_file", {"path": str(target), "content": "v1\n"})
    assert held.status_code == 202 and held.json()["status"] == "awaiting_approval"
    assert not target.exists()  # nothing ran
    command_id = held.json()["command_id"]
    decided = requests.post(
        f"{stack.server.url}/mcp/executions/{command_id}/approve",
        headers=stack.h("approver"),
        json={"reason": "test"},
        timeout=10,
    )
    assert decided.status_code == 202, decided.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = requests.get(
            f"{stack.server.url}/mcp/executions/{command_id}", headers=stack.h("writer"), timeout=10
        ).json()
        if state["status"] not in ("pending", "running", "awaiting_approval"):
            break
        time.sleep(0.1)
    assert state["status"] == "success", state
    assert target.read_text() == "v1\n"
    # the audit row names the upstream plugin and the command
    row = requests.get(
        f"{stack.server.url}/mcp/executions/{command_id}", headers=stack.h(), timeout=10
    ).json()
    assert row["status"] == "success"
    # over MCP, the same write is held too
    over_mcp = stack.rpc(
        "writer",
        "tools/call",
        {"name": "files__write_file", "arguments": {"path": str(target), "content": "v2\n"}},
    ).json()["result"]
    assert over_mcp["structuredContent"]["status"] == "awaiting_approval"
    assert target.read_text() == "v1\n"


def test_a_scoped_read_only_key_cannot_write_nor_see_other_upstreams(stack):
    refused = stack.execute("reader", "files__write_file", {"path": "/x", "content": "x"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    elsewhere = stack.execute("writer", "time__get_current_time", {"timezone": "UTC"})
    assert elsewhere.status_code == 403  # files.* names the files upstream's tools only
    names = {t["name"] for t in stack.rpc("reader", "tools/list").json()["result"]["tools"]}
    assert "files__list_directory" in names and "files__write_file" not in names
    assert not any(n.startswith(("time__", "everything__")) for n in names)


def test_a_python_upstream_from_pypi_answers_with_structured_content(stack):
    answer = stack.execute("admin", "time__get_current_time", {"timezone": "Europe/Paris"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["structured"]["timezone"] == "Europe/Paris"


def test_rich_content_from_a_remote_upstream_comes_back_unchanged(stack):
    image = stack.rpc("admin", "tools/call", {"name": "everything__get-tiny-image"}).json()
    blocks = image["result"]["content"]
    assert any(b["type"] == "image" and b["mimeType"] == "image/png" and b["data"] for b in blocks)
    rest = stack.execute("admin", "everything__get-tiny-image", {}).json()["result"]["content"]
    assert rest == blocks
    structured = stack.rpc(
        "admin",
        "tools/call",
        {"name": "everything__get-structured-content", "arguments": {"location": "Chicago"}},
    ).json()["result"]
    assert set(structured["structuredContent"]) >= {"temperature", "conditions", "humidity"}
    resource = stack.execute(
        "admin", "everything__get-resource-reference", {"resourceType": "Text", "resourceId": 1}
    ).json()
    assert any(b["type"] == "resource" for b in resource["result"]["content"]), resource


def test_progress_from_a_remote_upstream_is_relayed_to_the_mcp_stream(stack):
    params = {
        "name": "everything__trigger-long-running-operation",
        "arguments": {"duration": 0.6, "steps": 3},
        "_meta": {"progressToken": "p-1"},
    }
    response = stack.rpc("admin", "tools/call", params, Accept=ACCEPT)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    messages = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    *notes, final = messages
    assert [n["params"]["progress"] for n in notes] == [1, 2, 3]
    assert all(n["params"]["progressToken"] == "p-1" for n in notes)
    assert "completed" in final["result"]["content"][0]["text"]


def test_progress_of_an_async_upstream_call_is_polled_then_its_result(stack):
    accepted = stack.execute(
        "admin", "everything__trigger-long-running-operation", {"duration": 1.5, "steps": 3},
        **{"async": True},
    )  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    url = f"{stack.server.url}/mcp/executions/{accepted.json()['command_id']}"
    seen, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline:
        state = requests.get(url, headers=stack.h(), timeout=10).json()
        if state.get("progress"):
            seen.append(state["progress"]["progress"])
        if state["status"] not in ("pending", "running"):
            break
        time.sleep(0.1)
    assert state["status"] == "success", state
    assert seen and set(seen) <= {1, 2, 3}
    assert "completed" in state["result"]["content"][0]["text"]


def test_a_slow_remote_tool_is_answered_408_at_its_deadline(stack, request):
    started = time.monotonic()
    slow = stack.execute(
        "admin", "everything__trigger-long-running-operation", {"duration": 20, "steps": 2},
        timeout=1,
    )  # fmt: skip
    took = time.monotonic() - started
    assert slow.status_code == 408 and slow.json()["status"] == "timeout"
    assert took < 4
    request.config.stash.setdefault(FIGURES, {})["upstream deadline"] = {
        "answered_s": round(took, 2)
    }


def test_the_upstream_call_is_cancelled_at_the_deadline(stack):
    slow = stack.execute("admin", "probe__wait", {"seconds": 30}, timeout=1)
    assert slow.status_code == 408
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(stack.records.glob("cancelled-*")):
        time.sleep(0.05)
    assert list(stack.records.glob("cancelled-*")), "the upstream never heard of the cancel"


def test_an_upstreams_changed_tools_are_told_to_a_listener(stack):
    """Before the next test grows the probe: each worker has its own probe, and a grow lands
    on one of them; the listener hears the one that grows its worker's list."""
    from tests.test_mcp_notify import Listener

    listener = Listener(stack.server.port, stack.keys["admin"], {"toolsListChanged": True})
    try:
        assert listener.next()["method"] == "notifications/subscriptions/acknowledged"
        told = None
        for _ in range(12):  # a new connection each time: either worker may answer
            grown = requests.post(
                f"{stack.server.url}/mcp/execute", json={"action": "probe__grow", "params": {}},
                headers=stack.h(Connection="close"), timeout=10,
            )  # fmt: skip
            assert grown.status_code == 200, grown.text
            try:
                told = listener.next(timeout=2)
                break
            except AssertionError:  # grown on the other worker: its listeners are told
                continue
        assert told is not None and told["method"] == "notifications/tools/list_changed"
    finally:
        listener.close()


def test_a_tool_list_that_changes_upstream_is_followed(stack):
    with requests.Session() as same_worker:  # one connection: one worker and its own upstream
        same_worker.headers.update(stack.h())
        grown = same_worker.post(
            f"{stack.server.url}/mcp/execute", json={"action": "probe__grow", "params": {}},
            timeout=10,
        )  # fmt: skip
        assert grown.status_code == 200, grown.text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = [
                c["name"]
                for c in same_worker.get(f"{stack.server.url}/mcp/commands", timeout=10).json()[
                    "commands"
                ]
            ]
            if "probe__grown" in names:
                break
            time.sleep(0.1)
        assert "probe__grown" in names
        ran = same_worker.post(
            f"{stack.server.url}/mcp/execute", json={"action": "probe__grown", "params": {}},
            timeout=10,
        )  # fmt: skip
        assert ran.status_code == 200 and ran.json()["result"]["content"][0]["text"] == "grown"


def test_a_down_upstream_is_degraded_in_health_and_its_name_is_said(stack):
    health = requests.get(f"{stack.server.url}/health", timeout=10)
    body = health.json()
    assert body["upstreams"]["broken"]["status"] == "down"
    assert body["upstreams"]["broken"]["error"].startswith("command not found: ")
    # down is degraded, not failing (only the misconfigured entry, a failed plugin, fails it)
    assert set(body["error"]["details"]["failed"]) == {"plugins"}
    assert (
        "misconfigured" in body["checks"]["plugins"] and "broken" not in body["checks"]["plugins"]
    )
    assert "broken" in body["checks"]["upstreams"] and body["checks"]["upstreams"].startswith(
        "degraded"
    )
    assert body["upstreams"]["files"]["status"] == "up"
    metrics = requests.get(f"{stack.server.url}/metrics", timeout=10).text
    assert 'waygate_upstream_up{upstream="broken"} 0.0' in metrics
    assert 'waygate_upstream_up{upstream="misconfigured"} 0.0' in metrics
    assert 'waygate_upstream_up{upstream="files"} 1.0' in metrics


def test_the_upstream_killed_mid_run_comes_back_and_calls_meanwhile_are_a_clear_503(stack):
    children = stack.upstream_children(str(FILESYSTEM))
    assert len(children) == 2  # one per worker
    for child in children:
        child.send_signal(signal.SIGKILL)
    answers = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = stack.execute("reader", "files__list_directory", {"path": str(stack.root)})
        answers.append(answer)
        if answer.status_code == 200 and len(stack.upstream_children(str(FILESYSTEM))) == 2:
            break
        time.sleep(0.05)
    assert answers[-1].status_code == 200
    for answer in answers[:-1]:
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 503:
            assert "upstream files is unavailable" in answer.json()["error"]
            assert "Traceback" not in answer.text
    fresh = {c.pid for c in stack.upstream_children(str(FILESYSTEM))}
    assert not fresh & {c.pid for c in children}  # new processes, no restart of Waygate


def test_a_call_in_flight_when_its_upstream_dies_is_answered_503_at_once(stack):
    from concurrent.futures import ThreadPoolExecutor

    for old in stack.records.glob("started-*"):
        old.unlink()
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(stack.execute, "admin", "probe__wait", {"seconds": 20})
        deadline = time.monotonic() + 10  # the call reached a probe child: it is running
        while time.monotonic() < deadline and not list(stack.records.glob("started-*")):
            time.sleep(0.05)
        for child in stack.upstream_children(str(PROBE)):
            child.send_signal(signal.SIGKILL)
        answer = waiting.result(timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"].startswith("upstream probe is unavailable")
    assert time.monotonic() - started < 15  # not held until its 30 s timeout
    in_a_row, deadline = 0, time.monotonic() + 30
    while in_a_row < 4 and time.monotonic() < deadline:
        back = stack.execute("admin", "probe__wait", {"seconds": 0})
        in_a_row = in_a_row + 1 if back.status_code == 200 else 0
        time.sleep(0.05)
    assert in_a_row == 4, back.text


def test_a_killed_worker_leaves_no_upstream_child_behind(stack):
    worker = stack.server.worker_pids()[0]
    mine = [c.pid for c in psutil.Process(worker).children(recursive=True)]
    assert mine
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in mine
    ):
        time.sleep(0.1)
    assert not [p for p in mine if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    # gunicorn starts a new worker, which connects its own upstreams
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(stack.upstream_children(str(FILESYSTEM))) == 2:
            break
        time.sleep(0.2)
    assert len(stack.upstream_children(str(FILESYSTEM))) == 2


def test_the_sdk_client_lists_and_calls_an_upstream_tool_through_waygate(stack):
    async def scenario():
        http = httpx2.AsyncClient(headers={"X-API-Key": stack.keys["reader"]})
        client = mcp.Client(
            streamable_http_client(stack.server.url + "/mcp", http_client=http), mode="auto"
        )
        async with http, client:
            tools = await client.list_tools()
            called = await client.call_tool(
                "files__read_text_file", {"path": str(stack.root / "notes.txt")}
            )
            return {t.name for t in tools.tools}, called

    names, called = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "files__read_text_file" in names
    assert called.is_error is False and called.content[0].text == "first line\n"


def test_a_reload_reads_the_file_again_and_keeps_unchanged_upstreams_running(stack):
    path = stack.base / "upstreams.json"
    document = json.loads(path.read_text())
    document["mcpServers"]["clock"] = document["mcpServers"]["time"]
    before = {c.pid for c in stack.upstream_children(str(FILESYSTEM))}
    path.write_text(json.dumps(document))
    reloaded = requests.post(f"{stack.server.url}/plugins/reload", headers=stack.h(), timeout=60)
    assert reloaded.status_code == 200 and "clock" in reloaded.json()["loaded"]
    # every worker follows: a second to notice, and its own child to start (slow on a
    # loaded machine: a worker lists it as soon as it is up)
    in_a_row, deadline = 0, time.monotonic() + 40
    while in_a_row < 8 and time.monotonic() < deadline:  # a new connection each: both workers
        answer = requests.post(
            f"{stack.server.url}/mcp/execute",
            json={"action": "clock__get_current_time", "params": {"timezone": "UTC"}},
            headers={**stack.h(), "Connection": "close"},
            timeout=30,
        )
        in_a_row = in_a_row + 1 if answer.status_code == 200 else 0
        time.sleep(0.05)
    assert in_a_row == 8, answer.text
    assert {c.pid for c in stack.upstream_children(str(FILESYSTEM))} == before


def test_a_remote_upstream_that_restarts_is_a_clear_503_or_502_then_serves_again(stack):
    stack.everything.kill()
    stack.everything.wait()
    gone = stack.execute("admin", "everything__echo", {"message": "hi"})
    assert gone.status_code == 503, gone.text
    assert gone.json()["error"].startswith("upstream everything is unavailable")
    stack.everything = start_everything(stack.everything_port, stack.base / "everything-2.log")
    answers, in_a_row, deadline = [], 0, time.monotonic() + 30
    while in_a_row < 8 and time.monotonic() < deadline:
        answer = stack.execute("admin", "everything__echo", {"message": "hi"})
        answers.append(answer)
        in_a_row = in_a_row + 1 if answer.status_code == 200 else 0
        time.sleep(0.05)
    assert in_a_row == 8, answers[-1].text
    for answer in answers:
        assert answer.status_code in (200, 502, 503), answer.text
        if answer.status_code != 200:
            assert answer.json()["error"].startswith("upstream everything")


# -- in-process: the manager on its own -------------------------------------------------------


def test_the_call_carries_the_execution_s_trace_to_the_upstream(tmp_path):
    import logging

    from opentelemetry import trace
    from opentelemetry.trace import SpanContext, TraceFlags

    from waygate.sdk import ExecutionContext
    from waygate.upstreams import UpstreamManager

    path = write(
        tmp_path,
        {"mcpServers": {"probe": {"command": sys.executable, "args": [str(PROBE), str(tmp_path)]}}},
    )
    manager = UpstreamManager(str(path), connect_timeout_s=25)
    try:
        manager.sync()
        span = trace.NonRecordingSpan(
            SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        )
        ctx = ExecutionContext(
            command_id="cmd_x",
            key_name=None,
            deadline=time.monotonic() + 20,
            logger=logging.getLogger("test"),
            trace_context=trace.set_span_in_context(span),
        )
        result = manager.invoke("probe", "traceparent", {}, ctx)
    finally:
        manager.stop()
    assert result["structured"]["result"].startswith(f"00-{0xABC:032x}-")


def test_an_upstream_s_protocol_error_is_a_502_and_invalid_params_a_400():
    from mcp.shared.exceptions import MCPError

    from waygate.upstreams import _upstream_error

    assert _upstream_error("x", MCPError(-32603, "boom")).status == 502
    assert "upstream x failed: boom" in _upstream_error("x", MCPError(-32603, "boom")).message
    assert _upstream_error("x", MCPError(-32602, "bad")).status == 400


def test_a_file_broken_on_reload_keeps_the_last_good_upstreams_running(tmp_path):
    from waygate.plugins import PluginSet
    from waygate.upstreams import UpstreamManager

    path = write(
        tmp_path,
        {"mcpServers": {"probe": {"command": sys.executable, "args": [str(PROBE), str(tmp_path)]}}},
    )
    manager = UpstreamManager(str(path), connect_timeout_s=25)
    empty = PluginSet(plugins={}, commands={}, command_plugin={}, loaded_at=0.0)
    try:
        manager.sync()
        path.write_text("{broken")
        manager.sync()  # a reload
        plugins = manager.extend(empty)
        state = manager.health()[1]
    finally:
        manager.stop()
    assert plugins.plugins["probe"].status == "active" and "probe__wait" in plugins.commands
    assert plugins.plugins["upstreams"].status == "failed"
    assert "is not valid JSON" in plugins.plugins["upstreams"].error
    assert state["probe"]["status"] == "up"
