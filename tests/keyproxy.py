"""A loopback HTTP proxy that adds an API key: for MCP clients that cannot send headers (the
official conformance suite). It forwards each request as it came (method, path, Host, Origin,
body) plus ``X-API-Key``, and streams the answer back as it arrives (SSE included)."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers that belong to one connection, not to the message (RFC 9110 section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


class KeyProxy:
    def __init__(self, upstream_port: int, key: str, timeout: float = 60):
        self.upstream_port, self.key, self.timeout = upstream_port, key, timeout
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> KeyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the answer ends when the connection closes

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["X-API-Key"] = proxy.key
                upstream = http.client.HTTPConnection(
                    "127.0.0.1", proxy.upstream_port, timeout=proxy.timeout
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    self._close_when_client_leaves(upstream)
                    self.send_response_only(answer.status, answer.reason)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.end_headers()
                    while chunk := answer.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (ConnectionError, http.client.IncompleteRead):  # the client went
                    # away (e.g. it cancelled a stream), and its upstream was closed with it
                    pass
                finally:
                    upstream.close()

            def _close_when_client_leaves(self, upstream: http.client.HTTPConnection) -> None:
                """As nginx does: a client that closes its connection mid-answer (e.g. it
                ends a subscriptions/listen stream) has the upstream connection closed too,
                at once, not at the next chunk the upstream happens to send."""
                client, sock = self.connection, upstream.sock

                def watch() -> None:
                    while upstream.sock is not None:
                        try:
                            readable, _, _ = select.select([client], [], [], 0.2)
                            if not readable:
                                continue
                            gone = client.recv(1, socket.MSG_PEEK) == b""
                        except (OSError, ValueError):  # closed meanwhile: the answer ended
                            return
                        if gone:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)
                        return  # gone, or more bytes from the client: nothing more to watch

                threading.Thread(target=watch, daemon=True).start()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _forward

            def log_message(self, *args) -> None:  # quiet: the suite reports what matters
                pass

        return Forward
