"""Core: small commands for checking that the server and its command path work."""

from __future__ import annotations

import os
import platform
import socket
import time

from marshmallow import Schema, fields, validate

from waygate.sdk import Command, ExecutionContext, Plugin


class TestParams(Schema):
    message = fields.String(
        load_default="ok",
        metadata={"description": "Test message"},
        validate=validate.Length(max=10_000),
    )


class EchoParams(Schema):
    message = fields.String(
        required=True,
        metadata={"description": "Text to send back"},
        validate=validate.Length(max=1_000_000),
    )


class StatusParams(Schema):
    pass


class CorePlugin(Plugin):
    name = "Core"
    version = "1.0.0"
    description = "Core commands: connectivity test, echo and server status"
    author = "Waygate"
    capabilities = ("test", "echo", "status")

    def commands(self) -> list[Command]:
        return [
            Command(
                "test",
                "Test command for validation",
                TestParams,
                self.test,
                title="Test",
                annotations={"readOnlyHint": True, "idempotentHint": True},
                output_schema=_object({"message": "string", "received": "string"}),
            ),
            Command(
                "echo",
                "Return the message unchanged",
                EchoParams,
                self.echo,
                title="Echo",
                annotations={"readOnlyHint": True, "idempotentHint": True},
                output_schema=_object({"result": "string"}),
            ),
            Command(
                "status",
                "Report the host and process this command ran on",
                StatusParams,
                self.status,
                title="Server status",
                annotations={"readOnlyHint": True},
            ),
        ]

    def test(self, params: dict, ctx: ExecutionContext) -> dict:
        return {"message": "Command executed successfully", "received": params["message"]}

    def echo(self, params: dict, ctx: ExecutionContext) -> dict:
        return {"result": params["message"]}

    def status(self, params: dict, ctx: ExecutionContext) -> dict:
        load1, load5, load15 = os.getloadavg()
        return {
            "status": "operational",
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
            "server_time": time.time(),
        }


def _object(properties: dict[str, str]) -> dict:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": list(properties),
    }
