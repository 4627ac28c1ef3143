"""The command service: resolves commands and runs them in the pool, with deadlines, the audit
log and statistics. REST (single, batch, async) and MCP tool calls all come here.

Every execution takes the same two steps, whatever the entry point:

- :meth:`CommandService.resolve` turns a name and arguments into an :class:`Invocation`
  (command looked up, params validated, the caller's right to run it checked);
- :meth:`CommandService.start` hands it to the pool and :meth:`CommandService.finish` waits for
  it by its deadline, then records and observes the :class:`~waygate.outcomes.Outcome`.

Entry points differ only in how many they start at once (a batch starts all, then finishes
each) and in how they present the outcome. A command that needs approval is held here and run
here once approved; the approval steps themselves are ``waygate.approvals``'. Whether a request
thread may wait on a command is ``waygate.admission``'s question; what callers see of commands
and executions without running anything, ``waygate.status``'.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from marshmallow import Schema

from . import tracing
from .admission import Admission
from .approvals.workflow import Approvals
from .audit import AuditLog, Execution, StoredRequest
from .auditchain import arguments_hash
from .clock import isoformat
from .errors import (
    Forbidden,
    InvalidRequest,
    ServiceUnavailable,
    WaygateError,
)
from .keys import UNSCOPED, ApiKey, Scope
from .leases import Leases
from .outcomes import ExecutionStatus, Failure, Mode, Outcome
from .plugins import PluginSet
from .pool import CommandPool, Job, PoolFull
from .principals import Principal
from .schemas import MCPCommandSchema, expect_object, load
from .sdk import Cancelled, Command, CommandError, ExecutionContext, InputRequired

log = logging.getLogger(__name__)
_command_schema = MCPCommandSchema()


@lru_cache(maxsize=1024)
def _schema(schema_class: type[Schema]) -> Schema:
    """One instance per params schema: marshmallow schemas are reusable and thread-safe."""
    return schema_class()


@lru_cache(maxsize=1024)
def _plugin_logger(plugin: str) -> logging.Logger:
    """A plugin's logger (``logging.getLogger`` takes the logging module's lock each call)."""
    return logging.getLogger(f"waygate.plugin.{plugin}")


def new_command_id() -> str:
    """``cmd_`` + milliseconds since the epoch (hex) + 80 random bits: unique across workers
    and restarts, and sorted by time."""
    return f"cmd_{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


class UnknownCommand(InvalidRequest):
    """No such command."""


class OutOfScope(Forbidden):
    """The caller's key may not run this command (REST names it; MCP answers as for an
    unknown tool, so a scoped key learns nothing of the commands it may not see)."""


class CommandRefused(WaygateError):
    """A handler refused its input (``CommandError``): its status and details, as a domain error."""

    code = "COMMAND_FAILED"


class MissingCapability(WaygateError):
    """A handler asked its MCP caller for input the caller's client cannot give (-32021)."""

    code = "INVALID_REQUEST"
    status = 400


@dataclass(frozen=True)
class Caller:
    """Who asks: the key's name (shown to plugins), its id (owns executions; never reused) and
    the commands it may run."""

    key_name: str | None
    key_id: int | None = None
    scope: Scope = UNSCOPED
    principal: str | None = None  # who, as waygate.principals says: recorded with the run

    @property
    def share(self) -> int | str | None:
        """Whose share of command slots a call takes: the key's, or for a person with an
        access token (no key), the person's own."""
        return self.key_id if self.key_id is not None else self.principal

    @property
    def identity(self) -> str:
        """Who this caller is, as one string that stays the same across requests: the API
        key's (by id), the person's without one, or (MCP over stdio, which has neither) the
        name it runs under (``--as``). What idempotency keys and input requests are bound to."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        if self.principal:
            return f"person:{self.principal}"
        return f"local:{self.key_name or ''}"

    def owns(self, execution: Execution) -> bool:
        """Whether ``execution`` is this caller's: the same key, or for a person with an
        access token (no key), the same person."""
        if self.key_id is not None:
            return execution.key_id == self.key_id
        return self.principal is not None and execution.principal == self.principal


@dataclass(frozen=True)
class Invocation:
    """A resolved command: looked up and validated against one plugin set."""

    action: str
    plugin: str
    command: Command
    params: dict[str, Any]
    timeout: int
    client_context: dict[str, Any] = field(default_factory=dict)
    run_async: bool = False
    command_id: str = field(default_factory=new_command_id)
    requested_params: Any = None  # the params as sent: what an approval stores and replays
    inputs: Any = None  # the caller's answers (waygate.mcp.input.InputChannel), if it can answer


@dataclass
class Running:
    """An execution between :meth:`CommandService.start` and :meth:`CommandService.finish`."""

    inv: Invocation
    caller: Caller
    mode: Mode
    ctx: ExecutionContext
    started: float  # time.monotonic()
    created: str
    job: Job | None = None
    span: Any = None  # its trace span while tracing is on (waygate.tracing)


class CommandService:
    def __init__(
        self,
        plugins: Callable[[], PluginSet],
        pool: CommandPool,
        audit: AuditLog,
        observe: Callable[[str, str, int], None] | None = None,
        admission: Admission | None = None,
        approvals: Approvals | None = None,
        leases: Leases | None = None,
    ):
        self.plugins = plugins
        self.pool = pool
        self.audit = audit
        self._observe = observe  # (action, status, duration_ms) of every finished execution
        self.admission = admission or Admission(0)
        self.approvals = approvals  # None: nothing waits for approval
        self.leases = leases or Leases(audit.storage, host=audit.host)
        # Told when a queued execution starts in its pool thread (command id, context);
        # returns what to call when it ends, which says whether its owner cancelled it
        # meanwhile. The MCP tasks (waygate.mcp.tasks) watch for cancellation this way.
        self.attach: Callable[[str, ExecutionContext], Callable[[], bool]] | None = None

    # -- resolving -----------------------------------------------------------------------------

    def resolve(
        self,
        action: str,
        params: Any,
        caller: Caller,
        *,
        timeout: int,
        client_context: dict[str, Any] | None = None,
        run_async: bool = False,
    ) -> Invocation:
        """Name -> command, params validated, caller checked: the one way to an Invocation."""
        plugins = self.plugins()
        command = plugins.commands.get(action)
        if command is None:
            raise UnknownCommand(
                f"unknown action {action!r}",
                {"action": action, "available": self.available(caller)},
            )
        plugin = plugins.command_plugin[action]
        if not caller.scope.permits(action, plugin, command.annotations):
            raise OutOfScope(
                f"this key may not run {action!r}", {"action": action, "key": caller.key_name}
            )
        return Invocation(
            action=action,
            plugin=plugin,
            command=command,
            params=self.validate_params(command, params),
            timeout=timeout,
            client_context=client_context or {},
            run_async=run_async,
            requested_params=params,
        )

    def parse(self, raw: Any, caller: Caller, *, allow_async: bool = True) -> Invocation:
        """Resolve an MCPCommand (spec 3.1); raises MissingParameter or InvalidRequest."""
        body = load(_command_schema, expect_object(raw, "a command"), invalid="invalid command")
        if body["async_"] and not allow_async:
            raise InvalidRequest(
                "async is not supported here", {"fields": {"async": ["not allowed"]}}
            )
        return self.resolve(
            body["action"],
            body["params"],
            caller,
            timeout=body["timeout"],
            client_context=body["context"],
            run_async=body["async_"],
        )

    @staticmethod
    def validate_params(command: Command, params: Any) -> dict[str, Any]:
        return load(
            _schema(command.params),
            params,
            invalid=f"invalid parameters for {command.name}",
            missing=f"missing required parameter(s) for {command.name}",
            where="params",
        )

    def needs_approval(self, command: Command) -> bool:
        return self.approvals is not None and self.approvals.requires(command)

    def available(self, caller: Caller) -> list[str]:
        """The names of the commands ``caller`` may run, sorted (the scope is checked against
        the plugin set of the moment, so a reload never widens a key beyond its patterns)."""
        plugins = self.plugins()
        return sorted(
            name
            for name, command in plugins.commands.items()
            if caller.scope.permits(name, plugins.command_plugin[name], command.annotations)
        )

    # -- running: one path for every entry point ------------------------------------------------

    def run(self, inv: Invocation, caller: Caller, mode: Mode = Mode.SYNC) -> Outcome:
        """Run and wait: answered by the deadline (plus slack) whatever the handler does; a
        command that needs approval is stored instead and answered awaiting approval."""
        if self.needs_approval(inv.command):
            return self._hold(inv, caller, mode)
        with self.admission.slot(caller.share):
            return self.finish(self.start(inv, caller, mode))

    def run_batch(self, items: list[Any], caller: Caller) -> list[Outcome]:
        """Start every item (they share the batch's start, so each deadline counts from it),
        then finish each: every item is answered by its own deadline, in order."""
        with self.admission.slot(caller.share):
            started = time.monotonic()
            runs: list[Running | Outcome] = []
            for raw in items:
                try:
                    inv = self.parse(raw, caller, allow_async=False)
                except WaygateError as err:
                    rejected = _rejected(new_command_id(), err, started)
                    tracing.rejected_command(rejected.command_id, rejected.error or "")
                    runs.append(rejected)
                    continue
                if self.needs_approval(inv.command):
                    runs.append(self._hold_item(inv, caller, started))
                    continue
                runs.append(self.start(inv, caller, Mode.BATCH, started=started))
            return [r if isinstance(r, Outcome) else self.finish(r) for r in runs]

    def start(
        self,
        inv: Invocation,
        caller: Caller,
        mode: Mode,
        *,
        started: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> Running:
        """Hand an invocation to the pool. A batch item waits for room until its deadline; a
        single request is refused at once when the pool is full (ServiceUnavailable).
        ``on_progress`` hears the handler's progress reports (from the pool thread)."""
        started = time.monotonic() if started is None else started
        span = _start_span(inv, caller, mode)
        ctx = self._context(inv, caller, started, span)
        ctx.on_progress = on_progress
        run = Running(inv, caller, mode, ctx, started, isoformat(), span=span)
        wait = ctx.remaining() if mode is Mode.BATCH else 0.0
        try:
            run.job = self.pool.submit(
                tracing.run_in(ctx.trace_context, lambda: _invoke(inv, ctx)), wait=wait
            )
        except PoolFull:
            if mode is not Mode.BATCH:
                tracing.end_command(span, ExecutionStatus.FAILED, 0, "server busy")
                raise _busy() from None
        return run

    def finish(self, run: Running) -> Outcome:
        """Wait by the deadline, then record and observe: the end of every execution."""
        if run.job is None:  # a batch item that found no room in the pool by its deadline
            outcome = _timed_out(run.inv, run.started)
        else:
            outcome = _settle(run, lambda: _await(run))
        self._record(run, outcome)
        return outcome

    def submit_async(
        self,
        inv: Invocation,
        caller: Caller,
        accepted: Callable[[str], None] | None = None,
    ) -> Outcome:
        """Accept for background execution: recorded as pending, then queued; the pool thread
        runs it and closes the record (the sweep closes what a dead worker left).
        ``accepted`` is told the command id once its row is written, before it can run (an
        MCP task marks its row so)."""
        if self.needs_approval(inv.command):
            held = self._hold(inv, caller, Mode.ASYNC)
            if accepted is not None:
                accepted(inv.command_id)
            return held
        # Its own trace, linked to the submitting request's: it outlives that request.
        span = _start_span(inv, caller, Mode.ASYNC, detached=True)
        try:
            created = self._accept(inv, caller, Mode.ASYNC, span=span)
            if accepted is not None:
                try:
                    accepted(inv.command_id)
                except Exception:
                    self.audit.fail_open_executions_by_id(inv.command_id, "not queued")
                    raise
        except WaygateError as err:
            tracing.end_command(span, ExecutionStatus.FAILED, 0, err.message)
            raise
        self._queue(inv, caller, created, span=span)
        return Outcome(
            status=ExecutionStatus.PENDING,
            command_id=inv.command_id,
            duration_ms=0,
            timestamp=created,
        )

    def _accept(
        self,
        inv: Invocation,
        caller: Caller,
        mode: Mode,
        request: StoredRequest | None = None,
        span: Any = None,
    ) -> str:
        """Record an execution before it runs: pending, or (with ``request``) awaiting
        approval; TooManyOpen past the key's cap. Returns its creation time."""
        created = isoformat()
        self.audit.accept(
            command_id=inv.command_id,
            action=inv.action,
            plugin=inv.plugin,
            key_name=caller.key_name,
            key_id=caller.key_id,
            timeout_s=inv.timeout,
            created_at=created,
            mode=mode,
            request=request,
            trace_id=tracing.trace_id(span),
            principal=caller.principal,
            arguments_hash=self._arguments_hash(inv),
        )
        return created

    def _arguments_hash(self, inv: Invocation) -> str | None:
        """What the audit chain records of the arguments: their hash (never themselves)."""
        return arguments_hash(inv.requested_params) if self.audit.chain is not None else None

    def _queue(
        self,
        inv: Invocation,
        caller: Caller,
        created: str,
        approved: bool = False,
        span: Any = None,
    ) -> None:
        """Queue a pending execution; the pool thread runs it and closes its record. An
        approved one starts its own trace (the request that held it is long gone)."""
        if span is None:
            span = _start_span(inv, caller, Mode.ASYNC, detached=True)

        def background() -> None:
            if not self.audit.start(inv.command_id):
                tracing.end_command(span, ExecutionStatus.FAILED, 0, "closed before it started")
                return
            started = time.monotonic()
            ctx = self._context(inv, caller, started, span)
            run = Running(inv, caller, Mode.ASYNC, ctx, started, created, span=span)
            run.ctx.on_progress = _ProgressRecorder(self.audit, inv.command_id)
            detach = self.attach(inv.command_id, run.ctx) if self.attach else None
            try:
                outcome = _settle(run, lambda: _invoke(inv, run.ctx))
            finally:
                cancelled = detach() if detach is not None else False
            if cancelled and outcome.status is not ExecutionStatus.SUCCESS:
                outcome = replace(
                    outcome,
                    status=ExecutionStatus.FAILED,
                    error="cancelled by its requester",
                    failure=None,
                )
            self._record(run, outcome)
            if approved:
                self._approvals().executed(inv.command_id, outcome.status)

        try:
            self.pool.submit(tracing.run_in(tracing.context_of(span), background))
        except PoolFull:
            self.audit.fail_open_executions_by_id(inv.command_id, "server busy: not queued")
            tracing.end_command(span, ExecutionStatus.FAILED, 0, "server busy: not queued")
            raise _busy() from None

    # -- approvals: held, then run as stored once decided (the steps: waygate.approvals) ----

    def _hold(self, inv: Invocation, caller: Caller, mode: Mode) -> Outcome:
        """Store the request as awaiting approval; it runs only once someone approves it."""
        assert self.approvals is not None  # noqa: S101 - needs_approval() said so
        request = self.approvals.stored_request(inv.requested_params, inv.client_context)
        self._accept(inv, caller, mode, request)
        self.approvals.requested(inv.command_id, caller.key_id, caller.key_name, caller.principal)
        return self._state(inv.command_id)

    def _hold_item(self, inv: Invocation, caller: Caller, started: float) -> Outcome:
        """A batch item that needs approval: held, or its own failed response when refused
        (e.g. its key's cap of unfinished executions is reached)."""
        try:
            return self._hold(inv, caller, Mode.BATCH)
        except WaygateError as err:
            return _rejected(inv.command_id, err, started)

    def approve(
        self, command_id: str, approver: Principal | ApiKey, reason: str | None = None
    ) -> Outcome:
        """Approve an execution awaiting approval and queue exactly its stored request, with
        its own timeout from now. Forbidden, NotFound or Conflict as ``Approvals.decide``."""
        approvals = self._approvals()
        execution = approvals.decide(command_id, approver, approve=True, reason=reason)
        try:
            inv, caller = self._stored(execution)
        except WaygateError as err:  # the command is gone, or its stored request is not valid
            log.warning("approved execution %s not run: %s", command_id, err.message)
            self.audit.fail_open_executions_by_id(command_id, f"not run: {_describe(err)}")
            approvals.executed(command_id, ExecutionStatus.FAILED)
        else:
            self._queue(inv, caller, execution.created_at, approved=True)
        return self._state(command_id)

    def deny(
        self, command_id: str, approver: Principal | ApiKey, reason: str | None = None
    ) -> Outcome:
        self._approvals().decide(command_id, approver, approve=False, reason=reason)
        return self._state(command_id)

    def _approvals(self) -> Approvals:
        if self.approvals is None:
            raise ServiceUnavailable("approvals are not configured in this process")
        return self.approvals

    def _stored(self, execution: Execution) -> tuple[Invocation, Caller]:
        """The stored request as an Invocation, validated again against today's command; a
        stored request whose params no longer match its hash is refused, never run."""
        params = self._approvals().stored_params(execution)
        caller = Caller(
            key_name=execution.key_name, key_id=execution.key_id, principal=execution.principal
        )
        inv = self.resolve(
            execution.action,
            params,
            caller,
            timeout=execution.timeout_s,
            client_context=execution.client_context,
        )
        return replace(inv, command_id=execution.command_id), caller

    def _state(self, command_id: str) -> Outcome:
        """The state of an execution this service has just stored or decided on."""
        execution = self.audit.get(command_id)
        assert execution is not None  # noqa: S101 - stored or decided just now
        return execution.outcome()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _context(
        inv: Invocation, caller: Caller, started: float, span: Any = None
    ) -> ExecutionContext:
        logger = logging.LoggerAdapter(_plugin_logger(inv.plugin), {"command_id": inv.command_id})
        return ExecutionContext(
            command_id=inv.command_id,
            key_name=caller.key_name,
            deadline=started + inv.timeout,
            logger=logger,
            client_context=inv.client_context,
            trace_context=tracing.context_of(span),
            inputs=inv.inputs,
        )

    def _record(self, run: Running, outcome: Outcome) -> None:
        if self._observe is not None:
            self._observe(run.inv.action, outcome.status, outcome.duration_ms)
        try:
            with tracing.child(run.span, "waygate.audit.commit"):
                self._write_audit(run, outcome)
        finally:
            tracing.end_command(run.span, outcome.status, outcome.duration_ms, outcome.error)

    def _write_audit(self, run: Running, outcome: Outcome) -> None:
        inv = run.inv
        if run.mode is Mode.ASYNC:
            self.audit.finish(
                inv.command_id,
                status=outcome.status,
                duration_ms=outcome.duration_ms,
                error=outcome.error,
                result=outcome.result,
            )
            return
        self.audit.record(
            command_id=inv.command_id,
            action=inv.action,
            plugin=inv.plugin,
            key_name=run.caller.key_name,
            key_id=run.caller.key_id,
            mode=run.mode,
            status=outcome.status,
            duration_ms=outcome.duration_ms,
            error=outcome.error,
            timeout_s=inv.timeout,
            created_at=run.created,
            started_at=run.created,
            trace_id=tracing.trace_id(run.span),
            principal=run.caller.principal,
            arguments_hash=self._arguments_hash(inv),
        )


class _ProgressRecorder:
    """Keeps an async execution's latest progress where any worker's poll finds it: at most
    one write per interval (a handler may report in a tight loop), and always the last step."""

    INTERVAL_S = 0.5

    def __init__(self, audit: AuditLog, command_id: str):
        self._audit, self._command_id, self._written = audit, command_id, 0.0

    def __call__(self, report: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._written >= self.INTERVAL_S or report.get("progress") == report.get("total"):
            self._written = now
            self._audit.progress(self._command_id, report)


def _start_span(inv: Invocation, caller: Caller, mode: Mode, *, detached: bool = False) -> Any:
    return tracing.start_command(
        inv.action,
        inv.plugin,
        inv.command_id,
        mode,
        inv.timeout,
        caller.key_id,
        detached=detached,
    )


def _invoke(inv: Invocation, ctx: ExecutionContext) -> Any:
    if ctx.cancelled:  # waited in the queue past its deadline: do not start it
        raise Cancelled("command timed out before it started")
    return inv.command.handler(inv.params, ctx)


def _await(run: Running) -> Any:
    if run.job is None:  # never: finish() answers a job-less run itself
        raise Cancelled()
    try:
        return run.job.result(timeout=run.ctx.remaining())
    except TimeoutError:
        run.ctx.cancel_event.set()  # the handler may look; a thread cannot be killed
        raise Cancelled() from None


def _settle(run: Running, produce: Callable[[], Any]) -> Outcome:
    """The handler's result, refusal, failure or timeout as an Outcome. A result that came
    after the deadline is a timeout: the deadline is the contract, not the handler's luck."""
    inv, started = run.inv, run.started
    try:
        result = produce()
    except Cancelled:
        return _timed_out(inv, started)
    except InputRequired as asked:
        return _asked(run, asked)
    except CommandError as err:
        return Outcome(
            status=ExecutionStatus.FAILED,
            command_id=inv.command_id,
            duration_ms=_ms(started, _ended(run)),
            error=err.message,
            failure=Failure.REFUSED,
            cause=CommandRefused(err.message, err.details, status=err.status),
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
            status=ExecutionStatus.FAILED,
            command_id=inv.command_id,
            duration_ms=_ms(started, _ended(run)),
            error=str(exc) or type(exc).__name__,
            failure=Failure.CRASHED,
        )
    ended = _ended(run)
    if ended > run.ctx.deadline:
        return _timed_out(inv, started)
    return Outcome(
        status=ExecutionStatus.SUCCESS,
        command_id=inv.command_id,
        duration_ms=_ms(started, ended),
        result=result,
    )


def _asked(run: Running, asked: InputRequired) -> Outcome:
    """A handler that asked its caller: this round ends input_required (its result is what
    the MCP layer answers with); a caller that cannot answer gets the handler's refusal."""
    inv, duration = run.inv, _ms(run.started, _ended(run))
    if asked.unavailable is None and not asked.missing:
        return Outcome(
            status=ExecutionStatus.INPUT_REQUIRED,
            command_id=inv.command_id,
            duration_ms=duration,
            result=asked.result,
            error="waiting for the caller's input: " + ", ".join(asked.requests)[:300],
        )
    if asked.missing:
        message = f"{inv.action} needs client capabilities the caller did not declare"
        cause = MissingCapability(message, {"requiredCapabilities": asked.missing})
    else:
        methods = sorted({str(r.get("method")) for r in asked.requests.values()})
        message = (
            f"{inv.action} asks its caller for input ({', '.join(methods)}:"
            f" {', '.join(asked.requests)}), which only an MCP client speaking protocol"
            " revision 2026-07-28 can give (an input_required result); call it as an MCP"
            " tool from such a client"
        )[:1000]
        cause = CommandRefused(message, {"input_requests": list(asked.requests)}, status=422)
    return Outcome(
        status=ExecutionStatus.FAILED,
        command_id=inv.command_id,
        duration_ms=duration,
        error=message,
        failure=Failure.REFUSED,
        cause=cause,
    )


def _ended(run: Running) -> float:
    """When the handler ended: a batch collects its items one after another, so each is timed
    by its own job, not by when it was collected."""
    return run.job.ended if run.job is not None and run.job.done() else time.monotonic()


def _rejected(command_id: str, err: WaygateError, started: float) -> Outcome:
    return Outcome(
        status=ExecutionStatus.FAILED,
        command_id=command_id,
        duration_ms=_ms(started),
        error=_describe(err),
        failure=Failure.REJECTED,
        cause=err,
    )


def _timed_out(inv: Invocation, started: float) -> Outcome:
    return Outcome(
        status=ExecutionStatus.TIMEOUT,
        command_id=inv.command_id,
        duration_ms=_ms(started),
        error=f"command exceeded its timeout of {inv.timeout} s",
    )


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "server busy: every command thread is in use and the queue is full", retry_after=1
    )


def _describe(err: WaygateError) -> str:
    details = json.dumps(err.details, default=str, separators=(", ", ": ")) if err.details else ""
    return f"{err.code}: {err.message}" + (f" {details}" if details else "")


def _ms(started: float, ended: float | None = None) -> int:
    return int(((time.monotonic() if ended is None else ended) - started) * 1000)
