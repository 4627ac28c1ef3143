"""Tool parameters declared as JSON Schema (2020-12 by default, as MCP says; draft-07 when the
schema names it in ``$schema``) beside marshmallow: checked once when the plugin loads (a bad
schema is a load error), then used like a marshmallow schema by the one execution path
(``commands.resolve`` -> ``schemas.load``), so a refused argument gets the same error shapes
(REST envelope, MCP isError result) whichever way the command declared its parameters.

Bounded, because the arguments come from clients:
- no ``$ref`` leaves the schema: only local references (``#...``) are allowed, checked at load,
  and the validator's registry cannot retrieve anything (jsonschema's default would fetch a
  remote ``$ref`` with urllib: the spec says MUST NOT);
- ``pattern`` and ``patternProperties`` are matched with the ``regex`` module under a time
  budget (``PATTERN_BUDGET_S`` per match, ``VALIDATION_BUDGET_S`` for all the matches of one
  call's arguments): Python's ``re`` has no timeout, so a plugin's backtracking-prone pattern
  (``(a+)+$``) would let one crafted argument hold a worker; a match over budget is a refused
  argument, not a stuck worker. The per-call budget matters as much: an array of 10,000 such
  strings, each stopped at the per-match budget, would still hold the thread for minutes;
- a schema is at most ``MAX_SCHEMA_BYTES`` of JSON and ``MAX_DEPTH`` levels deep; errors
  reported per call are capped (``MAX_ERRORS``).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, ClassVar

from marshmallow import Schema, ValidationError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
DRAFT_07 = "http://json-schema.org/draft-07/schema"
MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_ERRORS = 20
PATTERN_BUDGET_S = 0.05
VALIDATION_BUDGET_S = 0.25  # every pattern match of one call's arguments together
_REF_KEYS = ("$ref", "$dynamicRef")
# MCP 2026-07-28: an argument a client mirrors into an HTTP header (Mcp-Param-{name})
X_MCP_HEADER = "x-mcp-header"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PRIMITIVE = ("string", "integer", "boolean")


class SchemaProblem(ValueError):
    """A declared schema Waygate will not use (said at plugin load)."""


def validator_for(schema: Any, what: str = "schema") -> Any:
    """A jsonschema validator for ``schema`` with the bounds above; SchemaProblem if it is
    not a JSON Schema object of a supported dialect, refers outside itself, or is too big."""
    import jsonschema
    import referencing
    import referencing.exceptions
    import referencing.jsonschema

    if not isinstance(schema, Mapping):
        raise SchemaProblem(f"{what} must be a JSON Schema object")
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise SchemaProblem(f"{what} is not JSON: {exc}") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaProblem(f"{what} is {size} bytes of JSON; at most {MAX_SCHEMA_BYTES}")
    dialect = str(schema.get("$schema", DRAFT_2020_12)).rstrip("#")
    base = {DRAFT_2020_12: jsonschema.Draft202012Validator, DRAFT_07: jsonschema.Draft7Validator}
    specification = {
        DRAFT_2020_12: referencing.jsonschema.DRAFT202012,
        DRAFT_07: referencing.jsonschema.DRAFT7,
    }
    if dialect not in base:
        raise SchemaProblem(
            f"{what}: dialect {dialect[:100]!r} is not supported (JSON Schema 2020-12, the"
            " default, or draft-07)"
        )
    try:
        base[dialect].check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise SchemaProblem(f"{what} is not valid JSON Schema at /{where}: {exc.message}") from None
    for depth, node in _nodes(schema):
        if depth > MAX_DEPTH:
            raise SchemaProblem(f"{what} nests deeper than {MAX_DEPTH} levels")
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                raise SchemaProblem(
                    f"{what}: {key} {ref[:100]!r} points outside the schema; only local"
                    " references (#...) are resolved, nothing is fetched"
                )
        patterns = list(node.get("patternProperties") or {})
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        for pattern in patterns:
            try:
                _compiled(pattern)
            except Exception as exc:  # regex.error: the message says where
                raise SchemaProblem(
                    f"{what}: pattern {pattern[:100]!r} is invalid: {exc}"
                ) from None
    # an empty registry that retrieves nothing: only the schema itself (and the dialects'
    # own metaschemas, which jsonschema adds from its bundled copies) can be referred to
    registry = referencing.Registry()
    resolver = registry.resolver_with_root(specification[dialect].create_resource(dict(schema)))
    for _, node in _nodes(schema):  # every local reference resolves, now rather than per call
        for key in _REF_KEYS:
            if isinstance(node.get(key), str):
                try:
                    resolver.lookup(node[key])
                except referencing.exceptions.Unresolvable:
                    raise SchemaProblem(
                        f"{what}: {key} {node[key][:100]!r} does not resolve"
                    ) from None
    return _bounded(base[dialect])(schema, registry=registry)


def _nodes(schema: Any, depth: int = 1) -> Iterator[tuple[int, dict]]:
    """Every object in the schema with its depth (keywords and property maps alike: a
    property named ``$ref`` is checked too, which costs nothing but a clearer name)."""
    if isinstance(schema, Mapping):
        yield depth, schema  # type: ignore[misc]
        for value in schema.values():
            yield from _nodes(value, depth + 1)
    elif isinstance(schema, list):
        for value in schema:
            yield from _nodes(value, depth + 1)


@lru_cache(maxsize=1024)
def _compiled(pattern: str):
    import regex

    return regex.compile(pattern)


# the monotonic time by which the validation under way must finish its pattern matches
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "waygate_pattern_deadline", default=None
)


def _search(pattern: str, text: str) -> bool | None:
    """Whether ``pattern`` matches somewhere in ``text``; None when over the time budget (the
    match's own, or what is left of the call's)."""
    budget = PATTERN_BUDGET_S
    deadline = _deadline.get()
    if deadline is not None:
        budget = min(budget, deadline - time.monotonic())
        if budget <= 0:
            return None
    try:
        return _compiled(pattern).search(text, timeout=budget) is not None
    except TimeoutError:
        return None


@lru_cache(maxsize=4)
def _bounded(base: type) -> type:
    """``base`` with ``pattern`` and ``patternProperties`` matched under the time budget."""
    import jsonschema

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string"):
            found = _search(patrn, instance)
            if found is None:
                yield jsonschema.ValidationError(
                    f"took too long to match pattern {patrn[:100]!r}; send a shorter value"
                )
            elif not found:
                yield jsonschema.ValidationError(f"{instance[:100]!r} does not match {patrn!r}")

    def pattern_properties(validator, properties, instance, schema):
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in properties.items():
            for key, value in instance.items():
                found = _search(patrn, key)
                if found is None:
                    yield jsonschema.ValidationError(
                        f"took too long to match property name pattern {patrn[:100]!r}"
                    )
                elif found:
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    def unique_items(validator, unique, instance, schema):
        if unique and validator.is_type(instance, "array") and not _unique(instance):
            yield jsonschema.ValidationError(f"{_preview(instance)} has non-unique elements")

    return jsonschema.validators.extend(
        base,
        {
            "pattern": pattern,
            "patternProperties": pattern_properties,
            "uniqueItems": unique_items,
        },
    )


def _unique(items: list) -> bool:
    """Whether no two of ``items`` are equal as JSON Schema says (``1`` equals ``1.0``, not
    ``true``; objects regardless of key order), by their canonical JSON: linear, where
    jsonschema's own check compares every pair once items do not sort (objects, or mixed
    types), so 6,000 small objects held a thread for 24 s."""
    seen = set()
    for item in items:
        key = json.dumps(_by_value(item), sort_keys=True, separators=(",", ":"))
        if key in seen:
            return False
        seen.add(key)
    return True


def _by_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def errors_of(validator: Any, data: Any) -> dict[str, list[str]]:
    """Messages by top-level field, as marshmallow reports them: a required field left out
    says "Missing data for required field." (so ``schemas.load`` makes it MissingParameter);
    anything about the whole object goes under ``_schema``."""
    messages: dict[str, list[str]] = {}
    token = _deadline.set(time.monotonic() + VALIDATION_BUDGET_S)
    try:  # at most MAX_ERRORS are reported: looking for more only costs time
        found = list(itertools.islice(validator.iter_errors(data), MAX_ERRORS))
    finally:
        _deadline.reset(token)
    errors = sorted(found, key=lambda e: [str(p) for p in e.path])
    for error in errors[:MAX_ERRORS]:
        if error.validator == "required" and not error.path and isinstance(data, dict):
            for missing in sorted(set(error.validator_value) - set(data)):
                messages.setdefault(missing, []).append("Missing data for required field.")
            continue
        where = str(error.path[0]) if error.path else "_schema"
        messages.setdefault(where, []).append(error.message[:300])
    return messages


def annotated(schema: Any) -> Iterator[tuple[tuple[str, ...], str, Mapping[str, Any]]]:
    """(property path, header name, property schema) of every ``x-mcp-header`` reachable from
    the root through ``properties`` alone (the only places the spec allows it)."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), schema)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        if path and isinstance(node.get(X_MCP_HEADER), str):
            yield path, node[X_MCP_HEADER], node
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            stack.extend(((*path, name), sub) for name, sub in properties.items())


def invalid_annotation(schema: Any) -> str | None:
    """Why the schema's ``x-mcp-header`` annotations are invalid (clients then drop the tool),
    or None: each on a statically reachable string/integer/boolean property, a token, unique
    regardless of case, and none anywhere else."""
    reachable = {id(node) for _, _, node in annotated(schema)}
    seen: dict[str, str] = {}
    for path, token, node in annotated(schema):
        where = ".".join(path)
        if not _TOKEN.fullmatch(token):
            return f"property {where!r}: {X_MCP_HEADER} {token[:50]!r} is not an HTTP token"
        if node.get("type") not in _PRIMITIVE:
            return f"property {where!r}: {X_MCP_HEADER} needs type string, integer or boolean"
        if token.lower() in seen:
            return (
                f"{X_MCP_HEADER} {token!r} on {where!r} repeats the one on {seen[token.lower()]!r}"
            )
        seen[token.lower()] = where
    for node in _every_object(schema):
        if X_MCP_HEADER in node and id(node) not in reachable:
            return f"{X_MCP_HEADER} outside a chain of properties from the root"
    return None


def _every_object(value: Any) -> Iterator[Mapping[str, Any]]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class JsonSchemaParams(Schema):
    """A command's parameters declared as JSON Schema: a marshmallow Schema in name only, so
    that everything that takes ``Command.params`` takes it (``schemas.json_schema`` hands out
    ``JSON_SCHEMA`` as declared; ``load`` validates with the bounded validator and returns
    the arguments exactly as sent)."""

    JSON_SCHEMA: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    _validator: ClassVar[Any] = None

    def load(self, data: Any, *, many: Any = None, partial: Any = None, unknown: Any = None):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValidationError({"_schema": ["arguments must be an object"]})
        validator = type(self)._validator
        if validator is None:
            return data
        messages = errors_of(validator, data)
        if messages:
            raise ValidationError(messages)
        return data


def params_class(name: str, schema: Mapping[str, Any]) -> type[JsonSchemaParams]:
    """The params class of a command whose parameters are ``schema`` (SchemaProblem if not
    usable). The root must describe an object: MCP's inputSchema is ``type: object``."""
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise SchemaProblem(f"the inputSchema of {name} must be a JSON Schema with type object")
    validator = validator_for(schema, f"the inputSchema of {name}")
    return type(
        f"Params_{name}",
        (JsonSchemaParams,),
        {"JSON_SCHEMA": dict(schema), "_validator": validator},
    )


def documentable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` for an OpenAPI 3.0 document, where a local ``$ref`` would resolve against
    the document instead: a schema with references or its own dialect is described as an
    object, pointing at tools/list for the exact schema."""
    if any(
        k in node for _, node in _nodes(schema) for k in ("$ref", "$dynamicRef", "$defs", "$schema")
    ):
        return {
            "type": "object",
            "description": "JSON Schema 2020-12 (see the tool's inputSchema in MCP tools/list)",
        }
    return dict(schema)
