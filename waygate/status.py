"""What callers see of the command engine, read-only: the commands a key may run, described
(``GET /mcp/commands``), the engine's state (``GET /mcp/status``), and one execution's current
state (polls, MCP's ``waygate_execution``, the CLI), only its owner's, with what a dead
worker left and approvals past their time closed first.
"""

from __future__ import annotations

from typing import Any

from .clock import isoformat
from .commands import Caller, CommandService
from .outcomes import ExecutionStatus, Outcome
from .schemas import describe_parameters

PROTOCOL_VERSION = "1.0"  # of the REST command API (spec: GET /mcp/status)


class Status:
    def __init__(self, commands: CommandService):
        self.commands = commands
        self.audit = commands.audit

    def catalog(self, caller: Caller) -> list[dict[str, Any]]:
        """The commands ``caller`` may run, parameters described from their schemas."""
        plugins = self.commands.plugins()
        return [
            {
                "name": name,
                "description": plugins.commands[name].description,
                "plugin": plugins.command_plugin[name],
                "parameters": describe_parameters(plugins.commands[name].params),
                "approval_required": self.commands.needs_approval(plugins.commands[name]),
            }
            for name in self.commands.available(caller)
        ]

    def engine_status(self, caller: Caller) -> dict[str, Any]:
        """The engine's state as ``caller`` sees it (spec: GET /mcp/status)."""
        plugins = self.commands.plugins()
        return {
            "engine": "degraded" if plugins.failed else "operational",
            "plugins_loaded": len(plugins.loaded),
            "commands_available": self.commands.available(caller),
            "protocol_version": PROTOCOL_VERSION,
            "capabilities": {"async": True, "batch": True, "streaming": False},
            "pool": self.commands.pool.stats().as_dict(),
            "timestamp": isoformat(),
        }

    def lookup(self, command_id: str, caller: Caller | None = None) -> Outcome | None:
        """An execution's current state; with ``caller``, only that caller's executions."""
        execution = self.audit.get(command_id)
        if execution is None or (caller is not None and not caller.owns(execution)):
            return None
        if (execution.status in ExecutionStatus.open() and self.commands.leases.sweep()) or (
            execution.status == ExecutionStatus.AWAITING_APPROVAL
            and self.commands.approvals is not None
            and command_id in self.commands.approvals.expire()
        ):
            execution = self.audit.get(command_id)
        return execution.outcome()
