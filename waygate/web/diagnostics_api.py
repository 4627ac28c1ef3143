"""Diagnostic endpoints (spec 2.4), admin only: connections, performance, persisted errors."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..diagnostics import connection_report, performance_report
from ..metrics import counter_total
from . import services
from .auth import admin_required
from .pagination import add_headers, paginated, requested_page, requested_since

bp = Blueprint("diagnostics", __name__)


@bp.get("/diagnostics/connection")
@admin_required
def connection():
    """Connections of the whole service.
    ---
    get:
      summary: Connection diagnostics (admin)
      tags: [diagnostics]
      responses:
        200:
          description: Diagnostics completed
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Connection"}
    """
    svc = services()
    return jsonify(
        connection_report(svc.server_info, int(counter_total("waygate_connections_total")))
    )


@bp.get("/diagnostics/performance")
@admin_required
def performance():
    """CPU, memory, threads, files of the master and every worker; recent percentiles.
    ---
    get:
      summary: Performance diagnostics (admin)
      tags: [diagnostics]
      responses:
        200:
          description: Performance data retrieved
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Performance"}
    """
    svc = services()
    return jsonify(performance_report(svc.server_info, svc.latency.percentiles()))


@bp.get("/diagnostics/errors")
@paginated
@admin_required
def errors():
    """Persisted errors from every worker, newest first.
    ---
    get:
      summary: Recent errors (admin)
      tags: [diagnostics]
      parameters:
        - {name: since, in: query, schema: {type: string, format: date-time}}
      responses:
        200:
          description: Errors retrieved
          content:
            application/json:
              schema: {$ref: "#/components/schemas/ErrorList"}
    """
    page = requested_page()
    since = requested_since()
    records, total = services().errors.query(since=since, offset=page.offset, limit=page.limit)
    response = jsonify({"errors": [r.as_dict() for r in records], "total": total})
    return add_headers(response, page, total)
