"""The API's OpenAPI document and its interactive documentation, served entirely from the
installed package: Swagger UI's files come from the flask-swagger-ui wheel, no CDN."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, current_app, jsonify, send_from_directory

from . import services
from .openapi import build_spec

bp = Blueprint("docs", __name__)
STATIC = Path(__file__).parent / "static"
SWAGGER_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
# The docs page needs images from data: URIs and the styles Swagger UI sets; still only its
# own origin for everything it loads.
DOCS_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document, generated from the code.
    ---
    get:
      summary: OpenAPI document
      tags: [docs]
      responses:
        200:
          description: The OpenAPI 3 document of this API
          content:
            application/json:
              schema: {type: object}
    """
    plugins = services().plugins.current
    cached = current_app.extensions.get("waygate.openapi")
    if cached is None or cached[0] is not plugins:  # built again after a plugin reload
        cached = current_app.extensions["waygate.openapi"] = (
            plugins,
            build_spec(current_app, plugins.commands),
        )
    return jsonify(cached[1])


@bp.get("/docs")
@bp.get("/docs/")
def docs():
    response = send_from_directory(STATIC, "docs.html", max_age=300)
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/docs.js")
def docs_script():
    return send_from_directory(STATIC, "docs.js", max_age=300)


@bp.get("/docs/assets/<path:name>")
def docs_assets(name: str):
    return send_from_directory(SWAGGER_DIST, name, max_age=86400)
