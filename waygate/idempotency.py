"""Idempotency keys: a request that carries one runs once per caller and key; its retries get
the first execution back instead of running again (issue 31; the semantics of the IETF
httpapi draft "The Idempotency-Key HTTP Header Field", as Stripe and others use them).

- The first request with a key claims it (one row of ``idempotency_keys``, migration m020,
  whose primary key (owner, key) makes exactly one claim win across workers and hosts), runs,
  and stores its answer as its door presented it.
- A retry with the same key and the same request (the SHA-256 of the request's canonical
  JSON: parsed, keys sorted, so spacing and key order do not matter) gets that answer back,
  marked replayed; for an async or held execution, its state now (same ``command_id``).
- The same key with another request is refused (``IdempotencyKeyReused``, 422).
- A retry while the first still runs waits for its answer up to ``wait_s``, then is told to
  come back (``IdempotencyKeyInProgress``, 409 with Retry-After).
- Keys belong to their owner (an API key; a person with an access token): another owner's
  identical key is its own. They are kept ``window_s`` (WAYGATE_IDEMPOTENCY_TTL_S) from the
  first request; past it the key is forgotten and a request with it runs anew. The
  housekeeping deletes expired rows (``prune``).
- A request refused before it runs (invalid, unknown command, out of scope, pool full, over
  a cap) leaves no claim: its retry runs once the cause is gone. A claim whose worker died
  before answering is taken over once the first request's deadline has passed: answered from
  the execution's audit row when there is one, run anew when nothing was recorded.

Nothing runs before its claim is committed: a database that refuses the claim fails the
request (503), as an audit write failure does.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from .admission import Admission
from .clock import isoformat, utcnow
from .commands import Caller, Invocation
from .errors import Conflict, InvalidRequest, WaygateError
from .outcomes import ExecutionStatus, Outcome
from .status import Status
from .storage import Storage

MAX_KEY_LENGTH = 255
DEFAULT_WINDOW_S = 86_400
DEFAULT_WAIT_S = 5.0
# past the first request's own deadline: the time its answer and audit row may take to write
CLAIM_SLACK_S = 30
_POLL_FIRST_S, _POLL_MAX_S = 0.01, 0.1

# A door presents an outcome as a JSON-able answer (REST: status code and MCPResponse; MCP:
# the tools/call result); that answer is what a retry gets back.
Present = Callable[[Outcome], dict[str, Any]]


class InvalidIdempotencyKey(InvalidRequest):
    """An idempotency key that is empty, too long or not printable ASCII."""

    code = "INVALID_IDEMPOTENCY_KEY"


class IdempotencyKeyReused(WaygateError):
    """The key was first used for another request (the draft's 422)."""

    code, status = "IDEMPOTENCY_KEY_REUSED", 422


class IdempotencyKeyInProgress(Conflict):
    """The first request with the key still runs (the draft's 409): retry later."""

    code = "IDEMPOTENCY_KEY_IN_PROGRESS"


def check_key(value: Any, where: str) -> str:
    """A key as sent: 1 to 255 characters of printable ASCII (space to ``~``), else
    InvalidIdempotencyKey naming ``where`` it came from."""
    if not isinstance(value, str):
        raise InvalidIdempotencyKey(f"{where} must be a string", {"field": where})
    if not value:
        raise InvalidIdempotencyKey(f"{where} is empty", {"field": where})
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"{where} is longer than {MAX_KEY_LENGTH} characters",
            {"field": where, "max_length": MAX_KEY_LENGTH, "length": len(value)},
        )
    if not all(" " <= char <= "~" for char in value):
        raise InvalidIdempotencyKey(
            f"{where} may hold only printable ASCII characters (no control characters)",
            {"field": where},
        )
    return value


def key_from_header(raw: str | None, name: str = "Idempotency-Key") -> str | None:
    """The key of an ``Idempotency-Key`` header: a bare value (as Stripe's clients send it)
    or the draft's Structured Field string (``"..."``, with ``\\"`` and ``\\\\`` escapes).
    None when the header is absent."""
    if raw is None:
        return None
    if len(raw) > 2 * MAX_KEY_LENGTH + 2:  # escapes double at most; refused before reading
        return check_key(raw, name)
    if raw.startswith('"'):
        raw = _sf_string(raw, name)
    return check_key(raw, name)


def _sf_string(raw: str, name: str) -> str:
    """An RFC 8941 sf-string's value."""
    if len(raw) < 2 or not raw.endswith('"'):
        raise InvalidIdempotencyKey(f"{name} opens a quoted string it does not close")
    out, chars = [], iter(raw[1:-1])
    for char in chars:
        if char == '"':
            raise InvalidIdempotencyKey(f'{name} has an unescaped " inside its quotes')
        if char == "\\":
            char = next(chars, "")
            if char not in ('"', "\\"):
                raise InvalidIdempotencyKey(f'{name} may escape only " and \\')
        out.append(char)
    return "".join(out)


def fingerprint(door: str, request: Any) -> str:
    """The SHA-256 of a request's canonical JSON (keys sorted, no spaces, a number by its
    value: ``1.0`` is ``1``, as RFC 8785 writes it), with its door."""
    canonical = json.dumps(
        {"door": door, "request": _numbers_by_value(request)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _numbers_by_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers_by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_by_value(v) for v in value]
    return value


@dataclass(frozen=True)
class Replay:
    """A retry's answer: the first request's, never run again. ``current`` is the state of
    an async or held execution now (still in the audit log), else None and ``answer`` is
    the first answer as stored."""

    command_id: str
    answer: dict[str, Any]
    current: Outcome | None = None


@dataclass(frozen=True)
class _Row:
    fingerprint: str
    command_id: str
    answer: str | None
    live: bool
    claimed_until: str
    expires_at: str


class Idempotency:
    def __init__(
        self,
        storage: Storage,
        status: Status,
        *,
        window_s: int = DEFAULT_WINDOW_S,
        wait_s: float = DEFAULT_WAIT_S,
        answer_max_bytes: int = 1024**2,
        admission: Admission | None = None,
    ):
        self.storage = storage
        # a retry waiting for the first request holds a request thread as a call does: it
        # takes one of the key's command slots while it waits (else one key's retries of a
        # slow call could hold every thread of the worker, other keys' calls queueing behind)
        self.admission = admission or Admission(0)
        self.status = status
        # a stored answer's most (WAYGATE_RESULT_MAX_BYTES): past it, the result in it is
        # kept as a marked preview, as an async result is
        self.answer_max_bytes = answer_max_bytes
        self.window_s = window_s  # how long a key is remembered from its first request
        self.wait_s = wait_s  # how long a retry waits for a first request still running

    def perform(
        self,
        key: str,
        caller: Caller,
        request_hash: str,
        resolve: Callable[[], Invocation],
        run: Callable[[Invocation], Outcome],
        present: Present,
    ) -> Outcome | Replay:
        """Run ``resolve()`` then ``run(inv)`` once for (caller, key): the Outcome for the
        request that ran, a Replay for its retries. Raises IdempotencyKeyReused for another
        request under the key, IdempotencyKeyInProgress when the first still runs past the
        wait, and whatever ``resolve`` and ``run`` raise (then the key stays free)."""
        waiting = _Waiting(self.admission, caller.share)
        try:
            return self._perform(key, caller, request_hash, resolve, run, present, waiting)
        finally:
            waiting.close()

    def _perform(
        self,
        key: str,
        caller: Caller,
        request_hash: str,
        resolve: Callable[[], Invocation],
        run: Callable[[Invocation], Outcome],
        present: Present,
        waiting: _Waiting,
    ) -> Outcome | Replay:
        owner = caller.identity
        give_up = time.monotonic() + self.wait_s
        pause = _POLL_FIRST_S
        inv: Invocation | None = None
        while True:
            now = isoformat()
            row = self._read(owner, key)
            if row is None or row.expires_at <= now:
                inv = inv or resolve()  # refused here: nothing claimed
                if self._claim(owner, key, request_hash, inv):
                    waiting.close()  # the run takes its own slot
                    return self._run(owner, key, inv, run, present)
            else:
                if row.fingerprint != request_hash:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was used for another request: send the same"
                        " request to retry it, or a new key for a new request",
                        {"command_id": row.command_id},
                    )
                if row.answer is not None:
                    return self._replay(row, caller)
                if row.claimed_until <= now:  # the first request's worker is gone
                    waiting.close()
                    taken = self._take_over(owner, key, row, caller, present, resolve)
                    if isinstance(taken, Replay):
                        return taken
                    if taken is not None:
                        return self._run(owner, key, taken, run, present)
            if time.monotonic() + pause > give_up:
                raise IdempotencyKeyInProgress(
                    "the first request with this Idempotency-Key is still running: retry"
                    " later for its answer",
                    {"command_id": row.command_id if row else None},
                    retry_after=1,
                )
            waiting.hold()  # the first wait takes a slot (or is refused, 429/503, at once)
            time.sleep(pause)  # another worker or host holds it: its answer is polled for
            pause = min(pause * 2, _POLL_MAX_S)

    def prune(self) -> int:
        """Forget the keys past their window."""
        return self.storage.execute_write(
            "DELETE FROM idempotency_keys WHERE expires_at <= ?", (isoformat(),)
        ).rowcount

    # -- steps -----------------------------------------------------------------------------------

    def _read(self, owner: str, key: str) -> _Row | None:
        row = self.storage.conn.execute(
            "SELECT fingerprint, command_id, answer, live, claimed_until, expires_at"
            " FROM idempotency_keys WHERE owner = ? AND idem_key = ?",
            (owner, key),
        ).fetchone()
        return None if row is None else _Row(*tuple(row[i] for i in range(6)))

    def _claim(self, owner: str, key: str, request_hash: str, inv: Invocation) -> bool:
        """Claim the key for ``inv``: a new row, or one past its window taken over, in one
        statement; False when another request holds it (the unique key decides)."""
        now = utcnow()
        claimed = self.storage.execute_write(
            "INSERT INTO idempotency_keys (owner, idem_key, fingerprint, command_id, answer,"
            " live, created_at, claimed_until, expires_at) VALUES (?,?,?,?,NULL,0,?,?,?)"
            " ON CONFLICT (owner, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " command_id = excluded.command_id, answer = NULL, live = 0,"
            " created_at = excluded.created_at, claimed_until = excluded.claimed_until,"
            " expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= ?"
            " RETURNING command_id",
            (
                owner,
                key,
                request_hash,
                inv.command_id,
                isoformat(now),
                _claimed_until(inv, now),
                isoformat(now + timedelta(seconds=self.window_s)),
                isoformat(now),
            ),
        )
        return bool(claimed.rows)

    def _run(
        self, owner: str, key: str, inv: Invocation, run: Callable[[Invocation], Outcome],
        present: Present,
    ) -> Outcome:  # fmt: skip
        try:
            outcome = run(inv)
        except WaygateError:  # refused before it ran (busy, over a cap): the key stays free
            self.storage.execute_write(
                "DELETE FROM idempotency_keys WHERE owner = ? AND idem_key = ? AND command_id = ?",
                (owner, key, inv.command_id),
            )
            raise
        live = outcome.status in ExecutionStatus.unfinished()
        self._answer(owner, key, inv.command_id, self._bounded(outcome, present), live)
        return outcome

    def _bounded(self, outcome: Outcome, present: Present) -> dict[str, Any]:
        """The answer to store: whole, or with its result as a marked preview when the whole
        would be larger than ``answer_max_bytes``."""
        answer = present(outcome)
        size = len(json.dumps(answer, default=str, separators=(",", ":")).encode())
        if size <= self.answer_max_bytes:
            return answer
        dumped = json.dumps(outcome.result, default=str, separators=(",", ":"))
        preview = {
            "truncated": True,
            "size_bytes": len(dumped.encode()),
            "max_bytes": self.answer_max_bytes,
            "preview": dumped[: min(4096, self.answer_max_bytes // 2)],
        }
        return present(replace(outcome, result=preview))

    def _answer(
        self, owner: str, key: str, command_id: str, answer: dict[str, Any], live: bool
    ) -> None:
        """Store the first answer; a ``live`` one (an execution that had not ended: async,
        held) is replayed by the execution's state at the time of the retry. Committed
        before this returns, in a commit it may share with other requests' audit rows."""
        self.storage.execute_grouped(
            "UPDATE idempotency_keys SET answer = ?, live = ?"
            " WHERE owner = ? AND idem_key = ? AND command_id = ? AND answer IS NULL",
            (
                json.dumps(answer, default=str, separators=(",", ":")),
                int(live),
                owner,
                key,
                command_id,
            ),
        )

    def _replay(self, row: _Row, caller: Caller) -> Replay:
        answer = json.loads(row.answer or "null")
        current = self.status.lookup(row.command_id, caller) if row.live else None
        return Replay(row.command_id, answer, current)  # a pruned execution: its first answer

    def _take_over(
        self,
        owner: str,
        key: str,
        row: _Row,
        caller: Caller,
        present: Present,
        resolve: Callable[[], Invocation],
    ) -> Replay | Invocation | None:
        """A claim left without an answer past its deadline: its worker died. Answered from
        its audit row when it was recorded (a Replay), else taken over to run anew (the
        Invocation to run); None when another retry took it first."""
        recorded = self.status.lookup(row.command_id, caller)
        if recorded is not None:
            answer = present(recorded)  # replays follow its audit row from now on
            self._answer(owner, key, row.command_id, answer, live=True)
            return Replay(row.command_id, answer, recorded)
        inv = resolve()
        now = utcnow()
        taken = self.storage.execute_write(
            "UPDATE idempotency_keys SET command_id = ?, claimed_until = ?"
            " WHERE owner = ? AND idem_key = ? AND command_id = ? AND answer IS NULL",
            (inv.command_id, _claimed_until(inv, now), owner, key, row.command_id),
        )
        return inv if taken.rowcount == 1 else None


class _Waiting:
    """The admission slot a retry holds while it waits for the first request's answer."""

    def __init__(self, admission: Admission, share: int | str | None):
        self._slot, self._held = admission.slot(share), False

    def hold(self) -> None:
        if not self._held:
            self._slot.__enter__()
            self._held = True

    def close(self) -> None:
        if self._held:
            self._held = False
            self._slot.__exit__(None, None, None)


def _claimed_until(inv: Invocation, now: Any) -> str:
    return isoformat(now + timedelta(seconds=inv.timeout + CLAIM_SLACK_S))
