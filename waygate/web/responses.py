"""The one mapping from domain outcomes to HTTP: an execution's status code and headers.

The service layer answers in :class:`~waygate.outcomes.Outcome`; this module alone knows that a
timeout is 408, a refused input is the handler's 4xx and an accepted async execution, or one
awaiting approval, is 202.
Domain errors (``WaygateError``) reach HTTP through ``waygate.web.envelope``.
"""

from __future__ import annotations

from flask import Response, jsonify

from ..idempotency import Replay
from ..outcomes import ExecutionStatus, Outcome

REPLAYED_HEADER = "Idempotent-Replayed"  # on a retry's answer: the first request's, not run again

_STATUS = {
    ExecutionStatus.SUCCESS: 200,
    ExecutionStatus.TIMEOUT: 408,
    ExecutionStatus.PENDING: 202,
    ExecutionStatus.RUNNING: 202,
    ExecutionStatus.AWAITING_APPROVAL: 202,  # stored; it runs once someone approves it
    ExecutionStatus.DENIED: 200,  # a decision answered, not a failure of the request
    ExecutionStatus.EXPIRED: 200,
}


def http_status(outcome: Outcome) -> int:
    """A just-finished (or just-accepted) execution's status code."""
    if outcome.status is ExecutionStatus.FAILED:
        if outcome.cause is not None:
            return outcome.cause.status  # rejected before it ran, or refused by the handler
        return 500  # the handler crashed
    return _STATUS[outcome.status]


def respond(outcome: Outcome) -> Response:
    """The MCPResponse with its status code (and ``Retry-After`` where the cause gives one)."""
    response = jsonify(outcome.as_response())
    response.status_code = http_status(outcome)
    if outcome.cause is not None and outcome.cause.retry_after is not None:
        response.headers["Retry-After"] = str(outcome.cause.retry_after)
    return response


def stored_answer(outcome: Outcome) -> dict:
    """What a retry with the same Idempotency-Key gets back: the status code and MCPResponse."""
    return {"status": http_status(outcome), "body": outcome.as_response()}


def replayed(replay: Replay) -> Response:
    """A retry's answer, marked ``Idempotent-Replayed: true``: the first answer as it was,
    or for an async or held execution its state now (202 while it has not ended, as a poll
    of ``Location`` shows it; 200 once it has)."""
    if replay.current is not None:
        response = jsonify(replay.current.as_response())
        unfinished = replay.current.status in ExecutionStatus.unfinished()
        response.status_code = 202 if unfinished else 200
    else:
        response = jsonify(replay.answer["body"])
        response.status_code = replay.answer["status"]
    response.headers[REPLAYED_HEADER] = "true"
    return response
