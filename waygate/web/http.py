"""Cross-cutting HTTP: request ids, security headers, CORS, body size, proxies, JSON bodies."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import time
import uuid
from functools import partial
from typing import IO, Any

from flask import Flask, Request, Response, after_this_request, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from .. import compat, logs
from ..config import Config
from ..errors import InvalidRequest
from ..schemas import expect_object
from . import jsonio

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed only if it is short and plain: no CR/LF, spaces or quotes.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
    "Content-Security-Policy": "default-src 'self'",
    "Referrer-Policy": "no-referrer",
}
CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_ALLOW_HEADERS = [
    "Content-Type",
    "X-API-Key",
    "Authorization",
    "X-Request-ID",
    "Accept",
    "MCP-Protocol-Version",
    "Mcp-Method",
    "Mcp-Name",
    "Idempotency-Key",
]
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Total-Count",
    "X-Page-Count",
    "Link",
    "Location",
    "Deprecation",
    "Sunset",
    "Idempotent-Replayed",
]


def read_json(max_depth: int = jsonio.MAX_DEPTH) -> Any:
    """The request body as JSON, or InvalidRequest saying what is wrong with it."""
    if not request.is_json:
        raise InvalidRequest(
            "Content-Type must be application/json", {"content_type": request.content_type or ""}
        )
    raw = request.get_data(cache=True)
    if not raw:
        raise InvalidRequest("request body is empty: send a JSON object")
    try:
        return jsonio.read_body(raw, max_depth)
    except jsonio.BodyRefused as refused:
        raise InvalidRequest(refused.message, refused.details) from None


def read_object(what: str = "the body") -> dict[str, Any]:
    """The body as a JSON object, to validate with ``schemas.load``; no body at all is an
    empty object (every field left out)."""
    return expect_object(read_json() if request.get_data(cache=True) else {}, what)


def _before() -> None:
    """Every request's first own hook: its id, then the body size (a 413 carries the id).
    One hook, not two: each hook costs Flask a dispatch and each ``request`` a proxy lookup."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    _assign_request_id(req)
    _refuse_oversize_body(req)


def _assign_request_id(req: Request) -> None:
    incoming = req.environ.get("HTTP_X_REQUEST_ID", "")
    request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.request_id = request_id
    # For log records: this thread's, and the command pool's jobs submitted from it.
    logs.request_id.set(request_id)


def _forget_request_id(_exc: BaseException | None) -> None:
    logs.request_id.set("-")  # the thread's next request sets its own


# After a 413 the unread rest of the body is read and thrown away, up to these bounds: a
# client that sends its whole body before it reads the answer (httpx, and so the MCP SDK)
# otherwise gets a connection reset instead of the 413, as the server closes on unread data.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0


def _refuse_oversize_body(req: Request) -> None:
    """413 before anything runs: on the declared length, before any of the body is read; a
    chunked body (no declared length) is counted while it is read, up to one byte past the
    limit. werkzeug's limited stream would stop at the limit and hand the view a cut body."""
    environ = req.environ
    if (
        req.method == "GET"
        and "CONTENT_LENGTH" not in environ
        and ("HTTP_TRANSFER_ENCODING" not in environ)
    ):
        return  # no body at all: nothing to measure (most GETs)
    limit = req.max_content_length
    if limit is None:
        return
    length = req.content_length
    unread = environ["wsgi.input"]
    if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = _read_chunked(unread, limit + 1)
        length = len(body)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(length)
        req.__dict__.pop("content_length", None)  # werkzeug caches the header's absence
    if length is not None and length > limit:
        if length <= DRAIN_MAX_BYTES:  # a bigger declared body is not worth the wait
            sock = environ.get("gunicorn.socket")
            after_this_request(partial(_drain_after_answer, unread, sock))
        raise RequestEntityTooLarge()


def _read_chunked(stream: IO[bytes], most: int) -> bytes:
    try:
        return stream.read(most)
    # The server's reader raises its own errors for a malformed chunk (gunicorn's derive from
    # Exception) and OSError for a client that stopped sending: the client's mistake either way.
    except Exception:
        raise InvalidRequest("malformed chunked request body") from None


def _drain_after_answer(body: IO[bytes], sock: socket.socket | None, response: Response):
    response.call_on_close(partial(_drain, body, sock))
    return response


def _drain(body: IO[bytes], sock: socket.socket | None) -> None:
    """Read and discard the rest of a refused body once the answer is out, within bounds; past
    them the server closes (gunicorn) and the client may see a reset."""
    deadline = time.monotonic() + DRAIN_SECONDS
    drained = 0
    prior = sock.gettimeout() if sock is not None else None
    try:
        while drained < DRAIN_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if sock is not None:
                sock.settimeout(remaining)
            data = body.read(min(65536, DRAIN_MAX_BYTES - drained))
            if not data:
                return
            drained += len(data)
    except Exception:  # the client stalled, went away or sent a bad chunk: stop listening
        return
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):  # closed by the client meanwhile
                sock.settimeout(prior)


_DEFAULT_HEADERS = (*SECURITY_HEADERS.items(), ("Cache-Control", "no-store"))


def _finish(response: Response, req: Request) -> Response:
    # One pass over the headers a view set, then append what is missing (this runs on every
    # response; Headers.setdefault would rescan the list for each name).
    headers = response.headers
    present = {name.lower() for name, _ in headers}
    missing = [(n, v) for n, v in _DEFAULT_HEADERS if n.lower() not in present]
    if "x-request-id" not in present:
        missing.append((REQUEST_ID_HEADER, g.get("request_id") or uuid.uuid4().hex))
    if req.is_secure and "strict-transport-security" not in present:
        missing.append(("Strict-Transport-Security", "max-age=31536000"))
    headers.extend(missing)
    return response


def _allow_what_is_served(response: Response, req: Request) -> Response:
    """Flask's automatic OPTIONS answer lists the methods of every rule the path matches: also
    those of a variable rule that only happens to match (``/plugins/<plugin_name>`` for
    ``/plugins/reload``) and of views that exist only to refuse (``waygate_refuses``). Allow
    lists the methods of this path's own rule string whose views serve them."""
    rule = req.url_rule
    if req.method != "OPTIONS" or rule is None or "Allow" not in response.headers:
        return response
    methods = {"OPTIONS"}
    for other in current_app.url_map.iter_rules():
        view = current_app.view_functions.get(other.endpoint)
        if other.rule == rule.rule and not getattr(view, "waygate_refuses", False):
            methods |= other.methods or set()
    response.headers["Allow"] = ", ".join(sorted(methods))
    return response


def trust_proxies(app: Flask, config: Config) -> None:
    """Outermost WSGI layer: take client address, scheme and host from the trusted hops'
    X-Forwarded-* headers (gunicorn never does)."""
    if config.trusted_proxies:
        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )


def init_app(app: Flask, config: Config) -> None:
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.before_request(_before)
    app.teardown_request(_forget_request_id)
    # flask-cors's own after-request hook matches resource patterns on every response; only
    # a request with an Origin header can need CORS headers, so only those go through it.
    # (Every API response is Cache-Control: no-store, so no cache needs Vary: Origin.)
    cors = compat.cors_options(
        app,
        {
            "origins": list(config.cors_origins),
            "methods": CORS_METHODS,
            "allow_headers": CORS_ALLOW_HEADERS,
            "expose_headers": CORS_EXPOSE_HEADERS,
            "max_age": 600,
        },
    )

    @app.after_request
    def _after(response: Response) -> Response:
        """CORS (only a request with an Origin header can need it), Allow, default headers:
        one hook for the three, in that order."""
        req = request._get_current_object()  # type: ignore[attr-defined]
        if "HTTP_ORIGIN" in req.environ:
            compat.apply_cors(response, cors)
        if req.method == "OPTIONS":
            response = _allow_what_is_served(response, req)
        return _finish(response, req)
