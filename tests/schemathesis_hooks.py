"""A schemathesis check for POST /mcp/execute, loaded by tests/test_openapi.py
(SCHEMATHESIS_HOOKS).

The document names every loaded command and gives each its own params schema, so a
schema-valid command always reaches its handler. What no schema can say is whether a string
parses in the format it claims (``process_data`` with ``format: json`` and ``input: ""``): the
handler refuses that itself, with the MCPResponse ``status: failed`` and its CommandError
status. On this one operation this check stands in for positive_data_acceptance: a
schema-valid request must be accepted, or refused by the command that ran it, never refused
as an invalid request (the error envelope). Nor can a schema say that an Idempotency-Key is
used once (two generated requests that share a key but not a body are rightly 422
IDEMPOTENCY_KEY_REUSED), nor that a batch takes no key (400 naming the header)."""

import schemathesis
from schemathesis.core.failures import Failure


class ValidCommandRefusedAsInvalid(Failure):
    def __init__(self, *, operation: str, status: int, body: str):
        super().__init__(
            operation=operation,
            title="Schema-valid command refused as an invalid request",
            message=f"[{status}] {body[:500]}",
        )


@schemathesis.check
def valid_commands_reach_their_handler(ctx, response, case):
    meta = case.meta
    if (
        case.operation.method.upper() != "POST"
        or case.operation.path != "/mcp/execute"
        or meta is None
        or not meta.generation.mode.is_positive
        or response.status_code not in (400, 422)
    ):
        return None
    body = response.json()
    refused_by_command = isinstance(body, dict) and body.get("status") == "failed"
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    reused_key = response.status_code == 422 and error.get("code") == "IDEMPOTENCY_KEY_REUSED"
    batch_with_key = (
        response.status_code == 400
        and isinstance(case.body, list)
        and error.get("details", {}).get("header") == "Idempotency-Key"
    )
    if not (refused_by_command or reused_key or batch_with_key):
        raise ValidCommandRefusedAsInvalid(
            operation=case.operation.label, status=response.status_code, body=response.text
        )
    return None
