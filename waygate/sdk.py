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

import base64
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
    #: set by Waygate where someone listens (an MCP stream, an async execution's record)
    on_progress: Callable[[dict[str, Any]], None] | None = None
    #: the latest report_progress(), as it was sent
    progress: dict[str, Any] | None = None
    #: the OpenTelemetry context of this execution's span (None while tracing is off); the
    #: handler already runs inside it, so instrumented clients continue the trace by themselves
    trace_context: Any = None
    #: set by Waygate while the execution runs as an MCP task: the channel on which it asks
    #: its client for input (the task shows ``input_required`` until answered); see
    #: ``waygate.mcp.tasks.TaskInput``. None otherwise.
    task_input: Any = None

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

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Tell the caller how far along the command is: ``progress`` (increasing) out of
        ``total`` if known, and a short message. An MCP client that asked for progress gets it
        as it happens; a polled async execution shows the latest. Cheap when nobody listens."""
        if not _is_number(progress) or not (total is None or _is_number(total)):
            raise TypeError("progress and total must be numbers")
        report: dict[str, Any] = {"progress": progress}
        if total is not None:
            report["total"] = total
        if message is not None:
            report["message"] = str(message)[:500]
        self.progress = report
        if self.on_progress is not None:
            self.on_progress(report)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


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
    #: whether an MCP client may get this command's call as a task (docs/plugins.md, "Long
    #: calls as MCP tasks"): "forbidden" (default: answered in the call, unless it waits for
    #: approval), "optional" (a task for a client that supports tasks, else answered in the
    #: call) or "required" (only as a task: a client without tasks support is refused)
    task_support: str = "forbidden"

    def __post_init__(self) -> None:
        if self.task_support not in TASK_SUPPORT:
            raise ValueError(
                f"task_support of {self.name!r} must be one of {', '.join(TASK_SUPPORT)}"
            )


TASK_SUPPORT = ("forbidden", "optional", "required")


# -- rich results: content blocks ---------------------------------------------------------------


class Content(dict):
    """A content block. Each is already the JSON it travels as (MCP's shape; binary data in
    base64), so a handler's rich result serialises anywhere a plain result does: the REST
    answer, the audit log, an async execution's stored result."""


class Text(Content):
    def __init__(self, text: str):
        super().__init__(type="text", text=text)


class Image(Content):
    def __init__(self, data: bytes, mime_type: str = "image/png"):
        super().__init__(type="image", data=_base64(data), mimeType=mime_type)


class Audio(Content):
    def __init__(self, data: bytes, mime_type: str = "audio/wav"):
        super().__init__(type="audio", data=_base64(data), mimeType=mime_type)


class EmbeddedResource(Content):
    """A resource's contents, inline: ``text`` for text, ``data`` (bytes) for anything else."""

    def __init__(
        self, uri: str, mime_type: str, text: str | None = None, data: bytes | None = None
    ):
        if (text is None) == (data is None):
            raise ValueError("an embedded resource has either text or data")
        super().__init__(
            type="resource",
            resource=resource_contents(uri, mime_type, text if text is not None else data),
        )


class ResourceLink(Content):
    """A pointer to a resource the client may read (``resources/read``) or fetch itself."""

    def __init__(
        self, uri: str, name: str, mime_type: str | None = None, description: str | None = None
    ):
        link = {"type": "resource_link", "uri": uri, "name": name}
        if mime_type:
            link["mimeType"] = mime_type
        if description:
            link["description"] = description
        super().__init__(link)


class RichResult(dict):
    """A handler's result made of content blocks, with a structured value beside them when the
    command declares an ``output_schema`` (MCP's ``structuredContent``)."""

    def __init__(self, content: list[Content] | Content, structured: Any = None):
        blocks = [content] if isinstance(content, Content) else list(content)
        if not all(isinstance(block, Content) for block in blocks):
            raise TypeError("RichResult content must be waygate.sdk content blocks")
        super().__init__(content=blocks)
        if structured is not None:
            self["structured"] = structured


def resource_contents(uri: str, mime_type: str, value: str | bytes) -> dict[str, Any]:
    """One item of a resource's contents: ``text`` for a str, ``blob`` (base64) for bytes."""
    if isinstance(value, str):
        return {"uri": uri, "mimeType": mime_type, "text": value}
    return {"uri": uri, "mimeType": mime_type, "blob": _base64(value)}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- prompts and resources ----------------------------------------------------------------------


@dataclass(frozen=True)
class PromptArgument:
    name: str
    description: str = ""
    required: bool = False
    #: values a client may offer while the user types (MCP ``completion/complete``)
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    """One message of a rendered prompt: a content block and who says it."""

    content: Content
    role: str = "user"  # or "assistant"


@dataclass(frozen=True)
class Prompt:
    """A prompt template clients can list and fill in (MCP ``prompts/get``).

    Either ``template``, a text with ``{argument}`` placeholders rendered as one user
    message, or ``render(arguments)``, which returns a list of :class:`Message` (or bare
    content blocks, said by the user) for anything richer: images, embedded resources."""

    name: str
    description: str
    template: str | None = None
    arguments: tuple[PromptArgument, ...] = ()
    render: Callable[[dict[str, str]], list[Message | Content]] | None = None
    title: str | None = None


@dataclass(frozen=True)
class Resource:
    """Read-only data clients can list and read (MCP ``resources/read``).

    ``uri`` is either fixed (``runbook://disk-full``) or a template with ``{name}`` segments
    (``ticket://{id}/summary``, RFC 6570 level 1), whose values ``read`` receives as a dict.
    ``read`` returns ``str`` (sent as text) or ``bytes`` (sent base64 as ``blob``)."""

    uri: str
    name: str
    read: Callable[[dict[str, str]], str | bytes]
    mime_type: str = "text/plain"
    description: str = ""
    title: str | None = None

    @property
    def is_template(self) -> bool:
        return "{" in self.uri


# -- secret config -------------------------------------------------------------------------------

REDACTED = "***"
#: parts of a config key's name that make it secret by default (case-insensitive)
SECRET_NAME_PARTS = ("token", "secret", "password", "passwd", "key", "credential", "private")


def is_secret_config_key(name: str, declared: tuple[str, ...] | frozenset[str] = ()) -> bool:
    """Whether a config value is secret: its key is declared (``Plugin.secret_config``) or its
    name contains a part of SECRET_NAME_PARTS (``api_token``, ``dbPassword``, ``ssh_key``)."""
    lowered = str(name).lower()
    return name in declared or any(part in lowered for part in SECRET_NAME_PARTS)


def redact_config(config: Any, declared: tuple[str, ...] | frozenset[str] = ()) -> Any:
    """``config`` as it may be shown: every secret value (at any depth) replaced by ``"***"``;
    ``None`` stays ``None`` (nothing set, nothing to hide)."""
    if isinstance(config, Mapping):
        return {
            key: (
                REDACTED
                if value is not None and is_secret_config_key(key, declared)
                else redact_config(value, declared)
            )
            for key, value in config.items()
        }
    if isinstance(config, (list, tuple)):
        return [redact_config(item, declared) for item in config]
    return config


class Plugin:
    """Base class for plugins. Subclasses set the class attributes and ``commands()``; they
    may also offer ``prompts()`` and ``resources()``."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.0.0"
    description: ClassVar[str] = ""
    author: ClassVar[str] = ""
    capabilities: ClassVar[tuple[str, ...]] = ()
    default_config: ClassVar[Mapping[str, Any]] = {}
    #: config keys whose values are secret (write-only: shown as ``"***"`` wherever config is
    #: shown). Keys whose names look secret (see :func:`is_secret_config_key`) are secret
    #: without being listed here.
    secret_config: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config: dict[str, Any] = {**self.default_config, **(config or {})}

    def commands(self) -> list[Command]:
        raise NotImplementedError

    def prompts(self) -> list[Prompt]:
        return []

    def resources(self) -> list[Resource]:
        return []
