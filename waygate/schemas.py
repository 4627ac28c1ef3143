"""Request shapes (marshmallow) and their JSON Schema, the one source for validation,
``/mcp/commands``, MCP ``inputSchema`` and the OpenAPI document."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from . import __version__


class MCPCommandSchema(Schema):
    """Spec 3.1 MCPCommand, plus ``async`` (capabilities.async)."""

    class Meta:
        unknown = INCLUDE  # spec: the model allows more properties; they are ignored

    action = fields.String(
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "Command action to execute"},
    )
    params = fields.Dict(
        keys=fields.String(), load_default=dict, metadata={"description": "Command parameters"}
    )
    context = fields.Dict(
        keys=fields.String(), load_default=dict, metadata={"description": "Execution context"}
    )
    timeout = fields.Integer(
        load_default=30,
        strict=True,
        validate=validate.Range(min=1, max=300),
        metadata={"description": "Timeout in seconds"},
    )
    async_ = fields.Boolean(
        data_key="async",
        load_default=False,
        metadata={"description": "Run in the background: answer 202 at once"},
    )


def field_errors(error: ValidationError) -> tuple[list[str], dict[str, Any]]:
    """(missing required fields, all field messages) from a marshmallow error."""
    messages = error.normalized_messages()
    missing = [
        name
        for name, msgs in messages.items()
        if isinstance(msgs, list) and "Missing data for required field." in msgs
    ]
    return missing, messages


_converter = None


def _plugin() -> MarshmallowPlugin:
    global _converter
    if _converter is None:
        plugin = MarshmallowPlugin(schema_name_resolver=lambda schema: None)
        APISpec("Waygate MCP API", __version__, "3.0.3", plugins=[plugin])
        _converter = plugin
    return _converter


@lru_cache(maxsize=512)
def json_schema(schema_class: type[Schema]) -> dict[str, Any]:
    """The JSON Schema of a marshmallow schema, inline (no $ref), ``type: object``."""
    result = _plugin().converter.schema2jsonschema(schema_class)
    result.setdefault("type", "object")
    result.setdefault("properties", {})
    return result


def describe_parameters(schema_class: type[Schema]) -> dict[str, dict[str, Any]]:
    """``/mcp/commands`` parameter descriptions: type, required, description, enum, default."""
    schema = json_schema(schema_class)
    required = set(schema.get("required", []))
    described = {}
    for name, prop in schema["properties"].items():
        entry: dict[str, Any] = {"type": prop.get("type", "any"), "required": name in required}
        for key in ("description", "enum", "default", "minimum", "maximum"):
            if key in prop:
                entry[key] = prop[key]
        if prop.get("type") == "object" and prop.get("properties"):
            entry["properties"] = prop["properties"]
        described[name] = entry
    return described
