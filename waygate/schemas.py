"""Request shapes (marshmallow) and their JSON Schema, the one source for validation,
``/mcp/commands``, MCP ``inputSchema`` and the OpenAPI document."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import EXCLUDE, INCLUDE, RAISE, Schema, ValidationError, fields, validate

from . import __version__
from .errors import InvalidRequest, MissingParameter
from .outcomes import ApprovalStep, ExecutionStatus, Mode


class JsonBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only: marshmallow's Boolean also takes 0, 1, "yes" ..."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


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
    async_ = JsonBoolean(
        data_key="async",
        load_default=False,
        metadata={"description": "Run in the background: answer 202 at once"},
    )


def load(
    schema: Schema,
    data: Any,
    *,
    invalid: str,
    missing: str = "missing required field(s)",
    where: str = "fields",
    partial: bool = False,
) -> dict[str, Any]:
    """``data`` validated by ``schema``, or the client's error for it: the one place where a
    request shape's problems become domain errors (REST bodies, MCPCommand, command params).

    Required fields left out raise MissingParameter (``missing``, then their names); anything
    else wrong raises InvalidRequest (``invalid``). Every field's messages go in
    ``details[where]``."""
    try:
        return schema.load(data, partial=partial)
    except ValidationError as err:
        messages = err.normalized_messages()
        absent = [
            name
            for name, msgs in messages.items()
            if isinstance(msgs, list) and "Missing data for required field." in msgs
        ]
        if absent:
            raise MissingParameter(f"{missing}: {', '.join(absent)}", {where: messages}) from None
        raise InvalidRequest(invalid, {where: messages}) from None


def expect_object(raw: Any, what: str) -> dict[str, Any]:
    """``raw`` if it is a JSON object; else InvalidRequest saying what was received."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{what} must be a JSON object", {"received": type(raw).__name__})
    return raw


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
    """The JSON Schema of a marshmallow schema, inline (no $ref), ``type: object``; a schema
    that carries its own (``JSON_SCHEMA``, an upstream MCP tool's inputSchema) gives that."""
    declared = getattr(schema_class, "JSON_SCHEMA", None)
    if declared is not None:
        return declared
    result = _plugin().converter.schema2jsonschema(schema_class)
    result.setdefault("type", "object")
    result.setdefault("properties", {})
    return result


def describe_parameters(schema_class: type[Schema]) -> dict[str, dict[str, Any]]:
    """``/mcp/commands`` parameter descriptions: type, required, description, enum, default."""
    schema = json_schema(schema_class)
    required = set(schema.get("required", []))
    described = {}
    for name, prop in (schema.get("properties") or {}).items():  # a JSON Schema may have none
        if not isinstance(prop, dict):  # ``true``: anything
            prop = {}
        entry: dict[str, Any] = {"type": prop.get("type", "any"), "required": name in required}
        for key in ("description", "enum", "default", "minimum", "maximum"):
            if key in prop:
                entry[key] = prop[key]
        if prop.get("type") == "object" and prop.get("properties"):
            entry["properties"] = prop["properties"]
        described[name] = entry
    return described


# -- response models: the shapes the API answers with (documented in the OpenAPI document) ------


class ErrorDetailSchema(Schema):
    code = fields.String(
        required=True, metadata={"description": "Error code (docs/api.md, Error codes)"}
    )
    message = fields.String(required=True, metadata={"description": "Human-readable message"})
    details = fields.Dict(required=True, metadata={"description": "Additional error details"})
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    request_id = fields.String(required=True, metadata={"description": "Request tracking ID"})


class ErrorSchema(Schema):
    """Spec 3.3: every 4xx and 5xx outside /mcp."""

    class Meta:
        unknown = INCLUDE

    error = fields.Nested(ErrorDetailSchema, required=True)


class ApprovalSchema(Schema):
    """The approval of an execution that needed one (issue 17)."""

    required = fields.Boolean(required=True)
    params_hash = fields.String(
        required=True, metadata={"description": "SHA-256 of the stored params' canonical JSON"}
    )
    expires_at = fields.String(required=True, metadata={"format": "date-time"})
    decided_by = fields.String(allow_none=True, metadata={"description": "The deciding key"})
    decided_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    reason = fields.String(allow_none=True)


class DecisionSchema(Schema):
    """The body of an approve or deny request, optional. Anything else in it is ignored: what
    runs is the stored request, never something sent with the decision."""

    class Meta:
        unknown = EXCLUDE

    reason = fields.String(
        validate=validate.Length(max=1000),
        allow_none=True,
        load_default=None,
        metadata={"description": "Why: recorded in the audit trail and the notification"},
    )


class MCPResponseSchema(Schema):
    """Spec 3.2."""

    status = fields.String(
        required=True,
        validate=validate.OneOf([s.value for s in ExecutionStatus]),
        metadata={"description": "Command execution status"},
    )
    result = fields.Raw(allow_none=True, metadata={"description": "Command result (any type)"})
    error = fields.String(allow_none=True, metadata={"description": "Error message if failed"})
    details = fields.Dict(
        metadata={
            "description": "What the command's own refusal (a plugin's CommandError) adds to "
            "the error, e.g. the offending field; present only then"
        }
    )
    duration_ms = fields.Integer(required=True)
    command_id = fields.String(required=True)
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    progress = fields.Dict(
        metadata={
            "description": "A running async execution's latest progress report: progress, "
            "and total and message when the command gave them"
        }
    )
    approval = fields.Nested(
        ApprovalSchema,
        metadata={"description": "Present when the command needed approval"},
    )


class IndexSchema(Schema):
    service = fields.String(required=True)
    version = fields.String(required=True)
    status = fields.String(required=True)
    mode = fields.String(required=True)
    description = fields.String(required=True)
    documentation = fields.String(required=True)


class PoolSchema(Schema):
    size = fields.Integer(required=True)
    queue_size = fields.Integer(required=True)
    in_use = fields.Integer(required=True)
    queued = fields.Integer(required=True)
    available = fields.Integer(required=True)


class HealthSchema(Schema):
    class Meta:
        unknown = INCLUDE

    status = fields.String(required=True, validate=validate.OneOf(["healthy", "unhealthy"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    version = fields.String(required=True)
    uptime_seconds = fields.Integer(required=True)
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    pool = fields.Nested(PoolSchema)
    error = fields.Nested(ErrorDetailSchema, metadata={"description": "Present on 503"})


class ReadySchema(Schema):
    class Meta:
        unknown = INCLUDE

    ready = fields.Boolean(required=True)
    error = fields.Nested(ErrorDetailSchema, metadata={"description": "Present on 503"})


class StatusSchema(Schema):
    engine = fields.String(required=True, validate=validate.OneOf(["operational", "degraded"]))
    plugins_loaded = fields.Integer(required=True)
    commands_available = fields.List(fields.String(), required=True)
    protocol_version = fields.String(required=True)
    capabilities = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True)
    pool = fields.Nested(PoolSchema, required=True)
    timestamp = fields.String(required=True, metadata={"format": "date-time"})


class CommandInfoSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    plugin = fields.String(required=True)
    parameters = fields.Dict(required=True)
    approval_required = fields.Boolean(
        required=True,
        metadata={"description": "Each call waits for a second person's approval"},
    )


class CommandListSchema(Schema):
    commands = fields.List(fields.Nested(CommandInfoSchema), required=True)
    total = fields.Integer(required=True)


class StatisticsSchema(Schema):
    calls_total = fields.Integer(required=True)
    errors_total = fields.Integer(required=True)
    avg_duration_ms = fields.Integer(required=True)


class PluginSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    description = fields.String(required=True)
    author = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["active", "failed"]))
    capabilities = fields.List(fields.String(), required=True)
    config = fields.Dict(required=True)
    commands = fields.List(fields.String(), required=True)
    error = fields.String(metadata={"description": "Why a failed plugin failed"})
    statistics = fields.Nested(StatisticsSchema, metadata={"description": "GET /plugins/{name}"})


class PluginListSchema(Schema):
    plugins = fields.List(fields.Nested(PluginSchema), required=True)
    total = fields.Integer(required=True)


class FailedPluginSchema(Schema):
    name = fields.String(required=True)
    error = fields.String(required=True, allow_none=True)


class ReloadSchema(Schema):
    status = fields.String(required=True)
    count = fields.Integer(required=True)
    loaded = fields.List(fields.String(), required=True)
    failed = fields.List(fields.Nested(FailedPluginSchema), required=True)
    duration_ms = fields.Integer(required=True)


_PRINCIPAL = "Who: a person as <issuer>#<subject> (with a token, or owning the key), else key:<id>"


class ExecutionSchema(Schema):
    command_id = fields.String(required=True)
    action = fields.String(required=True)
    plugin = fields.String(allow_none=True)
    key_name = fields.String(allow_none=True)
    key_id = fields.Integer(allow_none=True)
    mode = fields.Enum(Mode, by_value=True, required=True)
    status = fields.Enum(ExecutionStatus, by_value=True, required=True)
    duration_ms = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    timeout_s = fields.Integer(required=True)
    worker_pid = fields.Integer(allow_none=True)
    created_at = fields.String(required=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    params = fields.Raw(
        allow_none=True, metadata={"description": "The stored request, when it needed approval"}
    )
    client_context = fields.Raw(allow_none=True)
    params_hash = fields.String(allow_none=True)
    approval_expires_at = fields.String(allow_none=True)
    decided_by = fields.String(allow_none=True)
    decided_by_key_id = fields.Integer(allow_none=True)
    decided_at = fields.String(allow_none=True)
    decision_reason = fields.String(allow_none=True)
    trace_id = fields.String(
        allow_none=True,
        metadata={"description": "OpenTelemetry trace id (32 hex digits) when tracing is on"},
    )
    principal = fields.String(allow_none=True, metadata={"description": _PRINCIPAL})
    decided_by_principal = fields.String(allow_none=True, metadata={"description": _PRINCIPAL})


class EventSchema(Schema):
    command_id = fields.String(required=True)
    event = fields.Enum(ApprovalStep, by_value=True, required=True)
    key_id = fields.Integer(allow_none=True, metadata={"description": "The key that acted"})
    key_name = fields.String(allow_none=True)
    reason = fields.String(
        allow_none=True, metadata={"description": "A decision's reason; executed: the status"}
    )
    worker_pid = fields.Integer(allow_none=True)
    at = fields.String(required=True, metadata={"format": "date-time"})
    principal = fields.String(allow_none=True, metadata={"description": _PRINCIPAL})


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema), required=True)


class ExecutionListSchema(Schema):
    executions = fields.List(fields.Nested(ExecutionSchema), required=True)
    total = fields.Integer(required=True)


class ConnectionSchema(Schema):
    server = fields.String(required=True)
    port = fields.Integer(allow_none=True)
    connections = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    network = fields.Dict(required=True)
    workers = fields.Integer(required=True)
    timestamp = fields.String(required=True)


class PerformanceSchema(Schema):
    cpu_percent = fields.Float(required=True)
    memory = fields.Dict(required=True)
    threads = fields.Integer(required=True)
    open_files = fields.Integer(required=True)
    response_times = fields.Dict(required=True)
    processes = fields.Dict(required=True)
    timestamp = fields.String(required=True)


class ErrorRecordSchema(Schema):
    timestamp = fields.String(required=True)
    level = fields.String(required=True)
    code = fields.String(required=True)
    message = fields.String(required=True)
    context = fields.Dict(required=True)
    request_id = fields.String(allow_none=True)
    worker_pid = fields.Integer(allow_none=True)


class ErrorListSchema(Schema):
    errors = fields.List(fields.Nested(ErrorRecordSchema), required=True)
    total = fields.Integer(required=True)


class JsonRpcMessageSchema(Schema):
    """One JSON-RPC 2.0 message (POST /mcp): a request, notification or response."""

    class Meta:
        unknown = INCLUDE

    jsonrpc = fields.String(required=True, validate=validate.Equal("2.0"))
    id = fields.Raw(allow_none=True)
    method = fields.String(validate=validate.Length(min=1))
    params = fields.Dict()
    result = fields.Raw(allow_none=True)
    error = fields.Dict()


# -- keys (admin) ------------------------------------------------------------------------------

_OWNER = {
    "description": "The person who holds the key, <issuer>#<subject>: the two-person rule of"
    " approvals compares owners"
}
_OWNER_NAME = {"description": "Their display name"}
_PATTERNS = {
    "description": "Command patterns the key may run: shell-style globs over the command name,"
    " or Plugin.command / Plugin.*; null or absent: every command",
}


class KeyCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(1, 64))
    role = fields.String(load_default="user", validate=validate.OneOf(["admin", "user"]))
    allow = fields.List(fields.String(), allow_none=True, load_default=None, metadata=_PATTERNS)
    read_only = fields.Boolean(
        load_default=False,
        metadata={"description": "Only commands annotated readOnlyHint"},
    )
    expires_in = fields.Integer(allow_none=True, metadata={"description": "Seconds from now"})
    expires_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    rate_limit = fields.String(
        allow_none=True, metadata={"description": "The key's own execute limit, e.g. 1000/minute"}
    )
    owner = fields.String(allow_none=True, metadata=_OWNER)
    owner_name = fields.String(allow_none=True, metadata=_OWNER_NAME)


class KeyUpdateSchema(Schema):
    class Meta:
        unknown = RAISE

    allow = fields.List(fields.String(), allow_none=True, metadata=_PATTERNS)
    read_only = fields.Boolean()
    expires_in = fields.Integer(allow_none=True)
    expires_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    rate_limit = fields.String(allow_none=True)
    owner = fields.String(allow_none=True, metadata=_OWNER)
    owner_name = fields.String(allow_none=True, metadata=_OWNER_NAME)


class KeyRotateSchema(Schema):
    class Meta:
        unknown = RAISE

    grace_seconds = fields.Integer(
        load_default=0,
        metadata={"description": "How long the old secret stays valid (0: refused at once)"},
    )


class KeySchema(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    allow = fields.List(fields.String(), allow_none=True, metadata=_PATTERNS)
    read_only = fields.Boolean(required=True)
    expires_at = fields.String(allow_none=True)
    rate_limit = fields.String(allow_none=True)
    created_at = fields.String(required=True)
    updated_at = fields.String(allow_none=True)
    last_used_at = fields.String(allow_none=True)
    revoked_at = fields.String(allow_none=True)
    created_by = fields.String(
        allow_none=True,
        metadata={"description": "The name of the key that created it; cli: the host's CLI"},
    )
    created_by_id = fields.Integer(
        allow_none=True, metadata={"description": "The id of the key that created it"}
    )
    owner = fields.String(allow_none=True)
    owner_name = fields.String(allow_none=True)


class KeyWithSecretSchema(KeySchema):
    key = fields.String(
        required=True, metadata={"description": "The secret, shown only in this answer"}
    )


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema), required=True)
    total = fields.Integer(required=True)


class KeyEventSchema(Schema):
    id = fields.Integer(required=True)
    at = fields.String(required=True)
    event = fields.String(
        required=True,
        validate=validate.OneOf(["created", "changed", "rotated", "revoked", "expired_use"]),
    )
    key_id = fields.Integer(required=True)
    key_name = fields.String(required=True)
    actor_id = fields.Integer(allow_none=True)
    actor_name = fields.String(required=True)
    details = fields.Dict(allow_none=True)
    actor_principal = fields.String(allow_none=True, metadata={"description": _PRINCIPAL})


class KeyEventListSchema(Schema):
    events = fields.List(fields.Nested(KeyEventSchema), required=True)
    total = fields.Integer(required=True)
