"""Command endpoints (spec 2.2): execute (single, batch, async), executions, status, commands."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from ..approvals.policy import may_approve
from ..commands import Caller, Invocation
from ..errors import InvalidRequest, NotFound
from ..idempotency import Replay, fingerprint, key_from_header
from ..outcomes import ExecutionStatus, Outcome
from . import services
from .auth import admin_required, current_caller, current_principal, key_required
from .http import read_json
from .limiter import charge, limit_group
from .pagination import add_headers, paginated, requested_page, requested_since
from .responses import replayed, respond, stored_answer

bp = Blueprint("execute", __name__)


@bp.post("/mcp/execute")
@limit_group("execute")
@key_required
def execute():
    """Execute a command, a batch of commands (a JSON array), or one in the background.
    ---
    post:
      summary: Execute an MCP command
      tags: [mcp]
      parameters:
        - name: Idempotency-Key
          in: header
          required: false
          description: >-
            Runs the request once: a retry with the same key and the same request (the same
            JSON, whatever its spacing and key order) gets the first execution back, marked
            Idempotent-Replayed, without running again; for an async or held execution, its
            state now. Keys are the caller's own and kept WAYGATE_IDEMPOTENCY_TTL_S (24 h).
            1 to 255 printable ASCII characters, bare or as a quoted Structured Field string;
            not taken for a batch
          schema: {type: string, minLength: 1, maxLength: 255, pattern: '^[!#-~][ -~]*$'}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              oneOf:
                - {$ref: "#/components/schemas/MCPCommand"}
                - type: array
                  description: >-
                    A batch: each item an MCPCommand; an invalid item gets its own failed
                    response, only a malformed or oversize array is a 400
                  minItems: 1
                  maxItems: 50
                  items: {}
      responses:
        200:
          description: Command executed successfully (a batch answers an array, in order)
          headers:
            Idempotent-Replayed: {$ref: "#/components/headers/Idempotent-Replayed"}
          content:
            application/json:
              schema:
                oneOf:
                  - {$ref: "#/components/schemas/MCPResponse"}
                  - type: array
                    items: {$ref: "#/components/schemas/MCPResponse"}
        202:
          description: >-
            Accepted for background execution ("async" true), or stored awaiting approval
            (status awaiting_approval: a command that needs approval runs only once another
            key approves it; a batch item gets the same as its own response)
          headers:
            Location: {$ref: "#/components/headers/Location"}
            Idempotent-Replayed: {$ref: "#/components/headers/Idempotent-Replayed"}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/MCPResponse"}
        400:
          description: >-
            Invalid command or Idempotency-Key (Error: INVALID_REQUEST, MISSING_PARAMETER,
            INVALID_IDEMPOTENCY_KEY), or a command that refused its input (MCPResponse, status
            failed)
          content:
            application/json:
              schema:
                oneOf:
                  - {$ref: "#/components/schemas/Error"}
                  - {$ref: "#/components/schemas/MCPResponse"}
        413:
          description: >-
            Request body too large (Error), or command input over its size limit
            (MCPResponse, status failed)
          content:
            application/json:
              schema:
                oneOf:
                  - {$ref: "#/components/schemas/Error"}
                  - {$ref: "#/components/schemas/MCPResponse"}
        409:
          description: >-
            The first request with this Idempotency-Key is still running
            (IDEMPOTENCY_KEY_IN_PROGRESS); retry after Retry-After seconds
          headers:
            Retry-After: {$ref: "#/components/headers/Retry-After"}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Error"}
        422:
          description: >-
            The Idempotency-Key was first used for another request (IDEMPOTENCY_KEY_REUSED)
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Error"}
        408:
          description: Command execution timeout
          content:
            application/json:
              schema: {$ref: "#/components/schemas/MCPResponse"}
        500:
          description: Command execution failed
          content:
            application/json:
              schema:
                oneOf:
                  - {$ref: "#/components/schemas/MCPResponse"}
                  - {$ref: "#/components/schemas/Error"}
    """
    commands = services().commands
    key = key_from_header(request.headers.get("Idempotency-Key"))
    body = read_json()
    if isinstance(body, list):
        if key is not None:
            raise InvalidRequest(
                "Idempotency-Key is not taken for a batch: send each command on its own,"
                " each with its own key",
                {"header": "Idempotency-Key"},
            )
        return _batch(body)
    caller = current_caller()
    if key is None:
        inv = commands.parse(body, caller)
        return _located(respond(_run(inv, caller)), inv.command_id)
    done = services().idempotency.perform(
        key,
        caller,
        fingerprint("rest", body),
        resolve=lambda: commands.parse(body, caller),
        run=lambda inv: _run(inv, caller),
        present=stored_answer,
    )
    if isinstance(done, Replay):  # a retry: the first request's answer, not run again
        return _located(replayed(done), done.command_id)
    return _located(respond(done), done.command_id)


def _run(inv: Invocation, caller: Caller) -> Outcome:
    # A command that ran and refused its input (CommandError) answers the MCPResponse with
    # status "failed" and the handler's 4xx: the caller sees the command_id, the duration and
    # the reason in the same model as any other outcome (the spec's own example relies on it).
    commands = services().commands
    return (commands.submit_async if inv.run_async else commands.run)(inv, caller)


def _located(response: Response, command_id: str) -> Response:
    if response.status_code == 202:  # accepted, or awaiting approval: to be polled
        response.headers["Location"] = url_for("execute.execution", command_id=command_id)
    return response


def _batch(items: list):
    limit = services().config.batch_max
    if not items:
        raise InvalidRequest("a batch must hold at least one command")
    if len(items) > limit:
        raise InvalidRequest(
            f"a batch holds at most {limit} commands; got {len(items)}",
            {"max_items": limit, "items": len(items)},
        )
    charge(len(items) - 1)  # a batch of N commands counts N against the key's limit
    outcomes = services().commands.run_batch(items, current_caller())
    return jsonify([outcome.as_response() for outcome in outcomes])


@bp.get("/mcp/executions/<command_id>")
@key_required
def execution(command_id: str):
    """An execution's current state (a user key sees only its own; admins and approvers all).
    ---
    get:
      summary: Get an execution
      tags: [mcp]
      parameters:
        - {name: command_id, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: >-
            The execution (pending, running, success, failed, timeout, awaiting_approval,
            denied, expired, or input_required: an MCP round that asked its caller for input)
          content:
            application/json:
              schema: {$ref: "#/components/schemas/MCPResponse"}
        404:
          description: No such execution
    """
    # A user key sees its own executions; an admin, or an approver (who decides on anyone's
    # request), sees every one.
    caller = None if may_approve(current_principal()) else current_caller()
    outcome = services().status.lookup(command_id, caller)
    if outcome is None:
        raise NotFound(f"no execution {command_id!r}", {"command_id": command_id[:100]})
    return jsonify(outcome.as_response())


@bp.get("/mcp/executions")
@paginated
@admin_required
def executions():
    """The audit log: every execution, newest first.
    ---
    get:
      summary: List executions (admin)
      tags: [mcp]
      parameters:
        - {name: action, in: query, schema: {type: string}}
        - name: status
          in: query
          schema:
            type: string
            enum: [pending, running, success, failed, timeout, awaiting_approval, denied, expired,
              input_required]
        - {name: since, in: query, schema: {type: string, format: date-time}}
        - name: principal
          in: query
          description: >-
            Who asked: a person as <issuer>#<subject> (by token or as a key's owner), or
            key:<id> for a key without an owner
          schema: {type: string}
      responses:
        200:
          description: Executions
          content:
            application/json:
              schema: {$ref: "#/components/schemas/ExecutionList"}
    """
    page = requested_page()
    action = request.args.get("action") or None
    status = request.args.get("status")  # present but empty is refused too
    if status is not None and status not in ExecutionStatus.__members__.values():
        raise InvalidRequest(
            f"status must be one of {', '.join(ExecutionStatus)}", {"parameter": "status"}
        )
    since = requested_since()
    principal = request.args.get("principal") or None
    if principal is not None and len(principal) > 800:
        raise InvalidRequest("principal is at most 800 characters", {"parameter": "principal"})
    rows, total = services().audit.query(
        action=action,
        status=status,
        since=since,
        offset=page.offset,
        limit=page.limit,
        principal=principal,
    )
    response = jsonify({"executions": [row.as_dict() for row in rows], "total": total})
    return add_headers(response, page, total)


@bp.get("/mcp/status")
@key_required
def status():
    """Engine status.
    ---
    get:
      summary: Get MCP engine status
      tags: [mcp]
      responses:
        200:
          description: Status retrieved
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Status"}
    """
    return jsonify(services().status.engine_status(current_caller()))


@bp.get("/mcp/commands")
@paginated
@key_required
def commands():
    """Commands of every loaded plugin, parameters described from their schemas.
    ---
    get:
      summary: List available MCP commands
      tags: [mcp]
      responses:
        200:
          description: Commands listed
          content:
            application/json:
              schema: {$ref: "#/components/schemas/CommandList"}
    """
    listed = services().status.catalog(current_caller())
    page = requested_page(default_limit=100)
    response = jsonify({"commands": list(page.slice(listed)), "total": len(listed)})
    return add_headers(response, page, len(listed))
