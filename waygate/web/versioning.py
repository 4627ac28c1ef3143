"""API versioning (spec sections 7 and 11).

- ``/v2/...`` answers every endpoint: a WSGI middleware moves the prefix into SCRIPT_NAME,
  so routes, rate limits and metric labels are the same and generated URLs keep the prefix;
- ``Accept: application/vnd.waygate.v2+json`` is honoured: JSON answers carry that type;
- ``?version=2`` still works but is deprecated: answers carry ``Deprecation`` and ``Sunset``;
- any other version, in the path, the Accept header or the query, is a 4xx envelope.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from email.utils import format_datetime

from flask import Flask, Response, g, request

from ..config import Config
from ..errors import InvalidRequest, NotFound, WaygateError

CURRENT = "2"
VENDOR_TYPE = "application/vnd.waygate.v2+json"
_VENDOR_RE = re.compile(r"application/vnd\.waygate\.v(\d+)\+json")
_PATH_VERSION_RE = re.compile(r"/v(\d+)(/|\Z)")
# The day query-parameter versioning was deprecated (the v2 specification's date).
VERSION_PARAM_DEPRECATED = datetime(2025, 1, 14, tzinfo=UTC)


class NotAcceptable(WaygateError):
    code, status = "INVALID_REQUEST", 406


class VersionPrefix:
    """WSGI middleware: ``/v2/x`` is served as ``/x`` with ``/v2`` added to SCRIPT_NAME."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/v" + CURRENT or path.startswith(f"/v{CURRENT}/"):
            environ["PATH_INFO"] = path[len(CURRENT) + 2 :] or "/"
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/v" + CURRENT
        return self.app(environ, start_response)


def _negotiate() -> None:
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    if (
        not environ.get("QUERY_STRING")
        and "vnd.waygate" not in environ.get("HTTP_ACCEPT", "")
        and not environ.get("PATH_INFO", "").startswith("/v")
    ):
        return  # nothing here names a version (most requests)
    path = req.path
    match = _PATH_VERSION_RE.match(path) if path.startswith("/v") else None
    if match:
        raise NotFound(
            f"unknown API version v{match.group(1)}: this server speaks v{CURRENT} "
            f"(/v{CURRENT}/...)",
            {"supported": [CURRENT]},
        )
    version = req.args.get("version") if req.query_string else None
    if version is not None:
        if version != CURRENT:
            raise InvalidRequest(
                f"unsupported API version {version[:20]!r}; supported: {CURRENT}",
                {"parameter": "version", "supported": [CURRENT]},
            )
        g.version_param = True
    accept = req.headers.get("Accept", "")
    asked = set(_VENDOR_RE.findall(accept)) if "vnd.waygate" in accept else ()
    if asked:
        offered = req.accept_mimetypes
        if CURRENT in asked and offered.quality(VENDOR_TYPE) >= offered.quality("application/json"):
            g.vendor_type = True
        elif CURRENT not in asked and not offered.quality("application/json"):
            raise NotAcceptable(
                f"unsupported API version in Accept; use {VENDOR_TYPE} or application/json",
                {"supported": [VENDOR_TYPE, "application/json"]},
            )


def _label(response: Response, sunset: str) -> Response:
    if "vendor_type" not in g and "version_param" not in g:
        return response
    if g.get("vendor_type") and response.mimetype == "application/json":
        response.headers["Content-Type"] = VENDOR_TYPE
    if g.get("version_param"):
        response.headers["Deprecation"] = f"@{int(VERSION_PARAM_DEPRECATED.timestamp())}"
        response.headers["Sunset"] = sunset
    return response


def init_app(app: Flask, config: Config) -> None:
    app.wsgi_app = VersionPrefix(app.wsgi_app)
    sunset_day = date.fromisoformat(config.version_param_sunset)
    sunset = format_datetime(datetime.combine(sunset_day, time(), UTC), usegmt=True)
    app.before_request(_negotiate)
    app.after_request(lambda response: _label(response, sunset))
