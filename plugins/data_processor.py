"""DataProcessor: parse, validate, normalise and profile JSON, CSV and XML data.

XML goes through defusedxml: DTDs, entity declarations (billion laughs, quadratic blow-up)
and external entities are refused before anything is expanded.

Inputs are data, not programs: nesting deeper than ``MAX_DEPTH`` levels, JSON's non-standard
``NaN``/``Infinity`` and numbers beyond what a double or Python's integer conversion holds are
invalid input (400), and ``analyze``'s ``mean`` is ``null`` when it does not fit a double.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from marshmallow import Schema, fields, validate

from waygate.sdk import Command, CommandError, ExecutionContext, Plugin

FORMATS = ("json", "xml", "csv")
# Deeper data is refused: profiling and the JSON answer walk it recursively.
MAX_DEPTH = 200


class Options(Schema):
    validate = fields.Boolean(
        load_default=False,
        metadata={"description": "Report whether the input is valid, and where the first error is"},
    )
    transform = fields.Boolean(
        load_default=False, metadata={"description": "Normalise the data to a list of JSON records"}
    )


class ProcessParams(Schema):
    input = fields.String(required=True, metadata={"description": "Input data to process"})
    format = fields.String(
        load_default="json",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "Format of the input"},
    )
    options = fields.Nested(
        Options,
        load_default=lambda: {"validate": False, "transform": False},
        metadata={"description": "Processing options"},
    )


class AnalyzeParams(Schema):
    input = fields.String(required=True, metadata={"description": "Data set to profile"})
    format = fields.String(
        load_default="json",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "Format of the input"},
    )
    top = fields.Integer(
        load_default=5,
        validate=validate.Range(min=1, max=50),
        metadata={"description": "How many most frequent values to list per field"},
    )


@dataclass
class InvalidInput(Exception):
    """Where the input stops being valid ``format``: 1-based line and column, 0-based offset."""

    format: str
    message: str
    line: int | None = None
    column: int | None = None
    position: int | None = None

    def where(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (
                ("line", self.line),
                ("column", self.column),
                ("position", self.position),
            )
            if value is not None
        ]
        return f" ({', '.join(parts)})" if parts else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "position": self.position,
        }


class DataProcessorPlugin(Plugin):
    name = "DataProcessor"
    version = "1.0.0"
    description = "Data processing plugin"
    author = "Waygate"
    capabilities = ("process", "transform", "validate")
    default_config = {"max_size": 10 * 1024 * 1024, "formats": list(FORMATS)}

    def commands(self) -> list[Command]:
        return [
            Command(
                "process_data",
                "Process input data: parse, validate and normalise JSON, CSV or XML",
                ProcessParams,
                self.process_data,
                title="Process data",
                annotations={"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
            ),
            Command(
                "analyze",
                "Profile a data set: rows, columns, per-field type, nulls, "
                "numeric min/max/mean, distinct counts and top values",
                AnalyzeParams,
                self.analyze,
                title="Analyze data",
                annotations={"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False},
            ),
        ]

    # -- commands ----------------------------------------------------------------------------

    def process_data(self, params: dict, ctx: ExecutionContext) -> dict:
        fmt, text = self._admit(params)
        options = params["options"]
        try:
            parsed = parse(fmt, text, ctx)
        except InvalidInput as err:
            if options["validate"]:
                return {
                    "message": f"input is not valid {fmt}",
                    "data": None,
                    "metadata": {"format": fmt, "valid": False, "errors": [err.as_dict()]},
                }
            raise CommandError(
                f"input is not valid {fmt}: {err.message}{err.where()}",
                {"format": fmt, **err.as_dict()},
            ) from None
        records = to_records(fmt, parsed)
        metadata = {
            "format": fmt,
            "records": len(records),
            "fields": field_names(records),
            "bytes": len(text.encode("utf-8")),
            "transformed": options["transform"],
        }
        if options["validate"]:
            metadata.update(valid=True, errors=[])
        return {
            "message": f"processed {len(records)} {fmt} record(s)",
            "data": records if options["transform"] or fmt != "json" else parsed,
            "metadata": metadata,
        }

    def analyze(self, params: dict, ctx: ExecutionContext) -> dict:
        fmt, text = self._admit(params)
        try:
            records = to_records(fmt, parse(fmt, text, ctx))
        except InvalidInput as err:
            raise CommandError(
                f"input is not valid {fmt}: {err.message}{err.where()}",
                {"format": fmt, **err.as_dict()},
            ) from None
        return profile(records, params["top"], ctx)

    def _admit(self, params: dict) -> tuple[str, str]:
        fmt = params["format"]
        if fmt not in self.config["formats"]:
            raise CommandError(f"format {fmt!r} is disabled; enabled: {self.config['formats']}")
        text = params["input"]
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > self.config["max_size"]:
            raise CommandError(
                f"input is {size} bytes; the limit is {self.config['max_size']}",
                {"bytes": size, "max_size": self.config["max_size"]},
                status=413,
            )
        return fmt, text


# -- parsing -----------------------------------------------------------------------------------


def parse(fmt: str, text: str, ctx: ExecutionContext) -> Any:
    if fmt == "json":
        return parse_json(text)
    if fmt == "csv":
        return parse_csv(text, ctx)
    return parse_xml(text)


def parse_json(text: str) -> Any:
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise InvalidInput("json", err.msg, err.lineno, err.colno, err.pos) from None
    except RecursionError:
        raise InvalidInput("json", _TOO_DEEP) from None
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise InvalidInput(
            "json", f"a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if deeper_than(value, MAX_DEPTH, _json_children):
        raise InvalidInput("json", _TOO_DEEP)
    return value


_TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels)"


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InvalidInput("json", f"number {text[:40]} is out of range")
    return number


def _refuse_constant(name: str) -> None:
    raise InvalidInput("json", f"{name} is not a JSON value")


def _json_children(value: Any) -> Any:
    if isinstance(value, dict):
        return value.values()
    return value if isinstance(value, list) else ()


def deeper_than(root: Any, limit: int, children) -> bool:
    """Whether ``root`` nests more than ``limit`` levels, walked without recursion."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children(node))
    return False


def parse_csv(text: str, ctx: ExecutionContext) -> list[dict[str, str]]:
    if not text.strip():
        raise InvalidInput("csv", "no header row", 1, 1, 0)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        if len(set(header)) != len(header):
            raise InvalidInput("csv", "duplicate column names in the header", 1, 1, 0)
        width = len(header)
        rows = []
        for number, row in enumerate(reader, start=2):
            if len(row) != width:
                if not row:
                    continue  # blank line
                raise InvalidInput(
                    "csv",
                    f"row has {len(row)} fields; the header has {width}",
                    reader.line_num,
                    1,
                    None,
                )
            rows.append(dict(zip(header, row, strict=True)))
            if number % 10000 == 0:
                ctx.check_cancelled()
    except csv.Error as err:
        raise InvalidInput("csv", str(err), reader.line_num, None, None) from None
    return rows


def parse_xml(text: str) -> Any:
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as err:
        raise InvalidInput(
            "xml", f"refused: {type(err).__name__} (DTDs and entities are not allowed)"
        ) from None
    except ParseError as err:
        line, column = err.position
        raise InvalidInput("xml", str(err).split(":")[0], line, column + 1, None) from None
    if deeper_than(root, MAX_DEPTH, list):
        raise InvalidInput("xml", _TOO_DEEP)
    return root


# -- records -----------------------------------------------------------------------------------


def to_records(fmt: str, parsed: Any) -> list[dict[str, Any]]:
    """Normalise parsed data to a list of flat JSON objects."""
    if fmt == "csv":
        return parsed
    if fmt == "xml":
        return [xml_record(child) for child in parsed] or [xml_record(parsed)]
    if isinstance(parsed, list):
        return [item if isinstance(item, dict) else {"value": item} for item in parsed]
    if isinstance(parsed, dict):
        return [parsed]
    return [{"value": parsed}]


def xml_record(element) -> dict[str, Any]:
    record: dict[str, Any] = dict(element.attrib)
    children = list(element)
    if not children:
        text = (element.text or "").strip()
        if text or not record:
            record[element.tag] = text
        return record
    for child in children:
        value = xml_record(child) if len(child) else (child.text or "").strip()
        if child.tag in record:
            existing = record[child.tag]
            record[child.tag] = (existing if isinstance(existing, list) else [existing]) + [value]
        else:
            record[child.tag] = value
    return record


def field_names(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            seen.setdefault(key, None)
    return list(seen)


# -- profiling ---------------------------------------------------------------------------------


def profile(records: list[dict[str, Any]], top: int, ctx: ExecutionContext) -> dict[str, Any]:
    names = field_names(records)
    columns: dict[str, Any] = {}
    for index, name in enumerate(names):
        if index % 20 == 0:
            ctx.check_cancelled()
        values = [record.get(name) for record in records]
        columns[name] = profile_field(values, top)
    return {"rows": len(records), "columns": len(names), "fields": columns}


def profile_field(values: list[Any], top: int) -> dict[str, Any]:
    present = [v for v in values if v is not None and v != ""]
    kinds = Counter(kind_of(v) for v in present)
    numbers = [n for n in (as_number(v) for v in present) if n is not None]
    hashable = [
        json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in present
    ]
    counts = Counter(hashable)
    info: dict[str, Any] = {
        "type": (kinds.most_common(1)[0][0] if len(kinds) == 1 else "mixed") if kinds else "null",
        "nulls": len(values) - len(present),
        "distinct": len(counts),
        "top_values": [
            {"value": value, "count": count} for value, count in counts.most_common(top)
        ],
    }
    if numbers and len(numbers) == len(present):
        info.update(min=min(numbers), max=max(numbers), mean=mean(numbers))
    return info


def mean(numbers: list[int | float]) -> float | None:
    """The arithmetic mean as a double, or None when it does not fit one."""
    count = len(numbers)
    try:
        return _finite(math.fsum(numbers) / count)
    except OverflowError:  # the sum (or an integer) leaves the double range
        pass
    try:
        return _finite(math.fsum(n / count for n in numbers))
    except OverflowError:  # an integer whose share still does not fit a double
        return None


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        number = as_number(value)
        if number is not None:
            return "integer" if isinstance(number, int) else "number"
        if value.lower() in ("true", "false"):
            return "boolean"
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if not (isinstance(value, float) and math.isnan(value)) else None
    if isinstance(value, str) and value and (value[0].isdigit() or value[0] in "+-."):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
    return None
