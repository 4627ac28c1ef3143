"""The conformance suite's diagnostic hooks for change notifications (2026-07-28,
server-stateless): ``test_trigger_tool_change`` and ``test_trigger_prompt_change`` change the
tool or prompt list while the suite listens. Each flips a marker in the data dir (which this
plugin reads when it loads: a ``test_dynamic_tool`` or ``test_dynamic_prompt`` comes or goes)
and bumps the plugin generation in the service's database, as ``POST /plugins/reload`` does,
so every worker reloads and each listener is told of the change as a real reload would tell
it. Registered beside tests/conformance_plugin.py by tests/test_mcp_conformance.py."""

from __future__ import annotations

import time
from pathlib import Path

from marshmallow import Schema

from waygate.config import Config
from waygate.plugins import PluginRegistry
from waygate.sdk import Command, Plugin, Prompt
from waygate.storage import open_storage


class NoParams(Schema):
    pass


def _marker(kind: str) -> Path:
    return Config.from_env().data_dir / f"conformance-dynamic-{kind}"


def _flip_and_reload(kind: str) -> str:
    marker = _marker(kind)
    if marker.exists():
        marker.unlink()
    else:
        marker.touch()
    storage = open_storage(Config.from_env())
    try:
        with storage.write() as conn:
            conn.execute("UPDATE plugin_state SET generation = generation + 1 WHERE id = 1")
    finally:
        storage.close()
    # Answer once every worker serves the new list: a worker reads the generation at most
    # every CHECK_INTERVAL, so until then one that served a request just before the bump
    # still lists the old set. The suite's next scenario (tools-list compares consecutive
    # lists, which two workers would answer) must not see both sets.
    time.sleep(PluginRegistry.CHECK_INTERVAL + 0.1)
    return f"the {kind} list changed"


class ConformanceTriggersPlugin(Plugin):
    name = "ConformanceTriggers"
    version = "0.2.0"
    description = "The conformance suite's hooks that change the tool and prompt lists"
    author = "Waygate tests"
    capabilities = ("testing",)

    def commands(self):
        offered = [
            Command(
                "test_trigger_tool_change",
                "Adds or removes test_dynamic_tool (and reloads every worker)",
                NoParams,
                lambda params, ctx: _flip_and_reload("tool"),
            ),
            Command(
                "test_trigger_prompt_change",
                "Adds or removes test_dynamic_prompt (and reloads every worker)",
                NoParams,
                lambda params, ctx: _flip_and_reload("prompt"),
            ),
        ]
        if _marker("tool").exists():
            offered.append(
                Command("test_dynamic_tool", "Here after a change", NoParams, lambda p, c: "here")
            )
        return offered

    def prompts(self):
        if not _marker("prompt").exists():
            return []
        return [Prompt("test_dynamic_prompt", "Here after a change", template="here")]
