"""Command endpoints (spec 2.2): execute (single, batch, async), executions, status, commands."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from ..clock import isoformat, parse_iso
from ..commands import Caller
from ..errors import InvalidRequest, NotFound
from ..schemas import describe_parameters
from . import services
from .auth import admin_required, current_key, key_required
from .http import read_json
from .limiter import limit_group
from .pagination import add_headers, requested_page

bp = Blueprint("execute", __name__)

PROTOCOL_VERSION = "1.0"
EXECUTION_STATUSES = ("pending", "running", "success", "failed", "timeout")


def _caller() -> Caller:
    return Caller(key_name=current_key().name)


@bp.post("/mcp/execute")
@limit_group("execute")
@key_required
def execute():
    svc = services()
    body = read_json()
    if isinstance(body, list):
        return _batch(body)
    inv = svc.commands.parse(body)
    if inv.run_async:
        outcome = svc.commands.submit_async(inv, _caller())
        response = jsonify(outcome.as_response())
        response.status_code = 202
        response.headers["Location"] = url_for("execute.execution", command_id=inv.command_id)
        return response
    outcome = svc.commands.run(inv, _caller())
    if outcome.client_error is not None:
        err = outcome.client_error
        raise InvalidRequest(
            err.message, {"command_id": outcome.command_id, **err.details}, status=err.status
        )
    return jsonify(outcome.as_response()), outcome.http_status


def _batch(items: list):
    limit = services().config.batch_max
    if not items:
        raise InvalidRequest("a batch must hold at least one command")
    if len(items) > limit:
        raise InvalidRequest(
            f"a batch holds at most {limit} commands; got {len(items)}",
            {"max_items": limit, "items": len(items)},
        )
    outcomes = services().commands.run_batch(items, _caller())
    return jsonify([outcome.as_response() for outcome in outcomes])


@bp.get("/mcp/executions/<command_id>")
@key_required
def execution(command_id: str):
    key = current_key()
    # A user key sees its own executions; an admin key sees every one.
    outcome = services().commands.lookup(command_id, None if key.is_admin else _caller())
    if outcome is None:
        raise NotFound(f"no execution {command_id!r}", {"command_id": command_id[:100]})
    return jsonify(outcome.as_response())


@bp.get("/mcp/executions")
@admin_required
def executions():
    page = requested_page()
    action = request.args.get("action") or None
    status = request.args.get("status") or None
    if status is not None and status not in EXECUTION_STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(EXECUTION_STATUSES)}", {"parameter": "status"}
        )
    since = request.args.get("since")
    if since is not None:
        try:
            since = isoformat(parse_iso(since))
        except ValueError:
            raise InvalidRequest(
                "since must be an ISO 8601 date-time, e.g. 2025-01-14T10:00:00Z",
                {"parameter": "since", "value": since[:100]},
            ) from None
    rows, total = services().audit.query(
        action=action, status=status, since=since, offset=page.offset, limit=page.limit
    )
    response = jsonify({"executions": [row.as_dict() for row in rows], "total": total})
    return add_headers(response, page, total)


@bp.get("/mcp/status")
@key_required
def status():
    plugins = services().plugins.current
    return jsonify(
        {
            "engine": "degraded" if plugins.failed else "operational",
            "plugins_loaded": len(plugins.loaded),
            "commands_available": sorted(plugins.commands),
            "protocol_version": PROTOCOL_VERSION,
            "capabilities": {"async": True, "batch": True, "streaming": False},
            "pool": services().commands.pool.stats().as_dict(),
            "timestamp": isoformat(),
        }
    )


@bp.get("/mcp/commands")
@key_required
def commands():
    plugins = services().plugins.current
    listed = [
        {
            "name": name,
            "description": command.description,
            "plugin": plugins.command_plugin[name],
            "parameters": describe_parameters(command.params),
        }
        for name, command in sorted(plugins.commands.items())
    ]
    page = requested_page(default_limit=100)
    response = jsonify({"commands": list(page.slice(listed)), "total": len(listed)})
    return add_headers(response, page, len(listed))
