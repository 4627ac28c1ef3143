"""The conformance suite's input-request fixtures (its ``input-required-result-*`` scenarios,
SEP-2322): tools and a prompt that ask their caller through ``waygate.sdk`` only. Part of
tests/conformance_plugin.py's plugin, kept apart so that its fixtures read on their own."""

from __future__ import annotations

from waygate.sdk import Message, Prompt, Text, elicitation, list_roots, sampling


def _form(**properties):
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": list(properties),
    }


def elicit_name(params, ctx):
    answer = ctx.ask("What is your name?", _form(name="string"), key="user_name")
    return Text(f"Hello, {answer.content.get('name', 'stranger')}!")


def sample_capital(params, ctx):
    answer = ctx.sample("What is the capital of France?", max_tokens=100, key="capital_question")
    content = answer.get("content") or {}
    return Text(f"The model said: {content.get('text', '')}" if isinstance(content, dict) else "")


def list_client_roots(params, ctx):
    roots = ctx.roots(key="client_roots")
    return Text("Client roots: " + ", ".join(str(r.get("uri")) for r in roots))


def confirm_with_state(params, ctx):
    # the requestState was verified before this ran: a state that fails is -32602
    ctx.ask("Please confirm", _form(ok="boolean"), key="confirm")
    return Text("state-ok: the request state was verified")


def multiple_inputs(params, ctx):
    answers = ctx.ask_all(
        {
            "user_name": elicitation("What is your name?", _form(name="string")),
            "greeting": sampling("Generate a greeting", max_tokens=50),
            "client_roots": list_roots(),
        }
    )
    return Text(f"Got {len(answers)} answers: {', '.join(answers)}")


def multi_round(params, ctx):
    name = ctx.ask("Step 1: What is your name?", _form(name="string"), key="step1")
    colour = ctx.ask("Step 2: What is your favorite color?", _form(color="string"), key="step2")
    return Text(f"{name.content.get('name')} likes {colour.content.get('color')}")


def what_the_client_can_answer(params, ctx):
    asked = {}
    if ctx.can_ask("elicitation"):
        asked["user_name"] = elicitation("What is your name?", _form(name="string"))
    if ctx.can_ask("sampling"):
        asked["greeting"] = sampling("Generate a greeting", max_tokens=50)
    if ctx.can_ask("roots"):
        asked["client_roots"] = list_roots()
    if not asked:
        return Text("The client can answer nothing: nothing asked.")
    return Text(f"Answered: {', '.join(ctx.ask_all(asked))}")


def needs_sampling(params, ctx):
    # the server-stateless scenario calls it declaring no capability: -32021 naming sampling
    answer = ctx.sample("Say something", max_tokens=20, key="probe")
    return Text(str(answer.get("content")))


def elicit_on_a_stream(params, ctx):
    # asked over a stream, the question is the call's result: never a request of its own
    ctx.confirm("Proceed?", key="proceed")
    return Text("proceeded")


def input_tools(tool):
    """``tool(name, description, handler)`` for each of the suite's input-request tools."""
    return [
        tool("test_input_required_result_elicitation", "Asks the user's name", elicit_name),
        tool("test_input_required_result_sampling", "Asks the model", sample_capital),
        tool("test_input_required_result_list_roots", "Asks the client's roots", list_client_roots),
        tool("test_input_required_result_request_state", "Asks, with state", confirm_with_state),
        tool("test_input_required_result_multiple_inputs", "Asks three things", multiple_inputs),
        tool("test_input_required_result_multi_round", "Asks twice", multi_round),
        tool("test_input_required_result_tampered_state", "Asks, signed", confirm_with_state),
        tool(
            "test_input_required_result_capabilities",
            "Asks only what the client declared",
            what_the_client_can_answer,
        ),
        tool("test_missing_capability", "Needs the sampling capability", needs_sampling),
        tool("test_streaming_elicitation", "Asks, over a stream", elicit_on_a_stream),
    ]


def _render_with_context(arguments, ctx):
    answer = ctx.ask(
        "What context should the prompt use?", _form(context="string"), key="user_context"
    )
    return [Message(Text(f"Use this context: {answer.content.get('context', '')}"))]


def input_prompts():
    return [
        Prompt(
            "test_input_required_result_prompt",
            "A prompt that asks the user for context first",
            render=_render_with_context,
        )
    ]
