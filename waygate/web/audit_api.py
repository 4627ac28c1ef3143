"""The tamper-evident audit for admins: verify its hash chain on demand (issue 31)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import NotFound
from . import services
from .auth import admin_required

bp = Blueprint("audit", __name__)


@bp.post("/audit/verify")
@admin_required
def verify():
    """Recompute the audit's hash chain from the oldest checkpoint kept, as `waygate audit
    verify` does; the verdict also sets `waygate_audit_broken` and
    `waygate_audit_verified_timestamp_seconds`. 200 either way: `intact` says which.
    ---
    post:
      summary: Verify the audit chain (admin)
      tags: [audit]
      responses:
        200:
          description: The verification's report
          content:
            application/json:
              schema:
                type: object
                required: [intact, summary, problems]
                properties:
                  intact: {type: boolean}
                  summary: {type: string, description: "one line, as the CLI prints it"}
                  first_seq: {type: integer, description: the entry it started after}
                  last_seq: {type: integer}
                  executions: {type: integer}
                  events: {type: integer}
                  checkpoints: {type: integer}
                  problems: {type: array, items: {type: string}, maxItems: 20}
                  problem_count: {type: integer}
                  unchained: {type: integer, description: finished rows not chained yet}
                  seconds: {type: number}
        404:
          description: The audit chain is off (WAYGATE_AUDIT_CHAIN=false)
    """
    chain = services().audit.chain
    if chain is None:
        raise NotFound("the audit chain is off (WAYGATE_AUDIT_CHAIN=false)")
    return jsonify(chain.check().as_dict())
