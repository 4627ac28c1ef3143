"""Plugins that misbehave on purpose, registered through a tmp distribution's entry points
(see the ``plugin_dist`` fixture): nothing here is imported by Waygate by name."""

from __future__ import annotations

import base64
import os
import time

from marshmallow import Schema, fields

from waygate.sdk import (
    Command,
    CommandError,
    Image,
    Message,
    Plugin,
    Prompt,
    PromptArgument,
    Resource,
    RichResult,
    Text,
)

PNG = base64.b64decode(  # a 1x1 red pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
CHART_SCHEMA = {"type": "object", "properties": {"bars": {"type": "integer"}}, "required": ["bars"]}


def _no_ticket():
    raise CommandError("no such ticket")


class SecondsParams(Schema):
    seconds = fields.Float(load_default=0.0)


class StepsParams(Schema):
    count = fields.Integer(load_default=3)
    pause = fields.Float(load_default=0.0)


class NoParams(Schema):
    pass


class TargetParams(Schema):
    target = fields.String(required=True)
    seconds = fields.Float(load_default=0.0)


class TestingPlugin(Plugin):
    name = "Testing"
    version = "0.1.0"
    description = "Commands that sleep, hang, fail and tell their worker"
    author = "Waygate tests"
    capabilities = ("testing",)

    def commands(self):
        return [
            Command("sleep", "Sleep, checking for cancellation", SecondsParams, self.sleep),
            Command("stuck", "Sleep, ignoring cancellation", SecondsParams, self.stuck),
            Command("boom", "Raise (after sleeping, if asked)", SecondsParams, self.boom),
            Command("pid", "The worker's pid (after sleeping, if asked)", SecondsParams, self.pid),
            Command("refuse", "Refuse with a CommandError and details", NoParams, self.refuse),
            Command("wait", "Wait on the cancel event, then tell", SecondsParams, self.wait),
            Command("chart", "A PNG chart", NoParams, self.chart, output_schema=CHART_SCHEMA),
            Command("steps", "Report progress at each step", StepsParams, self.steps),
            Command("picture", "Just a picture", NoParams, lambda p, ctx: Image(PNG)),
            Command(
                "wipe",
                "Pretend to wipe a target, and tell who ran it where",
                TargetParams,
                self.wipe,
                annotations={"destructiveHint": True},
            ),
        ]

    def steps(self, params, ctx):
        for step in range(1, params["count"] + 1):
            time.sleep(params["pause"])
            ctx.report_progress(step, params["count"], f"step {step}")
        return {"steps": params["count"]}

    def chart(self, params, ctx):
        return RichResult([Text("one bar"), Image(PNG, "image/png")], structured={"bars": 1})

    def prompts(self):
        return [
            Prompt(
                "triage",
                "Incident triage runbook for a service",
                template="Triage {service} (severity {severity}): check its dashboard first.",
                arguments=(
                    PromptArgument("service", "The failing service", required=True),
                    PromptArgument(
                        "severity", "SEV1-SEV4", suggestions=("SEV1", "SEV2", "SEV3", "SEV4")
                    ),
                ),
            ),
            Prompt(
                "show_chart",
                "Look at a chart",
                render=lambda args: [Image(PNG, "image/png"), Message(Text("Seen."), "assistant")],
            ),
        ]

    def resources(self):
        return [
            Resource("runbook://disk-full", "Disk full", lambda values: "Free space first."),
            Resource(
                "ticket://{id}/summary",
                "Ticket summary",
                lambda values: {"7": "Disk full on web1"}.get(values["id"]) or _no_ticket(),
            ),
            Resource("logo://png", "Logo", lambda values: PNG, mime_type="image/png"),
        ]

    def refuse(self, params, ctx):
        raise CommandError("quota exceeded", {"quota": 3, "used": 4}, status=409)

    def wait(self, params, ctx):
        woke = ctx.cancel_event.wait(params["seconds"])
        ctx.logger.info("woke: cancelled=%s", woke)
        return {"cancelled": woke}

    def sleep(self, params, ctx):
        end = time.monotonic() + params["seconds"]
        while time.monotonic() < end:
            ctx.check_cancelled()
            time.sleep(0.01)
        return {"slept": params["seconds"]}

    def stuck(self, params, ctx):
        time.sleep(params["seconds"])
        return {"slept": params["seconds"]}

    def boom(self, params, ctx):
        time.sleep(params["seconds"])
        raise RuntimeError("kaboom")

    def pid(self, params, ctx):
        # Holding the connection a moment makes concurrent clients spread over the workers.
        time.sleep(params["seconds"])
        return {"pid": os.getpid()}

    def wipe(self, params, ctx):
        time.sleep(params["seconds"])
        return {
            "wiped": params["target"],
            "pid": os.getpid(),
            "key_name": ctx.key_name,
            "context": ctx.client_context,
        }


class BadMetadataPlugin(Plugin):
    name = "BadMetadata"
    version = ""
    description = "no version"
    author = "Waygate tests"

    def commands(self):
        return []


class DuplicatePlugin(Plugin):
    name = "Duplicate"
    version = "0.1.0"
    description = "Offers a command name that Core already has"
    author = "Waygate tests"

    def commands(self):
        return [Command("echo", "A second echo", NoParams, lambda p, ctx: None)]


class RaisingPlugin(Plugin):
    name = "Raising"
    version = "0.1.0"
    description = "Fails while building its commands"
    author = "Waygate tests"

    def commands(self):
        raise ValueError("cannot build commands")


class ClashingPromptPlugin(Plugin):
    name = "TriageCopy"
    version = "0.1.0"
    description = "Offers a prompt name and a resource URI that Testing already has"
    author = "Waygate tests"

    def commands(self):
        return []

    def prompts(self):
        return [Prompt("triage", "A second triage", template="again")]


class BadResourcePlugin(Plugin):
    name = "BadResource"
    version = "0.1.0"
    description = "Offers a resource without a scheme"
    author = "Waygate tests"

    def commands(self):
        return []

    def resources(self):
        return [Resource("no-scheme", "Nothing", lambda values: "")]


class TracingPlugin(Plugin):
    name = "Tracing"
    version = "0.1.0"
    description = "Continues the execution's trace as a plugin making outgoing calls would"
    author = "Waygate tests"

    def commands(self):
        return [Command("traced", "Log, make a span, return trace headers", NoParams, self.traced)]

    def traced(self, params, ctx):
        from opentelemetry import trace

        ctx.logger.warning("calling out")
        with trace.get_tracer("waygate-tests").start_as_current_span("plugin.outgoing"):
            pass
        return {"headers": ctx.trace_headers()}


class ShadowPlugin(Plugin):
    name = "Shadow"
    version = "0.1.0"
    description = "Names a command as if it were Core's: Core.shadow"
    author = "Waygate tests"

    def commands(self):
        return [Command("Core.shadow", "Looks like a Core command", NoParams, lambda p, ctx: "ran")]


class SecretConfigPlugin(Plugin):
    name = "Vault"
    version = "0.1.0"
    description = "Holds secrets in its config"
    author = "Waygate tests"
    default_config = {"region": "eu-west", "dsn": None, "upstream": {"url": "https://x"}}
    secret_config = ("dsn",)

    def commands(self):
        return [Command("vault_region", "The configured region", NoParams, self.region)]

    def region(self, params, ctx):
        return {"region": self.config["region"], "token_length": len(self.config["api_token"])}
