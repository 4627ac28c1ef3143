"""``POST /mcp``: MCP over Streamable HTTP, stateless; JSON responses, or SSE for a tool call
that asks for progress.

Every answer on this endpoint is JSON-RPC, errors included (see envelope.jsonrpc_error_body).
The same API keys, audit log and metrics as the REST API apply; tool calls share the execute
rate-limit budget with /mcp/execute, other methods have /mcp's own default budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, request

from .. import compat
from ..errors import Unauthorized, code_for_status
from ..mcp.headers import PARAM_PREFIX
from ..mcp.notify import ListenStream
from ..mcp.server import (
    BATCH_VERSIONS,
    HEADERLESS_VERSION,
    INVALID_REQUEST,
    MAX_BATCH,
    Reply,
    Routing,
    refused_body_error,
)
from . import envelope, jsonio, services
from .auth import current_caller, current_principal, presented_credentials
from .limiter import charge, limit_group_by
from .mcp_message import incoming_message

bp = Blueprint("mcp", __name__)


class TransportError(Exception):
    """A request refused before it reaches the protocol (Origin, key, method, Content-Type,
    Accept, JSON): answered as JSON-RPC by the envelope, its facts in ``error.data``."""

    def __init__(
        self,
        status: int,
        rpc_code: int,
        message: str,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.rpc_code, self.message = status, rpc_code, message
        self.code = code or code_for_status(status)
        self.details, self.headers = details or {}, headers or {}


@bp.errorhandler(TransportError)
def _refused(exc: TransportError) -> Response:
    return envelope.error_response(
        exc.status, exc.code, exc.message, exc.details, exc.headers, rpc_code=exc.rpc_code
    )


def _refusal(problem: jsonio.BodyRefused) -> TransportError:
    """Refused bodies are 400s, worded as on every MCP transport."""
    error = refused_body_error(problem)
    return TransportError(400, error.code, error.message, details=problem.details)


def _tool_calls_share_the_execute_budget() -> str | None:
    # Only a known caller's body is read to choose; anyone else is refused (403) regardless.
    if g.get("principal") is None:
        return None
    message, _ = incoming_message()
    messages = message if isinstance(message, list) else [message]  # a 2025-03-26 batch
    calls = any(isinstance(m, dict) and m.get("method") == "tools/call" for m in messages)
    return "execute" if calls else None


# Names that only ever mean this machine: a page served from one of them is local, whereas a
# rebinding attacker's page keeps its own host name (the Host header alone proves nothing).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _origin_allowed(origin: str) -> bool:
    """A configured origin, or this very server's own origin when it is reached on loopback.
    On a server bound to loopback the loopback names are one origin (as the official MCP
    SDK's defaults have it): a page from http://localhost:PORT may call http://127.0.0.1:PORT,
    same scheme and port; a rebinding page keeps its own, foreign, host name."""
    allowed = services().config.cors_origins
    if "*" in allowed or origin in allowed:
        return True
    own = urlsplit(f"{request.scheme}://{request.host}".lower())
    try:
        theirs = urlsplit(origin.lower())
        ports = (_port_of(own), _port_of(theirs))
    except ValueError:  # a port that is not a number: no origin of this server
        return False
    if (
        own.hostname not in LOOPBACK_HOSTS
        or theirs.scheme != own.scheme
        or ports[0] != ports[1]
        or theirs.path
        or theirs.query
        or "@" in theirs.netloc
    ):
        return False
    if theirs.netloc == own.netloc:
        return True
    return theirs.hostname in LOOPBACK_HOSTS and _bound_to_loopback()


def _port_of(url) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


def _bound_to_loopback() -> bool:
    """The address this request arrived on (gunicorn's listening address) is loopback."""
    bound = request.environ.get("SERVER_NAME", "").strip("[]").lower()
    return bound in LOOPBACK_HOSTS or bound.startswith("127.")


@bp.before_request
def _check_origin():
    # DNS-rebinding protection: a browser page from another origin must not reach /mcp.
    origin = request.headers.get("Origin")
    if origin and not _origin_allowed(origin):
        raise TransportError(
            403, INVALID_REQUEST, "Origin not allowed", details={"origin": origin[:100]}
        )


@bp.route("/mcp", methods=["GET", "DELETE", "PUT", "PATCH"])
def no_stream():
    """GET (an event stream) and DELETE (ending a session) are not offered: this server is
    stateless. They answer 405 in JSON-RPC; they are not operations of the API, so neither the
    OpenAPI document nor OPTIONS lists them (``waygate_refuses``)."""
    # No server-to-client stream and no sessions to end: this server is stateless.
    raise TransportError(
        405,
        INVALID_REQUEST,
        "Method Not Allowed: POST JSON-RPC messages to /mcp",
        details={"method": request.method, "allowed": ["POST"]},
        headers={"Allow": "POST"},
    )


def _mcp_key_required(view: Callable) -> Callable:
    """To an MCP client a 401 means "this server offers OAuth, go and authorize" (MCP
    authorization spec). With OAuth configured, no credentials or a refused access token get
    that 401 and its challenge; a wrong API key stays 403 without one, so that a client
    configured with a key is not pushed into OAuth. Without OAuth every refusal is 403."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        try:
            current_principal()
        except Unauthorized as exc:
            oauth = services().oauth
            credentials = any(presented_credentials())
            if oauth is not None and (not credentials or g.get("bearer_refused")):
                raise TransportError(401, INVALID_REQUEST, exc.message, code=exc.code) from None
            raise TransportError(
                403,
                INVALID_REQUEST,
                f"{exc.message} (API key in X-API-Key or Authorization: Bearer"
                + ("; or an OAuth access token)" if oauth is not None else "; no OAuth here)"),
                code=exc.code,
            ) from None
        return view(*args, **kwargs)

    wrapper.waygate_auth = "user"  # type: ignore[attr-defined]  (read by the OpenAPI builder)
    wrapper.waygate_auth_refusal = 403  # type: ignore[attr-defined]
    return wrapper


no_stream.waygate_refuses = True  # type: ignore[attr-defined]


@bp.post("/mcp")
@limit_group_by(_tool_calls_share_the_execute_budget)
@_mcp_key_required
def endpoint():
    """MCP over Streamable HTTP (stateless, JSON): one JSON-RPC message per request.
    ---
    post:
      summary: Model Context Protocol endpoint (JSON-RPC 2.0)
      tags: [mcp-protocol]
      parameters:
        - {name: MCP-Protocol-Version, in: header, schema: {type: string}}
        - {name: Mcp-Method, in: header, schema: {type: string}}
        - {name: Mcp-Name, in: header, schema: {type: string}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              description: >-
                One JSON-RPC 2.0 message; a 2025-03-26 client (no MCP-Protocol-Version header)
                may send a batch, an array of 1 to 20 of them, answered with an array (202
                when none is a request); later revisions' batches are refused
              oneOf:
                - title: A request (with id) or a notification (without)
                  type: object
                  required: [jsonrpc, method]
                  properties:
                    jsonrpc: {type: string, enum: ["2.0"]}
                    method: {type: string, minLength: 1}
                    id:
                      description: Absent in a notification
                      oneOf: [{type: string}, {type: integer}]
                    params: {type: object, nullable: true}
                - title: A response (accepted with 202 and dropped; Waygate sends no requests)
                  type: object
                  required: [jsonrpc, id]
                  not: {required: [method]}
                  properties:
                    jsonrpc: {type: string, enum: ["2.0"]}
                    id: {nullable: true}
                    result: {nullable: true}
                    error: {type: object}
                  oneOf:
                    - {required: [result], not: {required: [error]}}
                    - {required: [error], not: {required: [result]}}
                - title: A batch (2025-03-26 clients only)
                  type: array
                  minItems: 1
                  maxItems: 20
                  items:
                    description: >-
                      Each a message as above; one that is not gets its own Invalid Request
                      error in the answer, as JSON-RPC 2.0 has it
      responses:
        200:
          description: A JSON-RPC response (an array of them for a batch)
          content:
            application/json:
              schema:
                oneOf:
                  - {$ref: "#/components/schemas/JsonRpcMessage"}
                  - {type: array, items: {$ref: "#/components/schemas/JsonRpcMessage"}}
        202:
          description: A notification was accepted (no body)
        401:
          description: >-
            With WAYGATE_OAUTH_ISSUER set: no credentials, or an access token that failed
            verification; WWW-Authenticate names the protected resource metadata
        403:
          description: >-
            Origin not allowed (DNS-rebinding protection), or a wrong API key, or (without
            OAuth) a missing one (error.data.code UNAUTHORIZED; no challenge, so that a
            client configured with a key is not sent into OAuth); FORBIDDEN when a token
            lacks the scope (error="insufficient_scope")
        404:
          description: Method not found (2026-07-28 revision)
    """
    if not request.is_json:
        raise TransportError(
            400, INVALID_REQUEST, "Invalid Content-Type header: send application/json"
        )
    accept = request.headers.get("Accept")
    if accept and not request.accept_mimetypes.quality("application/json"):
        raise TransportError(
            406, INVALID_REQUEST, "Not Acceptable: the client must accept application/json"
        )
    message, problem = incoming_message()
    if problem is not None:
        raise _refusal(problem)
    routing = Routing(
        version=request.headers.get("MCP-Protocol-Version"),
        method=request.headers.get("Mcp-Method"),
        name=request.headers.get("Mcp-Name"),
        streams=bool(request.accept_mimetypes.quality("text/event-stream")),
        params=tuple(
            (name, value)
            for name, value in request.headers.items()
            if name.lower().startswith(PARAM_PREFIX)
        )[:64],
    )
    if (
        isinstance(message, list)
        and 0 < len(message) <= MAX_BATCH
        and (routing.version or HEADERLESS_VERSION) in BATCH_VERSIONS
    ):  # a 2025-03-26 batch it will run: each tools/call counts, as if it came alone
        calls = sum(1 for m in message if isinstance(m, dict) and m.get("method") == "tools/call")
        charge(calls - 1)
    return _reply(services().mcp.handle(message, current_caller(), routing))


def _reply(reply: Reply) -> Response:
    if reply.stream is not None:
        if isinstance(reply.stream, ListenStream):  # long-lived: notice a client that left
            reply.stream.client_gone = compat.peer_closed_probe(request.environ)
        response = Response(_server_sent_events(reply.stream.messages()), 200)
        response.mimetype = "text/event-stream"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        response.call_on_close(reply.stream.close)
        return response
    if reply.body is None:  # accepted notification: no body, so no Content-Type either
        response = Response(status=reply.status)
        del response.headers["Content-Type"]
        return response
    response = Response(jsonio.dumps_bytes(reply.body), reply.status, mimetype="application/json")
    if reply.retry_after is not None:
        response.headers["Retry-After"] = str(reply.retry_after)
    return response


def _server_sent_events(messages: Iterator[dict | None]) -> Iterator[bytes]:
    for message in messages:
        if message is None:
            yield b": keep-alive\n\n"
        else:
            yield b"event: message\ndata: " + jsonio.dumps_bytes(message) + b"\n\n"
