"""The vocabulary of executions: their statuses, how they were asked for, and how one ended.

Owned by the domain and used alike by the command service, the audit log's SQL, the schemas
and the HTTP mapping in ``waygate.web.outcomes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .clock import isoformat
from .errors import WaygateError


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"

    @classmethod
    def open(cls) -> tuple[ExecutionStatus, ...]:
        """Statuses of executions that have not ended yet."""
        return (cls.PENDING, cls.RUNNING)


class Mode(StrEnum):
    """How an execution was asked for (the audit log's ``mode``)."""

    SYNC = "sync"
    BATCH = "batch"
    ASYNC = "async"
    MCP = "mcp"


class Failure(StrEnum):
    """Why a failed execution failed."""

    REJECTED = "rejected"  # the request was refused before it ran (invalid, busy, forbidden)
    REFUSED = "refused"  # the handler refused its input (CommandError)
    CRASHED = "crashed"  # the handler raised anything else


@dataclass(frozen=True)
class Outcome:
    """One execution's result: the MCPResponse (spec 3.2) in domain terms.

    ``cause`` is the domain error behind a rejected or refused execution: its code and status
    are what the HTTP layer answers with.
    """

    status: ExecutionStatus
    command_id: str
    duration_ms: int
    result: Any = None
    error: str | None = None
    timestamp: str = field(default_factory=isoformat)
    failure: Failure | None = None
    cause: WaygateError | None = None

    def as_response(self) -> dict[str, Any]:
        response = {
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "command_id": self.command_id,
            "timestamp": self.timestamp,
        }
        if self.failure is Failure.REFUSED and self.cause is not None and self.cause.details:
            response["details"] = self.cause.details  # what the plugin's CommandError gave
        return response
