"""MCP over stdio for desktop clients: newline-delimited JSON-RPC on stdin and stdout.

Local trust: whoever can start the process is trusted (no API key, no rate limit), as with any
stdio MCP server. Executions are audited under the name given with ``--as`` (default
``stdio``). stdout carries only JSON-RPC messages; logs go to stderr.

A tool call that sends a progress token gets ``notifications/progress`` as its handler reports,
then its response, as over HTTP's event stream (``ToolStream``); input requests (2026-07-28
``input_required`` results) are results like any other, and work here too.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from ..commands import Caller
from ..jsonbody import BodyRefused, read_body
from .notify import ListenStream, StdioChannel
from .server import META_VERSION, JsonRpcError, McpServer, Routing, refused_body_error

log = logging.getLogger(__name__)
# stdio carries any number of messages per request: a tool call with a progress token streams
STREAMING = Routing(streams=True)


def serve(
    server: McpServer,
    caller: Caller,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    concurrency: int = 4,
) -> None:
    """Answer messages until stdin closes. Requests run concurrently, so a ping is answered
    while a tool runs; each answer is written whole, one per line."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    write_lock = threading.Lock()

    def reply(body: dict | None) -> None:
        if body is None:
            return
        line = json.dumps(body, separators=(",", ":"), default=str)
        with write_lock:
            stdout.write(line + "\n")
            stdout.flush()

    notifications = StdioChannel(server, caller, reply)  # listens, and list changes pushed

    def push(statuses) -> None:
        for status in statuses:
            reply(status)

    # stdio is one client's session: a handshake-era client names its revision once, at
    # initialize, and its later requests are judged by it (HTTP sends it as a header)
    negotiated: list[str | None] = [None]

    def handle(message) -> None:
        try:
            if notifications.intercept(message):
                return
            routing = STREAMING
            if negotiated[0] is not None and _revision_of(message) is None:
                routing = Routing(version=negotiated[0], streams=True)
            answer = server.handle(message, caller, routing, http=False)
            if isinstance(answer.stream, ListenStream):  # pumped on a thread of its own
                notifications.pump(answer.stream)
                return
            if answer.stream is not None:
                try:
                    for sent in answer.stream.messages():
                        reply(sent)  # None (a keep-alive) writes nothing
                finally:
                    answer.stream.close()
                return
            body = answer.body
            if isinstance(message, dict) and message.get("method") == "initialize":
                agreed = ((body or {}).get("result") or {}).get("protocolVersion")
                negotiated[0] = agreed if isinstance(agreed, str) else None
            reply(body)
            # stdio can push: a task's status notifications, on a thread of their own
            statuses = server.task_notifications(message, body, caller)
            if statuses is not None:
                threading.Thread(
                    target=push, args=(statuses,), name="waygate-task-status", daemon=True
                ).start()
        except Exception:  # never let one message end the session
            log.exception("stdio message failed")
            reply(
                JsonRpcError(-32603, "internal error").body(
                    message.get("id") if isinstance(message, dict) else None
                )
            )

    with ThreadPoolExecutor(concurrency, thread_name_prefix="waygate-stdio") as pool:
        for line in stdin:
            if not line.strip():
                continue
            try:  # the same rules as a body over HTTP: UTF-8, no lone surrogate, 64 deep
                message = read_body(line.encode("utf-8", "surrogatepass"))
            except BodyRefused as refused:
                reply(refused_body_error(refused).body())
                continue
            pool.submit(handle, message)
    notifications.close()


def _revision_of(message) -> str | None:
    """The revision a message names itself (2026-07-28: in ``params._meta``)."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(META_VERSION) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None
