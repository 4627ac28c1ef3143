"""``POST /mcp``: MCP over Streamable HTTP, stateless, JSON responses only.

Every answer on this endpoint is JSON-RPC, errors included (see envelope.jsonrpc_error). The
same API keys, rate-limit budget (shared with /mcp/execute), audit log and metrics as the
REST API apply.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..commands import Caller
from ..mcp import INVALID_REQUEST, PARSE_ERROR, JsonRpcError, Routing
from . import jsonio, services
from .auth import current_key, key_required
from .limiter import limit_group

bp = Blueprint("mcp", __name__)


def _json(status: int, body: dict | None, headers: dict | None = None) -> Response:
    response = Response(
        jsonio.dumps_bytes(body) if body else b"",
        status=status,
        mimetype="application/json" if body else None,
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@bp.before_request
def _check_origin():
    # DNS-rebinding protection: a browser page from another origin must not reach /mcp.
    origin = request.headers.get("Origin")
    allowed = services().config.cors_origins
    if origin and "*" not in allowed and origin not in allowed:
        err = JsonRpcError(INVALID_REQUEST, f"Origin {origin[:100]!r} is not allowed")
        return _json(403, err.body())
    return None


@bp.route("/mcp", methods=["GET", "DELETE"])
def no_stream():
    # No server-to-client stream and no sessions to end: this server is stateless.
    err = JsonRpcError(INVALID_REQUEST, "Method Not Allowed: POST JSON-RPC messages to /mcp")
    return _json(405, err.body(), {"Allow": "POST"})


@bp.post("/mcp")
@limit_group("execute")
@key_required
def endpoint():
    if not request.is_json:
        return _json(
            400,
            JsonRpcError(
                INVALID_REQUEST, "Invalid Content-Type header: send application/json"
            ).body(),
        )
    accept = request.headers.get("Accept")
    if accept and not request.accept_mimetypes.quality("application/json"):
        return _json(
            406,
            JsonRpcError(
                INVALID_REQUEST, "Not Acceptable: the client must accept application/json"
            ).body(),
        )
    try:
        message = jsonio.loads(request.get_data(cache=False))
    except (ValueError, RecursionError) as exc:
        return _json(400, JsonRpcError(PARSE_ERROR, f"Parse error: {exc}"[:200]).body())
    routing = Routing(
        version=request.headers.get("MCP-Protocol-Version"),
        method=request.headers.get("Mcp-Method"),
        name=request.headers.get("Mcp-Name"),
    )
    reply = current_app.extensions["waygate.mcp"].handle(
        message, Caller(key_name=current_key().name), routing
    )
    return _json(reply.status, reply.body)
