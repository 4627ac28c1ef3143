"""The application factory."""

from __future__ import annotations

import logging

from flask import Flask

from . import compat, tracing
from .config import Config
from .lifecycle import service_started_at
from .logs import configure_logging
from .services import Services
from .web import (
    approvals_api,
    audit_api,
    auth,
    console,
    core_api,
    diagnostics_api,
    docs_api,
    envelope,
    execute_api,
    http,
    jsonio,
    keys_api,
    limiter,
    mcp_api,
    oauth_api,
    plugins_api,
    request_metrics,
    request_spans,
    signin_api,
    versioning,
)

log = logging.getLogger(__name__)


def create_app(config: Config | None = None, services: Services | None = None) -> Flask:
    """Build the Waygate app. ``config`` defaults to the environment's ``WAYGATE_*`` settings."""
    config = config or (services.config if services else Config.from_env())
    configure_logging(config)
    tracing.setup(config)  # in the worker, after fork: its own exporter thread
    service_started_at()  # a process that was not forked by Waygate's master records its own
    services = services or Services.build(config)

    app = Flask(__name__)
    compat.remember_sync_wrappers(app)
    jsonio.init_app(app)
    app.extensions["waygate"] = services
    envelope.init_app(app)
    envelope.install_error_persistence(app)
    # Hook order is request order: the metrics timer (it cannot fail), then the request id,
    # before anything that can fail, so that every error carries it.
    request_metrics.init_app(app)
    request_spans.init_app(app)  # the server span, before anything that can refuse the request
    http.init_app(app, config)
    versioning.init_app(app, config)
    auth.init_app(app)
    app.register_blueprint(core_api.bp)
    app.register_blueprint(execute_api.bp)
    app.register_blueprint(approvals_api.bp)
    app.register_blueprint(plugins_api.bp)
    app.register_blueprint(diagnostics_api.bp)
    app.register_blueprint(audit_api.bp)
    app.register_blueprint(keys_api.bp)
    app.register_blueprint(mcp_api.bp)
    app.register_blueprint(oauth_api.bp)
    app.register_blueprint(signin_api.bp)
    app.register_blueprint(docs_api.bp)
    console.init_app(app, services)
    app.extensions["waygate.limiter"] = limiter.build(app, config)
    auth.confirm_after_limits(app)  # after the limiter's hit, which reads the key generation
    http.trust_proxies(app, config)  # last: the outermost WSGI layer

    loaded = services.plugins.current  # load plugins now, not on the first request
    services.leases.sweep()  # executions a dead worker left behind are closed on start
    services.housekeeper.start()
    services.readiness.mark_ready()
    log.info(
        "worker ready: %d plugin(s) loaded, %d failed, %d command(s)",
        len(loaded.loaded),
        len(loaded.failed),
        len(loaded.commands),
    )
    return app
