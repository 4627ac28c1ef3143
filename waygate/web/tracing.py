"""The HTTP server span of every request, when tracing is on (``waygate.tracing``).

The maintained Flask instrumentation makes the span: W3C ``traceparent``/``tracestate``
headers continue the caller's trace, the span is named ``METHOD /route/<template>`` (never the
raw path) and carries the status code. Waygate adds the calling key's id (never the key) and
the request id. Not installed at all while tracing is off.
"""

from __future__ import annotations

from flask import Flask, Response, g
from opentelemetry import trace

from .. import tracing


def init_app(app: Flask) -> None:
    """Early in the factory: the span must start before the hooks that may refuse a request
    (auth, rate limit), so that a 401 or 429 has its span too."""
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.provider(),
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus's (waygate.metrics)
        enable_commenter=False,  # no SQL commenter context: Waygate's SQL is not an ORM's
    )
    app.after_request(_annotate)


def _annotate(response: Response) -> Response:
    span = trace.get_current_span()
    if span.is_recording():
        key = g.get("api_key")
        if key is not None:
            span.set_attribute("waygate.key_id", key.id)
        request_id = g.get("request_id")
        if request_id:
            span.set_attribute("waygate.request_id", request_id)
    return response
