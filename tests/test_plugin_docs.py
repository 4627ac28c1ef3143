"""The plugin guide's example is real: it loads and runs exactly as printed."""

import base64
import json
import os
import re
import struct
import time

from tests.conftest import ROOT


def test_the_documented_example_plugin_works(plugin_dist, make_app, keys):
    _write_example(plugin_dist)
    client = make_app(plugin_config={"DiskUsage": {"warn_percent": 0}}).test_client()
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "disk_usage", "params": {"path": "/"}},
    )
    assert response.status_code == 200, response.get_json()
    result = response.get_json()["result"]
    assert result["path"] == "/" and result["warning"] is True and result["total"] > 0
    missing = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "disk_usage", "params": {"path": "/no/such/dir"}},
    )
    assert missing.status_code == 400
    assert missing.get_json()["status"] == "failed"
    assert missing.get_json()["error"].startswith("cannot read /no/such/dir")


def test_a_command_error_answers_the_mcp_response_with_its_status_and_details(
    plugin_dist, make_app, keys
):
    """docs/plugins.md, the CommandError row: message in error, details kept, the status."""
    client = make_app().test_client()
    response = client.post("/mcp/execute", headers=keys.headers(), json={"action": "refuse"})
    assert response.status_code == 409
    body = response.get_json()
    assert body["status"] == "failed" and body["error"] == "quota exceeded"
    assert body["details"] == {"quota": 3, "used": 4}
    assert body["command_id"].startswith("cmd_")
    ok = client.post("/mcp/execute", headers=keys.headers(), json={"action": "echo"})
    assert "details" not in ok.get_json()  # only a refusal carries it


def test_the_cancel_event_wakes_a_waiting_handler_when_the_caller_times_out(
    plugin_dist, make_app, keys
):
    """docs/plugins.md, ctx.cancel_event: set the moment the caller gets its 408."""
    client = make_app().test_client()
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "wait", "params": {"seconds": 30}, "timeout": 1},
    )
    assert response.status_code == 408
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pool = client.get("/mcp/status", headers=keys.headers()).get_json()["pool"]
        if pool["in_use"] == 0:
            break  # the handler woke and returned, long before its 30 s
        time.sleep(0.05)
    assert pool["in_use"] == 0


def test_the_documented_incidents_plugin_works(plugin_dist, make_app, keys):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    source = re.search(r"`incidents_plugin.py` draws.*?```python\n(.*?)```", guide, re.S).group(1)
    plugin_dist.write_module("incidents_plugin", source)
    plugin_dist.register("Incidents", "incidents_plugin:IncidentsPlugin")
    client = make_app().test_client()
    headers = {**keys.headers(), "Accept": "application/json, text/event-stream"}

    def rpc(method, params, id=1):
        message = {"jsonrpc": "2.0", "id": id, "method": method, "params": params}
        return client.post("/mcp", json=message, headers=headers)

    chart = rpc(
        "tools/call",
        {"name": "chart", "arguments": {"values": [1, 3, 2]}, "_meta": {"progressToken": 1}},
    )
    events = [
        json.loads(line[len("data: ") :])
        for line in chart.get_data(as_text=True).splitlines()
        if line.startswith("data: ")
    ]
    assert [e["params"]["progress"] for e in events[:-1]] == [1, 2, 3]
    result = events[-1]["result"]
    assert result["structuredContent"] == {"bars": 3}
    png = base64.b64decode(result["content"][1]["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[16:24] == struct.pack(">II", 24, 40)
    prompt = rpc("prompts/get", {"name": "triage", "arguments": {"service": "api"}}).get_json()
    assert "Service api is failing" in prompt["result"]["messages"][0]["content"]["text"]
    runbook = rpc("resources/read", {"uri": "runbook://disk-full"}).get_json()
    assert runbook["result"]["contents"][0]["text"].startswith("1. Find the largest")


def _write_example(plugin_dist):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    source = re.search(r"`disk_usage_plugin.py`:\n\n```python\n(.*?)```", guide, re.S).group(1)
    plugin_dist.write_module("disk_usage_plugin", source)
    plugin_dist.register("DiskUsage", "disk_usage_plugin:DiskUsagePlugin")


def test_the_documented_destructive_command_waits_for_approval(
    plugin_dist, make_app, keys, tmp_path
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "old.log").write_text("old")
    (scratch / "new.log").write_text("new")
    month_ago = time.time() - 31 * 86400
    os.utime(scratch / "old.log", (month_ago, month_ago))
    _write_example(plugin_dist)
    client = make_app(plugin_config={"DiskUsage": {"scratch_dir": str(scratch)}}).test_client()
    asked = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "clean_scratch", "params": {"older_than_days": 30}},
    )
    assert asked.status_code == 202 and asked.get_json()["status"] == "awaiting_approval"
    assert (scratch / "old.log").exists()  # nothing ran yet
    command_id = asked.get_json()["command_id"]
    approved = client.post(f"/mcp/executions/{command_id}/approve", headers=keys.headers("admin"))
    assert approved.status_code == 202
    for _ in range(200):
        body = client.get(f"/mcp/executions/{command_id}", headers=keys.headers()).get_json()
        if body["status"] not in ("pending", "running"):
            break
        time.sleep(0.02)
    assert body["status"] == "success" and body["result"] == {"removed": ["old.log"]}
    assert not (scratch / "old.log").exists() and (scratch / "new.log").exists()


def _ask_approve_and_wait(client, keys):
    asked = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "clean_scratch", "params": {"older_than_days": 30}},
    )
    assert asked.status_code == 202, asked.get_json()
    command_id = asked.get_json()["command_id"]
    approved = client.post(f"/mcp/executions/{command_id}/approve", headers=keys.headers("admin"))
    assert approved.status_code == 202
    for _ in range(200):
        body = client.get(f"/mcp/executions/{command_id}", headers=keys.headers()).get_json()
        if body["status"] not in ("pending", "running"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"{command_id} did not end")


def test_the_documented_destructive_command_on_a_missing_directory_fails_cleanly(
    plugin_dist, make_app, keys, tmp_path, caplog
):
    missing = tmp_path / "no-scratch"  # as /var/tmp/scratch, the default, on a fresh host
    _write_example(plugin_dist)
    client = make_app(plugin_config={"DiskUsage": {"scratch_dir": str(missing)}}).test_client()
    body = _ask_approve_and_wait(client, keys)
    assert body["status"] == "failed"
    assert body["error"].startswith(f"the scratch directory {missing} does not exist: create it")
    assert "FileNotFoundError" not in body["error"]
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert "Traceback" not in caplog.text
    errors = client.get("/diagnostics/errors", headers=keys.headers("admin")).get_json()
    assert errors["errors"] == []


def test_a_reload_reads_the_plugin_config_again_from_the_environment_file(
    plugin_dist, make_app, keys, tmp_path
):
    first, second = tmp_path / "first", tmp_path / "second"
    for scratch in (first, second):
        scratch.mkdir()
        (scratch / "old.log").write_text("old")
        month_ago = time.time() - 31 * 86400
        os.utime(scratch / "old.log", (month_ago, month_ago))
    env_file = tmp_path / "waygate.env"
    setting = 'WAYGATE_PLUGIN_CONFIG={"DiskUsage": {"scratch_dir": "%s"}}\n'
    env_file.write_text(setting % first)
    _write_example(plugin_dist)
    client = make_app(
        env_file=str(env_file), plugin_config={"DiskUsage": {"scratch_dir": str(first)}}
    ).test_client()
    assert _ask_approve_and_wait(client, keys)["status"] == "success"
    assert not (first / "old.log").exists() and (second / "old.log").exists()

    env_file.write_text(setting % second)  # the operator edits the file, then reloads
    reloaded = client.post("/plugins/reload", headers=keys.headers("admin"))
    assert reloaded.status_code == 200, reloaded.get_json()
    shown = client.get("/plugins/DiskUsage", headers=keys.headers("admin")).get_json()
    assert shown["config"]["scratch_dir"] == str(second)
    assert _ask_approve_and_wait(client, keys)["result"] == {"removed": ["old.log"]}
    assert not (second / "old.log").exists()

    env_file.write_text("WAYGATE_PLUGIN_CONFIG={not json\n")  # a bad edit keeps the last one
    assert client.post("/plugins/reload", headers=keys.headers("admin")).status_code == 200
    shown = client.get("/plugins/DiskUsage", headers=keys.headers("admin")).get_json()
    assert shown["config"]["scratch_dir"] == str(second)
