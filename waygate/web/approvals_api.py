"""Approval endpoints (issue 17): approve or deny an execution awaiting approval.

Who may decide, and that a key never decides on its own request, is the service's rule
(``waygate.approvals``); the view reads the body and presents the outcome.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from ..schemas import DecisionSchema, load
from . import services
from .auth import admin_required, current_principal, key_required
from .http import read_object
from .responses import respond

bp = Blueprint("approvals", __name__)
_decision = DecisionSchema()


@bp.post("/mcp/executions/<command_id>/approve")
@key_required
def approve(command_id: str):
    """Approve an execution awaiting approval: it runs its stored request, in the background.
    ---
    post:
      summary: Approve an execution (admin; never the requesting key)
      tags: [approvals]
      parameters:
        - {name: command_id, in: path, required: true, schema: {type: string}}
      requestBody:
        required: false
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Decision"}
      responses:
        202:
          description: >-
            Approved: the stored request (action and params as submitted) is queued with its
            own timeout from now; poll the Location
          headers:
            Location: {$ref: "#/components/headers/Location"}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/MCPResponse"}
        403:
          description: Not an approver, the key that requested it, or a key it created (FORBIDDEN)
        404:
          description: No such execution (NOT_FOUND)
        409:
          description: Not awaiting approval (decided already, or expired) (CONFLICT)
    """
    outcome = services().commands.approve(command_id, current_principal(), _reason())
    # 202 answers the decision: the execution runs later (or, when its stored request cannot
    # run any more, has already ended failed: the body says so)
    response = jsonify(outcome.as_response())
    response.status_code = 202
    response.headers["Location"] = url_for("execute.execution", command_id=command_id)
    return response


@bp.post("/mcp/executions/<command_id>/deny")
@key_required
def deny(command_id: str):
    """Deny an execution awaiting approval: it ends denied, with the reason, and never runs.
    ---
    post:
      summary: Deny an execution (admin; never the requesting key)
      tags: [approvals]
      parameters:
        - {name: command_id, in: path, required: true, schema: {type: string}}
      requestBody:
        required: false
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Decision"}
      responses:
        200:
          description: Denied
          content:
            application/json:
              schema: {$ref: "#/components/schemas/MCPResponse"}
        403:
          description: Not an approver, the key that requested it, or a key it created (FORBIDDEN)
        404:
          description: No such execution (NOT_FOUND)
        409:
          description: Not awaiting approval (decided already, or expired) (CONFLICT)
    """
    return respond(services().commands.deny(command_id, current_principal(), _reason()))


def _reason() -> str | None:
    """The optional ``{"reason": ...}`` body; no body at all is no reason."""
    body = read_object('the body (like {"reason": "..."})')
    return load(_decision, body, invalid="invalid decision")["reason"]


@bp.get("/mcp/executions/<command_id>/events")
@admin_required
def events(command_id: str):
    """An execution's approval trail: requested, approved or denied (by which key), expired,
    executed; each with the worker that wrote it.
    ---
    get:
      summary: Get an execution's approval events (admin)
      tags: [approvals]
      parameters:
        - {name: command_id, in: path, required: true, schema: {type: string}}
      responses:
        200:
          description: The events, oldest first
          content:
            application/json:
              schema: {$ref: "#/components/schemas/EventList"}
        404:
          description: No such execution (NOT_FOUND)
    """
    trail = services().approvals.trail(command_id)
    return jsonify({"events": [event.as_dict() for event in trail]})
