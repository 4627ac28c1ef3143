"""Waygate with its per-request features switched off, for `bench/run.py --floor` only.

Not a product configuration: it answers how fast the command path could be at best with
the rate limit, the audit row, the pool hand-off and the Prometheus metrics all gone, so
that the cost of each feature, and what the targets leave for them, can be measured in the
same run as the real server. ``WAYGATE_BENCH_ABLATE`` lists what to switch off
(comma-separated: ratelimit, audit, pool, metrics; default all).
"""

import os

from waygate import audit, metrics, pool
from waygate.web import limiter

OFF = set(
    filter(None, os.environ.get("WAYGATE_BENCH_ABLATE", "ratelimit,audit,pool,metrics").split(","))
)

if "ratelimit" in OFF:
    limiter.RateLimiter.check = lambda self: None
if "audit" in OFF:
    audit.AuditLog.record = lambda self, **fields: None
if "pool" in OFF:

    def _inline(self, fn, wait=0.0):
        job = pool.Job(fn)
        job._run()  # in the request thread: no hand-off
        return job

    pool.CommandPool.submit = _inline
if "metrics" in OFF:
    for name in ("count_connection", "observe_request", "observe_command", "observe_pool"):
        setattr(metrics.Metrics, name, lambda self, *args, **kwargs: None)

from wsgi import app  # noqa: E402  (after the switches, which patch the classes it builds)

__all__ = ["app"]
