"""Input requests (MCP 2026-07-28 multi-round-trip requests): a handler asks its caller for a
confirmation, a choice, a value (elicitation), a completion (sampling) or its roots, and the
stateless server answers with an ``input_required`` result instead of holding the call open.

One round: the handler runs; a question the caller has not answered raises
``waygate.sdk.InputRequired`` from :meth:`InputChannel.gather`; the result carries the
questions (``inputRequests``) and a ``requestState``; the caller calls again with
``inputResponses`` and that ``requestState``; the handler runs again from the start and gets
its answers. Any worker or host can take any round: the state travels with the caller.

The ``requestState`` is the answers given in earlier rounds (the current round's come in
``inputResponses``) in a signed envelope: ``v1.<payload>.<HMAC-SHA256>``, the key derived from
the instance's secret in ``instance_secrets`` (the same row on every worker and host). The
envelope binds the method, the tool (or prompt), a digest of the arguments, a digest of the
principal and an expiry (:data:`STATE_TTL_S`); anything that fails verification is refused
with -32602 "Invalid or expired requestState" (the official SDK's wire form), the reason going
to the log only. It is signed, not encrypted: it holds nothing the caller did not send.

A task (``io.modelcontextprotocol/tasks``) in ``input_required`` uses the same channel
without a state: its answers live in the database with the task. Build
``InputChannel(None, None, capabilities, stored_answers)``; a round that asks ends as an
``input_required`` execution whose result's ``inputRequests`` are the pending questions (what
``tasks/get`` shows), and :attr:`InputChannel.kept` the answers it used (what to keep);
``tasks/update`` adds ``inputResponses`` (checked by :func:`input_responses`) to the stored
answers and runs the handler again once none is pending.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..sdk import CommandError, InputRequired
from ..storage import Storage

log = logging.getLogger(__name__)

STATE_TTL_S = 600  # how long a caller may take to answer (a round's state then expires)
MAX_STATE_CHARS = 96 * 1024  # a requestState longer than this is refused unread
MAX_ANSWERS = 32  # answers a call may carry (inputResponses and earlier rounds together)
MAX_REQUESTS = 16  # questions in one round
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PREFIX = "v1."
_SECRET_ROW = "mcp_request_state"  # noqa: S105 - the row's name, not a secret
_KDF_LABEL = b"waygate/mcp/request-state/v1"
INVALID_STATE = "Invalid or expired requestState"

#: each question's method and the client capability that answers it
CAPABILITY = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}


class InvalidInput(Exception):
    """The caller's ``inputResponses`` or ``requestState`` cannot be used: a -32602 error."""

    def __init__(self, message: str, data: Any = None):
        super().__init__(message)
        self.message, self.data = message, data


@dataclass(frozen=True)
class Binding:
    """What one call's state is bound to: the method, its target, its arguments, its caller."""

    method: str
    target: str
    arguments: str  # digest
    principal: str  # digest

    @classmethod
    def of(cls, method: str, target: str, arguments: Any, principal: str) -> Binding:
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
        return cls(method, target, _digest(canonical), _digest(principal))


def _digest(text: str) -> str:
    raw = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]
    return _b64(raw)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


class RequestStates:
    """Seals and opens ``requestState`` under the instance's secret (read once per process,
    made by the first worker or host that needs it)."""

    def __init__(self, storage: Storage, ttl_s: int = STATE_TTL_S):
        self._storage, self.ttl_s = storage, ttl_s
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _secret(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    secret = _instance_secret(self._storage, _SECRET_ROW)
                    self._key = hmac.new(secret.encode(), _KDF_LABEL, hashlib.sha256).digest()
        return self._key

    def seal(self, binding: Binding, answers: Mapping[str, Any], round_no: int) -> str:
        now = int(time.time())
        claims = {
            "v": 1,
            "m": binding.method,
            "t": binding.target,
            "a": binding.arguments,
            "p": binding.principal,
            "iat": now,
            "exp": now + self.ttl_s,
            "r": round_no,
            "ans": dict(answers),
        }
        payload = _PREFIX + _b64(json.dumps(claims, separators=(",", ":")).encode())
        state = payload + "." + _b64(self._mac(payload))
        if len(state) > MAX_STATE_CHARS:
            raise CommandError("the answers to this call's questions are too large to carry")
        return state

    def open(self, state: Any, binding: Binding) -> tuple[dict[str, Any], int]:
        """The answers an untampered, unexpired state of this very call carries, and its
        round; InvalidInput for anything else."""
        if state is None:
            return {}, 0
        reason = self._check(state, binding)
        if isinstance(reason, str):
            log.warning("requestState refused on %s %s: %s", binding.method, binding.target, reason)
            raise InvalidInput(INVALID_STATE, {"reason": "invalid_request_state"})
        return reason

    def _check(self, state: Any, binding: Binding) -> str | tuple[dict[str, Any], int]:
        if not isinstance(state, str) or len(state) > MAX_STATE_CHARS:
            return "not a string of at most the allowed size"
        payload, _, mac = state.rpartition(".")
        if not payload.startswith(_PREFIX):
            return "malformed"
        try:
            given = _unb64(mac)
            payload.encode("ascii")
        except ValueError:
            return "malformed"
        # the signature first: nothing the caller made up is parsed (a payload nested
        # thousands deep would raise RecursionError out of json.loads: a 500)
        if not hmac.compare_digest(given, self._mac(payload)):
            return "signature"
        try:
            claims = json.loads(_unb64(payload[len(_PREFIX) :]))
        except (ValueError, RecursionError):
            return "malformed"
        if not isinstance(claims, dict) or claims.get("v") != 1:
            return "malformed"
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int) or not iat <= now + 60:
            return "malformed"
        if not now < exp:
            return "expired"
        bound = (claims.get("m"), claims.get("t"), claims.get("a"), claims.get("p"))
        if bound[:3] != (binding.method, binding.target, binding.arguments):
            return "another request's state"
        if bound[3] != binding.principal:
            return "another caller's state"
        answers, round_no = claims.get("ans"), claims.get("r")
        if not isinstance(answers, dict) or not isinstance(round_no, int):
            return "malformed"
        return answers, round_no

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._secret(), payload.encode("ascii"), hashlib.sha256).digest()


def _instance_secret(storage: Storage, name: str) -> str:
    """The same in every worker and host, made by the first to ask (as the console's)."""
    read = "SELECT value FROM instance_secrets WHERE name = ?"
    row = storage.conn.execute(read, (name,)).fetchone()
    if row is None:
        storage.execute_write(
            "INSERT INTO instance_secrets (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_urlsafe(48)),
        )
        row = storage.conn.execute(read, (name,)).fetchone()
    return row[0]


def input_responses(params: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's ``inputResponses``, checked for shape: an object of at most
    :data:`MAX_ANSWERS` objects (an explicit null counts as absent)."""
    given = params.get("inputResponses")
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidInput("inputResponses must be an object of responses by key")
    if len(given) > MAX_ANSWERS:
        raise InvalidInput(f"inputResponses may carry at most {MAX_ANSWERS} responses")
    wrong = [str(k)[:64] for k, v in given.items() if not isinstance(v, dict)]
    if wrong:
        raise InvalidInput(
            "each input response must be an object (an ElicitResult, a CreateMessageResult"
            " or a ListRootsResult)",
            {"keys": wrong[:10]},
        )
    return given


class InputChannel:
    """What one round's handler may ask, and the answers it has: ``ExecutionContext.inputs``."""

    def __init__(
        self,
        states: RequestStates | None,
        binding: Binding | None,
        capabilities: Mapping[str, Any],
        answers: Mapping[str, Any],
        round_no: int = 0,
    ):
        self._states, self._binding = states, binding
        self._capabilities = capabilities if isinstance(capabilities, Mapping) else {}
        self._answers = dict(answers)
        self._round = round_no
        self._kept: dict[str, Any] = {}  # answers this run used: what the next state carries

    def can(self, kind: str) -> bool:
        declared = self._capabilities.get(kind)
        if not isinstance(declared, Mapping):
            return False
        if kind == "elicitation":  # {} means form mode; a client may declare url mode only
            return not declared or isinstance(declared.get("form"), Mapping)
        return True

    def gather(self, requests: dict[str, Any]) -> dict[str, Any]:
        if not requests or len(requests) > MAX_REQUESTS:
            raise ValueError(f"ask 1 to {MAX_REQUESTS} questions at a time")
        missing: dict[str, Any] = {}
        for key, request in requests.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ValueError(f"an input request key is 1 to 64 of [A-Za-z0-9_.-]: {key!r}")
            kind = CAPABILITY.get(request.get("method")) if isinstance(request, Mapping) else None
            if kind is None:
                raise ValueError(f"not an input request: {request!r}"[:200])
            if not self.can(kind):
                missing[kind] = {"form": {}} if kind == "elicitation" else {}
        if missing:
            raise InputRequired(requests, missing=missing)
        found, pending = {}, {}
        for key, request in requests.items():
            answer = self._answers.get(key)
            if answer is not None and _answers(request["method"], answer):
                found[key] = self._kept[key] = answer
            else:
                pending[key] = dict(request)
        if pending:
            result: dict[str, Any] = {"resultType": "input_required", "inputRequests": pending}
            if self._states is not None and self._binding is not None:
                state = self._states.seal(self._binding, self._kept, self._round + 1)
                result = input_required_result(pending, state)
            raise InputRequired(pending, result=result)
        return found

    def known(self, requests: Mapping[str, Any]) -> dict[str, Any]:
        """The answers this call already carries for ``requests`` (asking nothing)."""
        found = {}
        for key, request in requests.items():
            answer = self._answers.get(key)
            if isinstance(request, Mapping) and _answers(request.get("method"), answer):
                found[key] = answer
        return found

    @property
    def kept(self) -> dict[str, Any]:
        """The answers this run has used so far (what a next round needs again)."""
        return dict(self._kept)


def input_required_result(requests: Mapping[str, Any], state: str) -> dict[str, Any]:
    return {"resultType": "input_required", "inputRequests": dict(requests), "requestState": state}


def _answers(method: str, answer: Any) -> bool:
    """Whether ``answer`` has the shape of a response to ``method`` (else it is asked again)."""
    if not isinstance(answer, Mapping):
        return False
    if method == "elicitation/create":
        action = answer.get("action")
        if action == "accept":
            return isinstance(answer.get("content", {}), Mapping)
        return action in ("decline", "cancel")
    if method == "sampling/createMessage":
        return isinstance(answer.get("role"), str) and isinstance(
            answer.get("content"), (Mapping, list)
        )
    roots = answer.get("roots")
    return isinstance(roots, list) and all(
        isinstance(r, Mapping) and isinstance(r.get("uri"), str) for r in roots
    )
