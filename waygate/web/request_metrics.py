"""``/metrics`` (prometheus-flask-exporter, multiprocess-aware) and per-request metrics.

The exporter's own default metrics have fixed names without an endpoint label, so requests
are counted here, in before/after-request hooks that also see 404, 405, 413 and 429.
"""

from __future__ import annotations

import time
import weakref

from flask import Flask, Response, g, request
from prometheus_flask_exporter import PrometheusMetrics

from .. import compat
from ..metrics import metrics
from . import services
from .core_api import check_health
from .limiter import limit_group

UNMATCHED = "<unmatched>"
METRICS_DOC = """Prometheus metrics of every worker.
    ---
    get:
      summary: Prometheus-compatible metrics
      tags: [core]
      responses:
        200:
          description: Metrics returned
          content:
            text/plain:
              schema: {type: string}
    """
# Sockets this worker has seen: a socket not seen before is a new client connection.
_seen_sockets: weakref.WeakSet = weakref.WeakSet()


def _start() -> None:
    g.started = time.perf_counter()
    req = request._get_current_object()  # type: ignore[attr-defined]
    sock = req.environ.get("gunicorn.socket")
    if sock is not None and sock not in _seen_sockets:
        _seen_sockets.add(sock)
        metrics().count_connection()
    # Each scrape also runs the health checks, so the health gauges are fresh for the alert
    # rules even where nothing else polls /health.
    if req.endpoint == compat.METRICS_ENDPOINT:
        check_health(record=True)


def _observe(response: Response) -> Response:
    started = g.get("started")
    if started is not None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        elapsed = time.perf_counter() - started
        services().latency.add(elapsed)
        metrics().observe_request(
            req.method, rule.rule if rule is not None else UNMATCHED, response.status_code, elapsed
        )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_observe)
    exporter = PrometheusMetrics.for_app_factory(
        path="/metrics",
        export_defaults=False,
        registry=metrics().registry,
        metrics_decorator=limit_group("metrics"),
    )
    exporter.init_app(app)
    compat.document_metrics_view(app, METRICS_DOC)
    app.extensions["waygate.exporter"] = exporter
