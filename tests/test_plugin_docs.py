"""The plugin guide's example is real: it loads and runs exactly as printed."""

import os
import re
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
