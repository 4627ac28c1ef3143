"""Every place where Waygate reaches into a library's internals, and the versions it was
written for.

Each function here relies on something a library does not promise (a private attribute, a
cache, an endpoint name, which method a framework calls). They are gathered here, rather than
spread over the modules that need them, so that an upgrade has one place to check:
``tests/test_compat.py`` runs each against the installed libraries and fails loudly, naming
the library, when one no longer holds or when a library is outside ``WRITTEN_FOR``.

Flask and its extensions are imported inside the functions that need them: the service layer
imports this module and stays free of Flask.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

#: distribution -> the versions the functions below were written and tested for
WRITTEN_FOR = {
    "stevedore": ">=5.1,<6",
    "flask": ">=3.0,<3.2",
    "flask-cors": ">=5.0,<7",
    "prometheus-flask-exporter": ">=0.23,<0.24",
    "gunicorn": ">=23,<28",
    "psycopg": ">=3.3,<3.4",
}


# -- psycopg -----------------------------------------------------------------------------------


def bounded_connection_class(timeout_s: float, error: type[Exception]) -> type:
    """A psycopg Connection class whose every wait on the server ends after ``timeout_s``.

    A server that accepts and never answers (frozen, stuck on a dead disk) is never ended by
    its own ``statement_timeout``; libpq would wait forever on a pooled connection. psycopg
    3.3's ``Connection.wait`` takes a ``timeout`` and raises its private ``_WaitTimeout``; this
    class passes the bound to every wait, closes the connection (its protocol state is lost
    mid-statement, so the pool drops it) and raises ``error`` saying so."""
    import psycopg
    from psycopg import errors

    class BoundedConnection(psycopg.Connection):
        def wait(self, gen, interval=0.1, timeout=None):
            try:
                return super().wait(gen, interval, timeout_s if timeout is None else timeout)
            except errors._WaitTimeout:
                self.close()
                raise error(f"the database did not answer within {timeout_s:g} s") from None

    return BoundedConnection


# -- stevedore ---------------------------------------------------------------------------------


def seed_entry_points(namespace: str, entry_points: list) -> None:
    """Make stevedore's next ExtensionManager of ``namespace`` use these entry points.

    stevedore remembers entry points per process (``ExtensionManager.ENTRY_POINT_CACHE``) and
    in a file cache keyed on path mtimes; seeding the per-process one bypasses both."""
    from stevedore import ExtensionManager

    ExtensionManager.ENTRY_POINT_CACHE[namespace] = entry_points


def seeded_entry_points(namespace: str) -> list:
    """What :func:`seed_entry_points` (or stevedore itself) last remembered for ``namespace``."""
    from stevedore import ExtensionManager

    return list(ExtensionManager.ENTRY_POINT_CACHE.get(namespace, []))


def forget_modules(roots: Iterable[str]) -> None:
    """Drop packages (and their submodules) from ``sys.modules`` so that the next import reads
    their code again. Objects already handed out keep the old module alive until released."""
    roots = set(roots)
    for name in list(sys.modules):
        if name in roots or any(name.startswith(root + ".") for root in roots):
            del sys.modules[name]


# -- the standard library's site ------------------------------------------------------------


def apply_pth_file(sitedir: str, name: str) -> None:
    """Apply one ``.pth`` file of ``sitedir`` as ``site`` does at interpreter start: its path
    lines join ``sys.path`` (once), its ``import`` lines run. ``site.addpackage`` is what
    ``site.addsitedir`` calls per file; it is not in the documentation (CPython 3.11-3.13)."""
    import site

    site.addpackage(sitedir, name, None)


# -- gunicorn ----------------------------------------------------------------------------------


def peer_closed_probe(environ: dict) -> Callable[[], bool] | None:
    """A check that the client of a streamed response has closed its connection, without
    writing to it: gunicorn puts the connection's socket in the WSGI environ as
    ``gunicorn.socket`` (not a WSGI promise). Readable with nothing to read means the peer
    closed. None where there is no plain socket (another server, TLS): a failed write is
    then how a closed client is noticed."""
    import select
    import socket

    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or type(sock) is not socket.socket:
        return None  # an SSLSocket refuses MSG_PEEK

    def closed() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset, or closed under us: gone
            return True

    return closed


def gunicorn_logger_class(
    access_format: str, formatter: Callable[[], Any] | None, base: type | None = None
) -> type:
    """A gunicorn ``logger_class`` whose access lines use ``access_format`` (a logging format,
    gunicorn's line in ``%(message)s``) and, with ``formatter``, whose every handler (error and
    access) uses the formatter it makes; ``base`` is a gunicorn Logger subclass to extend.
    Relies on ``Logger.access_fmt``, ``setup()`` and the
    ``error_log`` / ``access_log`` loggers, which gunicorn does not document."""
    from gunicorn import glogging

    class Logger(base or glogging.Logger):  # type: ignore[misc, valid-type]
        access_fmt = access_format

        def setup(self, cfg):
            super().setup(cfg)
            if formatter is not None:
                for log in (self.error_log, self.access_log):
                    for handler in log.handlers:
                        handler.setFormatter(formatter())

    return Logger


# -- Flask -------------------------------------------------------------------------------------


def remember_sync_wrappers(app: Any) -> None:
    """Flask asks ``inspect.iscoroutinefunction`` of every hook and view on every request (a
    dozen calls) through ``app.ensure_sync``; the answer never changes, so it is remembered
    per function. Relies on Flask calling ``self.ensure_sync`` for each hook and view."""
    original: Callable = app.ensure_sync
    wrappers: dict = {}

    def ensure_sync(func: Callable) -> Callable:
        wrapped = wrappers.get(func)
        if wrapped is None:
            wrapped = wrappers[func] = original(func)
        return wrapped

    app.ensure_sync = ensure_sync


def response_payload(provider: Any, args: tuple, kwargs: dict) -> Any:
    """What ``jsonify(*args, **kwargs)`` would serialise, as Flask's JSON provider works it out
    (one positional value, several as a list, or keywords as an object)."""
    return provider._prepare_response_obj(args, kwargs)


# -- flask-cors --------------------------------------------------------------------------------


def cors_options(app: Any, options: dict) -> dict:
    """flask-cors's resolved options for ``options``, to apply with :func:`apply_cors`."""
    from flask_cors.core import get_cors_options

    return get_cors_options(app, options)


def apply_cors(response: Any, options: dict) -> None:
    """Add the CORS headers ``options`` call for to ``response`` (for the current request).
    Used instead of flask-cors's own after-request hook, which matches resource patterns on
    every response: only requests with an Origin header can need them."""
    from flask_cors.core import set_cors_headers

    set_cors_headers(response, options)


# -- prometheus-flask-exporter -----------------------------------------------------------------

METRICS_ENDPOINT = "prometheus_metrics"  # the exporter's view name for /metrics


def document_metrics_view(app: Any, doc: str) -> None:
    """Give the exporter's /metrics view a docstring (the OpenAPI builder reads views' docs)."""
    app.view_functions[METRICS_ENDPOINT].__doc__ = doc
