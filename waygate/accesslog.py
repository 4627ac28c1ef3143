"""The access log: gunicorn's logger, with secrets taken out of the query strings it logs.

Keys belong in headers, but a client may put one in a URL (``?api_key=...``); the access log
must not keep it. A query parameter whose name looks like a secret (``api_key``, ``key``,
``token``, ``secret``, ``password``), or whose value looks like a Waygate key (32 letters and
digits), is logged as ``REDACTED``, in the request line, the query string and the Referer.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from gunicorn.glogging import Logger

REDACTED = "REDACTED"
_SECRET_NAME = re.compile(r"key|token|secret|passw|auth", re.IGNORECASE)
_KEY_LIKE_VALUE = re.compile(r"[A-Za-z0-9]{32}")
_QUERY_IN_URI = re.compile(r"\?([^\s#]*)")


def redact_query(query: str) -> str:
    parts = re.split(r"([&;])", query)
    for index in range(0, len(parts), 2):
        name, equals, value = parts[index].partition("=")
        if _KEY_LIKE_VALUE.fullmatch(unquote_plus(name)):
            parts[index] = REDACTED
        elif equals and (
            _SECRET_NAME.search(unquote_plus(name))
            or _KEY_LIKE_VALUE.fullmatch(unquote_plus(value))
        ):
            parts[index] = f"{name}={REDACTED}"
    return "".join(parts)


def redact_uri(text: str) -> str:
    """``text`` (a URI, or a request line) with its query string redacted."""
    return _QUERY_IN_URI.sub(lambda match: "?" + redact_query(match.group(1)), text)


class RedactingLogger(Logger):
    """gunicorn's logger; the atoms that can carry a query string are redacted."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["r"] = redact_uri(atoms["r"])
        atoms["q"] = redact_query(atoms["q"] or "")
        atoms["f"] = redact_uri(atoms["f"])
        if "{referer}i" in atoms:
            atoms["{referer}i"] = redact_uri(atoms["{referer}i"])
        return atoms
