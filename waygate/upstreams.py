"""Upstream MCP servers behind the gate: any MCP server's tools as Waygate commands.

``WAYGATE_UPSTREAMS`` names a JSON file in the ``mcpServers`` format of Claude Desktop, Cursor
and VS Code::

    {"mcpServers": {
        "files": {"command": "npx", "args": ["@modelcontextprotocol/server-filesystem", "/srv"]},
        "remote": {"url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${REMOTE_TOKEN}"}}}}

``${VAR}`` anywhere in a string value is replaced by that environment variable, so secrets stay
out of the file. Each upstream becomes a plugin of the registry like any other (``/plugins``,
``/mcp/commands``, tools/list, the OpenAPI document) and each of its tools a command named
``<upstream>__<tool>`` (any character of the tool's name outside ``A-Za-z0-9_-`` becomes
``_``). Upstream names are letters and digits joined by single ``-`` or ``_``, so the first
``__`` of a command name always ends the upstream's name, and neither ever holds ``.``: the
qualified ``files.*`` names that upstream's tools and nothing else (``files__*`` does too,
unless an installed plugin names a command of its own so).

Commands run through the one execution path (``waygate.commands``): scopes, read-only keys
(``readOnlyHint`` only), approvals (``destructiveHint``, which MCP defaults to true for a tool
that is not read-only: a tool without annotations waits for approval unless exempted),
admission, rate limits, the deadline, the audit row, metrics and traces all apply. The handler
forwards exactly the arguments it was given (the approved ones, for a held call) with the
official MCP SDK client.

Connections live in this process (each gunicorn worker has its own: a stdio upstream is one
child process per worker, see README): one asyncio loop thread runs them all. A connection is
opened at start-up, re-listed on reload and on ``notifications/tools/list_changed``, checked
by a ping while idle, and opened again with backoff when it drops. Stdio children are started
with a parent-death signal and stopped at exit, so none outlives its worker; their stderr
goes to the log under ``waygate.upstream.<name>``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import anyio

from .jsonschemas import JsonSchemaParams, SchemaProblem, validator_for
from .plugins import PluginInfo, PluginSet
from .sdk import Cancelled, Command, CommandError, Content, ExecutionContext, RichResult

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")  # whole names only: fullmatch
NAME_MAX = 48
SEPARATOR = "__"
_TOOL_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_UPSTREAMS = 64
MAX_TOOLS = 1000  # per upstream
MAX_FILE_BYTES = 1024 * 1024
CAPABILITY = "mcp-upstream"

# Seconds: the first connection's wait at start-up and reload, a ping of an idle connection,
# the backoff between attempts to reconnect.
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0  # one attempt's handshake and listing (npx may install first)
PING_EVERY_S = {"stdio": 2.0, "http": 15.0}
PING_TIMEOUT_S = 5.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_S = 30.0  # a connection that stayed up this long starts the backoff afresh

# A stdio child dies with its worker, even one killed by SIGKILL: PR_SET_PDEATHSIG, set in a
# trampoline that then execs the server (the SDK spawns it; there is no hook before exec).
_TRAMPOLINE = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"  # the parent died before prctl
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'cannot start {sys.argv[2]}: {exc.strerror}')\n"
)


class UpstreamConfigError(ValueError):
    """An upstream entry (or the whole file) Waygate cannot use; the message says why."""


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream as configured, ``${VAR}`` expanded. ``shown`` is what /plugins may show:
    the entry as written (unexpanded), env and header values left out."""

    name: str
    transport: str  # "stdio" or "http"
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    shown: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Equal for two specs that need no reconnection between them."""
        return json.dumps(
            [
                self.transport,
                self.command,
                self.args,
                dict(self.env),
                self.cwd,
                self.url,
                dict(self.headers),
            ],
            sort_keys=True,
        )


@dataclass(frozen=True)
class UpstreamsFile:
    specs: Mapping[str, UpstreamSpec]
    errors: Mapping[str, str]  # upstream name -> why it cannot be used
    file_error: str | None = None  # the whole file is unusable


def read_config(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> UpstreamsFile:
    """Parse and validate the upstreams file; problems are reported, never raised."""
    env = os.environ if environ is None else environ
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return UpstreamsFile({}, {}, f"cannot read {path}: {exc.strerror or exc}")
    if len(raw) > MAX_FILE_BYTES:
        return UpstreamsFile({}, {}, f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
        return UpstreamsFile({}, {}, f"{path} is not valid JSON{where}")
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        return UpstreamsFile({}, {}, f'{path}: needs an object "mcpServers": {{"name": {{...}}}}')
    if len(servers) > MAX_UPSTREAMS:
        return UpstreamsFile({}, {}, f"{path}: at most {MAX_UPSTREAMS} upstreams")
    specs, errors = {}, {}
    for name, entry in servers.items():
        if isinstance(entry, dict) and entry.get("disabled") is True:
            continue  # as Cursor and VS Code read it: left out
        try:
            specs[name] = parse_entry(name, entry, env)
        except UpstreamConfigError as exc:
            errors[_shown_name(name)] = str(exc)
    return UpstreamsFile(specs, errors)


def _shown_name(name: str) -> str:
    return name if NAME_RE.fullmatch(name) and len(name) <= NAME_MAX else f"invalid:{name[:40]!r}"


def parse_entry(name: str, entry: Any, env: Mapping[str, str]) -> UpstreamSpec:
    if not NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
        raise UpstreamConfigError(
            f"upstream name {name[:60]!r} must be 1-{NAME_MAX} letters and digits, joined by"
            " single - or _ (so that __ in a command name always ends it)"
        )
    if not isinstance(entry, dict):
        raise UpstreamConfigError("must be an object with command (stdio) or url (HTTP)")
    kind = entry.get("type") or entry.get("transport")
    if "command" in entry and "url" in entry:
        raise UpstreamConfigError("has both command and url: give one")
    if "command" in entry:
        if kind not in (None, "stdio"):
            raise UpstreamConfigError(f"type {str(kind)[:40]!r} does not go with command")
        command = entry["command"]
        args = entry.get("args", [])
        environ = entry.get("env", {})
        cwd = entry.get("cwd")
        if not isinstance(command, str) or not command.strip():
            raise UpstreamConfigError("command must be a non-empty string")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise UpstreamConfigError("args must be a list of strings")
        _check_string_map(environ, "env")
        if cwd is not None and not isinstance(cwd, str):
            raise UpstreamConfigError("cwd must be a string")
        return UpstreamSpec(
            name=name,
            transport="stdio",
            command=_expand(command, env, "command"),
            args=tuple(_expand(a, env, "args") for a in args),
            env={k: _expand(v, env, f"env.{k}") for k, v in environ.items()},
            cwd=_expand(cwd, env, "cwd") if cwd else None,
            shown={
                "transport": "stdio",
                "command": command,
                "args": shown_args(args),
                "env": sorted(environ),
            },
        )
    if "url" in entry:
        if kind not in (None, "http", "streamable-http", "streamableHttp", "streamable_http"):
            raise UpstreamConfigError(
                f"type {str(kind)[:40]!r} is not supported: Streamable HTTP (type http) or stdio"
            )
        url, headers = entry["url"], entry.get("headers", {})
        if not isinstance(url, str):
            raise UpstreamConfigError("url must be a string")
        _check_string_map(headers, "headers")
        expanded = _expand(url, env, "url")
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", expanded):
            raise UpstreamConfigError("url must be an http:// or https:// URL")
        try:  # the host and port as the client will read them, said now rather than per call
            parts = urlsplit(expanded)
            parts.port  # noqa: B018 (raises ValueError for a port out of 0-65535)
        except ValueError:
            raise UpstreamConfigError(
                "url has no valid host and port (a port is a number from 1 to 65535)"
            ) from None
        if not parts.hostname:
            raise UpstreamConfigError("url has no host")
        return UpstreamSpec(
            name=name,
            transport="http",
            url=expanded,
            headers={k: _expand(v, env, f"headers.{k}") for k, v in headers.items()},
            shown={"transport": "http", "url": shown_url(url), "headers": sorted(headers)},
        )
    raise UpstreamConfigError("needs command (a stdio server) or url (a Streamable HTTP server)")


_SECRET_QUERY_NAME = re.compile(r"key|token|secret|passw|auth|credential|sig", re.IGNORECASE)


def shown_url(url: str) -> str:
    """The URL as written, for /plugins and the description: a password in its userinfo and
    the values of query parameters named like secrets as ``***`` (a ``${VAR}`` stays: it names
    the secret, it is not one)."""

    def hidden(value: str) -> str:
        return value if not value or _VAR.fullmatch(value) else "***"

    scheme, sep, rest = url.partition("://")
    end = len(rest)
    for stop in "/?#":
        if stop in rest:
            end = min(end, rest.index(stop))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        authority = f"{user}{colon}{hidden(password)}@{host}"
    path, mark, query = tail.partition("?")
    if mark:
        query, hash_, fragment = query.partition("#")
        parts = []
        for part in query.split("&"):
            name, equals, value = part.partition("=")
            parts.append(
                f"{name}={hidden(value)}" if equals and _SECRET_QUERY_NAME.search(name) else part
            )
        tail = f"{path}?{'&'.join(parts)}{hash_}{fragment}"
    return f"{scheme}{sep}{authority}{tail}"


def shown_args(args: list[str]) -> list[str]:
    """A stdio upstream's arguments as written, for /plugins and the description, with what
    looks like a secret as ``***``: the value of a ``--token=...`` or ``API_KEY=...`` argument,
    the argument after a flag named like a secret (``--password hunter2``), and URLs as
    :func:`shown_url` shows them. A ``${VAR}`` stays: it names the secret, it is not one."""
    shown: list[str] = []
    secret_next = False
    for arg in args:
        if secret_next and not arg.startswith("-"):
            shown.append(arg if _VAR.fullmatch(arg) else "***")
            secret_next = False
            continue
        name, equals, value = arg.partition("=")
        if equals and _SECRET_QUERY_NAME.search(name) and "://" not in name:
            shown.append(f"{name}={value if not value or _VAR.fullmatch(value) else '***'}")
        elif "://" in arg:
            shown.append(shown_url(arg))
        else:
            shown.append(arg)
        secret_next = arg.startswith("-") and not equals and bool(_SECRET_QUERY_NAME.search(arg))
    return shown


def _check_string_map(value: Any, what: str) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise UpstreamConfigError(f"{what} must be an object of strings")


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def variable(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise UpstreamConfigError(f"{where}: ${{{match.group(1)}}} is not set")
        return env[match.group(1)]

    return _VAR.sub(variable, value)


def command_name(upstream: str, tool: str) -> str:
    """``<upstream>__<tool>``, the tool's name with characters outside A-Za-z0-9_- as ``_``."""
    return f"{upstream}{SEPARATOR}{_TOOL_CHAR.sub('_', tool)}"


# -- parameters: the upstream's inputSchema, checked before anything is stored or forwarded ----


class UpstreamParams(JsonSchemaParams):
    """Params of an upstream tool: its ``inputSchema`` as is (``JSON_SCHEMA``, which
    ``waygate.schemas.json_schema`` hands out), validated with jsonschema under the bounds of
    ``waygate.jsonschemas`` (nothing fetched, patterns on a time budget). ``load`` returns the
    arguments exactly as sent: what is approved is what is forwarded."""


def params_class(tool_name: str, input_schema: Mapping[str, Any]) -> type[UpstreamParams]:
    schema = {"type": "object", "properties": {}, **dict(input_schema)}
    try:
        validator = validator_for(schema, f"tool {tool_name}: inputSchema")
    except SchemaProblem as exc:
        # the upstream's schema is at fault, not the caller: the arguments go unchecked here
        # (the upstream checks its own), and a $ref to elsewhere is never fetched
        log.warning("%s; not checked here", exc)
        validator = None
    return type(
        f"Params_{_TOOL_CHAR.sub('_', tool_name)}",
        (UpstreamParams,),
        {"JSON_SCHEMA": schema, "_validator": validator},
    )


# -- one connection --------------------------------------------------------------------------


class Unavailable(Exception):
    """The upstream cannot take calls now (down, connecting, or the connection dropped)."""


@dataclass
class Snapshot:
    """What the registry builds an upstream's plugin from."""

    spec: UpstreamSpec
    state: str  # "connecting", "up" or "down"
    error: str | None
    tools: tuple[dict[str, Any], ...]
    server: dict[str, Any]
    tools_version: int


class Connection:
    """One upstream's connection, owned by the manager's loop: opened, watched, reopened."""

    def __init__(self, spec: UpstreamSpec, manager: UpstreamManager):
        self.spec = spec
        self.manager = manager
        self.state = "connecting"
        self.error: str | None = None
        self.tools: tuple[dict[str, Any], ...] = ()
        self.tools_version = 0
        self.server: dict[str, Any] = {}
        self.session: Any = None
        self.attempts = 0
        self.connected_once = asyncio.Event()  # set by the first success or failure
        self._wake = asyncio.Event()
        self._relist = False
        self._stopping = False
        self._dead = asyncio.Event()  # a stdio child's stderr closed: the process is gone
        self.task: asyncio.Task | None = None

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.spec, self.state, self.error, self.tools, dict(self.server), self.tools_version
        )

    # -- control (loop thread) --

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=self.spec.name)

    def relist(self) -> None:
        self._relist = True
        self._wake.set()

    def reconnect_now(self) -> None:
        self._dead.set()
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.task), 8)
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(BaseException):
                    await self.task

    # -- the connection's life --

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            opened = time.monotonic()
            try:
                await self._session_once()
            except Exception as exc:  # every failure is a state, never a crash of the loop
                self._down(_reason(exc))
            else:
                if not self._stopping:
                    self._down("the connection closed")
            self.connected_once.set()
            if self._stopping:
                break
            if time.monotonic() - opened >= STABLE_S:
                failures = 0
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)  # reload wakes it early
        self.session = None

    async def _session_once(self) -> None:
        from mcp.client.session import ClientSession

        self.attempts += 1
        self._dead = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            transport, errlog = self._transport(stack)
            read, write = await stack.enter_async_context(transport)
            if errlog is not None:
                errlog.close()  # the child has its own copy now
            session = await stack.enter_async_context(
                ClientSession(
                    read,
                    write,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    client_info=_client_info(),
                )
            )
            with anyio.fail_after(START_TIMEOUT_S):
                result = await session.initialize()
                tools = await _list_tools(session)
            info = result.server_info
            server = {
                "name": info.name,
                "version": info.version,
                "title": info.title,
                "protocolVersion": result.protocol_version,
            }
            listed = self._set_tools(tools)
            self.session, self.state, self.error = session, "up", None
            log.info("upstream %s: connected (%d tools)", self.spec.name, len(tools))
            if listed or server != self.server:  # what the registry shows changed
                self.server = server
                self.manager.changed()
            self.connected_once.set()
            try:
                await self._watch(session)
            finally:
                self.session = None

    def _transport(self, stack: contextlib.AsyncExitStack):
        if self.spec.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters, stdio_client

            path = dict(self.spec.env).get("PATH") or os.environ.get("PATH") or os.defpath
            command = self.spec.command
            if self.spec.cwd and os.sep in command:  # relative to the server's own cwd
                command = os.path.join(self.spec.cwd, command)
            if shutil.which(command, path=path) is None:
                raise Unavailable(f"command not found: {self.spec.command}")
            errlog = self._stderr_pipe(stack)
            params = StdioServerParameters(
                command=sys.executable,
                args=[
                    "-I",
                    "-S",
                    "-c",
                    _TRAMPOLINE,
                    str(os.getpid()),
                    self.spec.command,
                    *self.spec.args,
                ],
                env=dict(self.spec.env) or None,
                cwd=self.spec.cwd,
            )
            return stdio_client(params, errlog=errlog), errlog
        import httpx2
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        client = create_mcp_http_client(
            headers=dict(self.spec.headers),
            timeout=httpx2.Timeout(10.0, read=self.manager.read_timeout_s),
        )
        return _with_client(client, streamable_http_client(self.spec.url, http_client=client)), None

    def _stderr_pipe(self, stack: contextlib.AsyncExitStack):
        """The child's stderr: a pipe whose lines a thread logs under the upstream's name; its
        end (every holder of the write end exited) tells that the child is gone."""
        read_fd, write_fd = os.pipe()
        errlog = os.fdopen(write_fd, "w")
        loop = asyncio.get_running_loop()
        dead = self._dead
        stack.callback(lambda: errlog.closed or errlog.close())
        name = self.spec.name

        def pump() -> None:
            with os.fdopen(read_fd, "rb") as pipe:
                log_stderr(pipe, logging.getLogger(f"waygate.upstream.{name}"))
            with contextlib.suppress(RuntimeError):  # the loop is closed at exit
                loop.call_soon_threadsafe(dead.set)

        threading.Thread(target=pump, name=f"waygate-upstream-{name}", daemon=True).start()
        return errlog

    async def _watch(self, session: Any) -> None:
        """Until the connection fails or is told to go: pings while idle, re-lists on demand."""
        every = PING_EVERY_S[self.spec.transport]
        while not self._stopping:
            if self._dead.is_set():
                raise Unavailable("the server process exited")
            if not self._wake.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), every)
            self._wake.clear()
            if self._stopping or self._dead.is_set():
                continue
            if self._relist:
                self._relist = False
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    if self._set_tools(await _list_tools(session)):
                        self.manager.changed()
                continue
            with anyio.fail_after(PING_TIMEOUT_S):
                await session.send_ping()

    def _set_tools(self, tools: list[dict[str, Any]]) -> bool:
        """Keep a new listing; whether it differs from the last one."""
        listed = tuple(tools[:MAX_TOOLS])
        if listed == self.tools:
            return False
        self.tools = listed
        self.tools_version += 1
        return True

    def _down(self, reason: str) -> None:
        was = self.state
        self.state, self.error, self.session = "down", reason, None
        if was != "down":  # its commands stay (calls answer 503) until it lists others
            log.warning("upstream %s: down: %s", self.spec.name, reason)

    async def _on_message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if method == "notifications/tools/list_changed":
            log.info("upstream %s: its tool list changed", self.spec.name)
            self.relist()
        elif isinstance(message, Exception):
            log.warning("upstream %s: transport error: %s", self.spec.name, _reason(message))

    async def _on_log(self, params: Any) -> None:
        level = {
            "debug": logging.DEBUG,
            "info": logging.INFO,
            "notice": logging.INFO,
            "warning": logging.WARNING,
        }.get(str(params.level), logging.ERROR)
        logging.getLogger(f"waygate.upstream.{self.spec.name}").log(
            level, "%s", str(params.data)[:2000]
        )

    # -- calls --

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float, progress) -> Any:
        session = self.session
        if session is None or self.state != "up":
            raise Unavailable(self.error or "not connected yet")
        from mcp.shared.exceptions import MCPError

        try:
            return await session.call_tool(
                tool,
                arguments,
                read_timeout_seconds=timeout,
                progress_callback=progress,
                allow_input_required=True,  # said clearly in present(), not as the SDK's hint
            )
        except MCPError as exc:
            if exc.error.code == -32000:  # CONNECTION_CLOSED
                self.reconnect_now()
                raise Unavailable("the connection closed during the call") from None
            if exc.error.code != -32602:  # not the arguments: is the session still there?
                self._wake.set()  # a ping now (a remote that restarted forgot the session)
            raise
        except (OSError, EOFError) as exc:
            self.reconnect_now()
            raise Unavailable(_reason(exc)) from None


@contextlib.asynccontextmanager
async def _with_client(client: Any, transport: Any):
    """The pooled HTTP client of one connection, closed with it."""
    async with client, transport as streams:
        yield streams


STDERR_LINE_MAX = 2000  # characters of a child's stderr line that reach the log


def log_stderr(pipe: Any, logger: logging.Logger) -> None:
    """Log a child's stderr line by line until it closes, each line cut at STDERR_LINE_MAX:
    read in bounded pieces, so a child writing without newlines cannot fill the worker."""
    while True:
        line = pipe.readline(STDERR_LINE_MAX * 4)
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip()
        while line and not line.endswith(b"\n"):  # the rest of an overlong line: skipped
            line = pipe.readline(64 * 1024)
        if text:
            logger.info("%s", text[:STDERR_LINE_MAX])


async def _list_tools(session: Any) -> list[dict[str, Any]]:
    tools, cursor = [], None
    for _ in range(50):  # pages
        page = (
            await session.list_tools(params=_page(cursor)) if cursor else await session.list_tools()
        )
        tools += [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools]
        cursor = page.next_cursor
        if not cursor or len(tools) >= MAX_TOOLS:
            break
    return tools


def _page(cursor: str) -> Any:
    import mcp_types

    return mcp_types.PaginatedRequestParams(cursor=cursor)


def _client_info() -> Any:
    import mcp_types

    from . import __version__

    return mcp_types.Implementation(name="waygate", version=__version__)


def _reason(exc: BaseException) -> str:
    """One line about a failure, from the innermost of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, Unavailable):
        return str(exc)
    if getattr(getattr(exc, "error", None), "code", None) == -32000:  # CONNECTION_CLOSED
        return "the server closed the connection (its stderr is in the log)"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "no answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename}" if exc.filename else "command not found"
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "title"):  # pydantic's
        return f"it answered with a {exc.title} that is not valid MCP"  # wording is not ours
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the manager: every upstream of this process ----------------------------------------------


class UpstreamManager:
    """This process's upstreams: their connections on one loop thread, their tools as plugins.

    ``loader(discover)`` wraps the registry's loader: every load adds the upstreams' plugins;
    a reload (and the first load) re-reads the file and waits, up to ``connect_timeout_s``,
    for new upstreams to list their tools. ``on_change`` hears (from the loop thread) that a
    connection came up, went down or listed other tools: the registry rebuilds this process's
    plugin set on its next read."""

    def __init__(
        self,
        path: str,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = 3600.0,
        environ: Mapping[str, str] | None = None,
    ):
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._environ = environ
        self.on_change: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}
        self._config = UpstreamsFile({}, {})
        self._synced = False
        self._stopped = False
        # an upstream's commands, made once per listing (their params classes are cached)
        self._command_cache: dict[tuple[str, str, int], list[Command]] = {}

    # -- the loop thread --

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="waygate-upstreams", daemon=True
                )
                self._thread.start()
                self._loop = loop
                atexit.register(self.stop)
            return self._loop

    def _run(self, coro, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result(timeout)

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- the registry's view --

    def loader(self, discover: Callable[..., PluginSet]) -> Callable[..., PluginSet]:
        def load(plugin_config=None, fresh_modules: bool = False, **kwargs) -> PluginSet:
            base = discover(plugin_config, fresh_modules=fresh_modules, **kwargs)
            if fresh_modules or not self._synced:
                self.sync()
            return self.extend(base)

        return load

    def sync(self) -> None:
        """Re-read the file; start new upstreams, stop removed or changed ones, re-list the
        rest; wait (bounded) until each new one connected or failed."""
        config = read_config(self.path, self._environ)
        if config.file_error and self._config.specs:
            # a file broken since the last good read: its upstreams keep running as they were
            config = replace(self._config, file_error=config.file_error)
        self._config = config
        self._synced = True
        if self._config.file_error:
            log.error("upstreams: %s", self._config.file_error)
        for name, error in self._config.errors.items():
            log.error("upstream %s: %s", name, error)
        try:
            self._run(self._sync(self._config.specs), timeout=self.connect_timeout_s + 10)
        except TimeoutError:
            log.warning("upstreams: still connecting after %s s", self.connect_timeout_s)

    async def _sync(self, specs: Mapping[str, UpstreamSpec]) -> None:
        gone = [
            self._connections.pop(name)
            for name, old in list(self._connections.items())
            if name not in specs or specs[name].key() != old.spec.key()
        ]
        await asyncio.gather(*(old.stop() for old in gone), return_exceptions=True)
        fresh = []
        for name, spec in specs.items():
            current = self._connections.get(name)
            if current is None:
                current = self._connections[name] = Connection(spec, self)
                current.start()
                fresh.append(current)
            elif current.state == "up":
                current.relist()
            else:
                current.reconnect_now()  # a reload retries at once, without its backoff
        if fresh:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(c.connected_once.wait() for c in fresh)),
                    self.connect_timeout_s,
                )

    def snapshots(self) -> list[Snapshot]:
        return [c.snapshot() for c in list(self._connections.values())]

    def extend(self, base: PluginSet) -> PluginSet:
        """``base`` with a plugin per upstream: its tools as commands (the last known ones
        while it is down, so its calls answer 503 rather than "unknown")."""
        infos = dict(base.plugins)
        commands = dict(base.commands)
        command_plugin = dict(base.command_plugin)
        if self._config.file_error:
            infos["upstreams"] = PluginInfo(
                name="upstreams",
                status="failed",
                error=self._config.file_error,
                capabilities=(CAPABILITY,),
            )
        for name, error in self._config.errors.items():
            infos[name] = PluginInfo(
                name=name, status="failed", error=error, capabilities=(CAPABILITY,)
            )
        for snap in sorted(self.snapshots(), key=lambda s: s.spec.name):
            name = snap.spec.name
            if name in base.plugins:
                infos[name] = PluginInfo(
                    name=name,
                    status="failed",
                    capabilities=(CAPABILITY,),
                    error=f"upstream name {name!r} is already taken by an installed plugin",
                )
                continue
            offered = []
            for command in self._commands(snap):
                if command.name in commands:
                    log.error(
                        "upstream %s: tool command %s is already taken by plugin %s: left out",
                        name,
                        command.name,
                        command_plugin[command.name],
                    )
                    continue
                commands[command.name] = command
                command_plugin[command.name] = name
                offered.append(command.name)
            server = snap.server
            infos[name] = PluginInfo(
                name=name,
                status="active",
                version=str(server.get("version") or ""),
                description=_describe(snap),
                author=str(server.get("name") or ""),
                capabilities=(CAPABILITY, snap.spec.transport),
                config=dict(snap.spec.shown),
                commands=tuple(offered),
            )
        return replace(
            base,
            plugins=dict(sorted(infos.items())),
            commands=commands,
            command_plugin=command_plugin,
        )

    def _commands(self, snap: Snapshot) -> list[Command]:
        key = (snap.spec.name, snap.spec.key(), snap.tools_version)
        cached = self._command_cache.get(key)
        if cached is not None:
            return cached
        made: dict[str, Command] = {}
        originals: dict[str, str] = {}
        for tool in snap.tools:
            name = command_name(snap.spec.name, str(tool.get("name", "")))
            if len(name) > 128 or not tool.get("name"):
                log.error(
                    "upstream %s: tool %r: name too long or empty: left out",
                    snap.spec.name,
                    str(tool.get("name"))[:200],
                )
                continue
            if name in made:
                log.error(
                    "upstream %s: tools %r and %r are both %s: the second is left out",
                    snap.spec.name,
                    originals[name],
                    tool["name"],
                    name,
                )
                continue
            originals[name] = tool["name"]
            made[name] = Command(
                name=name,
                description=str(tool.get("description") or ""),
                params=params_class(name, tool.get("inputSchema") or {}),
                handler=self._handler(snap.spec.name, tool["name"]),
                title=tool.get("title") or (tool.get("annotations") or {}).get("title") or None,
                annotations=effective_annotations(tool.get("annotations")),
                output_schema=tool.get("outputSchema"),
            )
        commands = list(made.values())
        if len(self._command_cache) > 256:
            self._command_cache.clear()
        self._command_cache[key] = commands
        return commands

    def _handler(
        self, upstream: str, tool: str
    ) -> Callable[[dict[str, Any], ExecutionContext], Any]:
        def forward(params: dict[str, Any], ctx: ExecutionContext) -> Any:
            return self.invoke(upstream, tool, params, ctx)

        return forward

    # -- calls (pool threads) --

    def invoke(self, upstream: str, tool: str, arguments: dict[str, Any], ctx: ExecutionContext):
        """Forward one call and wait by the execution's deadline (then cancel it upstream)."""
        connection = self._connections.get(upstream)
        if connection is None:
            raise _unavailable(upstream, "it is no longer configured")
        reports: queue.SimpleQueue = queue.SimpleQueue()
        done = object()

        async def progress(value: float, total: float | None, message: str | None) -> None:
            reports.put((value, total, message))

        trace = ctx.trace_context

        async def call() -> Any:
            if trace is not None:  # the SDK sends the span's traceparent in the call's _meta
                from opentelemetry import context as otel_context

                otel_context.attach(trace)  # this task's own context: nothing to detach
            return await connection.call(tool, arguments, ctx.remaining() + 1, progress)

        future = asyncio.run_coroutine_threadsafe(call(), self._ensure_loop())
        future.add_done_callback(lambda _: reports.put(done))
        while True:
            remaining = ctx.remaining()
            try:
                item = reports.get(timeout=remaining) if remaining > 0 else reports.get_nowait()
            except queue.Empty:
                future.cancel()  # the SDK tells the upstream (notifications/cancelled)
                raise Cancelled("the upstream did not answer by the deadline") from None
            if item is done:
                break
            with contextlib.suppress(TypeError):
                ctx.report_progress(*item)
        try:
            result = future.result()
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            raise Cancelled("cancelled") from None
        except Unavailable as exc:
            raise _unavailable(upstream, str(exc)) from None
        except Exception as exc:
            raise _upstream_error(upstream, exc) from None
        return present(upstream, result)

    # -- health and shutdown --

    def health(self) -> tuple[str, dict[str, Any]]:
        """The /health line ("ok" or "degraded: ...") and each upstream's state."""
        states = {}
        for snap in sorted(self.snapshots(), key=lambda s: s.spec.name):
            entry: dict[str, Any] = {
                "status": snap.state,
                "transport": snap.spec.transport,
                "tools": len(snap.tools),
            }
            if snap.error and snap.state != "up":
                entry["error"] = snap.error
            states[snap.spec.name] = entry
        for name, error in self._config.errors.items():
            states[name] = {"status": "failed", "error": error}
        if self._config.file_error:
            states["upstreams"] = {"status": "failed", "error": self._config.file_error}
        bad = [
            f"{n} ({s['status']}: {s.get('error', '')})".replace(": )", ")")
            for n, s in states.items()
            if s["status"] != "up"
        ]
        return ("degraded: " + "; ".join(bad) if bad else "ok"), states

    def stop(self) -> None:
        """Close every connection (stdio children exit): at process exit, bounded."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._stopped:
            return
        self._stopped = True

        async def close_all() -> None:
            connections = list(self._connections.values())
            self._connections.clear()
            await asyncio.gather(*(c.stop() for c in connections), return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def effective_annotations(annotations: Mapping[str, Any] | None) -> dict[str, Any]:
    """The tool's annotations with MCP's default made explicit: a tool that is not read-only
    is destructive unless it says otherwise (so it waits for approval unless exempted)."""
    shown = dict(annotations or {})
    shown.pop("title", None)
    if not shown.get("readOnlyHint") and "destructiveHint" not in shown:
        shown["destructiveHint"] = True
    return shown


def _describe(snap: Snapshot) -> str:
    server = snap.server
    who = server.get("title") or server.get("name") or "MCP server"
    where = (
        snap.spec.shown.get("url")
        if snap.spec.transport == "http"
        else snap.spec.shown.get("command")
    )
    return f"Upstream MCP server {who} ({snap.spec.transport}: {where})"


def present(upstream: str, result: Any) -> Any:
    """A CallToolResult as a Waygate result: content blocks and structured content as they
    are; a tool error (isError) as a refusal carrying them."""
    if type(result).__name__ == "InputRequiredResult":
        raise CommandError(
            f"upstream {upstream} asks the caller for input (elicitation or sampling), which"
            " Waygate cannot relay: its MCP endpoint sends no requests to clients",
            {"upstream": upstream, "code": "UPSTREAM_INPUT_REQUIRED"},
            status=502,
        )
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    blocks = [Content(block) for block in dumped.get("content") or []]
    structured = dumped.get("structuredContent")
    if dumped.get("isError"):
        text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
        details: dict[str, Any] = {"upstream": upstream, "content": blocks}
        if structured is not None:
            details["structuredContent"] = structured
        raise CommandError(text[:2000] or "the upstream tool reported an error", details)
    return RichResult(blocks, structured=structured)


def _unavailable(upstream: str, reason: str) -> CommandError:
    return CommandError(
        f"upstream {upstream} is unavailable: {reason}",
        {"upstream": upstream, "code": "UPSTREAM_UNAVAILABLE"},
        status=503,
    )


def _upstream_error(upstream: str, exc: Exception) -> CommandError:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or _reason(exc)
    if code == -32602:  # invalid params: the caller's
        return CommandError(f"upstream {upstream}: {message}"[:2000], {"upstream": upstream})
    return CommandError(
        f"upstream {upstream} failed: {message}"[:2000],
        {"upstream": upstream, "code": "UPSTREAM_ERROR"},
        status=502,
    )
