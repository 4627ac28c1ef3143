"""The OpenAPI 3 document, generated from the code.

Paths come from the Flask URL map; each operation from its view's docstring (YAML after
``---``); request and response shapes from the marshmallow schemas in ``waygate.schemas``.
What every operation shares is added here, from how the view is built: the key it needs
(``key_required`` / ``admin_required``), pagination (``paginated``), rate-limit and request-id
headers, and the error answers any request can get (400 for a bad ``version``, 406 for an
unknown vendor media type, 413, 429, 503 ...). Served at /openapi.json; ``waygate openapi``
writes openapi.yaml, and a test fails when the committed file differs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.yaml_utils import load_operations_from_docstring
from flask import Flask

from .. import __version__, schemas
from ..jsonschemas import documentable
from ..schemas import json_schema
from ..sdk import Command

_RESPONSE_SCHEMAS = {
    "Error": schemas.ErrorSchema,
    "MCPCommand": schemas.MCPCommandSchema,
    "MCPResponse": schemas.MCPResponseSchema,
    "Decision": schemas.DecisionSchema,
    "Index": schemas.IndexSchema,
    "Health": schemas.HealthSchema,
    "Ready": schemas.ReadySchema,
    "Status": schemas.StatusSchema,
    "CommandList": schemas.CommandListSchema,
    "Plugin": schemas.PluginSchema,
    "PluginList": schemas.PluginListSchema,
    "Reload": schemas.ReloadSchema,
    "ExecutionList": schemas.ExecutionListSchema,
    "EventList": schemas.EventListSchema,
    "Connection": schemas.ConnectionSchema,
    "Performance": schemas.PerformanceSchema,
    "ErrorList": schemas.ErrorListSchema,
    "JsonRpcMessage": schemas.JsonRpcMessageSchema,
    "KeyCreate": schemas.KeyCreateSchema,
    "KeyUpdate": schemas.KeyUpdateSchema,
    "KeyRotate": schemas.KeyRotateSchema,
    "Key": schemas.KeySchema,
    "KeyWithSecret": schemas.KeyWithSecretSchema,
    "KeyList": schemas.KeyListSchema,
    "KeyEventList": schemas.KeyEventListSchema,
}
_HEADERS = {
    "X-Request-ID": ("Request tracking ID (echoed when sane, else generated)", "string"),
    "X-RateLimit-Limit": ("Requests allowed in the current window", "integer"),
    "X-RateLimit-Remaining": ("Requests left in the current window", "integer"),
    "X-RateLimit-Reset": ("When the window resets (Unix time)", "integer"),
    "Retry-After": ("Seconds to wait before retrying", "integer"),
    "X-Total-Count": ("Items in the whole list", "integer"),
    "X-Page-Count": ("Pages in the whole list", "integer"),
    "Link": ("first, last, next and prev pages (RFC 8288)", "string"),
    "Location": ("Where to poll an async execution", "string"),
    "Idempotent-Replayed": (
        "true: the answer of an earlier request with the same Idempotency-Key, not run again",
        "string",
    ),
    "WWW-Authenticate": ("The accepted authentication scheme", "string"),
    "Allow": ("The methods the endpoint allows", "string"),
    "Deprecation": ("Present when ?version=2 is used: deprecated (RFC 9745)", "string"),
    "Sunset": ("When ?version=2 stops working (RFC 8594)", "string"),
}
_ERRORS = {
    400: "Invalid request (INVALID_REQUEST or MISSING_PARAMETER)",
    401: "Missing or invalid API key (UNAUTHORIZED)",
    403: "The key may not use this endpoint (FORBIDDEN)",
    404: "Not found (NOT_FOUND)",
    406: "Unsupported API version in Accept (INVALID_REQUEST)",
    408: "Command timeout",
    409: "Not in a state that allows this (CONFLICT)",
    413: "Request body too large (INVALID_REQUEST)",
    429: "Rate limit exceeded (RATE_LIMITED)",
    500: "Internal error (INTERNAL_ERROR)",
    503: "Service unavailable (SERVICE_UNAVAILABLE)",
}
_PAGE_PARAMETERS = [
    {
        "name": "page",
        "in": "query",
        "description": "Page number",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 1},
    },
    {
        "name": "limit",
        "in": "query",
        "description": "Items per page",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    },
]
_VERSION_PARAMETER = {
    "name": "version",
    "in": "query",
    "deprecated": True,
    "description": "API version (deprecated: use /v2 paths or the Accept header)",
    "schema": {"type": "string", "enum": ["2"]},
}


def _header(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/headers/{name}"}


def _response_headers(status: int, view: Any) -> dict[str, Any]:
    # every endpoint counts against a rate limit (its group's, else the default)
    names = ["X-Request-ID", "Deprecation", "Sunset"]
    names += ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
    if status in (429, 503):
        names.append("Retry-After")
    if status == 401:
        names.append("WWW-Authenticate")
    if status == 200 and getattr(view, "waygate_paginated", False):
        names += ["X-Total-Count", "X-Page-Count", "Link"]
    return {name: _header(name) for name in names}


def _complete(operation: dict[str, Any], view: Any, method: str, jsonrpc: bool) -> dict[str, Any]:
    op = copy.deepcopy(operation)
    # YAML reads `400:` as an int: as a string, the documented answer is not shadowed by the
    # generic one added below
    responses = op["responses"] = {str(k): v for k, v in op.get("responses", {}).items()}
    auth = getattr(view, "waygate_auth", None)
    if auth:
        op["security"] = [{"ApiKey": []}, {"Bearer": []}]
        refusal = getattr(view, "waygate_auth_refusal", 401)
        responses.setdefault(str(refusal), {"description": _ERRORS[refusal]})
        if auth == "admin":
            responses.setdefault("403", {"description": _ERRORS[403]})
    else:
        op["security"] = []
    params = op.setdefault("parameters", [])
    if getattr(view, "waygate_paginated", False):
        params.extend(copy.deepcopy(_PAGE_PARAMETERS))
    params.append(copy.deepcopy(_VERSION_PARAMETER))
    # gunicorn answers an over-long request line itself (HTML, before Waygate runs)
    responses.setdefault(
        "414",
        {
            "description": "Request line too long (from gunicorn)",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    )
    errors = [400, 406, 429, 500, 503]
    if method in ("post", "put"):
        errors.append(413)
    for status in errors:
        responses.setdefault(str(status), {"description": _ERRORS[status]})
    error_schema = "JsonRpcMessage" if jsonrpc else "Error"
    for status, response in responses.items():
        code = int(status)
        response.setdefault("description", _ERRORS.get(code, "Answer"))
        if code >= 400 and "content" not in response:
            response["content"] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}
            }
        response.setdefault("headers", {}).update(_response_headers(code, view))
    if not params:
        op.pop("parameters")
    return op


def build_spec(app: Flask, commands: Mapping[str, Command] | None = None) -> dict[str, Any]:
    """The document of ``app``'s routes; ``commands`` (the loaded ones) are MCPCommand's actions."""
    spec = APISpec(
        title="Waygate MCP API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=lambda schema: None)],
        info={
            "description": "Enterprise-grade Model Context Protocol Server. Every path also "
            "answers under /v2; `Accept: application/vnd.waygate.v2+json` is honoured.",
            "contact": {"name": "Jeremy Longshore"},
            "license": {"name": "MIT"},
        },
        # Relative first: Swagger UI's "Try it out" and other clients of the served document
        # call the service that served it, whatever its host and port.
        servers=[
            {"url": "/", "description": "This service (where this document is served from)"},
            {"url": "http://localhost:8000", "description": "Local development (make serve)"},
        ],
    )
    for name, schema in _RESPONSE_SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme(
        "ApiKey",
        {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "32-character alphanumeric key",
        },
    )
    spec.components.security_scheme("Bearer", {"type": "http", "scheme": "bearer"})
    for name, (description, kind) in _HEADERS.items():
        spec.components.header(name, {"description": description, "schema": {"type": kind}})

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        documented = load_operations_from_docstring(view.__doc__ or "")
        if not documented:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operations = {}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = documented.get(method.lower())
            if operation is not None:
                operations[method.lower()] = _complete(
                    operation, view, method.lower(), jsonrpc=rule.endpoint.startswith("mcp.")
                )
        if operations:
            spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _name_the_commands(document["components"]["schemas"], commands or {})
    return document


def _name_the_commands(components: dict[str, Any], commands: Mapping[str, Command]) -> None:
    """MCPCommand as one variant per loaded command: its ``action`` and its own ``params``
    schema, so that a request valid by the document names a command that exists with params
    that command accepts."""
    if not commands:
        return
    generic = components["MCPCommand"]
    variants = {}
    for name in sorted(commands):
        variant = copy.deepcopy(generic)
        variant["title"] = name
        variant["properties"]["action"] = {
            **generic["properties"]["action"],
            "type": "string",
            "enum": [name],
        }
        variant["properties"]["params"] = {
            **copy.deepcopy(documentable(json_schema(commands[name].params))),
            "description": f"Parameters of {name}",
        }
        if variant["properties"]["params"].get("required"):
            variant["required"] = sorted({*variant.get("required", []), "params"})
        variants[f"MCPCommand.{name}"] = variant
    components.update(variants)
    components["MCPCommand"] = {
        "description": "MCPCommand: one of the loaded commands, with its parameters",
        "oneOf": [{"$ref": f"#/components/schemas/{key}"} for key in variants],
        "discriminator": {
            "propertyName": "action",
            "mapping": {
                key.removeprefix("MCPCommand."): f"#/components/schemas/{key}" for key in variants
            },
        },
    }


def to_yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
