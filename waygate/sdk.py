"""The plugin author's API: everything a Waygate plugin needs, and nothing else.

A plugin is a subclass of :class:`Plugin`, registered by its distribution under the
``waygate.plugins`` entry-point namespace::

    [options.entry_points]
    waygate.plugins =
        Hello = hello_plugin:HelloPlugin

It declares its metadata and default config, and returns its commands from ``commands()``.
Each :class:`Command` has a marshmallow schema for its params (or a JSON Schema 2020-12 object,
a dict) and a handler ``handler(params, ctx)`` that gets the validated params and an
:class:`ExecutionContext`.
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


class InputRequired(BaseException):  # noqa: N818 - a signal to Waygate, not a failure
    """Raised by :meth:`ExecutionContext.ask` and its kin when the caller has not answered yet.

    Waygate ends this round of the call with it and asks the caller (an MCP ``input_required``
    result); the caller calls again with the answers and the handler runs again from the
    start. A ``BaseException``, so that ``except Exception`` in a handler lets it through: do
    not catch it. ``requests`` maps each key to its MCP request (method and params);
    ``unavailable`` says why nobody can answer (REST, a 2025-era MCP client); ``result`` is
    what the MCP layer answers with (set by the channel that raised it)."""

    def __init__(
        self,
        requests: Mapping[str, Mapping[str, Any]],
        *,
        unavailable: str | None = None,
        missing: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ):
        super().__init__(", ".join(requests))
        self.requests = dict(requests)
        self.unavailable = unavailable
        self.missing = dict(missing or {})  # client capabilities the requests need
        self.result = dict(result or {})


class InputRequest(dict):
    """One question for the caller, as MCP sends it: ``{"method": ..., "params": ...}``. Make
    them with :func:`elicitation`, :func:`sampling` and :func:`list_roots`, and ask several at
    once with :meth:`ExecutionContext.ask_all`."""

    @property
    def method(self) -> str:
        return self["method"]


def elicitation(message: str, schema: Mapping[str, Any]) -> InputRequest:
    """Ask the user to fill in a form: ``schema`` is a flat JSON Schema object whose
    properties are strings, numbers, booleans or enums (MCP's form-mode elicitation). Never
    ask for passwords, tokens or other credentials this way."""
    return InputRequest(
        method="elicitation/create",
        params={"mode": "form", "message": str(message)[:2000], "requestedSchema": dict(schema)},
    )


def sampling(
    prompt: str | list[Mapping[str, Any]],
    *,
    max_tokens: int = 500,
    system_prompt: str | None = None,
) -> InputRequest:
    """Ask the caller's model for a completion (MCP sampling): a user prompt, or a list of MCP
    sampling messages (``{"role": ..., "content": {...}}``)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": {"type": "text", "text": prompt}}]
    else:
        messages = [dict(m) for m in prompt]
    params: dict[str, Any] = {"messages": messages, "maxTokens": int(max_tokens)}
    if system_prompt is not None:
        params["systemPrompt"] = str(system_prompt)
    return InputRequest(method="sampling/createMessage", params=params)


def list_roots() -> InputRequest:
    """Ask the client for its roots (the directories or URIs the user shared with it)."""
    return InputRequest(method="roots/list", params={})


class Elicited(dict):
    """The user's answer to :meth:`ExecutionContext.ask`: MCP's ElicitResult, ``action``
    (``accept``, ``decline`` or ``cancel``) and, when accepted, ``content``."""

    @property
    def accepted(self) -> bool:
        return self.get("action") == "accept"

    @property
    def content(self) -> dict[str, Any]:
        content = self.get("content")
        return dict(content) if self.accepted and isinstance(content, Mapping) else {}


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
    #: the caller's channel for answers (set by Waygate for MCP 2026-07-28 callers; None where
    #: nobody can answer: REST, async and approved executions, 2025-era MCP clients)
    inputs: Any = None
    _asked: int = 0  # how many questions this run asked without a key: the next default key
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

    # -- asking the caller (MCP 2026-07-28 input requests) ---------------------------------------
    # A question the caller has not answered ends this run (InputRequired); the caller answers
    # and calls again, and the handler runs again FROM THE START, this time getting the answer.
    # So everything a handler does before its last question runs once per round: keep it free
    # of side effects (read, compute, then ask, then act), and ask the same questions under
    # the same keys in the same order each time. Answers are the caller's word, not a second
    # person's approval (that is what approvals are for).

    def can_ask(self, kind: str) -> bool:
        """Whether the caller can answer ``kind`` of question: ``"elicitation"``,
        ``"sampling"`` or ``"roots"`` (what its MCP client declared)."""
        if self.task_input is not None:
            return True  # a task asks through its row; the client answers with tasks/update
        return self.inputs is not None and self.inputs.can(kind)

    def ask_all(self, requests: Mapping[str, InputRequest]) -> dict[str, Any]:
        """Ask several questions in one round (keys: 1 to 64 of ``[A-Za-z0-9_.-]``, unique
        in this call): every answer, by key, once the caller has given them all."""
        if self.task_input is not None:
            # running as an MCP task: what the call answered before the task started
            # (task_questions) is known; the rest is asked through the task, which shows
            # input_required until the client's tasks/update answers (no round trip)
            found = self.inputs.known(requests) if self.inputs is not None else {}
            rest = {key: dict(r) for key, r in requests.items() if key not in found}
            return {**found, **(self.task_input.ask(rest) if rest else {})}
        if self.inputs is None:
            raise InputRequired(requests, unavailable="no MCP 2026-07-28 caller to ask")
        return self.inputs.gather(dict(requests))

    def ask(self, message: str, schema: Mapping[str, Any], *, key: str | None = None) -> Elicited:
        """Ask the user to fill in a form (see :func:`elicitation`); the answer says whether
        they accepted, declined or cancelled."""
        key = key or self._next_key("ask")
        return Elicited(self.ask_all({key: elicitation(message, schema)})[key])

    def confirm(self, message: str, *, key: str | None = None) -> bool:
        """Ask the user a yes/no question: True only when they accepted and said yes."""
        schema = {
            "type": "object",
            "properties": {"confirm": {"type": "boolean", "title": "Confirm"}},
            "required": ["confirm"],
        }
        return (
            self.ask(message, schema, key=key or self._next_key("confirm")).content.get("confirm")
            is True
        )

    def choose(self, message: str, choices: list[str], *, key: str | None = None) -> str | None:
        """Ask the user to pick one of ``choices``: the choice, or None if they declined."""
        schema = {
            "type": "object",
            "properties": {"choice": {"type": "string", "enum": [str(c) for c in choices]}},
            "required": ["choice"],
        }
        choice = self.ask(message, schema, key=key or self._next_key("choose")).content.get(
            "choice"
        )
        return choice if choice in choices else None

    def sample(
        self,
        prompt: str | list[Mapping[str, Any]],
        *,
        max_tokens: int = 500,
        system_prompt: str | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Ask the caller's model (see :func:`sampling`): MCP's CreateMessageResult (``role``,
        ``content``, ``model``, ``stopReason``)."""
        key = key or self._next_key("sample")
        request = sampling(prompt, max_tokens=max_tokens, system_prompt=system_prompt)
        return dict(self.ask_all({key: request})[key])

    def roots(self, *, key: str | None = None) -> list[dict[str, Any]]:
        """The client's roots: ``[{"uri": ..., "name": ...}, ...]``."""
        key = key or self._next_key("roots")
        return list(self.ask_all({key: list_roots()})[key]["roots"])

    def _next_key(self, kind: str) -> str:
        self._asked += 1
        return f"{kind}-{self._asked}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


Handler = Callable[[dict[str, Any], ExecutionContext], Any]


@dataclass(frozen=True)
class Icon:
    """An icon for a tool, prompt or resource (MCP's ``Icon``): ``src`` is an ``https://`` URL
    or a ``data:image/...`` URI (nothing else loads); ``sizes`` like ``("48x48",)`` or
    ``("any",)`` for SVG; ``theme`` ``"light"`` or ``"dark"``."""

    src: str
    mime_type: str | None = None
    sizes: tuple[str, ...] = ()
    theme: str | None = None

    def as_dict(self) -> dict[str, Any]:
        icon: dict[str, Any] = {"src": self.src}
        if self.mime_type:
            icon["mimeType"] = self.mime_type
        if self.sizes:
            icon["sizes"] = list(self.sizes)
        if self.theme:
            icon["theme"] = self.theme
        return icon


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    #: a marshmallow Schema class, or a JSON Schema object (a dict, 2020-12 unless its
    #: ``$schema`` says draft-07) with ``type: object``, validated with jsonschema
    params: type[Schema] | Mapping[str, Any]
    handler: Handler
    title: str | None = None
    #: MCP tool annotations, e.g. {"readOnlyHint": True}
    annotations: Mapping[str, bool] = field(default_factory=dict)
    #: JSON Schema of the handler's result when it is always an object (MCP outputSchema)
    output_schema: Mapping[str, Any] | None = None
    #: shown by clients beside the tool; the plugin's ``icons`` when empty
    icons: tuple[Icon, ...] = ()
    #: whether an MCP client may get this command's call as a task (docs/plugins.md, "Long
    #: calls as MCP tasks"): "forbidden" (default: answered in the call, unless it waits for
    #: approval), "optional" (a task for a client that supports tasks, else answered in the
    #: call) or "required" (only as a task: a client without tasks support is refused)
    task_support: str = "forbidden"
    #: questions (key -> :func:`elicitation`, :func:`sampling` or :func:`list_roots`) a call
    #: that becomes an MCP task asks in input_required rounds BEFORE its task starts, so a
    #: client answers them in the call; the handler then gets them from ``ctx.ask(...,
    #: key=...)`` (or ``ctx.ask_all``) under the same keys, without a round of its own
    task_questions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_support not in TASK_SUPPORT:
            raise ValueError(
                f"task_support of {self.name!r} must be one of {', '.join(TASK_SUPPORT)}"
            )
        for key, request in self.task_questions.items():
            if not isinstance(request, Mapping) or "method" not in request:
                raise ValueError(f"task question {key!r} of {self.name!r} is not an input request")


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
    content blocks, said by the user) for anything richer: images, embedded resources.
    ``render(arguments, ctx)`` also gets the :class:`ExecutionContext`, to ask the caller
    (``ctx.ask`` and its kin; MCP 2026-07-28 clients only)."""

    name: str
    description: str
    template: str | None = None
    arguments: tuple[PromptArgument, ...] = ()
    render: Callable[[dict[str, str]], list[Message | Content]] | None = None
    title: str | None = None
    icons: tuple[Icon, ...] = ()  # the plugin's ``icons`` when empty


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
    icons: tuple[Icon, ...] = ()  # the plugin's ``icons`` when empty

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
    #: icons for the plugin's tools, prompts and resources that have none of their own
    icons: ClassVar[tuple[Icon, ...]] = ()

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config: dict[str, Any] = {**self.default_config, **(config or {})}

    def commands(self) -> list[Command]:
        raise NotImplementedError

    def prompts(self) -> list[Prompt]:
        return []

    def resources(self) -> list[Resource]:
        return []
