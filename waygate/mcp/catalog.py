"""Prompts and resources from plugins, as MCP lists and reads.

A prompt render or a resource read runs like a command: in the pool, by a deadline, audited
(mode ``mcp``, action ``prompts/get:<name>`` or ``resources/read:<uri or template>``), counted
in the plugin's statistics and in ``waygate_commands_total``, for the same keys. Lists are
sorted (by name, by URI) so that they are stable between calls and workers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from marshmallow import Schema

from ..commands import Caller, CommandService, Invocation, MissingCapability
from ..outcomes import ExecutionStatus, Mode, Outcome
from ..plugins import PluginSet
from ..sdk import Command, Content, Message, Prompt, Resource, Text, resource_contents

INVALID_PARAMS, INTERNAL_ERROR, RESOURCE_NOT_FOUND = -32602, -32603, -32002
MISSING_CAPABILITY = -32021
_READ_ONLY = {"readOnlyHint": True}
MAX_SUGGESTIONS = 100  # the most completion/complete may answer


class CatalogError(Exception):
    """A JSON-RPC error for the protocol layer to answer with."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class _Arguments(Schema):
    """Prompt arguments and template values arrive validated by the catalog itself."""


class Catalog:
    def __init__(
        self, commands: CommandService, plugins: Callable[[], PluginSet], timeout: int = 30
    ):
        self.commands = commands
        self._plugins = plugins
        self.timeout = timeout

    # -- prompts -------------------------------------------------------------------------------

    def prompts(self, caller: Caller) -> list[dict[str, Any]]:
        plugins = self._plugins()
        listed = plugins.prompts.values()
        return [_describe_prompt(p) for p in listed if _permits(caller, plugins, p.name)]

    def get_prompt(self, params: dict, caller: Caller, inputs: Any = None) -> dict[str, Any]:
        """The rendered prompt; or, when its ``render(arguments, ctx)`` asks the caller
        (``inputs``: a 2026-07-28 caller's answers), the input_required result."""
        plugins = self._plugins()
        name = params.get("name")
        prompt = plugins.prompts.get(name) if isinstance(name, str) else None
        if prompt is None or not _permits(caller, plugins, prompt.name):  # alike, as for tools
            raise CatalogError(INVALID_PARAMS, f"Unknown prompt: {str(name)[:128]}")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(
            isinstance(v, str) for v in arguments.values()
        ):
            raise CatalogError(INVALID_PARAMS, "prompt arguments must be an object of strings")
        missing = [a.name for a in prompt.arguments if a.required and a.name not in arguments]
        if missing:
            raise CatalogError(
                INVALID_PARAMS, f"missing required argument(s): {', '.join(missing)}"
            )
        outcome = self._outcome(
            f"prompts/get:{prompt.name}",
            plugins.offered_by[prompt.name],
            lambda ctx: _render(prompt, arguments, ctx),
            caller,
            inputs,
        )
        if outcome.status is ExecutionStatus.INPUT_REQUIRED:
            return dict(outcome.result)
        messages = _result(f"prompts/get:{prompt.name}", outcome)
        return {"description": prompt.description, "messages": messages}

    def complete(self, params: dict, caller: Caller) -> dict[str, Any]:
        """Suggestions for a prompt argument that start with what was typed so far."""
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise CatalogError(INVALID_PARAMS, "completion/complete needs ref and argument")
        values: list[str] = []
        if ref.get("type") == "ref/prompt":
            plugins = self._plugins()
            name = ref.get("name")
            prompt = plugins.prompts.get(name) if isinstance(name, str) else None
            if prompt is None or not _permits(caller, plugins, prompt.name):
                raise CatalogError(INVALID_PARAMS, f"Unknown prompt: {str(ref.get('name'))[:128]}")
            typed = str(argument.get("value") or "")
            for declared in prompt.arguments:
                if declared.name == argument.get("name"):
                    values = [v for v in declared.suggestions if v.startswith(typed)]
        return {
            "completion": {
                "values": values[:MAX_SUGGESTIONS],
                "total": len(values),
                "hasMore": len(values) > MAX_SUGGESTIONS,
            }
        }

    # -- resources -----------------------------------------------------------------------------

    def resources(self, caller: Caller) -> list[dict[str, Any]]:
        return [_describe_resource(r, "uri") for r in self._readable(caller) if not r.is_template]

    def templates(self, caller: Caller) -> list[dict[str, Any]]:
        return [
            _describe_resource(r, "uriTemplate") for r in self._readable(caller) if r.is_template
        ]

    def _readable(self, caller: Caller) -> list[Resource]:
        plugins = self._plugins()
        return [r for r in plugins.resources.values() if _permits(caller, plugins, r.uri)]

    def read_resource(self, params: dict, caller: Caller) -> dict[str, Any]:
        plugins = self._plugins()
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise CatalogError(INVALID_PARAMS, "resources/read needs a uri")
        resource, values = _match(plugins, uri)
        if resource is None or not _permits(caller, plugins, resource.uri):
            raise CatalogError(RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri[:2000]})
        contents = self._run(
            f"resources/read:{resource.uri}",
            plugins.offered_by[resource.uri],
            lambda ctx: [_contents(resource, uri, resource.read(values))],
            caller,
        )
        return {"contents": contents}

    def resource_entry(self, uri: str, caller: Caller) -> dict[str, Any] | None:
        """What ``caller`` can know of the resource that serves ``uri`` (its listing, by URI or
        template, and its plugin's version), or None where it may not read it: what a watcher
        of ``uri`` compares across reloads (``mcp/notify.py``)."""
        plugins = self._plugins()
        resource, _ = _match(plugins, uri)
        if resource is None or not _permits(caller, plugins, resource.uri):
            return None
        plugin = plugins.plugins.get(plugins.offered_by[resource.uri])
        described = _describe_resource(resource, "uriTemplate" if resource.is_template else "uri")
        return {**described, "version": plugin.version if plugin else ""}

    # -- running -------------------------------------------------------------------------------

    def _run(self, action: str, plugin: str, produce: Callable[[Any], Any], caller: Caller) -> Any:
        return _result(action, self._outcome(action, plugin, produce, caller))

    def _outcome(
        self,
        action: str,
        plugin: str,
        produce: Callable[[Any], Any],
        caller: Caller,
        inputs: Any = None,
    ) -> Outcome:
        command = Command(action, action, _Arguments, lambda params, ctx: produce(ctx))
        inv = Invocation(
            action=action,
            plugin=plugin,
            command=command,
            params={},
            timeout=self.timeout,
            inputs=inputs,
        )
        return self.commands.run(inv, caller, Mode.MCP)


def _result(action: str, outcome: Outcome) -> Any:
    if isinstance(outcome.cause, MissingCapability):  # it asked what the client cannot give
        raise CatalogError(
            MISSING_CAPABILITY,
            outcome.cause.message,
            {"requiredCapabilities": outcome.cause.details.get("requiredCapabilities", {})},
        )
    if outcome.status is not ExecutionStatus.SUCCESS:
        raise CatalogError(INTERNAL_ERROR, f"{action} {outcome.status}: {outcome.error}")
    return outcome.result


def _permits(caller: Caller, plugins: PluginSet, name: str) -> bool:
    """A key's scope covers a prompt (by name) or a resource (by URI or template) as it covers
    commands, ``Plugin.*`` included; reading is read-only, so read-only keys may."""
    return caller.scope.permits(name, plugins.offered_by[name], _READ_ONLY)


def _describe_prompt(prompt: Prompt) -> dict[str, Any]:
    described: dict[str, Any] = {"name": prompt.name, "description": prompt.description}
    if prompt.title:
        described["title"] = prompt.title
    if prompt.icons:
        described["icons"] = [icon.as_dict() for icon in prompt.icons]
    if prompt.arguments:
        described["arguments"] = [
            {"name": a.name, "description": a.description, "required": a.required}
            for a in prompt.arguments
        ]
    return described


def _describe_resource(resource: Resource, uri_key: str) -> dict[str, Any]:
    described = {
        uri_key: resource.uri,
        "name": resource.name,
        "description": resource.description,
        "mimeType": resource.mime_type,
    }
    if resource.title:
        described["title"] = resource.title
    if resource.icons:
        described["icons"] = [icon.as_dict() for icon in resource.icons]
    return described


class _Blank(dict):
    def __missing__(self, key: str) -> str:  # an optional argument left out renders empty
        return ""


def _render(prompt: Prompt, arguments: dict[str, str], ctx: Any = None) -> list[dict[str, Any]]:
    if prompt.template is not None:
        return [{"role": "user", "content": Text(prompt.template.format_map(_Blank(arguments)))}]
    messages = []
    render: Any = prompt.render
    rendered = render(dict(arguments), ctx) if _takes_context(render) else render(dict(arguments))
    for item in rendered:
        message = item if isinstance(item, Message) else Message(item)
        if not isinstance(message.content, Content) or message.role not in ("user", "assistant"):
            raise TypeError("a prompt renders waygate.sdk Messages or content blocks")
        messages.append({"role": message.role, "content": message.content})
    return messages


@lru_cache(maxsize=256)
def _takes_context(render: Callable[..., Any]) -> bool:
    """Whether a prompt's render takes the execution context too (to ask its caller)."""
    try:
        parameters = inspect.signature(render).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _contents(resource: Resource, uri: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, (str, bytes)):
        raise TypeError(f"resource reader returned {type(value).__name__}, not str or bytes")
    return resource_contents(uri, resource.mime_type, value)


def _match(plugins: PluginSet, uri: str) -> tuple[Resource | None, dict[str, str]]:
    fixed = plugins.resources.get(uri)
    if fixed is not None and not fixed.is_template:
        return fixed, {}
    for resource in plugins.resources.values():
        if resource.is_template:
            found = _template_pattern(resource.uri).fullmatch(uri)
            if found:
                return resource, found.groupdict()
    return None, {}


@lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str]:
    """``ticket://{id}/summary`` -> a pattern whose ``id`` group is one path segment."""
    parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", template)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/?#]+)" for i, part in enumerate(parts)
    )
    return re.compile(pattern)
