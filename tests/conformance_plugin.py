"""The fixtures the official MCP conformance suite expects of a server (its tools, prompts and
resources, by the suite's own names), written with ``waygate.sdk`` only: the suite runs against
a real Waygate that loads this like any installed plugin, which also proves the SDK can express
them. Registered through a tmp distribution's entry points by tests/test_mcp_conformance.py."""

from __future__ import annotations

import io
import json
import logging
import time
import wave

from marshmallow import Schema

from tests.conformance_input import input_prompts, input_tools
from tests.plugin_fixtures import PNG  # a 1x1 red pixel
from waygate.sdk import (
    Audio,
    Command,
    CommandError,
    EmbeddedResource,
    Image,
    Message,
    Plugin,
    Prompt,
    PromptArgument,
    Resource,
    RichResult,
    Text,
)


def _silence() -> bytes:
    """A tenth of a second of 8 kHz mono silence, as WAV."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 800)
    return out.getvalue()


class NoParams(Schema):
    pass


# The suite's json-schema-2020-12 fixture (src/scenarios/server/json-schema-2020-12.ts)
JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


class ConformancePlugin(Plugin):
    name = "Conformance"
    version = "0.2.0-alpha.12"  # the suite release these fixtures follow
    description = "The MCP conformance suite's fixture tools, prompts and resources"
    author = "Waygate tests"
    capabilities = ("testing",)

    def commands(self):
        def tool(name, description, handler):
            return Command(name, description, NoParams, handler)

        return [
            # JSON Schema 2020-12 params, kept as declared ($schema, $defs, $anchor, allOf,
            # if/then/else, additionalProperties) and validated by jsonschema
            Command(
                "json_schema_2020_12_tool",
                "Tool with JSON Schema 2020-12 features",
                JSON_SCHEMA_2020_12,
                lambda params, ctx: f"Contact saved: {params.get('name', 'anonymous')}",
            ),
            # a tool that logs: plugin logs go to the server log, never to the client as
            # notifications/message (the suite checks none arrives without a logLevel)
            tool("test_logging_tool", "Logs three messages", self.log_three),
            # an argument mirrored into an HTTP header (x-mcp-header): Mcp-Param-Region must
            # match it (http-custom-header-server-validation)
            Command(
                "test_header_param",
                "Echoes the region its client also sends as the Mcp-Param-Region header",
                {
                    "type": "object",
                    "properties": {
                        "region": {"type": "string", "x-mcp-header": "Region"},
                        "query": {"type": "string"},
                    },
                    "required": ["region"],
                },
                lambda params, ctx: f"Region: {params['region']}",
            ),
            tool(
                "test_simple_text",
                "Returns a simple text response",
                lambda params, ctx: "This is a simple text response for testing.",
            ),
            tool("test_error_handling", "Always fails, to test error results", self.fail),
            tool("test_tool_with_progress", "Reports progress three times", self.with_progress),
            tool("test_image_content", "Returns an image", lambda p, ctx: Image(PNG, "image/png")),
            tool(
                "test_audio_content", "Returns audio", lambda p, ctx: Audio(_silence(), "audio/wav")
            ),
            tool(
                "test_embedded_resource",
                "Returns an embedded resource",
                lambda p, ctx: EmbeddedResource(
                    "test://embedded-resource",
                    "text/plain",
                    text="This is an embedded resource content.",
                ),
            ),
            tool(
                "test_multiple_content_types",
                "Returns text, an image and a resource",
                lambda p, ctx: RichResult(
                    [
                        Text("Multiple content types test:"),
                        Image(PNG, "image/png"),
                        EmbeddedResource(
                            "test://mixed-content-resource",
                            "application/json",
                            text=json.dumps({"test": "data", "value": 123}),
                        ),
                    ]
                ),
            ),
            *input_tools(tool),
        ]

    @staticmethod
    def with_progress(params, ctx):
        for done in (0, 50, 100):
            ctx.report_progress(done, 100)
            time.sleep(0.05)
        return "Progress reported: 0, 50, 100 of 100."

    @staticmethod
    def log_three(params, ctx):
        log = logging.getLogger("waygate.plugin.Conformance")
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            log.log(level, "test_logging_tool message at %s", logging.getLevelName(level))
        return "Logged three messages to the server log."

    @staticmethod
    def fail(params, ctx):
        raise CommandError("This tool intentionally returns an error for testing")

    def prompts(self):
        return [
            Prompt(
                "test_simple_prompt",
                "A simple prompt without arguments",
                template="This is a simple prompt for testing.",
            ),
            Prompt(
                "test_prompt_with_arguments",
                "A prompt with two required arguments",
                template="Prompt with arguments: arg1='{arg1}', arg2='{arg2}'",
                arguments=(
                    PromptArgument("arg1", "First test argument", required=True),
                    PromptArgument("arg2", "Second test argument", required=True),
                ),
            ),
            Prompt(
                "test_prompt_with_embedded_resource",
                "A prompt that embeds a resource",
                arguments=(PromptArgument("resourceUri", "URI of the resource", required=True),),
                render=lambda args: [
                    EmbeddedResource(
                        args["resourceUri"],
                        "text/plain",
                        text="Embedded resource content for testing.",
                    ),
                    Text("Please process the embedded resource above."),
                ],
            ),
            Prompt(
                "test_prompt_with_image",
                "A prompt with an image",
                render=lambda args: [
                    Message(Image(PNG, "image/png")),
                    Message(Text("Please analyze the image above.")),
                ],
            ),
            *input_prompts(),
        ]

    def resources(self):
        return [
            Resource(
                "test://static-text",
                "Static text",
                lambda values: "This is the content of the static text resource.",
                description="A fixed text resource",
            ),
            Resource(
                "test://static-binary",
                "Static binary",
                lambda values: PNG,
                mime_type="image/png",
                description="A fixed PNG",
            ),
            Resource(
                "test://template/{id}/data",
                "Data by id",
                lambda values: json.dumps(
                    {
                        "id": values["id"],
                        "templateTest": True,
                        "data": f"Data for ID: {values['id']}",
                    }
                ),
                mime_type="application/json",
                description="A resource template",
            ),
            Resource(
                "test://watched-resource",
                "Watched",
                lambda values: "A resource clients may want to watch.",
                description="Subscriptions are not offered; reading is",
            ),
        ]
