"""The JSON-RPC message of a ``POST /mcp`` request: parsed once, and its id read cheaply.

Shared by the endpoint (``mcp_api``) and the error envelope, which answers on /mcp in JSON-RPC
and quotes the request's id even for errors met before the view parsed the body.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException

from . import jsonio


def incoming_message() -> tuple[Any, jsonio.BodyRefused | None]:
    """The body as JSON (or why it is not), read and parsed once per request, by the same
    rules as REST's (UTF-8, no lone surrogate, nesting capped)."""
    if "mcp_message" not in g:
        try:
            g.mcp_message = (jsonio.read_body(request.get_data(cache=True)), None)
        except jsonio.BodyRefused as refused:
            g.mcp_message = (None, refused)
    return g.mcp_message


# A top-level "id" before any nested object or array: found without reading a whole body.
_LEADING_ID = re.compile(rb'^\s*\{[^{}\[\]]*?"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,128}")')
ID_PEEK_BYTES = 65536


def readable_request_id() -> str | int | None:
    """The JSON-RPC id of this request if it can be read cheaply, for errors answered before
    the view parsed the body (403 for a key, 413, 429): a small body is parsed, a large one
    only searched near its start."""
    small = min(ID_PEEK_BYTES, request.max_content_length or ID_PEEK_BYTES)
    if "mcp_message" in g or (request.content_length or 0) <= small:
        try:
            message, problem = incoming_message()
        except HTTPException:  # e.g. a chunked body that turned out too large
            message, problem = None, None
        found = message.get("id") if isinstance(message, dict) else None
        refused_json = problem is not None and problem.kind in ("depth", "unicode", "number")
        if refused_json:  # JSON, yet refused
            match = _LEADING_ID.match(request.get_data(cache=True)[:4096])
            found = json.loads(match.group(1)) if match else None
            found = None if jsonio.lone_surrogate_at(found) is not None else found
    else:
        match = _LEADING_ID.match(request.environ["wsgi.input"].read(4096))
        found = json.loads(match.group(1)) if match else None
    return found if isinstance(found, (str, int)) and not isinstance(found, bool) else None
