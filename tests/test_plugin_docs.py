"""The plugin guide's example is real: it loads and runs exactly as printed."""

import re

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
