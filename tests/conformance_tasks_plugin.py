"""The fixtures the conformance suite's task scenarios (io.modelcontextprotocol/tasks, SEP-2663)
expect of a server, by the suite's names, written with ``waygate.sdk`` only; also the task
commands of tests/test_mcp_tasks.py. A command declares whether it may be answered with a task
(``task_support``); how the call is answered is the server's business."""

from __future__ import annotations

import os

from marshmallow import Schema, fields

from waygate.sdk import Command, CommandError, Plugin, elicitation


class GreetParams(Schema):
    name = fields.String(load_default="world")


class ComputeParams(Schema):
    seconds = fields.Float(load_default=0.0)
    label = fields.String(load_default="")


class FileParams(Schema):
    filename = fields.String(load_default="file.txt")


class NoParams(Schema):
    pass


def _confirm(filename: str) -> dict:
    return {
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": f"Delete {filename}?",
            "requestedSchema": {
                "type": "object",
                "properties": {"confirm": {"type": "boolean"}},
                "required": ["confirm"],
            },
        },
    }


NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
NAME_QUESTION = elicitation("What is your name?", NAME_SCHEMA)


class ConformanceTasksPlugin(Plugin):
    name = "ConformanceTasks"
    version = "0.2.0a12"  # the suite release these fixtures follow
    description = "The MCP conformance suite's task fixtures"
    author = "Waygate tests"
    capabilities = ("testing",)

    def commands(self):
        return [
            Command("greet", "Says hello (answered at once)", GreetParams, self.greet),
            Command(
                "slow_compute",
                "Waits the seconds asked (or until cancelled), then answers",
                ComputeParams,
                self.slow_compute,
                task_support="optional",
            ),
            Command(
                "failing_job",
                "Always fails (only as a task)",
                NoParams,
                self.failing_job,
                task_support="required",
            ),
            Command(
                "confirm_delete",
                "Asks its client to confirm, then pretends to delete",
                FileParams,
                self.confirm_delete,
                task_support="optional",
            ),
            Command(
                "multi_input",
                "Asks its client two things at once",
                NoParams,
                self.multi_input,
                task_support="optional",
            ),
            Command(
                "test_tool_with_task",
                "Asks the caller's name in the call, then greets them from a task",
                NoParams,
                self.tool_with_task,
                task_support="required",
                task_questions={"user_name": NAME_QUESTION},
            ),
        ]

    @staticmethod
    def tool_with_task(params, ctx):
        # answered in the input_required round before the task started: no round here
        answer = ctx.ask(NAME_QUESTION["params"]["message"], NAME_SCHEMA, key="user_name")
        return f"Hello, {(answer.content or {}).get('name', 'nobody')}, from a task"

    @staticmethod
    def greet(params, ctx):
        return f"Hello, {params['name']}!"

    @staticmethod
    def slow_compute(params, ctx):
        cancelled = ctx.cancel_event.wait(min(params["seconds"], ctx.remaining()))
        if cancelled:
            ctx.check_cancelled()
        return {"label": params["label"], "seconds": params["seconds"], "pid": os.getpid()}

    @staticmethod
    def failing_job(params, ctx):
        raise CommandError("This job always fails")

    @staticmethod
    def confirm_delete(params, ctx):
        if ctx.task_input is None:
            raise CommandError("confirm_delete asks its client: call it as a task")
        answer = ctx.task_input.ask({"confirm": _confirm(params["filename"])})["confirm"]
        confirmed = answer.get("action") == "accept" and (answer.get("content") or {}).get(
            "confirm"
        )
        return f"{'Deleted' if confirmed else 'Kept'} {params['filename']}"

    @staticmethod
    def multi_input(params, ctx):
        if ctx.task_input is None:
            raise CommandError("multi_input asks its client: call it as a task")
        answers = ctx.task_input.ask({"first": _confirm("a.txt"), "second": _confirm("b.txt")})
        return {"answered": sorted(answers)}
