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

import contextvars
import json
import math
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__, tracing
from ..approvals.policy import APPROVAL_NOTE, META_APPROVAL
from ..commands import (
    Caller,
    CommandService,
    Invocation,
    MissingCapability,
    OutOfScope,
    UnknownCommand,
)
from ..errors import RateLimited, ServiceUnavailable, WaygateError
from ..idempotency import (
    Idempotency,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    Replay,
    check_key,
    fingerprint,
)
from ..jsonbody import BodyRefused
from ..outcomes import ExecutionStatus, Mode, Outcome
from ..plugins import PluginSet
from ..schemas import json_schema
from ..sdk import Content, InputRequired, RichResult
from ..status import Status
from .catalog import RESOURCE_NOT_FOUND, Catalog, CatalogError
from .headers import name_mismatch, param_mismatch
from .input import (
    MAX_ANSWERS,
    Binding,
    InputChannel,
    InvalidInput,
    RequestStates,
    input_responses,
)
from .notify import LISTEN, ChangeFeed, ListenLimits, ListenStream, advertise, honored_filter
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
# The one list of served revisions: the unsupported-version error, server/discover's
# supportedVersions and initialize's choice all read it (a dual-era server lists both eras, as
# the 2026-07-28 versioning page's example does; modern clients pick the modern ones).
SUPPORTED_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
# A request without MCP-Protocol-Version comes from a 2025-03-26 client (the header came later).
HEADERLESS_VERSION = "2025-03-26"
# JSON-RPC batches (an array of messages): part of 2025-03-26 only (2025-06-18 removed them).
BATCH_VERSIONS = ("2025-03-26",)
MAX_BATCH = 20  # messages in one batch, each checked and answered as if it came alone
# when the batch being answered started: its tool calls' deadlines count from it, so that a
# batch holds its request thread no longer than its slowest call could alone
_batch_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "waygate_mcp_batch_started", default=None
)
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
# A client may ask for a shorter tool timeout (seconds) in tools/call's params._meta.
META_TIMEOUT = "waygate/timeout"
# A tools/call with this key in params._meta runs once per caller and key; a retry gets the
# first call's result, its _meta marked META_REPLAYED (waygate.idempotency).
META_IDEMPOTENCY_KEY = "waygate/idempotencyKey"
META_REPLAYED = "waygate/idempotentReplayed"

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
# What every transport and revision has; the change notifications each one really has are
# laid over it per request (notify.advertise: subscriptions/listen, stdio's push).
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
# 2026-07-28 results that MUST carry caching hints (server/utilities/caching). What a key sees
# depends on its scope, so none may be shared across callers ("private"); plugins change on a
# reload at any time and resources are read live, so none is fresh for long (0 ms).
CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
CACHE_HINTS = {"ttlMs": 0, "cacheScope": "private"}


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
    body: dict[str, Any] | list[dict[str, Any]] | None = None  # a list answers a batch
    retry_after: int | None = None  # seconds, when the server is too busy to answer now
    stream: ToolStream | ListenStream | None = None  # instead of a body: messages as they come


@dataclass(frozen=True)
class Routing:
    """The request's routing headers (HTTP only; stdio has none)."""

    version: str | None = None
    method: str | None = None
    name: str | None = None
    streams: bool = False  # the client accepts text/event-stream
    params: tuple[tuple[str, str], ...] = ()  # the Mcp-Param-* headers, as sent


class McpServer:
    def __init__(
        self,
        commands: CommandService,
        plugins: Callable[[], PluginSet],
        tool_timeout: int = 30,
        tool_timeout_max: int = 300,
        idempotency: Idempotency | None = None,
        icon: str = "",
        listen_limits: ListenLimits | None = None,
        task_ttl_ms: int = 7 * 86_400_000,
    ):
        # initialize and server/discover name the server with its icon (WAYGATE_MCP_ICON);
        # every other 2026-07-28 result with name and version only
        self.server_info = {**SERVER_INFO, "icons": [{"src": icon}]} if icon else SERVER_INFO
        self.commands = commands
        self.status = Status(commands)
        self.idempotency = idempotency or Idempotency(
            commands.audit.storage, self.status, admission=commands.admission
        )
        self._plugins = plugins
        self.tool_timeout = tool_timeout  # seconds, unless the client asks for less
        self.tool_timeout_max = tool_timeout_max
        self.catalog = Catalog(commands, plugins, tool_timeout)
        self.states = RequestStates(commands.audit.storage)  # input requests' requestState
        self.listeners = ChangeFeed(self, listen_limits)  # subscriptions/listen (notify.py)
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
        if isinstance(message, list):
            return self._batch(message, caller, routing, http)
        request_id = message.get("id") if isinstance(message, dict) else None
        try:
            method = self._check_shape(message)
            version = routing.version
            if version is None and not http:
                meta = (message.get("params") or {}).get("_meta") or {}
                version = meta.get(META_VERSION) if isinstance(meta, dict) else None
            version = version or HEADERLESS_VERSION
            if version not in SUPPORTED_VERSIONS:
                raise _unsupported(version)
            modern = version in MODERN_VERSIONS
            if method is None or "id" not in message:  # a notification, or a client's response
                return Reply(202)
            if modern:
                self._check_modern(message, method, version, routing, http)
            params = message.get("params") or {}
            if method == LISTEN and modern and self.listeners.on:
                return Reply(200, stream=self._listen(params, caller, request_id, routing, http))
            if modern and http and method == "tools/call":
                self._check_param_headers(params, caller, routing)
            if (
                method == "tools/call"
                and routing.streams
                and _progress_token(params) is not None
                and not _idempotent(params)  # answered as JSON, to be replayed alike
                and not self._task_call(params, version)
            ):
                return self._stream_tool(params, caller, request_id, modern)
            if method == "tasks/result" and version == LEGACY_VERSION and routing.streams:
                return self._stream_task_result(params, caller, request_id)
            result = self._dispatch(method, params, caller, modern, version)
            if method in ("initialize", "server/discover"):
                result = advertise(result, modern, http, self.listeners.on)
            return Reply(200, {"jsonrpc": "2.0", "id": request_id, "result": result})
        except JsonRpcError as err:
            return Reply(err.status, err.body(request_id))
        except (ServiceUnavailable, RateLimited, IdempotencyKeyInProgress) as err:  # too busy
            # now (503), this key has its share of the worker's command slots (429), or the
            # first call with its idempotency key still runs (409): retry later
            busy = JsonRpcError(
                INTERNAL_ERROR if err.status >= 500 else INVALID_REQUEST,
                err.message,
                {"code": err.code, "retry_after_s": err.retry_after, **err.details},
            )
            return Reply(err.status, busy.body(request_id), retry_after=err.retry_after)

    def _batch(self, messages: list, caller: Caller, routing: Routing, http: bool) -> Reply:
        """A JSON-RPC batch from a 2025-03-26 client: each message handled as if it came alone
        (same checks, same errors; no streaming), in order; the answers as one array, or 202
        when none of them is a request. Later revisions removed batches: refused there."""
        version = routing.version or HEADERLESS_VERSION
        if not http:  # stdio has no header: a batch is 2025-03-26's unless its messages say
            named = {_meta_version(m) for m in messages} - {None}
            version = named.pop() if len(named) == 1 else version if not named else "several"
        try:
            if version not in SUPPORTED_VERSIONS and version != "several":
                raise _unsupported(version)
            if version not in BATCH_VERSIONS:  # "several" revisions in one batch, too
                raise JsonRpcError(
                    INVALID_REQUEST,
                    f"JSON-RPC batches are not part of MCP {version} (only of"
                    f" {', '.join(BATCH_VERSIONS)}): send one message per request",
                )
            if not messages or len(messages) > MAX_BATCH:
                raise JsonRpcError(
                    INVALID_REQUEST,
                    f"a batch holds 1 to {MAX_BATCH} messages; got {len(messages)}",
                    {"max": MAX_BATCH, "received": len(messages)},
                )
        except JsonRpcError as err:
            return Reply(err.status, err.body())
        single = Routing(version=routing.version)  # no routing headers, no stream per item
        answers = []
        started = _batch_started.set(time.monotonic())
        try:
            for message in messages:
                if isinstance(message, list):  # not in a batch either
                    answers.append(JsonRpcError(INVALID_REQUEST, "a batch inside a batch").body())
                    continue
                body = self.handle(message, caller, single, http).body
                if body is not None:
                    answers.append(body)
        finally:
            _batch_started.reset(started)
        return Reply(200, answers) if answers else Reply(202)

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def _check_shape(message: Any) -> str | None:
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
            if name_mismatch(method, params, routing.name):  # tools/call, prompts/get, read
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

    def _check_param_headers(self, params: dict, caller: Caller, routing: Routing) -> None:
        """A tool whose inputSchema marks arguments with ``x-mcp-header``: the client's
        ``Mcp-Param-*`` headers must match them (a tool this key cannot see is left to the
        unknown-tool error, which says nothing about its schema)."""
        name = params.get("name")
        command = self._plugins().commands.get(name) if isinstance(name, str) else None
        if command is None or name == EXECUTION_TOOL["name"]:
            return
        if not caller.scope.permits(
            name, self._plugins().command_plugin[name], command.annotations
        ):
            return
        problem = param_mismatch(
            json_schema(command.params), params.get("arguments"), routing.params
        )
        if problem is not None:
            raise JsonRpcError(HEADER_MISMATCH, problem, {"headers": ["Mcp-Param"]}, status=400)

    # -- methods -------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, params: dict, caller: Caller, modern: bool, version: str
    ) -> dict[str, Any]:
        # Handshake-era errors met while handling a request travel with HTTP 200.
        handling_status = None if modern else 200
        try:
            if method == "initialize" and not modern:
                return {**self._initialize(params), "serverInfo": self.server_info}
            if method == "server/discover" and modern:
                return self._complete(
                    {
                        "supportedVersions": list(SUPPORTED_VERSIONS),
                        "capabilities": {**CAPABILITIES, "extensions": {EXTENSION: {}}},
                        "instructions": INSTRUCTIONS,
                        "_meta": {META_SERVER_INFO: self.server_info},
                    },
                    modern,
                    cacheable=True,
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
                return self._complete(listed, modern, cacheable=True)
            if method == "tools/call":
                return self._complete(self.call_tool(params, caller, version), modern)
            if method in self._reads:
                try:
                    if method == "prompts/get" and modern:  # its render may ask the caller
                        inputs = self.input_channel(
                            "prompts/get", str(params.get("name")), params, caller
                        )
                        read = self.catalog.get_prompt(params, caller, inputs)
                    else:
                        read = self._reads[method](params, caller)
                except CatalogError as err:
                    code = err.code
                    if code == RESOURCE_NOT_FOUND and modern:  # 2026-07-28: Invalid Params
                        code = INVALID_PARAMS
                    raise JsonRpcError(code, err.message, err.data) from None
                return self._complete(read, modern, cacheable=method in CACHEABLE)
            raise JsonRpcError(
                METHOD_NOT_FOUND, f"method not found: {method}", status=404 if modern else 200
            )
        except JsonRpcError as err:
            if handling_status is not None:
                err.status = handling_status
            raise

    @staticmethod
    def _complete(result: dict[str, Any], modern: bool, cacheable: bool = False) -> dict[str, Any]:
        """A 2026-07-28 result: ``resultType``, the server's identity in ``_meta`` (every
        result SHOULD carry it: basic/index, "Per-response protocol fields") and, for the
        cacheable methods (CACHEABLE), the caching hints; a handshake-era result as it is."""
        if not modern:
            return result
        meta = result.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.setdefault(META_SERVER_INFO, SERVER_INFO)
        hints = CACHE_HINTS if cacheable else {}
        # an input_required result says so itself
        kind = result.get("resultType", "complete")
        return {**result, **hints, "resultType": kind, "_meta": meta}

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
            if command.icons:
                tool["icons"] = [icon.as_dict() for icon in command.icons]
            if held:
                tool["description"] = f"{command.description} {APPROVAL_NOTE}".strip()
                tool["_meta"] = {META_APPROVAL: True}
            listed.append(tool)
        return [*listed, EXECUTION_TOOL]

    def call_tool(
        self, params: dict, caller: Caller, version: str = HEADERLESS_VERSION
    ) -> dict[str, Any]:
        modern = version in MODERN_VERSIONS
        if _idempotent(params):
            return self._call_once(params, caller, version)
        inv = self._resolve_tool(params, caller)
        if isinstance(inv, dict):
            return inv
        with tracing.continue_meta(params.get("_meta")):  # the caller's trace, if it sent one
            if self._as_task(params, inv, version):  # asks through the task, not in rounds
                if inv.command.task_questions and modern:  # ... but for what it asks first
                    inv = self._with_inputs(inv, params, caller, modern)
                    try:
                        inv.inputs.gather(dict(inv.command.task_questions))
                    except InputRequired as asked:
                        return self._not_yet_a_task(asked)
                return self._create_task(params, inv, caller, version)
            inv = self._with_inputs(inv, params, caller, modern)
            return _present(inv.action, self.commands.run(inv, caller, Mode.MCP))

    @staticmethod
    def _not_yet_a_task(asked: InputRequired) -> dict[str, Any]:
        """A task's questions not all answered yet: the input_required round (no task, no
        execution yet), or -32021 for a question the client cannot answer."""
        if asked.result is not None:
            return dict(asked.result)
        raise JsonRpcError(
            MISSING_CAPABILITY,
            "the tool asks its caller for input its client did not declare it can give",
            {"requiredCapabilities": dict(asked.missing or {})},
            status=400,
        )

    def _call_once(self, params: dict, caller: Caller, version: str) -> dict[str, Any]:
        """A tools/call with an idempotency key: run once for the caller and key; a retry
        gets the first result back (a held call's state now), marked replayed. A call that
        runs nothing (invalid arguments, the execution tool) claims no key. Each round of a
        call that asks for input is its own request under the key (its answers name it), so
        answering a question is not mistaken for a retry of the round that asked."""
        meta = params["_meta"]
        name = params.get("name")
        modern = version in MODERN_VERSIONS
        # a keyed call is answered in the call (a held one with its command_id), never as a
        # task: a task is found again by its id. A command that runs only as a task cannot.
        command = self._plugins().commands.get(name) if isinstance(name, str) else None
        if (
            command is not None
            and command.task_support == "required"
            and self._task_call(params, version)
        ):
            raise JsonRpcError(
                INVALID_PARAMS,
                f"{name[:128]} runs only as a task, and a task call takes no"
                f' "{META_IDEMPOTENCY_KEY}": tasks/get finds the task again by its id',
            )
        try:
            key = check_key(meta[META_IDEMPOTENCY_KEY], f'params._meta["{META_IDEMPOTENCY_KEY}"]')
            answers = [params.get("requestState"), params.get("inputResponses")]
            if modern and answers != [None, None]:
                key = f"{key}#round-{fingerprint('answers', answers)[:32]}"
            request = {
                "name": name,
                "arguments": params.get("arguments"),
                "timeout": meta.get(META_TIMEOUT),
            }
            with tracing.continue_meta(meta):
                done = self.idempotency.perform(
                    key,
                    caller,
                    fingerprint("mcp", request),
                    resolve=lambda: self._with_inputs(
                        _invocation(self._resolve_tool(params, caller)), params, caller, modern
                    ),
                    run=lambda inv: self.commands.run(inv, caller, Mode.MCP),
                    present=lambda outcome: _present(str(name), outcome),
                )
        except _NotRun as answered:
            return answered.result
        except (InvalidIdempotencyKey, IdempotencyKeyReused) as err:
            raise JsonRpcError(
                INVALID_PARAMS, err.message, {"code": err.code, **err.details}
            ) from None
        if not isinstance(done, Replay):
            return _present(str(name), done)
        result = _present(str(name), done.current) if done.current else done.answer
        return {**result, "_meta": {**result.get("_meta", {}), META_REPLAYED: True}}

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
        timeout = self._timeout(params)
        batch_started = _batch_started.get()
        if batch_started is not None:  # run one after another, timed from the batch's start
            left = batch_started + timeout - time.monotonic()
            if left <= 0:
                return _error_result(
                    f"{name[:128]} was not run: in a batch, a call's {timeout} s count from the"
                    " batch's start, and the calls before it took them; send it again"
                )
            timeout = min(timeout, math.ceil(left))
        try:  # arguments that are not an object are judged after the name, by the schema
            return self.commands.resolve(name, arguments, caller, timeout=timeout)
        except (UnknownCommand, OutOfScope):  # alike: a scope hides what it does not grant
            # a protocol error, not a result: the client named no tool it may call
            raise JsonRpcError(INVALID_PARAMS, f"Unknown tool: {name[:128]}") from None
        except WaygateError as err:
            return _error_result(
                f"Invalid arguments for {name}: {err.message}: "
                + json.dumps(err.details.get("params", {}))
            )

    def _with_inputs(self, inv: Invocation, params: dict, caller: Caller, modern: bool) -> Any:
        """The invocation with its caller's answers: a 2026-07-28 caller can be asked for
        input (``waygate.mcp.input``); a 2025-era one cannot (a handler that asks is refused
        with a message saying so). The requestState is verified before anything runs."""
        if not modern:
            return inv
        return replace(inv, inputs=self.input_channel("tools/call", inv.action, params, caller))

    def input_channel(self, method: str, target: str, params: dict, caller: Caller) -> InputChannel:
        """One round's answers (the requestState's and the inputResponses') and what the
        client can answer, for a ``tools/call`` or ``prompts/get`` of a 2026-07-28 caller."""
        arguments = params.get("arguments") or {}
        binding = Binding.of(method, target, arguments, caller.identity)
        try:
            answers, round_no = self.states.open(params.get("requestState"), binding)
            answers.update(input_responses(params))
        except InvalidInput as err:
            raise JsonRpcError(INVALID_PARAMS, err.message, err.data, status=400) from None
        if len(answers) > MAX_ANSWERS:
            raise JsonRpcError(INVALID_PARAMS, f"a call carries at most {MAX_ANSWERS} answers")
        meta = params.get("_meta") or {}
        capabilities = meta.get(META_CLIENT_CAPABILITIES) or {}
        return InputChannel(self.states, binding, capabilities, answers, round_no)

    def _stream_tool(self, params: dict, caller: Caller, request_id: Any, modern: bool) -> Reply:
        """A tool call that asked for progress: streamed once it runs; a call refused before
        it runs (invalid arguments) is answered at once, as JSON."""
        try:
            inv = self._resolve_tool(params, caller)
        except JsonRpcError as err:
            if not modern:  # handshake-era errors met while handling travel with HTTP 200
                err.status = 200
            raise

        def response(result: dict[str, Any] | JsonRpcError) -> dict[str, Any]:
            if isinstance(result, JsonRpcError):
                return result.body(request_id)
            return {"jsonrpc": "2.0", "id": request_id, "result": self._complete(result, modern)}

        if isinstance(inv, dict):
            return Reply(200, response(inv))
        if self.commands.needs_approval(inv.command):  # held, not run: nothing to stream
            return Reply(
                200, response(_present(inv.action, self.commands.run(inv, caller, Mode.MCP)))
            )
        inv = self._with_inputs(inv, params, caller, modern)
        token = _progress_token(params)
        with tracing.continue_meta(params.get("_meta")):  # the command starts here
            stream = ToolStream(self.commands, inv, caller, token, response)
        return Reply(200, stream=stream)

    def _listen(
        self, params: dict, caller: Caller, request_id: Any, routing: Routing, http: bool
    ) -> ListenStream:
        """A subscriptions/listen: its stream (acknowledged, then changes as they come)."""
        if http and not routing.streams:
            raise JsonRpcError(
                INVALID_REQUEST,
                "subscriptions/listen answers with an event stream: accept text/event-stream",
                status=406,
            )
        try:
            honored = honored_filter(params)
        except ValueError as err:
            raise JsonRpcError(INVALID_PARAMS, str(err), status=400) from None
        return ListenStream(self.listeners, caller, request_id, honored)

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


def _meta_version(message: Any) -> str | None:
    """The revision a message names in ``params._meta`` (stdio's only way to say it)."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(META_VERSION) if isinstance(meta, dict) else None
    return str(version)[:40] if version is not None else None


def _unsupported(version: Any) -> JsonRpcError:
    return JsonRpcError(
        UNSUPPORTED_VERSION,
        f"unsupported protocol version {str(version)[:40]!r}",
        {"supported": list(SUPPORTED_VERSIONS), "requested": str(version)[:40]},
    )


def _present(name: str, outcome: Outcome) -> dict[str, Any]:
    if outcome.status is ExecutionStatus.INPUT_REQUIRED:  # the handler asked its caller
        return dict(outcome.result)
    if isinstance(outcome.cause, MissingCapability):  # ... for what its client cannot give
        raise JsonRpcError(
            MISSING_CAPABILITY,
            outcome.cause.message,
            {"requiredCapabilities": outcome.cause.details.get("requiredCapabilities", {})},
            status=400,
        )
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


class _NotRun(Exception):
    """A tools/call answered without running anything (invalid arguments, the execution
    tool): its result, claiming no idempotency key."""

    def __init__(self, result: dict[str, Any]):
        super().__init__("answered without running")
        self.result = result


def _invocation(resolved: Invocation | dict[str, Any]) -> Invocation:
    if isinstance(resolved, dict):
        raise _NotRun(resolved)
    return resolved


def _idempotent(params: dict) -> bool:
    meta = params.get("_meta")
    return isinstance(meta, dict) and META_IDEMPOTENCY_KEY in meta


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
        response: Callable[[dict[str, Any] | JsonRpcError], dict[str, Any]],
    ):
        self._commands, self._token, self._response = commands, token, response
        self._reports: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._slot = commands.admission.slot(caller.share)
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
        try:
            presented: dict[str, Any] | JsonRpcError = _present(run.inv.action, self._finish())
        except JsonRpcError as err:  # a protocol error met while running (-32021)
            presented = err
        yield self._response(presented)

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
