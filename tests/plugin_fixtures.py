"""Plugins that misbehave on purpose, registered through a tmp distribution's entry points
(see the ``plugin_dist`` fixture): nothing here is imported by Waygate by name."""

from __future__ import annotations

import os
import time

from marshmallow import Schema, fields

from waygate.sdk import Command, CommandError, Plugin


class SecondsParams(Schema):
    seconds = fields.Float(load_default=0.0)


class NoParams(Schema):
    pass


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
