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
from .server import JsonRpcError, McpServer, Routing, refused_body_error

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

    def handle(message) -> None:
        try:
            if notifications.intercept(message):
                return
            answer = server.handle(message, caller, STREAMING, http=False)
            if isinstance(answer.stream, ListenStream):  # pumped on a thread of its own
                notifications.pump(answer.stream)
                return
            if answer.stream is None:
                reply(answer.body)
                return
            try:
                for sent in answer.stream.messages():
                    reply(sent)  # None (a keep-alive) writes nothing
            finally:
                answer.stream.close()
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
