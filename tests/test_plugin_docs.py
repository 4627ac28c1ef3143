"""The plugin guide's example is real: it loads and runs exactly as printed."""

import re
import time

from tests.conftest import ROOT


def test_the_documented_example_plugin_works(plugin_dist, make_app, keys):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    source = re.search(r"`disk_usage_plugin.py`:\n\n```python\n(.*?)```", guide, re.S).group(1)
    plugin_dist.write_module("disk_usage_plugin", source)
    plugin_dist.register("DiskUsage", "disk_usage_plugin:DiskUsagePlugin")
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
