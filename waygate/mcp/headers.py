"""2026-07-28 routing headers over HTTP, compared with the body (streamable-http, "Server
Validation"): ``Mcp-Name`` for ``tools/call``, ``prompts/get`` (params.name) and
``resources/read`` (params.uri), and the ``Mcp-Param-{Name}`` headers a client mirrors from
the arguments a tool's inputSchema marks with ``x-mcp-header``. Values may come in the
``=?base64?...?=`` sentinel and are decoded before the comparison; a malformed one never
matches. Any disagreement is a HeaderMismatch (-32020, HTTP 400).

The rules are the official SDK's (``mcp.shared.inbound``, which tests/test_mcp_headers.py
checks this against), written out here because importing that module loads the whole SDK
and pydantic: 2.6 s more per worker boot for thirty lines.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from ..jsonschemas import annotated, invalid_annotation

NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
PARAM_PREFIX = "mcp-param-"
_SENTINEL = re.compile(r"=\?base64\?(?P<payload>.*)\?=", re.DOTALL)
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_PLAIN = re.compile(r"[\x20-\x7e]*")  # what a value may hold unencoded


def decoded(value: str | None) -> str | None:
    """A header value as sent, or the UTF-8 text inside the base64 sentinel; None when absent
    or malformed (characters a client must have encoded; bad or non-canonical base64, not
    UTF-8)."""
    if value is None:
        return None
    found = _SENTINEL.fullmatch(value)
    if found is None:
        return value if _PLAIN.fullmatch(value) else None
    payload = found.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None
        return raw.decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or a character past ASCII
        return None


def name_mismatch(method: str, params: Mapping[str, Any], header: str | None) -> bool:
    """Whether ``Mcp-Name`` disagrees with the body's name (or URI) for this method."""
    key = NAME_BEARING.get(method)
    return key is not None and decoded(header) != params.get(key)


def param_mismatch(schema: Any, arguments: Any, headers: tuple[tuple[str, str], ...]) -> str | None:
    """Why the ``Mcp-Param-*`` headers disagree with the arguments, or None. A header and its
    argument are present together (``null`` counts as absent) and equal after decoding;
    a repeated header never matches. A schema with invalid annotations checks nothing
    (conforming clients drop such a tool and send no headers)."""
    marked = _marked(schema)
    if not marked:
        return None
    sent: dict[str, list[str]] = {}
    for name, value in headers:
        sent.setdefault(name.lower(), []).append(value)
    for path, token, node in marked:
        header = f"Mcp-Param-{token}"
        values = sent.get(header.lower(), [])
        argument = _at(arguments, path)
        rendered = _rendered(argument)
        if len(values) > 1:
            return f"{header} appears more than once"
        if rendered is None:
            if values:
                return f"{header} is sent but the argument {'.'.join(path)!r} is not"
            continue
        if not values:
            return f"{header} is missing but the argument {'.'.join(path)!r} is sent"
        value = decoded(values[0])
        if value is None:
            return f"{header} is not valid (a malformed base64 value)"
        if not _equal(node.get("type"), argument, rendered, value):
            return f"{header} does not match the argument {'.'.join(path)!r}"
    return None


_MARKED: dict[int, tuple[Any, tuple]] = {}  # id(schema) -> (schema, its valid annotations)


def _marked(schema: Any) -> tuple:
    """The schema's annotations when they are valid (none otherwise), worked out once per
    schema object: tool schemas live as long as their plugin set, and every modern call asks."""
    known = _MARKED.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    marked = () if invalid_annotation(schema) is not None else tuple(annotated(schema))
    if len(_MARKED) >= 1024:  # plugin reloads make new schemas: forget the old ones
        _MARKED.clear()
    _MARKED[id(schema)] = (schema, marked)
    return marked


def _at(arguments: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(arguments, Mapping):
            return None
        arguments = arguments.get(key)
    return arguments


def _rendered(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        try:
            return str(value)
        except ValueError:  # an integer past Python's digit limit: no rendering
            return None
    return None  # absent, null, or no scalar: no header


def _equal(kind: Any, argument: Any, rendered: str, header: str) -> bool:
    """Integers compare as numbers (``42`` and ``42.0``); everything else as text."""
    integral = isinstance(argument, int) or (isinstance(argument, float) and argument.is_integer())
    if kind == "integer" and integral and not isinstance(argument, bool):
        if _DECIMAL.fullmatch(header) is None:
            return False
        whole, _, fraction = header.partition(".")
        try:
            return not fraction.strip("0") and int(whole) == int(argument)
        except ValueError:  # past Python's digit limit: equal to no argument that rendered
            return False
    return header == rendered
