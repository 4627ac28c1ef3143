"""The HTTP server span of every request, when tracing is on (``waygate.tracing``).

One span per request, started before any hook that may refuse the request (so a 401 or a 429
has its span too) and ended when the request is torn down. W3C ``traceparent``/``tracestate``
headers continue the caller's trace. The span is named ``METHOD /route/<template>`` (never
the raw path) and carries the status code, the calling key's id (never the key) and the
request id. Not installed at all while tracing is off.

Hand-written rather than opentelemetry-instrumentation-flask: that instrumentation collects
every WSGI attribute twice per request, feeds HTTP metrics Waygate keeps in Prometheus, and
on this path cost more than the command, audit and rate-limit spans together (see
bench/README.md); these hooks make the same server span for a fraction of it.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from .. import tracing


def init_app(app: Flask) -> None:
    if not tracing.enabled():
        return
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_annotate)
    app.teardown_request(_end)


def _start() -> None:
    rule = request.url_rule
    g.trace_request = tracing.start_request(
        request.method,
        rule.rule if rule is not None else None,
        request.headers,
        {"url.scheme": request.scheme, "client.address": request.remote_addr or ""},
    )


def _annotate(response: Response) -> Response:
    started = g.get("trace_request")
    if started is not None:
        span = started[0]
        g.trace_status = response.status_code
        key = g.get("api_key")
        if key is not None:
            span.set_attribute("waygate.key_id", key.id)
        request_id = g.get("request_id")
        if request_id:
            span.set_attribute("waygate.request_id", request_id)
    return response


def _end(exc: BaseException | None) -> None:
    tracing.end_request(g.pop("trace_request", None), g.get("trace_status", 500))
