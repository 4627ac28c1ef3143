"""The plugin author's API: everything a Waygate plugin needs, and nothing else.

A plugin is a subclass of :class:`Plugin`, registered by its distribution under the
``waygate.plugins`` entry-point namespace::

    [options.entry_points]
    waygate.plugins =
        Hello = hello_plugin:HelloPlugin

It declares its metadata and default config, and returns its commands from ``commands()``.
Each :class:`Command` has a marshmallow schema for its params and a handler
``handler(params, ctx)`` that gets the validated params and an :class:`ExecutionContext`.
See docs/plugins.md for a complete example.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from marshmallow import Schema


class CommandError(Exception):
    """Raised by a handler for a failure the caller caused or should see (e.g. bad input).

    ``status`` is the HTTP status the REST API answers with (default 400); the message is shown
    to the caller as it is, so it must not contain secrets.
    """

    def __init__(self, message: str, details: Mapping[str, Any] | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.status = status


class Cancelled(Exception):
    """Raised by :meth:`ExecutionContext.check_cancelled` once the deadline has passed."""


@dataclass
class ExecutionContext:
    command_id: str
    key_name: str | None
    deadline: float  # time.monotonic() value
    logger: logging.Logger | logging.LoggerAdapter
    client_context: dict[str, Any] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: the OpenTelemetry context of this execution's span (None while tracing is off); the
    #: handler already runs inside it, so instrumented clients continue the trace by themselves
    trace_context: Any = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set() or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check_cancelled(self) -> None:
        """Call this in long loops: it raises :class:`Cancelled` once time is up."""
        if self.cancelled:
            raise Cancelled("command cancelled: its timeout passed")

    def trace_headers(self) -> dict[str, str]:
        """W3C ``traceparent``/``tracestate`` headers for an outgoing request, so that the
        service it calls continues this execution's trace (empty while tracing is off)."""
        from .tracing import headers

        return headers(self.trace_context)


Handler = Callable[[dict[str, Any], ExecutionContext], Any]


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    params: type[Schema]
    handler: Handler
    title: str | None = None
    #: MCP tool annotations, e.g. {"readOnlyHint": True}
    annotations: Mapping[str, bool] = field(default_factory=dict)
    #: JSON Schema of the handler's result when it is always an object (MCP outputSchema)
    output_schema: Mapping[str, Any] | None = None


class Plugin:
    """Base class for plugins. Subclasses set the class attributes and ``commands()``."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    description: ClassVar[str] = ""
    author: ClassVar[str] = ""
    capabilities: ClassVar[tuple[str, ...]] = ()
    default_config: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config: dict[str, Any] = {**self.default_config, **(config or {})}

    def commands(self) -> list[Command]:
        raise NotImplementedError
