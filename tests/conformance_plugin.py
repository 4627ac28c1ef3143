"""The fixtures the official MCP conformance suite expects of a server (its tools, prompts and
resources, by the suite's own names), written with ``waygate.sdk`` only: the suite runs against
a real Waygate that loads this like any installed plugin, which also proves the SDK can express
them. Registered through a tmp distribution's entry points by tests/test_mcp_conformance.py."""

from __future__ import annotations

from marshmallow import Schema

from waygate.sdk import Command, CommandError, Plugin


class NoParams(Schema):
    pass


class ConformancePlugin(Plugin):
    name = "Conformance"
    version = "0.1.13"  # the suite release these fixtures follow
    description = "The MCP conformance suite's fixture tools, prompts and resources"
    author = "Waygate tests"
    capabilities = ("testing",)

    def commands(self):
        return [
            Command(
                "test_simple_text",
                "Returns a simple text response",
                NoParams,
                lambda params, ctx: "This is a simple text response for testing.",
            ),
            Command(
                "test_error_handling",
                "Always fails, to test error results",
                NoParams,
                self.fail,
            ),
        ]

    @staticmethod
    def fail(params, ctx):
        raise CommandError("This tool intentionally returns an error for testing")
