"""Flask's JSON through orjson: the app's provider, on :mod:`waygate.jsonbody`'s rules (which
say what a request body may be, for every door)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from .. import compat
from ..jsonbody import MAX_DEPTH, BodyRefused, dumps_bytes, loads, lone_surrogate_at, read_body

__all__ = ["MAX_DEPTH", "BodyRefused", "dumps_bytes", "init_app", "lone_surrogate_at", "read_body"]


class OrjsonProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = compat.response_payload(self, args, kwargs)
        return self._app.response_class(dumps_bytes(obj), mimetype="application/json")


def init_app(app: Flask) -> None:
    app.json = OrjsonProvider(app)
