"""The vocabulary of executions: their statuses, how they were asked for, and how one ended.

Owned by the domain and used alike by the command service, the audit log's SQL, the schemas
and the HTTP mapping in ``waygate.web.responses``.
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
    AWAITING_APPROVAL = "awaiting_approval"  # stored, waiting for a second party's decision
    DENIED = "denied"  # an approver said no: it never ran
    EXPIRED = "expired"  # nobody decided within the approval time: it never ran
    INPUT_REQUIRED = "input_required"  # an MCP round that ended asking its caller for input

    @classmethod
    def open(cls) -> tuple[ExecutionStatus, ...]:
        """Statuses of executions a worker holds (queued or running): the sweep closes them
        when their worker is gone or their timeout has long passed. An execution awaiting
        approval is held by no worker and has no timeout running yet: it is not open, it
        ends by its own approval expiry (``waygate.approvals``)."""
        return (cls.PENDING, cls.RUNNING)

    @classmethod
    def unfinished(cls) -> tuple[ExecutionStatus, ...]:
        """Statuses of executions that have not ended: the open ones and those awaiting
        approval. They count against a key's cap of open executions and are never pruned."""
        return (*cls.open(), cls.AWAITING_APPROVAL)


class ApprovalStep(StrEnum):
    """The steps of an approval's trail (the audit's ``execution_events.event``)."""

    REQUESTED = "requested"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTED = "executed"


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
    progress: dict[str, Any] | None = None  # a running async execution's latest report
    approval: dict[str, Any] | None = None  # the stored request's hash, expiry and decision

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
        if self.progress is not None:
            response["progress"] = self.progress
        if self.approval is not None:
            response["approval"] = self.approval
        return response
