"""A plugin whose commands ask their caller (MCP 2026-07-28 input requests), registered through
a tmp distribution's entry points (``plugin_dist.register("Asking", ...)``)."""

from __future__ import annotations

import os

from marshmallow import Schema, fields

from waygate.sdk import Command, Plugin, Prompt, Text, elicitation, list_roots, sampling


class TargetParams(Schema):
    target = fields.String(required=True)


class NoParams(Schema):
    pass


class AskingPlugin(Plugin):
    name = "Asking"
    version = "0.1.0"
    description = "Commands that ask their caller before they act"
    author = "Waygate tests"

    def commands(self):
        def restart(params, ctx):
            # read, then ask, then act: everything before the question runs once per round
            if not ctx.confirm(f"Restart {params['target']}? (asked by {os.getpid()})"):
                return {"restarted": False, "pid": os.getpid()}
            return {"restarted": True, "target": params["target"], "pid": os.getpid()}

        def wizard(params, ctx):
            colour = ctx.choose("Which colour?", ["red", "green"], key="colour")
            name = ctx.ask(
                "Your name?",
                {"type": "object", "properties": {"name": {"type": "string"}}},
                key="name",
            )
            return {"colour": colour, "name": name.content.get("name")}

        def everything(params, ctx):
            answers = ctx.ask_all(
                {
                    "who": elicitation(
                        "Who?", {"type": "object", "properties": {"n": {"type": "string"}}}
                    ),
                    "poem": sampling("A haiku", max_tokens=50),
                    "where": list_roots(),
                }
            )
            return {
                "who": answers["who"]["content"]["n"],
                "poem": answers["poem"]["content"]["text"],
                "where": [r["uri"] for r in answers["where"]["roots"]],
            }

        def adaptive(params, ctx):
            if ctx.can_ask("elicitation"):
                return {"said": ctx.ask("Say", {"type": "object"}).content}
            return {"said": None, "sampled": ctx.sample("Say something")["content"]["text"]}

        return [
            Command("restart", "Restart a service after the user confirms", TargetParams, restart),
            Command("wizard", "Two questions, one round each", NoParams, wizard),
            Command(
                "everything", "Elicitation, sampling and roots in one round", NoParams, everything
            ),
            Command("adaptive", "Asks what the client can answer", NoParams, adaptive),
        ]

    def prompts(self):
        def briefing(arguments, ctx):
            service = ctx.choose("Brief me on which service?", ["db", "web"], key="service")
            return [Text(f"Summarise the last incident of {service}.")]

        return [Prompt("briefing", "Asks which service first", render=briefing)]
