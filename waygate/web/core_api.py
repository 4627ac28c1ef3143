"""Core endpoints: service information, health and readiness (spec 2.1)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import SERVICE_NAME, __version__
from ..health import (
    HealthReport,
    cache_check,
    database_check,
    filesystem_check,
    free_bytes,
    plugins_check,
    run_checks,
)
from ..metrics import metrics
from . import services
from .envelope import error_response
from .limiter import limit_group

bp = Blueprint("core", __name__)


@bp.get("/")
def index():
    """Service information and status.
    ---
    get:
      summary: Service information
      tags: [core]
      responses:
        200:
          description: Service is operational
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Index"}
    """
    return jsonify(
        {
            "service": SERVICE_NAME,
            "version": __version__,
            "status": "operational",
            "mode": services().config.mode,
            "description": "Enterprise-grade MCP Server Framework",
            "documentation": "/docs",
        }
    )


def check_health(record: bool = False) -> HealthReport:
    """Run every health check; with ``record``, also set the health gauges (for the alert
    rules). Only a scrape records: it runs the checks itself right before it collects, and
    the gauges keep the most recent value of any worker, so a value /health wrote would
    always be superseded by the scrape's own before anyone reads it (and the writes, a file
    write per gauge in multiprocess mode, were most of /health's metrics cost)."""
    svc = services()
    limiter = current_app.extensions["waygate.limiter"]
    failed_plugins = svc.plugins.current.failed
    report = run_checks(
        {
            "database": database_check(svc.storage.ping),
            "cache": cache_check(limiter.storage_answers),
            "filesystem": filesystem_check(svc.config.data_dir, svc.config.min_free_bytes),
            "plugins": plugins_check(lambda: failed_plugins),
        }
    )
    if record:
        metrics().observe_health(
            {name: name in report.failures for name in report.checks},
            plugins_failed=len(failed_plugins),
            free_bytes=free_bytes(svc.config.data_dir),
        )
        if svc.upstreams is not None:
            states = svc.upstreams.health()[1]
            metrics().observe_upstreams({n: s["status"] == "up" for n, s in states.items()})
    return report


@bp.get("/health")
@limit_group("health")
def health():
    """Health checks for monitoring: database, cache (rate-limit storage), filesystem, plugins.
    ---
    get:
      summary: Health check
      tags: [core]
      responses:
        200:
          description: All health checks passing
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Health"}
        503:
          description: One or more checks failing (the body names them)
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Health"}
    """
    svc = services()
    report = check_health()
    body = {**report.as_dict(), "pool": svc.commands.pool.stats().as_dict()}
    if svc.upstreams is not None:  # an upstream that is down degrades, it does not fail
        body["checks"]["upstreams"], body["upstreams"] = svc.upstreams.health()
    if report.healthy:
        return jsonify(body)
    failed = sorted(report.failures)
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        "health checks failing: " + ", ".join(failed),
        details={"failed": report.failures},
        extra=body,
    )


@bp.get("/ready")
def ready():
    """Readiness probe: 503 while a worker starts and once it drains after SIGTERM.
    ---
    get:
      summary: Readiness probe
      tags: [core]
      responses:
        200:
          description: Service is ready
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Ready"}
        503:
          description: Service not ready
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Ready"}
    """
    readiness = services().readiness
    if readiness.is_ready:
        return jsonify({"ready": True})
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        f"not ready: {readiness.state}",
        details={"state": readiness.state},
        extra={"ready": False},
        headers={"Retry-After": "1"},
    )
