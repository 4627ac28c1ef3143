"""The Model Context Protocol: plugin commands as MCP tools, over JSON-RPC 2.0.

Transport-free: ``waygate.web.mcp`` carries it over HTTP (Streamable HTTP, stateless, JSON
responses only) and ``waygate.mcp_stdio`` over stdio. The wire contract spans two protocol
eras: the handshake era (``initialize`` then requests carrying
``MCP-Protocol-Version``) and the 2026-07-28 revision (no handshake; every request repeats its
envelope in ``params._meta`` and routing headers). Being stateless, the server remembers no
handshake: each request is judged by the revision it names.

Tool calls go through the same command service as ``POST /mcp/execute`` (pool, timeout, audit
log with mode ``mcp``, statistics, metrics). Execution problems are results with
``isError: true``, never protocol errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__
from .commands import Caller, CommandService, OutOfScope, UnknownCommand
from .errors import ServiceUnavailable, WaygateError
from .outcomes import ExecutionStatus, Mode
from .plugins import PluginSet
from .schemas import json_schema

HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
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
TOOLS_CAPABILITY = {"tools": {"listChanged": False}}


class JsonRpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.data, self.status = code, message, data, status

    def body(self, request_id: Any = None) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": request_id, "error": error}


@dataclass(frozen=True)
class Reply:
    """What to send back: an HTTP status and a JSON-RPC body (None: nothing, e.g. 202)."""

    status: int
    body: dict[str, Any] | None = None
    retry_after: int | None = None  # seconds, when the server is too busy to answer now


@dataclass(frozen=True)
class Routing:
    """The request's routing headers (HTTP only; stdio has none)."""

    version: str | None = None
    method: str | None = None
    name: str | None = None


class McpServer:
    def __init__(
        self,
        commands: CommandService,
        plugins: Callable[[], PluginSet],
        tool_timeout: int = 30,
        tool_timeout_max: int = 300,
    ):
        self.commands = commands
        self._plugins = plugins
        self.tool_timeout = tool_timeout  # seconds, unless the client asks for less
        self.tool_timeout_max = tool_timeout_max

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
            modern = version not in HANDSHAKE_VERSIONS
            if method is None or "id" not in message:  # a notification, or a client's response
                return Reply(202)
            if modern:
                self._check_modern(message, method, version, routing, http)
            result = self._dispatch(method, message.get("params") or {}, caller, modern, version)
            return Reply(200, {"jsonrpc": "2.0", "id": request_id, "result": result})
        except JsonRpcError as err:
            return Reply(err.status, err.body(request_id))
        except ServiceUnavailable as err:  # too busy to run a tool now: retry later
            busy = JsonRpcError(
                INTERNAL_ERROR, err.message, {"code": err.code, "retry_after_s": err.retry_after}
            )
            return Reply(503, busy.body(request_id), retry_after=err.retry_after)

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
        """The 2026-07-28 checks, in the contract's order: envelope, headers, version."""
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
            if mismatches:
                raise JsonRpcError(
                    HEADER_MISMATCH,
                    "routing header(s) disagree with the body: " + ", ".join(mismatches),
                    {"headers": mismatches},
                    status=400,
                )
        if version not in MODERN_VERSIONS:
            raise JsonRpcError(
                UNSUPPORTED_VERSION,
                f"unsupported protocol version {version!r}",
                {"supported": list(MODERN_VERSIONS), "requested": version},
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
                        "capabilities": TOOLS_CAPABILITY,
                        "instructions": INSTRUCTIONS,
                        "ttlMs": 0,
                        "cacheScope": "private",
                        "_meta": {META_SERVER_INFO: SERVER_INFO},
                    },
                    modern,
                )
            if method == "ping":
                return self._complete({}, modern)
            if method == "tools/list":
                listed = {"tools": self.tools(caller)}
                if modern:
                    listed.update(ttlMs=0, cacheScope="private")
                return self._complete(listed, modern)
            if method == "tools/call":
                return self._complete(self.call_tool(params, caller), modern)
            raise JsonRpcError(
                METHOD_NOT_FOUND, f"method not found: {method}", status=404 if modern else 200
            )
        except JsonRpcError as err:
            if handling_status is not None:
                err.status = handling_status
            raise

    @staticmethod
    def _complete(result: dict[str, Any], modern: bool) -> dict[str, Any]:
        return {**result, "resultType": "complete"} if modern else result

    @staticmethod
    def _initialize(params: dict) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        return {
            "protocolVersion": version,
            "capabilities": TOOLS_CAPABILITY,
            "serverInfo": SERVER_INFO,
            "instructions": INSTRUCTIONS,
        }

    def tools(self, caller: Caller) -> list[dict[str, Any]]:
        plugins = self._plugins()
        listed = []
        for name in self.commands.available(caller):
            command = plugins.commands[name]
            tool: dict[str, Any] = {
                "name": name,
                "title": command.title or name,
                "description": command.description,
                "inputSchema": json_schema(command.params),
            }
            if command.output_schema:
                tool["outputSchema"] = dict(command.output_schema)
            if command.annotations:
                tool["annotations"] = dict(command.annotations)
            listed.append(tool)
        return listed

    def call_tool(self, params: dict, caller: Caller) -> dict[str, Any]:
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str):
            raise JsonRpcError(INVALID_PARAMS, "tools/call needs a tool name", status=400)
        if not isinstance(arguments, Mapping):
            return _error_result(f"arguments of {name} must be an object")
        try:
            inv = self.commands.resolve(
                name, dict(arguments), caller, timeout=self._timeout(params)
            )
        except (UnknownCommand, OutOfScope):  # alike: a scope hides what it does not grant
            available = ", ".join(self.commands.available(caller))
            return _error_result(f"Unknown tool: {name}. Available: {available}")
        except WaygateError as err:
            return _error_result(
                f"Invalid arguments for {name}: {err.message}: "
                + json.dumps(err.details.get("params", {}))
            )
        outcome = self.commands.run(inv, caller, Mode.MCP)
        if outcome.status is not ExecutionStatus.SUCCESS:
            return _error_result(f"{name} {outcome.status}: {outcome.error}")
        result = outcome.result
        structured = result if isinstance(result, dict) else {"result": result}
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        return {
            "content": [{"type": "text", "text": text}],
            "structuredContent": structured,
            "isError": False,
        }

    def _timeout(self, params: dict) -> int:
        """The configured tool timeout, or less where the client asks for less."""
        meta = params.get("_meta")
        asked = meta.get(META_TIMEOUT) if isinstance(meta, dict) else None
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 1:
            return min(int(asked), self.tool_timeout_max)
        return self.tool_timeout


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
