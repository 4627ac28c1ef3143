"""Rate limits (spec section 5) with flask-limiter, keyed by API key name, else client IP.

Views choose a limit group with :func:`limit_group`; the factory applies the configured limit
for each group, and every other endpoint gets the default limit. The storage defaults to
Waygate's SQLite storage (exact across workers); ``memory://`` counts per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, g, request
from flask_limiter import Limiter

from .. import ratelimit  # noqa: F401  (registers the sqlite:// storage scheme)
from ..config import Config

log = logging.getLogger("waygate.limits")

LIMIT_GROUPS = ("execute", "health", "metrics")
LIMITER_RETRY_AFTER = "X-Waygate-Limiter-Retry-After"


def limit_group(group: str) -> Callable:
    """Mark a view as counted against ``group``'s limit (shared by every view in the group)."""
    assert group in LIMIT_GROUPS

    def mark(view: Callable) -> Callable:
        view.waygate_limit_group = group  # type: ignore[attr-defined]
        return view
    return mark


def caller_identity() -> str:
    key = g.get("api_key")
    if key is not None:
        return f"key:{key.name}"
    return f"ip:{request.remote_addr or 'unknown'}"


def build(app: Flask, config: Config) -> Limiter:
    app.config.update(
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=config.ratelimit_fail_open,
        RATELIMIT_STRATEGY="fixed-window",
        RATELIMIT_KEY_PREFIX="waygate",
        # storage failures arrive as limits.errors.StorageError, whatever the backend
        RATELIMIT_STORAGE_OPTIONS={"wrap_exceptions": True},
        # flask-limiter would put its window's Retry-After on every response, overriding a
        # 503's own; it writes to this internal header instead, which http.py turns into
        # Retry-After on a 429 only and never sends.
        RATELIMIT_HEADER_RETRY_AFTER=LIMITER_RETRY_AFTER,
    )
    limiter = Limiter(
        key_func=caller_identity,
        app=None,
        storage_uri=config.effective_ratelimit_storage_uri,
        default_limits=[config.rate_limit_default],
    )
    for endpoint, view in list(app.view_functions.items()):
        group = getattr(view, "waygate_limit_group", None)
        if group:
            value = getattr(config, f"rate_limit_{group}")
            app.view_functions[endpoint] = limiter.shared_limit(value, scope=group)(view)
    limiter.init_app(app)
    return limiter


def storage_answers(limiter: Limiter) -> bool:
    try:
        return bool(limiter.storage.check())
    except Exception as exc:  # any storage failure means "does not answer"
        log.error("rate-limit storage check failed: %s", exc)
        return False
