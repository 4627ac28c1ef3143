"""``POST /mcp``: MCP over Streamable HTTP, stateless, JSON responses only.

Every answer on this endpoint is JSON-RPC, errors included (see envelope.jsonrpc_error). The
same API keys, rate-limit budget (shared with /mcp/execute), audit log and metrics as the
REST API apply.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..mcp import INVALID_REQUEST, PARSE_ERROR, JsonRpcError, Routing
from . import jsonio, services
from .auth import current_caller, key_required
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
    """GET (an event stream) and DELETE (ending a session) are not offered: this server is
    stateless. They answer 405 in JSON-RPC; they are not operations of the API, so neither the
    OpenAPI document nor OPTIONS lists them (``waygate_refuses``)."""
    # No server-to-client stream and no sessions to end: this server is stateless.
    err = JsonRpcError(INVALID_REQUEST, "Method Not Allowed: POST JSON-RPC messages to /mcp")
    return _json(405, err.body(), {"Allow": "POST"})


no_stream.waygate_refuses = True  # type: ignore[attr-defined]


@bp.post("/mcp")
@limit_group("execute")
@key_required
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
              description: One JSON-RPC 2.0 message (batches are refused)
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
      responses:
        200:
          description: A JSON-RPC response
          content:
            application/json:
              schema: {$ref: "#/components/schemas/JsonRpcMessage"}
        202:
          description: A notification was accepted (no body)
        403:
          description: Origin not allowed (DNS-rebinding protection)
        404:
          description: Method not found (2026-07-28 revision)
    """
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
    reply = services().mcp.handle(message, current_caller(), routing)
    retry = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else None
    return _json(reply.status, reply.body, retry)
