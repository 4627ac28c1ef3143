"""The Model Context Protocol: plugin commands as MCP tools (and plugin prompts and resources,
see ``waygate.mcp.catalog``), over JSON-RPC 2.0.

Transport-free: ``waygate.web.mcp_api`` carries it over HTTP (Streamable HTTP, stateless, JSON
responses, or a stream of messages for a tool call that asks for progress: ``ToolStream``) and
``waygate.mcp.stdio`` over stdio. The wire contract is the MCP specification's, in both of
its eras: the handshake era (``initialize`` then requests carrying ``MCP-Protocol-Version``)
and the 2026-07-28 revision (no handshake; every request repeats its envelope in
``params._meta`` and routing headers). Being stateless, the server remembers no
handshake: each request is judged by the revision it names.

Tool calls go through the same command service as ``POST /mcp/execute`` (pool, timeout, audit
log with mode ``mcp``, statistics, metrics). Execution problems are results with
``isError: true``; naming a tool that does not exist (for this key) is a protocol error.
"""

from __future__ import annotations

import json
import math
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__, tracing
from ..approvals.policy import APPROVAL_NOTE, META_APPROVAL
from ..commands import Caller, CommandService, Invocation, OutOfScope, UnknownCommand
from ..errors import RateLimited, ServiceUnavailable, WaygateError
from ..jsonbody import BodyRefused
from ..outcomes import ExecutionStatus, Mode, Outcome
from ..plugins import PluginSet
from ..schemas import json_schema
from ..sdk import Content, RichResult
from ..status import Status
from .catalog import Catalog, CatalogError
from .tasks import (
    EXTENSION,
    IMMEDIATE_RESPONSE,
    LEGACY_CAPABILITY,
    LEGACY_METHODS,
    LEGACY_VERSION,
    MODERN_METHODS,
    TaskError,
    Tasks,
    TaskStream,
    declares_extension,
    missing_extension,
)

HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
# A request without MCP-Protocol-Version comes from a 2025-03-26 client (the header came later).
HEADERLESS_VERSION = "2025-03-26"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
# A client may ask for a shorter tool timeout (seconds) in tools/call's params._meta.
META_TIMEOUT = "waygate/timeout"

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
HEADER_MISMATCH, MISSING_CAPABILITY, UNSUPPORTED_VERSION = -32020, -32021, -32022

SERVER_INFO = {"name": "waygate", "title": "Waygate MCP", "version": __version__}
INSTRUCTIONS = (
    "Waygate runs operations commands from its plugins. Each tool is one command; "
    "its inputSchema lists the parameters. A result with isError explains what "
    "went wrong (invalid arguments, a failure or a timeout)."
)
# No push channel (stateless): lists are asked for again, resources are not subscribable.
CAPABILITIES = {
    "tools": {"listChanged": False},
    "prompts": {"listChanged": False},
    "resources": {"listChanged": False, "subscribe": False},
    "completions": {},
}
# Built in, read-only: a caller comes back for an execution it started (one that waited for
# approval, or any async one). Its name is reserved: a plugin command of that name is hidden.
EXECUTION_TOOL = {
    "name": "waygate_execution",
    "title": "Execution state",
    "description": "The state and result of one of your own executions, by its command_id"
    " (e.g. one that waits for approval). Call it again until its status is final.",
    "inputSchema": {
        "type": "object",
        "properties": {"command_id": {"type": "string", "maxLength": 100}},
        "required": ["command_id"],
    },
    "annotations": {"readOnlyHint": True, "idempotentHint": True},
}


class JsonRpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.data, self.status = code, message, data, status

    def body(self, request_id: Any = None) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": request_id, "error": error}


def refused_body_error(problem: BodyRefused) -> JsonRpcError:
    """A message that is not JSON text is a parse error; JSON nested too deeply, an invalid
    request; either way with the details (the field, the position). Every transport says it so."""
    if problem.kind == "depth":
        return JsonRpcError(INVALID_REQUEST, problem.message[:200])
    return JsonRpcError(
        PARSE_ERROR, f"Parse error: {problem.message}"[:300], data=problem.details or None
    )


@dataclass(frozen=True)
class Reply:
    """What to send back: an HTTP status and a JSON-RPC body (None: nothing, e.g. 202)."""

    status: int
    body: dict[str, Any] | None = None
    retry_after: int | None = None  # seconds, when the server is too busy to answer now
    stream: ToolStream | None = None  # instead of a body: messages to send as they come


@dataclass(frozen=True)
class Routing:
    """The request's routing headers (HTTP only; stdio has none)."""

    version: str | None = None
    method: str | None = None
    name: str | None = None
    streams: bool = False  # the client accepts text/event-stream


class McpServer:
    def __init__(
        self,
        commands: CommandService,
        plugins: Callable[[], PluginSet],
        tool_timeout: int = 30,
        tool_timeout_max: int = 300,
        task_ttl_ms: int = 7 * 86_400_000,
    ):
        self.commands = commands
        self.status = Status(commands)
        self._plugins = plugins
        self.tool_timeout = tool_timeout  # seconds, unless the client asks for less
        self.tool_timeout_max = tool_timeout_max
        self.catalog = Catalog(commands, plugins, tool_timeout)
        # tools/call as tasks (waygate.mcp.tasks), kept as long as executions are kept
        self.tasks = Tasks(commands, _present, task_ttl_ms, result_wait_s=tool_timeout_max)
        self._lists = {
            "tools/list": ("tools", self.tools),
            "prompts/list": ("prompts", self.catalog.prompts),
            "resources/list": ("resources", self.catalog.resources),
            "resources/templates/list": ("resourceTemplates", self.catalog.templates),
        }
        self._reads = {
            "prompts/get": self.catalog.get_prompt,
            "resources/read": self.catalog.read_resource,
            "completion/complete": self.catalog.complete,
        }

    # -- entry point ---------------------------------------------------------------------------

    def handle(
        self, message: Any, caller: Caller, routing: Routing | None = None, http: bool = True
    ) -> Reply:
        routing = routing or Routing()
        request_id = message.get("id") if isinstance(message, dict) else None
        try:
            method = self._check_shape(message)
            version = routing.version
            if version is None and not http:
                meta = (message.get("params") or {}).get("_meta") or {}
                version = meta.get(META_VERSION) if isinstance(meta, dict) else None
            version = version or HEADERLESS_VERSION
            if version not in SUPPORTED_VERSIONS:
                raise JsonRpcError(
                    UNSUPPORTED_VERSION,
                    f"unsupported protocol version {str(version)[:40]!r}",
                    {"supported": list(SUPPORTED_VERSIONS), "requested": str(version)[:40]},
                )
            modern = version in MODERN_VERSIONS
            if method is None or "id" not in message:  # a notification, or a client's response
                return Reply(202)
            if modern:
                self._check_modern(message, method, version, routing, http)
            params = message.get("params") or {}
            if (
                method == "tools/call"
                and routing.streams
                and _progress_token(params) is not None
                and not self._task_call(params, version)
            ):
                return self._stream_tool(params, caller, request_id, modern)
            if method == "tasks/result" and version == LEGACY_VERSION and routing.streams:
                return self._stream_task_result(params, caller, request_id)
            result = self._dispatch(method, params, caller, modern, version)
            return Reply(200, {"jsonrpc": "2.0", "id": request_id, "result": result})
        except JsonRpcError as err:
            return Reply(err.status, err.body(request_id))
        except (ServiceUnavailable, RateLimited) as err:  # too busy now (503), or this key
            # has its share of the worker's command slots (429): retry later
            busy = JsonRpcError(
                INTERNAL_ERROR if err.status >= 500 else INVALID_REQUEST,
                err.message,
                {"code": err.code, "retry_after_s": err.retry_after, **err.details},
            )
            return Reply(err.status, busy.body(request_id), retry_after=err.retry_after)

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def _check_shape(message: Any) -> str | None:
        if isinstance(message, list):
            raise JsonRpcError(
                INVALID_REQUEST, "JSON-RPC batches are not supported: send one message per request"
            )
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise JsonRpcError(
                INVALID_REQUEST, 'not a JSON-RPC 2.0 message (need "jsonrpc": "2.0")'
            )
        if "method" not in message:
            if (
                "id" in message
                and ("result" in message) != ("error" in message)
                and ("error" not in message or isinstance(message["error"], dict))
            ):
                return None  # a response to a server request; Waygate sends none, so drop it
            raise JsonRpcError(INVALID_REQUEST, "a JSON-RPC request needs a method")
        method = message["method"]
        if not isinstance(method, str) or not method:
            raise JsonRpcError(INVALID_REQUEST, "method must be a non-empty string")
        if (
            "id" in message
            and not isinstance(message["id"], (str, int))
            or isinstance(message.get("id"), bool)
        ):
            raise JsonRpcError(INVALID_REQUEST, "id must be a string or an integer")
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            raise JsonRpcError(INVALID_REQUEST, "params must be an object")
        return method

    @staticmethod
    def _check_modern(
        message: dict, method: str, version: str, routing: Routing, http: bool
    ) -> None:
        """The 2026-07-28 checks, in the contract's order: envelope, then headers (the version
        itself was checked first: an unknown one says nothing about which rules apply)."""
        params = message.get("params") or {}
        meta = params.get("_meta")
        if (
            not isinstance(meta, dict)
            or META_VERSION not in meta
            or META_CLIENT_CAPABILITIES not in meta
        ):
            raise JsonRpcError(
                INVALID_PARAMS,
                f"params._meta must carry {META_VERSION} and {META_CLIENT_CAPABILITIES}",
                status=400,
            )
        if http:
            mismatches = []
            if meta[META_VERSION] != version:
                mismatches.append("MCP-Protocol-Version")
            if routing.method != method:
                mismatches.append("Mcp-Method")
            if method == "tools/call" and routing.name != params.get("name"):
                mismatches.append("Mcp-Name")
            task_id = params.get("taskId")  # SEP-2663: the task id routes the request
            if method in MODERN_METHODS and isinstance(task_id, str) and routing.name != task_id:
                mismatches.append("Mcp-Name")
            if mismatches:
                raise JsonRpcError(
                    HEADER_MISMATCH,
                    "routing header(s) disagree with the body: " + ", ".join(mismatches),
                    {"headers": mismatches},
                    status=400,
                )

    # -- methods -------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, params: dict, caller: Caller, modern: bool, version: str
    ) -> dict[str, Any]:
        # Handshake-era errors met while handling a request travel with HTTP 200.
        handling_status = None if modern else 200
        try:
            if method == "initialize" and not modern:
                return self._initialize(params)
            if method == "server/discover" and modern:
                return self._complete(
                    {
                        "supportedVersions": list(MODERN_VERSIONS),
                        "capabilities": {**CAPABILITIES, "extensions": {EXTENSION: {}}},
                        "instructions": INSTRUCTIONS,
                        "ttlMs": 0,
                        "cacheScope": "private",
                        "_meta": {META_SERVER_INFO: SERVER_INFO},
                    },
                    modern,
                )
            if method == "ping" and not modern:  # 2026-07-28 removed ping
                return {}
            if method.startswith("tasks/"):
                return self._task_method(method, params, caller, version)
            if method in self._lists:
                key, list_them = self._lists[method]
                listed = {key: list_them(caller)}
                if method == "tools/list" and version == LEGACY_VERSION:
                    self._declare_task_support(listed[key])
                if modern:
                    listed.update(ttlMs=0, cacheScope="private")
                return self._complete(listed, modern)
            if method == "tools/call":
                return self._complete(self.call_tool(params, caller, version), modern)
            if method in self._reads:
                try:
                    return self._complete(self._reads[method](params, caller), modern)
                except CatalogError as err:
                    raise JsonRpcError(err.code, err.message, err.data) from None
            raise JsonRpcError(
                METHOD_NOT_FOUND, f"method not found: {method}", status=404 if modern else 200
            )
        except JsonRpcError as err:
            if handling_status is not None:
                err.status = handling_status
            raise

    @staticmethod
    def _complete(result: dict[str, Any], modern: bool) -> dict[str, Any]:
        # a CreateTaskResult already says "task" (waygate.mcp.tasks)
        return {"resultType": "complete", **result} if modern else result

    @staticmethod
    def _initialize(params: dict) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        return {
            "protocolVersion": version,
            # 2025-11-25 had tasks in core (experimental); the extension replaced them
            "capabilities": (
                {**CAPABILITIES, "tasks": LEGACY_CAPABILITY}
                if version == LEGACY_VERSION
                else CAPABILITIES
            ),
            "serverInfo": SERVER_INFO,
            "instructions": INSTRUCTIONS,
        }

    def tools(self, caller: Caller) -> list[dict[str, Any]]:
        plugins = self._plugins()
        listed = []
        for name in self.commands.available(caller):
            command = plugins.commands[name]
            if name == EXECUTION_TOOL["name"]:
                continue
            tool: dict[str, Any] = {
                "name": name,
                "title": command.title or name,
                "description": command.description,
                "inputSchema": json_schema(command.params),
            }
            held = self.commands.needs_approval(command)
            if command.output_schema and not held:  # a held call answers with its ticket
                tool["outputSchema"] = dict(command.output_schema)
            if command.annotations:
                tool["annotations"] = dict(command.annotations)
            if held:
                tool["description"] = f"{command.description} {APPROVAL_NOTE}".strip()
                tool["_meta"] = {META_APPROVAL: True}
            listed.append(tool)
        return [*listed, EXECUTION_TOOL]

    def call_tool(
        self, params: dict, caller: Caller, version: str = HEADERLESS_VERSION
    ) -> dict[str, Any]:
        inv = self._resolve_tool(params, caller)
        if isinstance(inv, dict):
            return inv
        with tracing.continue_meta(params.get("_meta")):  # the caller's trace, if it sent one
            if self._as_task(params, inv, version):
                return self._create_task(params, inv, caller, version)
            return _present(inv.action, self.commands.run(inv, caller, Mode.MCP))

    # -- tasks (waygate.mcp.tasks) -------------------------------------------------------------

    def _as_task(self, params: dict, inv: Invocation, version: str) -> bool:
        """Whether this call is answered with a task: under 2026-07-28 when the client
        declares the extension and the server wants one (held for approval, or a command
        with task support); under 2025-11-25 when the client asks (``params.task``) for a
        tool that supports it. A tool that is only run as a task refuses other calls."""
        if version in MODERN_VERSIONS:
            if declares_extension(params.get("_meta")):
                return self.tasks.wanted(inv)
            if inv.command.task_support == "required":
                err = missing_extension()
                raise JsonRpcError(err.code, err.message, err.data)
            return False
        if version != LEGACY_VERSION:
            return False  # no tasks before 2025-11-25
        support = self.tasks.support(inv.command)
        asked = isinstance(params.get("task"), dict)
        if asked and support == "forbidden":
            raise JsonRpcError(METHOD_NOT_FOUND, f"{inv.action} cannot be called as a task")
        if not asked and support == "required":
            raise JsonRpcError(METHOD_NOT_FOUND, f"{inv.action} can only be called as a task")
        return asked

    def _task_call(self, params: dict, version: str) -> bool:
        """Whether a tools/call is a matter for tasks (answered with a task, or refused for
        want of one), so not streamed: ``_as_task`` decides."""
        if version not in MODERN_VERSIONS and version != LEGACY_VERSION:
            return False
        command = self._plugins().commands.get(params.get("name"))
        if command is None:
            return False
        if command.task_support == "required":
            return True
        if version == LEGACY_VERSION:
            return isinstance(params.get("task"), dict)
        return declares_extension(params.get("_meta")) and (
            self.commands.needs_approval(command) or command.task_support != "forbidden"
        )

    def _create_task(
        self, params: dict, inv: Invocation, caller: Caller, version: str
    ) -> dict[str, Any]:
        """Accept the call as a task (it may run up to the longest tool timeout, or what
        the client asked for) and answer with the task."""
        meta = params.get("_meta")
        if not (isinstance(meta, dict) and META_TIMEOUT in meta):
            inv = replace(inv, timeout=self.tool_timeout_max)
        task = self.tasks.create(inv, caller)
        if version == LEGACY_VERSION:
            return {
                "task": self.tasks.view(task, legacy=True),
                "_meta": {
                    IMMEDIATE_RESPONSE: f"{inv.action} runs as task {inv.command_id}"
                    " (poll tasks/get; tasks/result gives its result)."
                },
            }
        return {"resultType": "task", **self.tasks.view(task, legacy=False)}

    def _task_method(
        self, method: str, params: dict, caller: Caller, version: str
    ) -> dict[str, Any]:
        modern = version in MODERN_VERSIONS
        try:
            if modern and method in MODERN_METHODS:
                if not declares_extension(params.get("_meta")):
                    raise missing_extension()
                if method == "tasks/get":
                    return self._complete(self.tasks.get(params, caller, legacy=False), True)
                if method == "tasks/update":
                    return self._complete(self.tasks.update(params, caller), True)
                return self._complete(self.tasks.cancel(params, caller, legacy=False), True)
            if version == LEGACY_VERSION and method in LEGACY_METHODS:
                if method == "tasks/get":
                    return self.tasks.get(params, caller, legacy=True)
                if method == "tasks/list":
                    return self.tasks.list(params, caller)
                if method == "tasks/result":
                    return self.tasks.result(params, caller)
                return self.tasks.cancel(params, caller, legacy=True)
        except TaskError as err:
            raise JsonRpcError(err.code, err.message, err.data) from None
        raise JsonRpcError(
            METHOD_NOT_FOUND, f"method not found: {method}", status=404 if modern else 200
        )

    def _stream_task_result(self, params: dict, caller: Caller, request_id: Any) -> Reply:
        """2025-11-25 ``tasks/result`` for a client that takes a stream:
        ``notifications/tasks/status`` as the task changes, then the result."""
        try:
            self.tasks.find(params, caller)  # a task the caller cannot see is refused at once
        except TaskError as err:
            return Reply(200, JsonRpcError(err.code, err.message, err.data).body(request_id))
        return Reply(200, stream=TaskStream(self.tasks, params, caller, request_id))

    def task_notifications(
        self, message: Any, body: dict[str, Any] | None, caller: Caller
    ) -> Iterator[dict[str, Any]] | None:
        """For a transport that can push (stdio): after a 2025-11-25 tools/call answered
        with a task, its ``notifications/tasks/status`` until it ends (None: nothing to
        push). Under 2026-07-28 task notifications travel only on subscriptions/listen."""
        result = (body or {}).get("result")
        task = result.get("task") if isinstance(result, dict) else None
        if not isinstance(task, dict) or not isinstance(message, dict):
            return None
        if message.get("method") != "tools/call":
            return None
        return self.tasks.notifications(
            {"taskId": task.get("taskId")}, caller, told=str(task.get("status"))
        )

    def _declare_task_support(self, tools: list[dict[str, Any]]) -> None:
        """2025-11-25 tools/list: each tool's ``execution.taskSupport``."""
        commands = self._plugins().commands
        for tool in tools:
            command = commands.get(tool["name"])
            if command is not None and tool["name"] != EXECUTION_TOOL["name"]:
                tool["execution"] = {"taskSupport": self.tasks.support(command)}

    def _resolve_tool(self, params: dict, caller: Caller) -> Invocation | dict[str, Any]:
        """The invocation, or the isError result that stands for it."""
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str):
            raise JsonRpcError(INVALID_PARAMS, "tools/call needs a tool name", status=400)
        if name == EXECUTION_TOOL["name"]:  # built in: answered here, nothing to run
            if not isinstance(arguments, Mapping):
                return _error_result(f"arguments of {name} must be an object")
            return self._execution_state(arguments, caller)
        try:  # arguments that are not an object are judged after the name, by the schema
            return self.commands.resolve(name, arguments, caller, timeout=self._timeout(params))
        except (UnknownCommand, OutOfScope):  # alike: a scope hides what it does not grant
            # a protocol error, not a result: the client named no tool it may call
            raise JsonRpcError(INVALID_PARAMS, f"Unknown tool: {name[:128]}") from None
        except WaygateError as err:
            return _error_result(
                f"Invalid arguments for {name}: {err.message}: "
                + json.dumps(err.details.get("params", {}))
            )

    def _stream_tool(self, params: dict, caller: Caller, request_id: Any, modern: bool) -> Reply:
        """A tool call that asked for progress: streamed once it runs; a call refused before
        it runs (invalid arguments) is answered at once, as JSON."""
        try:
            inv = self._resolve_tool(params, caller)
        except JsonRpcError as err:
            if not modern:  # handshake-era errors met while handling travel with HTTP 200
                err.status = 200
            raise

        def response(result: dict[str, Any]) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": request_id, "result": self._complete(result, modern)}

        if isinstance(inv, dict):
            return Reply(200, response(inv))
        if self.commands.needs_approval(inv.command):  # held, not run: nothing to stream
            return Reply(
                200, response(_present(inv.action, self.commands.run(inv, caller, Mode.MCP)))
            )
        token = _progress_token(params)
        with tracing.continue_meta(params.get("_meta")):  # the command starts here
            stream = ToolStream(self.commands, inv, caller, token, response)
        return Reply(200, stream=stream)

    def _execution_state(self, arguments: Mapping, caller: Caller) -> dict[str, Any]:
        command_id = arguments.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            return _error_result("command_id must be a non-empty string")
        outcome = self.status.lookup(command_id[:100], caller)  # only the caller's own
        if outcome is None:
            return _error_result(f"no execution {command_id[:100]!r} of yours")
        state = outcome.as_response()
        return _state_result(json.dumps(state, default=str), state)

    def _timeout(self, params: dict) -> int:
        """The configured tool timeout, or another where the client asks for one (at most
        the configured maximum); a number that is not finite (1e999 reads as infinity) is
        no number of seconds: invalid params."""
        meta = params.get("_meta")
        asked = meta.get(META_TIMEOUT) if isinstance(meta, dict) else None
        if isinstance(asked, float) and not math.isfinite(asked):
            raise JsonRpcError(
                INVALID_PARAMS,
                f'params._meta["{META_TIMEOUT}"] must be a finite number of seconds'
                f" (1 to {self.tool_timeout_max})",
            )
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 1:
            return int(min(asked, self.tool_timeout_max))
        return self.tool_timeout


def _present(name: str, outcome: Outcome) -> dict[str, Any]:
    if outcome.status is ExecutionStatus.AWAITING_APPROVAL:
        return _state_result(
            f"{name} needs approval before it runs; it is stored as execution"
            f" {outcome.command_id}. Call {EXECUTION_TOOL['name']} with that command_id"
            " later for its result.",
            outcome.as_response(),
        )
    details = outcome.cause.details if outcome.cause is not None else {}
    if "upstream" in details and "content" in details:  # an upstream tool's own isError result
        relayed = {"content": details["content"], "isError": True}
        if "structuredContent" in details:
            relayed["structuredContent"] = details["structuredContent"]
        return relayed
    if outcome.status is not ExecutionStatus.SUCCESS:
        return _error_result(f"{name} {outcome.status}: {outcome.error}")
    return tool_result(outcome.result)


def _progress_token(params: dict) -> str | int | None:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, (str, int)) and not isinstance(token, bool) else None


class ToolStream:
    """A tool call whose progress the client asked for (``_meta.progressToken``) and can take
    as a stream: ``notifications/progress`` as the handler reports, then the response.

    Started at once, so that a full pool or worker is still refused with 503 before anything
    is streamed. It holds one admission slot (like a synchronous call) and its request thread
    until the response is sent; if the client goes away first, the call is still finished and
    recorded (``close``)."""

    POLL_S = 0.05  # how soon the end of the call is noticed
    KEEPALIVE_S = 15.0  # a comment line when nothing was sent for this long

    def __init__(
        self,
        commands: CommandService,
        inv: Invocation,
        caller: Caller,
        token: str | int | None,
        response: Callable[[dict[str, Any]], dict[str, Any]],
    ):
        self._commands, self._token, self._response = commands, token, response
        self._reports: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._slot = commands.admission.slot(caller.key_id)
        self._outcome: Outcome | None = None
        self._slot.__enter__()
        try:
            self._run = commands.start(inv, caller, Mode.MCP, on_progress=self._reports.put)
        except BaseException:
            self._slot.__exit__(None, None, None)
            raise

    def messages(self) -> Iterator[dict[str, Any] | None]:
        """JSON-RPC messages to send, in order; None asks for a keep-alive comment."""
        run, quiet_since = self._run, time.monotonic()
        while not run.job.done() and run.ctx.remaining() > 0:
            try:
                report = self._reports.get(timeout=self.POLL_S)
            except queue.Empty:
                if time.monotonic() - quiet_since >= self.KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield None
                continue
            quiet_since = time.monotonic()
            yield self._notification(report)
        while not self._reports.empty():
            yield self._notification(self._reports.get_nowait())
        yield self._response(_present(run.inv.action, self._finish()))

    def close(self) -> None:
        """Called when the response ends, sent or not: the call is finished and recorded."""
        self._finish()

    def _finish(self) -> Outcome:
        if self._outcome is None:
            try:
                self._outcome = self._commands.finish(self._run)
            finally:
                self._slot.__exit__(None, None, None)
        return self._outcome

    def _notification(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": self._token, **report},
        }


def tool_result(result: Any) -> dict[str, Any]:
    """A handler's result as a tools/call result: content blocks as they are (with the
    structured value beside them, if any); plain JSON as text plus structuredContent."""
    if isinstance(result, Content) or (
        isinstance(result, list) and result and all(isinstance(b, Content) for b in result)
    ):
        result = RichResult(result)
    if isinstance(result, RichResult):
        rendered = {"content": result["content"], "isError": False}
        if "structured" in result:
            rendered["structuredContent"] = result["structured"]
        return rendered
    structured = result if isinstance(result, dict) else {"result": result}
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": False,
    }


def _state_result(text: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": state,
        "isError": False,
    }


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
