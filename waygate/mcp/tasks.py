"""MCP tasks for ``tools/call``: a call answered with a durable handle that the client polls.

Two wire forms, one store:

- the **tasks extension** ``io.modelcontextprotocol/tasks`` (SEP-2663) under 2026-07-28: the
  client declares the extension in each request's capabilities and the server decides per call
  whether to answer with a task (``resultType: "task"``); ``tasks/get`` (the result or error
  inlined once terminal), ``tasks/update`` (answers to ``inputRequests``), ``tasks/cancel``
  (an ack). ``tasks/result`` and ``tasks/list`` do not exist there (-32601).
- the **experimental tasks of 2025-11-25** (the revision that had them in core): the client
  asks per call with ``params.task``; ``tasks/get``, ``tasks/result`` (blocks until the task
  ends), ``tasks/list`` and ``tasks/cancel``. Older revisions have no tasks.

A task IS an execution: its id is the execution's ``command_id`` and its row is the audit
row (migration m019 adds the few columns a task needs), so it is shared by every worker and
host, owned by the key or person that created it (another caller's task id answers exactly as
a missing one), kept as long as executions are kept (its ``ttlMs``) and pruned with it. A
task runs as an async execution (``CommandService.submit_async``): a call that needs approval
is held as usual and its task is ``working`` until decided; cancelling it withdraws the
request; cancelling a running one sets the execution's cancel flag in whichever worker runs
it (``CancelWatch``), and the task answers ``cancelled`` from then on.

Which calls become tasks: those held for approval, and those of commands declared
``task_support="optional"`` or ``"required"`` (``waygate.sdk.Command``), for a client that
supports tasks. ``waygate_execution`` stays for clients that do not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..audit import EXECUTION_COLUMNS, Execution, execution_of
from ..clock import isoformat
from ..commands import Caller, CommandService, Invocation
from ..outcomes import ExecutionStatus, Outcome
from ..sdk import ExecutionContext

log = logging.getLogger(__name__)

EXTENSION = "io.modelcontextprotocol/tasks"
LEGACY_VERSION = "2025-11-25"  # the one revision with tasks in core (experimental)
RELATED_TASK = "io.modelcontextprotocol/related-task"
IMMEDIATE_RESPONSE = "io.modelcontextprotocol/model-immediate-response"
# What a 2025-11-25 server declares at initialize (it lists, cancels, and takes tools/call).
LEGACY_CAPABILITY = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
MODERN_METHODS = ("tasks/get", "tasks/update", "tasks/cancel")
LEGACY_METHODS = ("tasks/get", "tasks/result", "tasks/list", "tasks/cancel")
TERMINAL = ("completed", "failed", "cancelled")

INVALID_PARAMS, INTERNAL_ERROR, MISSING_CAPABILITY = -32602, -32603, -32021
TASK_ID_MAX = 100  # characters: a command id is 48
LIST_PAGE = 50
INPUT_REQUESTS_MAX = 16  # outstanding at once, per task
INPUT_RESPONSE_MAX_BYTES = 64 * 1024  # one tasks/update's answers, as JSON

_TASK_COLUMNS = "task_ttl_ms, cancel_requested_at, input_requests, input_responses"
_GET_SQL = (
    f"SELECT {EXECUTION_COLUMNS}, result, progress, {_TASK_COLUMNS}"  # noqa: S608 # nosec B608
    " FROM executions WHERE command_id = ?"
)


class TaskError(Exception):
    """A JSON-RPC error of the tasks methods (the MCP server turns it into its reply)."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def missing_extension() -> TaskError:
    return TaskError(
        MISSING_CAPABILITY,
        "Missing required client capability",
        {"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
    )


def declares_extension(meta: Any) -> bool:
    """Whether a 2026-07-28 request's ``_meta`` declares the tasks extension."""
    capabilities = (
        meta.get("io.modelcontextprotocol/clientCapabilities") if isinstance(meta, dict) else None
    )
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and isinstance(extensions.get(EXTENSION), dict)


@dataclass(frozen=True)
class TaskRow:
    """An execution that is a task, with what m019 adds to its row."""

    execution: Execution
    ttl_ms: int
    cancel_requested_at: str | None
    input_requests: dict[str, Any]

    @property
    def last_updated(self) -> str:
        e = self.execution
        moments = (
            e.created_at,
            e.started_at,
            e.decided_at,
            e.finished_at,
            self.cancel_requested_at,
        )
        return max(m for m in moments if m)


class Tasks:
    """The tasks of ``tools/call`` on the command service's executions."""

    def __init__(
        self,
        commands: CommandService,
        present: Callable[[str, Outcome], dict[str, Any]],
        ttl_ms: int,
        poll_interval_ms: int = 1000,
        result_wait_s: float = 300.0,
    ):
        self.commands = commands
        self.storage = commands.audit.storage
        self._present = present  # an outcome as the tools/call result it would have been
        self.ttl_ms = ttl_ms  # as long as executions are kept (WAYGATE_AUDIT_RETENTION_DAYS)
        self.poll_interval_ms = poll_interval_ms
        self.result_wait_s = result_wait_s  # the longest a tasks/result waits for the end
        self.cancels = CancelWatch(self.storage)
        commands.attach = self._attach

    # -- which calls are tasks -----------------------------------------------------------------

    def wanted(self, inv: Invocation) -> bool:
        """Whether a call is answered with a task for a client that supports them."""
        return self.commands.needs_approval(inv.command) or inv.command.task_support in (
            "optional",
            "required",
        )

    def support(self, command: Any) -> str:
        """A tool's ``execution.taskSupport`` (2025-11-25 tools/list)."""
        if command.task_support == "required":
            return "required"
        if command.task_support == "optional" or self.commands.needs_approval(command):
            return "optional"
        return "forbidden"

    # -- creating ------------------------------------------------------------------------------

    def create(self, inv: Invocation, caller: Caller) -> TaskRow:
        """Accept the call as an async execution (held if it needs approval) and mark it a
        task; committed before this returns, so any worker's tasks/get finds it."""
        self.commands.submit_async(inv, caller, accepted=self._mark)
        found = self._read(inv.command_id)
        assert found is not None  # noqa: S101 - written just now
        return found

    def _mark(self, command_id: str) -> None:
        """The execution is a task: marked before it can run (its handler may ask)."""
        self.storage.execute_write(
            "UPDATE executions SET task_ttl_ms = ? WHERE command_id = ?",
            (self.ttl_ms, command_id),
        )

    # -- reading -------------------------------------------------------------------------------

    def find(self, params: Any, caller: Caller) -> TaskRow:
        """The caller's task named by ``params.taskId``; a missing id, another caller's task
        and an execution that is no task are alike: invalid params, "Task not found"."""
        task_id = params.get("taskId") if isinstance(params, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise TaskError(INVALID_PARAMS, "taskId must be a non-empty string")
        found = self._read(task_id[:TASK_ID_MAX]) if len(task_id) <= TASK_ID_MAX else None
        if found is None or not caller.owns(found.execution):
            raise TaskError(INVALID_PARAMS, "Failed to retrieve task: Task not found")
        return self._settled(found)

    def _settled(self, found: TaskRow) -> TaskRow:
        """What a dead worker left and approvals past their time are closed first (as any
        poll of an execution does)."""
        e = found.execution
        if (e.status in ExecutionStatus.open() and self.commands.leases.sweep()) or (
            e.status == ExecutionStatus.AWAITING_APPROVAL
            and self.commands.approvals is not None
            and e.command_id in self.commands.approvals.expire()
        ):
            return self._read(e.command_id) or found
        return found

    def _read(self, task_id: str) -> TaskRow | None:
        row = self.storage.conn.execute(_GET_SQL, (task_id,)).fetchone()
        if row is None or row["task_ttl_ms"] is None:
            return None
        data = dict(row)
        ttl_ms = data.pop("task_ttl_ms")
        cancel = data.pop("cancel_requested_at")
        requests = _json_object(data.pop("input_requests"))
        data.pop("input_responses")
        return TaskRow(execution_of(data), ttl_ms, cancel, requests)

    def status(self, task: TaskRow, legacy: bool) -> tuple[str, str | None]:
        """The task's status and message, from its execution's."""
        e = task.execution
        if task.cancel_requested_at is not None:
            if e.status == ExecutionStatus.DENIED:
                return "cancelled", "cancelled: the approval request was withdrawn"
            return "cancelled", "cancelled by request"
        if e.status == ExecutionStatus.AWAITING_APPROVAL:
            return "working", f"waiting for approval (until {e.approval_expires_at})"
        if e.status in ExecutionStatus.open():
            if task.input_requests:
                return "input_required", "waiting for your input"
            if e.status == ExecutionStatus.PENDING:
                return "working", "queued"
            message = (e.progress or {}).get("message")
            return "working", str(message) if message else "running"
        if _protocol_error(e) is not None:
            return "failed", e.error
        if e.status == ExecutionStatus.SUCCESS:
            return "completed", None
        # A tool's own failure is a result with isError: "completed" for the extension;
        # 2025-11-25 calls such a task failed.
        return ("failed" if legacy else "completed"), e.error

    def view(self, task: TaskRow, legacy: bool, detailed: bool = False) -> dict[str, Any]:
        """The Task object (2026-07-28: ttlMs, pollIntervalMs; 2025-11-25: ttl,
        pollInterval); ``detailed`` inlines the result, error or input requests (tasks/get
        and notifications of the extension)."""
        status, message = self.status(task, legacy)
        view: dict[str, Any] = {"taskId": task.execution.command_id, "status": status}
        if message:
            view["statusMessage"] = message[:500]
        view["createdAt"] = task.execution.created_at
        view["lastUpdatedAt"] = task.last_updated
        if legacy:
            view.update(ttl=task.ttl_ms, pollInterval=self.poll_interval_ms)
        else:
            view.update(ttlMs=task.ttl_ms, pollIntervalMs=self.poll_interval_ms)
        if detailed and not legacy:
            if status == "completed":
                view["result"] = self.result_of(task)
            elif status == "failed":
                view["error"] = self.error_of(task)
            elif status == "input_required":
                view["inputRequests"] = task.input_requests
        return view

    def result_of(self, task: TaskRow) -> dict[str, Any]:
        """What the call would have returned had it been answered at once."""
        e = task.execution
        return self._present(e.action, e.outcome())

    @staticmethod
    def error_of(task: TaskRow) -> dict[str, Any]:
        code = _protocol_error(task.execution) or INTERNAL_ERROR
        return {"code": code, "message": (task.execution.error or "failed")[:500]}

    def get(self, params: Any, caller: Caller, legacy: bool) -> dict[str, Any]:
        return self.view(self.find(params, caller), legacy, detailed=True)

    def list(self, params: Any, caller: Caller) -> dict[str, Any]:
        """The caller's own tasks, newest first (2025-11-25), by an opaque cursor."""
        cursor = params.get("cursor") if isinstance(params, dict) else None
        where, args = _owner(caller)
        if cursor is not None:
            after = self._read(cursor[:TASK_ID_MAX]) if isinstance(cursor, str) else None
            if after is None or not caller.owns(after.execution):
                raise TaskError(INVALID_PARAMS, "invalid cursor")
            where += " AND (created_at < ? OR (created_at = ? AND command_id < ?))"
            created = after.execution.created_at
            args += [created, created, after.execution.command_id]
        rows = self.storage.conn.execute(
            "SELECT command_id FROM executions WHERE task_ttl_ms IS NOT NULL AND"  # noqa: S608 # nosec B608 - fixed text
            f" {where} ORDER BY created_at DESC, command_id DESC LIMIT ?",
            [*args, LIST_PAGE + 1],
        ).fetchall()
        tasks = [t for r in rows[:LIST_PAGE] if (t := self._read(r[0])) is not None]
        listed: dict[str, Any] = {"tasks": [self.view(t, legacy=True) for t in tasks]}
        if len(rows) > LIST_PAGE and tasks:
            listed["nextCursor"] = tasks[-1].execution.command_id
        return listed

    def result(self, params: Any, caller: Caller) -> dict[str, Any]:
        """2025-11-25 ``tasks/result``: wait (at most ``result_wait_s``) for the task to end,
        then exactly what the call would have returned, with the related-task _meta."""
        # a waiting request thread is one a command could use: it takes a slot as a call does
        with self.commands.admission.slot(caller.share):
            task = self.wait(params, caller, self.result_wait_s)
        return self.final(task)

    def wait(self, params: Any, caller: Caller, wait_s: float) -> TaskRow:
        task = self.find(params, caller)
        deadline = time.monotonic() + wait_s
        while self.status(task, legacy=True)[0] not in TERMINAL:
            if time.monotonic() >= deadline:
                raise self.still_running(task, wait_s)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            task = self.find(params, caller)
        return task

    def still_running(self, task: TaskRow, waited_s: float) -> TaskError:
        return TaskError(
            INTERNAL_ERROR,
            f"task still {self.status(task, True)[0]} after {waited_s:g} s:"
            " call tasks/result again, or poll tasks/get",
            {"taskId": task.execution.command_id},
        )

    def final(self, task: TaskRow) -> dict[str, Any]:
        """A terminal task's result as 2025-11-25 ``tasks/result`` returns it."""
        status, message = self.status(task, legacy=True)
        related = {RELATED_TASK: {"taskId": task.execution.command_id}}
        if status == "cancelled":
            raise TaskError(
                INVALID_PARAMS,
                f"task {task.execution.command_id} was cancelled: no result",
                {"taskId": task.execution.command_id},
            )
        if _protocol_error(task.execution) is not None:
            error = self.error_of(task)
            raise TaskError(error["code"], error["message"], {"_meta": related})
        return {**self.result_of(task), "_meta": related}

    def changes(
        self,
        params: Any,
        caller: Caller,
        legacy: bool,
        wait_s: float,
        keepalive_s: float | None = None,
    ) -> Iterator[TaskRow | None]:
        """The task now and each time its status changes, until it ends (or ``wait_s``
        passes); None after ``keepalive_s`` without a change. For status notifications where
        the transport can carry them (an SSE response, stdio; subscriptions/listen can use
        it for ``notifications/tasks``)."""
        task = self.find(params, caller)
        seen = self.status(task, legacy)
        yield task
        deadline = time.monotonic() + wait_s
        quiet_since = time.monotonic()
        while seen[0] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                task = self.find(params, caller)
            except TaskError:
                return  # pruned meanwhile
            now = self.status(task, legacy)
            if now != seen:
                seen, quiet_since = now, time.monotonic()
                yield task
            elif keepalive_s is not None and time.monotonic() - quiet_since >= keepalive_s:
                quiet_since = time.monotonic()
                yield None

    def notifications(
        self, params: Any, caller: Caller, told: str, legacy: bool = True
    ) -> Iterator[dict[str, Any]]:
        """A task's status notifications until it ends, after the status already told:
        2025-11-25 ``notifications/tasks/status`` (stdio pushes these), or with ``legacy``
        false the extension's ``notifications/tasks`` (the full DetailedTask), which travel
        on ``subscriptions/listen`` for the task ids a client names (``notifications.taskIds``;
        refuse a client without the extension with ``missing_extension()``)."""
        wait_s = min(self.ttl_ms / 1000, 86_400.0)  # a held call may wait for hours
        for task in self.changes(params, caller, legacy=legacy, wait_s=wait_s):
            if task is not None and self.status(task, legacy=legacy)[0] != told:
                told = ""  # from here on, every change is news
                if legacy:
                    yield _status_notification(self.view(task, legacy=True))
                else:
                    yield {
                        "jsonrpc": "2.0",
                        "method": "notifications/tasks",
                        "params": self.view(task, legacy=False, detailed=True),
                    }

    # -- writing -------------------------------------------------------------------------------

    def cancel(self, params: Any, caller: Caller, legacy: bool) -> dict[str, Any]:
        """Cancel the caller's task: a held call's approval request is withdrawn, a queued
        one never starts, a running one has its cancel flag set by the worker running it.
        The extension acks (cooperative; a task already ended acks too); 2025-11-25 answers
        the cancelled task, and refuses one already ended (-32602)."""
        task = self.find(params, caller)
        status, _ = self.status(task, legacy)
        if status in TERMINAL:
            if legacy:
                raise TaskError(
                    INVALID_PARAMS, f"Cannot cancel task: already in terminal status '{status}'"
                )
            return {}
        command_id = task.execution.command_id
        now = isoformat()
        with self.storage.write() as conn:
            conn.execute(
                "UPDATE executions SET cancel_requested_at = ? WHERE command_id = ?"
                " AND cancel_requested_at IS NULL AND status IN (?, ?, ?)",
                (now, command_id, *ExecutionStatus.unfinished()),
            )
            conn.execute(  # still queued: it never starts (the pool thread finds it closed)
                "UPDATE executions SET status = ?, error = ?, finished_at = ?"
                " WHERE command_id = ? AND status = ?",
                (
                    ExecutionStatus.FAILED,
                    "cancelled by its requester before it started",
                    now,
                    command_id,
                    ExecutionStatus.PENDING,
                ),
            )
        if task.execution.status == ExecutionStatus.AWAITING_APPROVAL and (
            self.commands.approvals is not None
        ):
            self.commands.approvals.withdraw(
                command_id, caller.key_id, caller.key_name, caller.principal
            )
        self.cancels.cancel_here(command_id)  # at once when this worker runs it
        if legacy:
            found = self._read(command_id)
            return self.view(found or task, legacy=True)
        return {}

    def update(self, params: Any, caller: Caller) -> dict[str, Any]:
        """Answers to the task's outstanding ``inputRequests``: kept for the execution to
        take; answers to keys not outstanding are ignored (SEP-2663)."""
        task = self.find(params, caller)
        responses = params.get("inputResponses")
        if not isinstance(responses, dict):
            raise TaskError(INVALID_PARAMS, "inputResponses must be an object")
        if len(json.dumps(responses, default=str)) > INPUT_RESPONSE_MAX_BYTES:
            raise TaskError(INVALID_PARAMS, "inputResponses is too large")
        TaskInput(self.storage, task.execution.command_id).answer(responses)
        return {}

    # -- the pool thread's side ----------------------------------------------------------------

    def _attach(self, command_id: str, ctx: ExecutionContext) -> Callable[[], bool]:
        """A queued execution starts: a task gets its input channel; any can be cancelled."""
        marked = self.storage.conn.execute(
            "SELECT task_ttl_ms FROM executions WHERE command_id = ?", (command_id,)
        ).fetchone()
        if marked is not None and marked[0] is not None:
            ctx.task_input = TaskInput(self.storage, command_id, ctx)
        return self.cancels.watch(command_id, ctx)


class TaskStream:
    """2025-11-25 ``tasks/result`` on a stream: ``notifications/tasks/status`` each time the
    task changes, keep-alives while nothing does, then the response (the result, or the
    error the call met). Bounded like a blocking ``tasks/result`` (``result_wait_s``)."""

    KEEPALIVE_S = 15.0

    def __init__(self, tasks: Tasks, params: Any, caller: Caller, request_id: Any):
        self.tasks, self.params, self.caller, self.request_id = tasks, params, caller, request_id
        # it holds its request thread as a streamed call does: one of the worker's slots
        self._slot = tasks.commands.admission.slot(caller.share)
        self._slot.__enter__()  # refused at once (429/503) when the worker is full
        self._held = True

    def messages(self) -> Iterator[dict[str, Any] | None]:
        last: TaskRow | None = None
        try:
            for task in self.tasks.changes(
                self.params,
                self.caller,
                legacy=True,
                wait_s=self.tasks.result_wait_s,
                keepalive_s=self.KEEPALIVE_S,
            ):
                if task is None:
                    yield None
                    continue
                last = task
                yield _status_notification(self.tasks.view(task, legacy=True))
            if last is None:
                raise TaskError(INVALID_PARAMS, "Failed to retrieve task: Task not found")
            if self.tasks.status(last, legacy=True)[0] not in TERMINAL:
                raise self.tasks.still_running(last, self.tasks.result_wait_s)
            yield {"jsonrpc": "2.0", "id": self.request_id, "result": self.tasks.final(last)}
        except TaskError as err:
            error: dict[str, Any] = {"code": err.code, "message": err.message}
            if err.data is not None:
                error["data"] = err.data
            yield {"jsonrpc": "2.0", "id": self.request_id, "error": error}

    def close(self) -> None:
        """The slot is given back; the task runs on whether anyone listens."""
        if self._held:
            self._held = False
            self._slot.__exit__(None, None, None)


def _status_notification(view: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": view}


class CancelWatch:
    """Sets the cancel flag of the executions this process runs when their owner cancels
    them from any worker or host: one thread polls the database (a primary-key read of the
    running ones, every ``interval_s``) while this process runs any; none otherwise."""

    def __init__(self, storage: Any, interval_s: float = 0.25):
        self.storage, self.interval_s = storage, interval_s
        self._running: dict[str, tuple[ExecutionContext, list[bool]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def watch(self, command_id: str, ctx: ExecutionContext) -> Callable[[], bool]:
        """Watch one execution until the returned function is called; that says whether
        its owner cancelled it meanwhile."""
        flag = [False]
        with self._lock:
            self._running[command_id] = (ctx, flag)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._poll, name="waygate-task-cancels", daemon=True
                )
                self._thread.start()
            self._wake.notify()

        def detach() -> bool:
            with self._lock:
                self._running.pop(command_id, None)
            return flag[0]

        return detach

    def cancel_here(self, command_id: str) -> None:
        with self._lock:
            entry = self._running.get(command_id)
        if entry is not None:
            entry[1][0] = True
            entry[0].cancel_event.set()

    def _poll(self) -> None:
        while True:
            with self._lock:
                while not self._running:
                    self._wake.wait()
                ids = list(self._running)[:500]
            try:
                marks = ", ".join("?" * len(ids))
                rows = self.storage.conn.execute(
                    f"SELECT command_id FROM executions WHERE command_id IN ({marks})"  # noqa: S608 # nosec B608 - placeholders only
                    " AND cancel_requested_at IS NOT NULL",
                    ids,
                ).fetchall()
            except Exception:  # the database is away for a moment: look again next time
                log.warning("could not read task cancellations", exc_info=True)
                rows = []
            for row in rows:
                self.cancel_here(row[0])
            time.sleep(self.interval_s)


class TaskInput:
    """How a task's execution asks its client for input (``input_required``), across
    workers: the requests wait in the task's row (``tasks/get`` shows them as
    ``inputRequests``), the client's ``tasks/update`` answers land there, and the execution
    takes them. The hook of issue 29's input requests: ``ctx.task_input.ask({...})``.

    Each request is ``{"method": "elicitation/create" | "sampling/createMessage" |
    "roots/list", "params": {...}}``, keyed by a name of the plugin's choosing; the keys sent
    are made unique over the task's life (a counter is prefixed)."""

    POLL_S = 0.2

    def __init__(self, storage: Any, command_id: str, ctx: ExecutionContext | None = None):
        self.storage, self.command_id, self.ctx = storage, command_id, ctx
        self._asked = 0

    def ask(
        self, requests: Mapping[str, Mapping[str, Any]], timeout: float | None = None
    ) -> dict[str, Any]:
        """Publish ``requests`` and wait for every answer (until the execution is cancelled
        or its deadline passes: then ``waygate.sdk.Cancelled``); the answers by the keys
        given. Only for an execution that is a task (LookupError otherwise)."""
        from ..sdk import Cancelled

        if not requests or len(requests) > INPUT_REQUESTS_MAX:
            raise ValueError(f"ask for 1 to {INPUT_REQUESTS_MAX} inputs at once")
        self._asked += 1
        keys = {f"{self._asked}-{name}"[:100]: name for name in requests}
        published = {key: dict(requests[name]) for key, name in keys.items()}

        def publish(outstanding: dict, kept: dict) -> tuple[dict, dict]:
            return {**outstanding, **published}, kept

        if not self._change(publish, must_be_task=True):
            raise LookupError("this execution is not an MCP task: it cannot ask for input")
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        answers: dict[str, Any] = {}
        while len(answers) < len(keys):
            if self.ctx is not None and self.ctx.cancelled or time.monotonic() >= deadline:
                self._withdraw(list(keys))
                raise Cancelled("no answer to the input request in time")
            answers.update(self._take(list(keys)))
            if len(answers) < len(keys):
                if self.ctx is not None:
                    self.ctx.cancel_event.wait(self.POLL_S)
                else:
                    time.sleep(self.POLL_S)
        return {keys[key]: value for key, value in answers.items()}

    def answer(self, responses: Mapping[str, Any]) -> None:
        """The client's answers (``tasks/update``), kept for the keys still outstanding;
        answered keys are no longer outstanding."""

        def keep(outstanding: dict, kept: dict) -> tuple[dict, dict]:
            answered = {k: v for k, v in responses.items() if k in outstanding}
            return {k: v for k, v in outstanding.items() if k not in answered}, {
                **kept,
                **answered,
            }

        self._change(keep)

    def _take(self, keys: list[str]) -> dict[str, Any]:
        taken: dict[str, Any] = {}

        def take(outstanding: dict, kept: dict) -> tuple[dict, dict]:
            taken.clear()
            taken.update({k: kept[k] for k in keys if k in kept})
            return outstanding, {k: v for k, v in kept.items() if k not in taken}

        self._change(take)
        return taken

    def _withdraw(self, keys: list[str]) -> None:
        self._change(
            lambda outstanding, kept: (
                {k: v for k, v in outstanding.items() if k not in keys},
                {k: v for k, v in kept.items() if k not in keys},
            )
        )

    def _change(
        self,
        change: Callable[[dict, dict], tuple[dict, dict]],
        must_be_task: bool = False,
    ) -> bool:
        """Read the requests and answers, change them, write them back only if nobody
        changed them meanwhile (compare and set: any worker or host may write at once);
        False when there is no such row (or, with ``must_be_task``, it is no task)."""
        for _ in range(50):
            row = self.storage.conn.execute(
                "SELECT task_ttl_ms, input_requests, input_responses FROM executions"
                " WHERE command_id = ?",
                (self.command_id,),
            ).fetchone()
            if row is None or (must_be_task and row[0] is None):
                return False
            outstanding, kept = change(_json_object(row[1]), _json_object(row[2]))
            written = self.storage.execute_write(
                "UPDATE executions SET input_requests = ?, input_responses = ?"
                " WHERE command_id = ? AND input_requests IS NOT DISTINCT FROM ?"
                " AND input_responses IS NOT DISTINCT FROM ?",
                (
                    json.dumps(outstanding) if outstanding else None,
                    json.dumps(kept) if kept else None,
                    self.command_id,
                    row[1],
                    row[2],
                ),
            )
            if written.rowcount == 1:
                return True
        raise RuntimeError("task input kept changing: gave up")


def _owner(caller: Caller) -> tuple[str, list[Any]]:
    """Whose tasks: the key's, or for a person without a key, the person's (Caller.owns)."""
    if caller.key_id is not None:
        return "key_id = ?", [caller.key_id]
    return "key_id IS NULL AND principal = ?", [caller.principal or ""]


def _protocol_error(execution: Execution) -> int | None:
    """The JSON-RPC error an answered-at-once call would have met: an approved call whose
    command or params are no longer valid ("not run: ...") is refused as invalid params."""
    if execution.status == ExecutionStatus.FAILED and (execution.error or "").startswith(
        "not run:"
    ):
        return INVALID_PARAMS
    return None


def _json_object(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
