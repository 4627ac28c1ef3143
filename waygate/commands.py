"""The command service: validates MCPCommands and runs them in the pool, with timeouts,
the audit log and statistics. REST (single, batch, async) and MCP tool calls all come here.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from marshmallow import Schema, ValidationError

from .audit import AuditLog
from .clock import isoformat
from .errors import InvalidRequest, MissingParameter, ServiceUnavailable, WaygateError
from .plugins import PluginSet
from .pool import CommandPool, Job, PoolFull
from .schemas import MCPCommandSchema, field_errors
from .sdk import Cancelled, Command, CommandError, ExecutionContext

log = logging.getLogger(__name__)
_command_schema = MCPCommandSchema()


@lru_cache(maxsize=1024)
def _schema(schema_class: type[Schema]) -> Schema:
    """One instance per params schema: marshmallow schemas are reusable and thread-safe."""
    return schema_class()


def new_command_id() -> str:
    """``cmd_`` + milliseconds since the epoch (hex) + 80 random bits: unique across workers
    and restarts, and sorted by time."""
    return f"cmd_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Invocation:
    """A validated command, bound to the plugin set it was validated against."""

    action: str
    plugin: str
    command: Command
    params: dict[str, Any]
    client_context: dict[str, Any]
    timeout: int
    run_async: bool
    command_id: str = field(default_factory=new_command_id)


@dataclass(frozen=True)
class Outcome:
    """One execution's result: the MCPResponse (spec 3.2) and the HTTP status that goes with it."""

    status: str  # success, failed, timeout (pending, running for async lookups)
    command_id: str
    duration_ms: int
    http_status: int
    result: Any = None
    error: str | None = None
    timestamp: str = field(default_factory=isoformat)
    details: dict[str, Any] | None = None  # a CommandError's details, for the caller

    def as_response(self) -> dict[str, Any]:
        response = {
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "command_id": self.command_id,
            "timestamp": self.timestamp,
        }
        if self.details:
            response["details"] = self.details
        return response


@dataclass(frozen=True)
class Caller:
    key_name: str | None


class CommandService:
    def __init__(
        self,
        plugins: Callable[[], PluginSet],
        pool: CommandPool,
        audit: AuditLog,
        observe: Callable[[str, str, int], None] | None = None,
    ):
        self._plugins = plugins
        self.pool = pool
        self.audit = audit
        self._observe = observe  # (action, status, duration_ms) of every finished execution

    # -- validation ----------------------------------------------------------------------------

    def parse(self, raw: Any, *, allow_async: bool = True) -> Invocation:
        """Validate an MCPCommand and its params; raises MissingParameter or InvalidRequest."""
        if not isinstance(raw, dict):
            raise InvalidRequest(
                "a command must be a JSON object", {"received": type(raw).__name__}
            )
        try:
            body = _command_schema.load(raw)
        except ValidationError as err:
            missing, messages = field_errors(err)
            if missing:
                raise MissingParameter(
                    f"missing required field(s): {', '.join(missing)}", {"fields": messages}
                ) from None
            raise InvalidRequest("invalid command", {"fields": messages}) from None
        if body["async_"] and not allow_async:
            raise InvalidRequest(
                "async is not supported here", {"fields": {"async": ["not allowed"]}}
            )
        plugins = self._plugins()
        action = body["action"]
        command = plugins.commands.get(action)
        if command is None:
            raise InvalidRequest(
                f"unknown action {action!r}",
                {"action": action, "available": sorted(plugins.commands)},
            )
        params = self.validate_params(command, body["params"])
        return Invocation(
            action=action,
            plugin=plugins.command_plugin[action],
            command=command,
            params=params,
            client_context=body["context"],
            timeout=body["timeout"],
            run_async=body["async_"],
        )

    @staticmethod
    def validate_params(command: Command, params: Any) -> dict[str, Any]:
        try:
            return _schema(command.params).load(params)
        except ValidationError as err:
            missing, messages = field_errors(err)
            if missing:
                raise MissingParameter(
                    f"missing required parameter(s) for {command.name}: {', '.join(missing)}",
                    {"params": messages},
                ) from None
            raise InvalidRequest(
                f"invalid parameters for {command.name}", {"params": messages}
            ) from None

    def available(self) -> list[str]:
        return sorted(self._plugins().commands)

    # -- running -------------------------------------------------------------------------------

    def run(self, inv: Invocation, caller: Caller, mode: str = "sync") -> Outcome:
        """Run and wait: answered by the deadline (plus slack) whatever the handler does."""
        created = isoformat()
        started = time.monotonic()
        ctx = self._context(inv, caller, started)
        try:
            future = self.pool.submit(lambda: self._invoke(inv, ctx))
        except PoolFull:
            raise _busy() from None
        outcome = self._await(inv, ctx, future, started)
        self._record(inv, caller, mode, outcome, created)
        return outcome

    def run_batch(self, items: list[Any], caller: Caller) -> list[Outcome]:
        """Run every valid item concurrently in the pool; each gets its own outcome, in order."""
        pending: list[tuple[Invocation, ExecutionContext, Job, float, str] | Outcome] = []
        for raw in items:
            created = isoformat()
            started = time.monotonic()
            try:
                inv = self.parse(raw, allow_async=False)
            except WaygateError as err:
                pending.append(
                    Outcome(
                        status="failed",
                        command_id=new_command_id(),
                        duration_ms=0,
                        http_status=err.status,
                        error=_describe(err),
                    )
                )
                continue
            ctx = self._context(inv, caller, started)
            try:
                # Wait for room up to the item's own timeout: a batch may be larger than the pool.
                future = self.pool.submit(
                    lambda inv=inv, ctx=ctx: self._invoke(inv, ctx), wait=inv.timeout
                )
            except PoolFull:
                outcome = Outcome(
                    status="failed",
                    command_id=inv.command_id,
                    duration_ms=_ms(started),
                    http_status=503,
                    error="server busy: no room in the command pool",
                )
                self._record(inv, caller, "batch", outcome, created)
                pending.append(outcome)
                continue
            pending.append((inv, ctx, future, started, created))
        outcomes = []
        for item in pending:
            if isinstance(item, Outcome):
                outcomes.append(item)
                continue
            inv, ctx, future, started, created = item
            outcome = self._await(inv, ctx, future, started)
            self._record(inv, caller, "batch", outcome, created)
            outcomes.append(outcome)
        return outcomes

    def submit_async(self, inv: Invocation, caller: Caller) -> Outcome:
        """Accept for background execution: recorded as pending, then queued."""
        created = isoformat()
        self.audit.accept(
            command_id=inv.command_id,
            action=inv.action,
            plugin=inv.plugin,
            key_name=caller.key_name,
            timeout_s=inv.timeout,
            created_at=created,
        )

        def background() -> None:
            if not self.audit.start(inv.command_id):
                return
            started = time.monotonic()
            ctx = self._context(inv, caller, started)
            outcome = self._settle(inv, ctx, started, lambda: self._invoke(inv, ctx))
            if outcome.status == "success" and outcome.duration_ms > inv.timeout * 1000:
                outcome = _timed_out(inv, started)
            if self._observe is not None:
                self._observe(inv.action, outcome.status, outcome.duration_ms)
            self.audit.finish(
                inv.command_id,
                status=outcome.status,
                duration_ms=outcome.duration_ms,
                error=outcome.error,
                result=outcome.result,
            )

        try:
            self.pool.submit(background)
        except PoolFull:
            self.audit.fail_open_executions_by_id(inv.command_id, "server busy: not queued")
            raise _busy() from None
        return Outcome(
            status="pending",
            command_id=inv.command_id,
            duration_ms=0,
            http_status=202,
            timestamp=created,
        )

    def lookup(self, command_id: str, caller: Caller | None = None) -> Outcome | None:
        """An execution's current state; with ``caller``, only that caller's executions."""
        execution = self.audit.get(command_id)
        if execution is None or (caller is not None and execution.key_name != caller.key_name):
            return None
        if execution.status in ("pending", "running") and self.audit.sweep():
            execution = self.audit.get(command_id)
        return Outcome(
            status=execution.status,
            command_id=execution.command_id,
            duration_ms=execution.duration_ms or 0,
            http_status=200,
            result=execution.result,
            error=execution.error,
            timestamp=execution.finished_at or execution.created_at,
        )

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _context(inv: Invocation, caller: Caller, started: float) -> ExecutionContext:
        logger = logging.LoggerAdapter(
            logging.getLogger(f"waygate.plugin.{inv.plugin}"), {"command_id": inv.command_id}
        )
        return ExecutionContext(
            command_id=inv.command_id,
            key_name=caller.key_name,
            deadline=started + inv.timeout,
            logger=logger,
            client_context=inv.client_context,
        )

    @staticmethod
    def _invoke(inv: Invocation, ctx: ExecutionContext) -> Any:
        if ctx.cancelled:  # waited in the queue past its deadline: do not start it
            raise Cancelled("command timed out before it started")
        return inv.command.handler(inv.params, ctx)

    def _await(
        self, inv: Invocation, ctx: ExecutionContext, future: Job, started: float
    ) -> Outcome:
        def wait() -> Any:
            try:
                return future.result(timeout=max(0.0, ctx.deadline - time.monotonic()))
            except TimeoutError:
                ctx.cancel_event.set()  # the handler may look; a thread cannot be killed
                raise Cancelled() from None

        return self._settle(inv, ctx, started, wait)

    @staticmethod
    def _settle(
        inv: Invocation, ctx: ExecutionContext, started: float, produce: Callable[[], Any]
    ) -> Outcome:
        try:
            result = produce()
        except Cancelled:
            return _timed_out(inv, started)
        except CommandError as err:
            return Outcome(
                status="failed",
                command_id=inv.command_id,
                duration_ms=_ms(started),
                http_status=err.status,
                error=err.message,
                details=err.details or None,
            )
        except Exception as exc:  # the plugin's failure becomes a failed outcome, never a trace
            log.error(
                "command %s (%s) failed: %s: %s",
                inv.command_id,
                inv.action,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return Outcome(
                status="failed",
                command_id=inv.command_id,
                duration_ms=_ms(started),
                http_status=500,
                error=str(exc) or type(exc).__name__,
            )
        return Outcome(
            status="success",
            command_id=inv.command_id,
            duration_ms=_ms(started),
            http_status=200,
            result=result,
        )

    def _record(
        self, inv: Invocation, caller: Caller, mode: str, outcome: Outcome, created: str
    ) -> None:
        if self._observe is not None:
            self._observe(inv.action, outcome.status, outcome.duration_ms)
        self.audit.record(
            command_id=inv.command_id,
            action=inv.action,
            plugin=inv.plugin,
            key_name=caller.key_name,
            mode=mode,
            status=outcome.status,
            duration_ms=outcome.duration_ms,
            error=outcome.error,
            timeout_s=inv.timeout,
            created_at=created,
            started_at=created,
        )


def _timed_out(inv: Invocation, started: float) -> Outcome:
    return Outcome(
        status="timeout",
        command_id=inv.command_id,
        duration_ms=_ms(started),
        http_status=408,
        error=f"command exceeded its timeout of {inv.timeout} s",
    )


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "server busy: every command thread is in use and the queue is full",
        headers={"Retry-After": "1"},
    )


def _describe(err: WaygateError) -> str:
    details = json.dumps(err.details, default=str, separators=(", ", ": ")) if err.details else ""
    return f"{err.code}: {err.message}" + (f" {details}" if details else "")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
