"""Prometheus metrics: owns the metric objects and how they are exposed.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (set by the master before any worker imports
prometheus_client) puts every worker's values in files there, and a scrape of ``/metrics``
on any worker reads them all, so counts add up over workers. Without it (one process, tests)
the metrics live in this process's own registry.

Labels are bounded: ``endpoint`` is the route template (``/plugins/<plugin_name>``), never
the raw path; ``action`` is a command that exists (unknown actions are refused earlier).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .forksafe import reset_after_fork

# prometheus_client is imported inside the functions below, never at module import: it picks
# its value storage (in memory or multiprocess files) once, when first imported, and the
# gunicorn master imports this module to set PROMETHEUS_MULTIPROC_DIR before that happens.

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


log = logging.getLogger(__name__)
_failed_at = 0.0


def _never_raising(record: Callable) -> Callable:
    """A metric that cannot be written (full or read-only data dir, where multiprocess mode
    keeps its files) must not fail the request or the command it describes: log it, at most
    once a minute, and go on."""

    @functools.wraps(record)
    def recording(*args, **kwargs):
        global _failed_at
        try:
            record(*args, **kwargs)
        except OSError as exc:
            if time.monotonic() - _failed_at > 60:
                _failed_at = time.monotonic()
                log.warning("could not record metrics: %s", exc)

    return recording


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The process's metric objects (prometheus_client allows each name once per registry)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple, Any] = {}
        self._pool_written = (0, 0)  # the pool gauges' values, as last written
        r = self.registry
        self.requests = Counter(
            "waygate_requests_total",
            "Total number of requests",
            ["method", "endpoint", "status"],
            registry=r,
        )
        self.response_time = Histogram(
            "waygate_response_time_seconds",
            "Response time in seconds",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "waygate_commands_total",
            "Commands executed, by outcome",
            ["action", "status"],
            registry=r,
        )
        self.command_duration = Histogram(
            "waygate_command_duration_seconds",
            "Command execution time in seconds",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pool_in_use = Gauge(
            "waygate_pool_threads_in_use",
            "Command pool threads running a command (stuck ones included)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.pool_queued = Gauge(
            "waygate_pool_queue_depth",
            "Commands admitted and waiting for a pool thread",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rate_limited = Counter(
            "waygate_rate_limited_total",
            "Requests refused by a rate limit",
            ["endpoint"],
            registry=r,
        )
        self.mcp_listens = Gauge(
            "waygate_mcp_listens",
            "MCP subscriptions/listen streams open (each holds a request thread)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.plugins_loaded = Gauge(
            "waygate_plugins_loaded",
            "Plugins loaded and active",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.connections = Counter(
            "waygate_connections_total", "Client connections accepted", registry=r
        )
        self.admission_refused = Counter(
            "waygate_admission_refused_total",
            "Command requests refused at once because a worker's command threads were all waiting",
            registry=r,
        )
        # Set whenever the health checks run (GET /health, and every scrape of /metrics);
        # the most recent run of any live worker counts.
        self.health_failing = Gauge(
            "waygate_health_check_failing",
            "1 while a /health check fails, by check",
            ["check"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.plugins_failed = Gauge(
            "waygate_plugins_failed",
            "Plugins that failed to load",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.upstream_up = Gauge(
            "waygate_upstream_up",
            "1 while an upstream MCP server is connected (0: down, connecting or failed), by"
            " upstream; the lowest of the live workers, each having its own connection",
            ["upstream"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.free_bytes = Gauge(
            "waygate_data_dir_free_bytes",
            "Free space on the data dir's filesystem",
            multiprocess_mode="livemostrecent",
            registry=r,
        )

        self.approvals_pending = Gauge(
            "waygate_approvals_pending",
            "Executions awaiting approval (a count of the shared database)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.audit_verified_at = Gauge(
            "waygate_audit_verified_timestamp_seconds",
            "When the audit chain was last verified (by any worker's housekeeping, the admin"
            " endpoint)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.audit_broken = Gauge(
            "waygate_audit_broken",
            "1 if the last verification found the audit chain broken, 0 if intact (or never"
            " verified: see waygate_audit_verified_timestamp_seconds)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.approvals_requested = Counter(
            "waygate_approvals_requested_total",
            "Executions held for approval",
            registry=r,
        )
        self.approval_decisions = Counter(
            "waygate_approval_decisions_total",
            "Approval outcomes: approved, denied or expired",
            ["outcome"],
            registry=r,
        )
        self.approval_webhook_failures = Counter(
            "waygate_approval_webhook_failures_total",
            "Approval notifications the webhook never took (every retry failed, or queue full)",
            registry=r,
        )

    @_never_raising
    def observe_audit_verification(self, intact: bool) -> None:
        """A verification of the audit chain reached its end (or a break): when, and how.
        ``mostrecent`` over every worker, dead ones too: the last verdict stands."""
        self.audit_verified_at.set(time.time())
        self.audit_broken.set(0 if intact else 1)

    @_never_raising
    def observe_approvals(self, event: str, pending: int) -> None:
        """After an approval step (requested, approved, denied, expired, or refresh): count
        it; ``pending`` is the count awaiting approval now, over every worker."""
        if event == "requested":
            self.approvals_requested.inc()
        elif event in ("approved", "denied", "expired"):
            self.approval_decisions.labels(event).inc()
        self.approvals_pending.set(pending)

    @_never_raising
    def count_webhook_failure(self) -> None:
        self.approval_webhook_failures.inc()

    @_never_raising
    def count_admission_refused(self) -> None:
        self.admission_refused.inc()

    @_never_raising
    def count_connection(self) -> None:
        self.connections.inc()

    @_never_raising
    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self._child(self.requests, method, endpoint, status).inc()
        self.response_time.observe(seconds)
        if status == 429:
            self.rate_limited.labels(endpoint).inc()

    @_never_raising
    def observe_command(self, action: str, status: str, duration_ms: int) -> None:
        self._child(self.commands, action, status).inc()
        self._child(self.command_duration, action).observe(duration_ms / 1000)

    def _child(self, metric: Any, *labels: Any) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client looks a child up under a
        lock and re-validates its label values on every call. A cache of this process's own
        metric objects (they live as long as the process); the values stay in the metric."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*(str(v) for v in labels))
        return child

    @_never_raising
    def observe_upstreams(self, up: dict[str, bool]) -> None:
        for upstream, is_up in up.items():
            self.upstream_up.labels(upstream).set(1 if is_up else 0)

    @_never_raising
    def observe_health(
        self, failing: dict[str, bool], plugins_failed: int, free_bytes: int | None
    ) -> None:
        for check, is_failing in failing.items():
            self.health_failing.labels(check).set(1 if is_failing else 0)
        self.plugins_failed.set(plugins_failed)
        if free_bytes is not None:
            self.free_bytes.set(free_bytes)

    @_never_raising
    def observe_listens(self, count: int) -> None:
        self.mcp_listens.set(count)

    @_never_raising
    def observe_pool(self, in_use: int, queued: int) -> None:
        # Only what changed is written (the pool reports both when either changed): each
        # write is a file write in multiprocess mode, and a livesum gauge is this process's
        # own value, so skipping an unchanged one changes nothing a scrape sees.
        if in_use != self._pool_written[0]:
            self.pool_in_use.set(in_use)
        if queued != self._pool_written[1]:
            self.pool_queued.set(queued)
        self._pool_written = (in_use, queued)


_lock = threading.Lock()
_metrics: Metrics | None = None


def _forked(module) -> None:
    module._lock = threading.Lock()  # another thread may have held it at fork


reset_after_fork(sys.modules[__name__], _forked)


def metrics() -> Metrics:
    """This process's metrics, made on first use (after fork under gunicorn)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


def prepare_multiprocess_dir(path) -> None:
    """Empty the directory and point prometheus_client at it (the master, before forking)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)


def share_service_metrics(path) -> str | None:
    """Record this process's metrics into the service's multiprocess directory (``path``,
    <data dir>/prometheus, made by the gunicorn master), for work done outside the workers:
    a command the CLI approves and runs, ``waygate mcp stdio``. Then every worker's /metrics
    counts that work too, as the audit does. Its live gauges go when it exits; its counters
    stay, as a dead worker's do.

    None when this process records there (or there is no directory: no service has run on
    this data dir, so there is no /metrics to agree with); else why it does not."""
    if multiprocess():
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if info.st_uid != os.geteuid():
        # files this user wrote there could not be read by the service's workers
        return f"{path} belongs to another user: run this as the service's user"
    if "prometheus_client" in sys.modules:
        # it chose in-memory values when imported; never the case in a fresh CLI process
        return "the metrics library was loaded before the data dir was known"
    os.environ[MULTIPROC_ENV] = str(path)
    pid = os.getpid()
    atexit.register(lambda: os.getpid() == pid and mark_worker_dead(pid))
    return None


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)


def counter_total(name: str) -> float:
    """The sum of a counter over every worker (and every label set)."""
    from prometheus_client import CollectorRegistry

    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
    else:
        registry = metrics().registry
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    )
