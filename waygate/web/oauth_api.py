"""OAuth on the HTTP face (issue 27): the protected-resource metadata of RFC 9728, and the
``WWW-Authenticate`` challenge that sends an MCP client into discovery.

Verification itself is :mod:`waygate.oauth` (framework-free); who the caller is, is
``waygate.web.auth``.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from ..errors import NotFound
from . import services

bp = Blueprint("oauth", __name__)


@bp.get("/.well-known/oauth-protected-resource")
@bp.get("/.well-known/oauth-protected-resource/mcp")
def protected_resource():
    """OAuth 2.0 Protected Resource Metadata (RFC 9728) for /mcp and the REST API.
    ---
    get:
      summary: Protected resource metadata (with WAYGATE_OAUTH_ISSUER set)
      tags: [oauth]
      responses:
        200:
          description: >-
            resource (the public /mcp URL), authorization_servers, scopes_supported,
            bearer_methods_supported
          content:
            application/json:
              schema: {type: object}
        404:
          description: OAuth is not configured (API keys only) (NOT_FOUND)
    """
    oauth = services().oauth
    if oauth is None:
        raise NotFound("OAuth is not configured here: send an API key in X-API-Key")
    response = jsonify(oauth.protected_resource_metadata())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def refused_token(exc: Exception) -> None:
    """Remember why a bearer token was refused, for the challenge of the answer."""
    error = getattr(exc, "oauth_error", None)
    if error is not None:
        g.oauth_challenge = (error, getattr(exc, "message", None))


def challenge(status: int) -> str | None:
    """The ``WWW-Authenticate`` value for an answer of ``status``, if it gets one: every 401,
    and a 403 for a token without the scope needed."""
    oauth = services().oauth
    error, description = g.get("oauth_challenge") or (None, None)
    if oauth is None:
        return 'Bearer realm="waygate"' if status == 401 else None
    if status == 401 or (status == 403 and error == "insufficient_scope"):
        return oauth.challenge(error, description)
    return None
