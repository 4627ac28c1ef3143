"""Traces: the process's OpenTelemetry tracer, the command and storage spans, and the trace
context that travels with a command (into the pool, to plugins, into the audit log).

Off by default (``WAYGATE_TRACING``). Off means off: nothing here makes a span, not even a
no-op one. Every entry point asks ``_tracer is None`` first and hands back ``None`` or a shared
null context manager, so the request path pays one attribute read and one call.

On, each process gets a tracer provider with a batch span processor and an OTLP/HTTP
(protobuf) exporter, configured by the standard ``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*`` and
``OTEL_SERVICE_NAME`` variables. Spans are exported from the processor's own thread, never on
a request's path: a collector that is slow or down drops spans, not requests. Gunicorn workers
build their app after fork (no ``preload_app``), so each worker sets its provider up itself;
the SDK's batch processor also restarts its thread in a forked child on its own.

Framework-free: ``waygate.web.request_spans`` puts the HTTP server span on Flask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from .config import Config

SERVICE_NAME = "waygate"
# Trace context the 2026-07-28 MCP revision carries in params._meta (W3C Trace Context names).
META_TRACE_FIELDS = ("traceparent", "tracestate")

_tracer = None  # an opentelemetry Tracer while tracing is on in this process
_provider = None
_NULL: AbstractContextManager[None] = nullcontext()
_LINK_KEY = "waygate.tracing.link"  # context key: a span the next command span links to


def enabled() -> bool:
    return _tracer is not None


def setup(config: Config) -> None:
    """Start tracing in this process when the config asks for it (once per process)."""
    global _tracer, _provider
    if not config.tracing or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from . import __version__

    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME,
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # plugins' own spans join the same traces
    _provider = provider
    _tracer = provider.get_tracer("waygate", __version__)


# -- request spans -------------------------------------------------------------------------------


def start_request(
    method: str, route: str | None, carrier: Mapping[str, str], attributes: dict[str, Any]
) -> tuple[Span, object] | None:
    """The server span of one request, made current: a child of the caller's span when
    ``carrier`` (the request headers) holds W3C trace context. ``(span, token)`` for
    :func:`end_request`; None while tracing is off."""
    if _tracer is None:
        return None
    attributes["http.request.method"] = method
    if route is not None:
        attributes["http.route"] = route
    span = _tracer.start_span(
        f"{method} {route}" if route is not None else method,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    return span, context.attach(trace.set_span_in_context(span))


def end_request(started: tuple[Span, object] | None, status: int | None) -> None:
    if started is None:
        return
    span, token = started
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a server span fails on 5xx only; a 4xx is the client's
            span.set_status(Status(StatusCode.ERROR))
    span.end()
    context.detach(token)


# -- command spans -------------------------------------------------------------------------------


def start_command(
    action: str,
    plugin: str,
    command_id: str,
    mode: str,
    timeout: int,
    key_id: int | None,
    *,
    detached: bool = False,
) -> Span | None:
    """A span for one execution, from submission (queueing included) to its audit record.

    A child of the current span; ``detached`` (async executions) makes it the root of its own
    trace with a link to the current span, the request that submitted it."""
    if _tracer is None:
        return None
    current = trace.get_current_span().get_span_context()
    links = []
    parent = None
    if detached:
        parent = context.Context()
        if current.is_valid:
            links.append(trace.Link(current, {"waygate.link": "submitted_by"}))
    linked = context.get_value(_LINK_KEY)
    if linked is not None:
        links.append(trace.Link(linked, {"waygate.link": "http_request"}))
    attributes: dict[str, Any] = {
        "waygate.command": action,
        "waygate.plugin": plugin,
        "waygate.command_id": command_id,
        "waygate.mode": mode,
        "waygate.timeout_s": timeout,
    }
    if key_id is not None:
        attributes["waygate.key_id"] = key_id
    return _tracer.start_span(
        f"command {action}", context=parent, links=links, attributes=attributes
    )


def end_command(span: Span | None, status: str, duration_ms: int, error: str | None) -> None:
    if span is None:
        return
    span.set_attribute("waygate.outcome", status)
    span.set_attribute("waygate.duration_ms", duration_ms)
    if status not in ("success", "input_required"):  # a round that asked did not fail
        span.set_status(Status(StatusCode.ERROR, (error or status)[:256]))
    span.end()


def rejected_command(command_id: str, error: str) -> None:
    """A batch item refused before it ran: a span of its own, so the batch shows every item."""
    if _tracer is None:
        return
    span = _tracer.start_span(
        "command (rejected)",
        attributes={"waygate.command_id": command_id, "waygate.outcome": "failed"},
    )
    span.set_status(Status(StatusCode.ERROR, error[:256]))
    span.end()


def child(parent: Span | None, name: str) -> AbstractContextManager:
    """``with child(span, "waygate.audit.commit"):`` a span under ``parent`` (nothing if None)."""
    if parent is None or _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, context=trace.set_span_in_context(parent))


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager:
    """``with span("waygate.ratelimit.hit"):`` a child of the current span (nothing when off)."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


# -- context that travels --------------------------------------------------------------------------


def context_of(span: Span | None) -> Context | None:
    """The context in which ``span`` is current: what a handler and its plugin see."""
    if span is None:
        return None
    return trace.set_span_in_context(span)


def run_in(ctx: Context | None, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` as it should run in a pool thread: inside ``ctx`` (``fn`` itself when None)."""
    if ctx is None:
        return fn

    def in_context() -> Any:
        token = context.attach(ctx)
        try:
            return fn()
        finally:
            context.detach(token)

    return in_context


def trace_id(span: Span | None) -> str | None:
    """The span's trace id as 32 hex digits (how the audit log stores it); None when there
    is no span or the sampler dropped its trace (no operator could find it)."""
    if span is None:
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_flags.sampled else None


def headers(ctx: Context | None) -> dict[str, str]:
    """W3C ``traceparent``/``tracestate`` headers that continue ``ctx`` (empty when None)."""
    if ctx is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def continue_meta(meta: Any) -> AbstractContextManager:
    """Continue the caller's trace given in an MCP ``params._meta`` (2026-07-28 revision).

    When the meta names another trace than the current one (e.g. no ``traceparent`` header,
    or stdio), the commands run under it become children of the caller's span there, linked
    to the HTTP request span; a meta naming the current trace changes nothing."""
    if _tracer is None or not isinstance(meta, Mapping) or "traceparent" not in meta:
        return _NULL
    carrier = {k: meta[k] for k in META_TRACE_FIELDS if isinstance(meta.get(k), str)}
    remote = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not remote.is_valid or remote.trace_id == current.trace_id:
        return _NULL
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    if current.is_valid:
        ctx = context.set_value(_LINK_KEY, current, ctx)
    return _Attached(ctx)


class _Attached:
    def __init__(self, ctx: Context):
        self._ctx = ctx

    def __enter__(self) -> None:
        self._token = context.attach(self._ctx)

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self._token)


# -- logs ----------------------------------------------------------------------------------------


class LogContextFilter(logging.Filter):
    """Puts the current span's ``trace_id`` and ``span_id`` on every record (``-`` outside)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = record.span_id = "-"
        if _tracer is not None:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
        return True
