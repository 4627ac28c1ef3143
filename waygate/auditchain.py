"""The tamper-evident audit: a hash chain over every finished execution and every execution
event, checkpoints signed with an Ed25519 key, its verification, and the audit's export.

The chain (tables of migration m021). Each entry covers one row: an execution once it has
finished (its final record) or an execution event. Its hash is

    hash(n) = SHA-256( bytes(hash(n-1)) || canonical(n) )     (hex; hash(0) = 64 zeros)

where ``canonical(n)`` is the UTF-8 JSON of ``{"kind": ..., "row": {...}, "seq": n}`` with
keys sorted, no whitespace and non-ASCII characters as themselves (Python's
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``; for the values
here, strings, integers and null, this is RFC 8785 JSON canonicalization, so a verifier in
any language recomputes it). ``kind`` is ``execution`` or ``event``; ``row`` holds the
columns ``EXECUTION_FIELDS`` or ``EVENT_FIELDS`` as stored (text as a string, integers as
numbers, NULL as null; ``result``, ``params`` and ``client_context`` are the stored JSON
text, as a string). The row's own ``chain_seq`` is one of them, so moving a row to another
entry breaks both.

Order. Every transaction that writes entries first updates the chain's head row
(``audit_chain_head``), which holds the row lock until commit on PostgreSQL and is inside the
one write transaction on SQLite, so the chain's order is the database's commit order for
every worker of every host. An event's entry is written in the event's own transaction (a
database that refuses any of it fails the write, as any audit write failure does). A finished
execution's, by default, in a batch after the row's commit (``delay_s``, the config's
``audit_chain_delay_ms``): the request's path writes the row alone, and each process's
thread (waygate/deferred.py) chains, within the delay, every finished row not chained yet, in
the order they finished, in one transaction (``seal_unchained``); a refused batch changes
nothing and is retried. With the delay 0 the execution's entry too is written in its row's
transaction.

Checkpoints sign ``b"waygate audit checkpoint v1\\n" + canonical JSON of {"at", "hash",
"seq"}`` with the key in the data dir (``audit-signing.key``, created 0600 on first use) or
at WAYGATE_AUDIT_SIGNING_KEY. Verification starts at the oldest checkpoint kept (at entry 0
while there is none), so pruning, which removes only whole prefixes of the chain and keeps
the checkpoint at their end, leaves what remains verifiable. What a checkpoint cannot prove:
entries written after the newest one could be rewritten by someone who can write to the
database, until the next checkpoint is signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .auditfile import AuditFile
from .clock import isoformat, parse_iso, utcnow
from .deferred import DeferredRun
from .storage import DatabaseError, Storage

log = logging.getLogger(__name__)

ZERO_HASH = "0" * 64
CHECKPOINT_PREFIX = b"waygate audit checkpoint v1\n"
EXECUTION_FIELDS = (
    "action",
    "approval_expires_at",
    "arguments_hash",
    "chain_seq",
    "client_context",
    "command_id",
    "created_at",
    "decided_at",
    "decided_by",
    "decided_by_key_id",
    "decided_by_principal",
    "decision_reason",
    "duration_ms",
    "error",
    "finished_at",
    "host",
    "key_id",
    "key_name",
    "mode",
    "params",
    "params_hash",
    "plugin",
    "principal",
    "result",
    "started_at",
    "status",
    "timeout_s",
    "trace_id",
    "worker_pid",
)
EVENT_FIELDS = (
    "at",
    "chain_seq",
    "command_id",
    "event",
    "id",
    "key_id",
    "key_name",
    "principal",
    "reason",
    "worker_pid",
)
_EXECUTION_COLUMNS = ", ".join(EXECUTION_FIELDS)
_FIELD_SET = frozenset(EXECUTION_FIELDS)
_EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
# word for word the condition of the partial index executions_unchained (m021, rewritten by
# m026: SQLite uses a partial index only for its own WHERE)
_UNCHAINED = (
    "chain_seq IS NULL AND status <> 'pending' AND status <> 'running'"
    " AND status <> 'awaiting_approval'"
)
_NEXT_SQL = "UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash"
# Every chained transaction locks the head before any other row (lock(), or _NEXT_SQL as its
# first statement): the executions it updates fire the per-plugin totals' triggers, whose
# rows a head-first writer would otherwise wait for while holding the head (a deadlock on
# PostgreSQL).
_LOCK_SQL = "UPDATE audit_chain_head SET seq = seq WHERE id = 1"
_LINK_SQL = "INSERT INTO audit_chain (seq, kind, command_id, event_id, hash) VALUES (?,?,?,?,?)"
_SEAL_SQL = (
    f"UPDATE executions SET chain_seq = ? WHERE command_id = ? AND {_UNCHAINED}"  # noqa: S608 # nosec B608 - fixed names
    f" RETURNING {_EXECUTION_COLUMNS}"
)
# the deferred chain's batch: the head read and locked, then the finished rows not chained
# numbered after it in one statement each (in the order they finished; events by id) and
# read back as stored
_HEAD_SQL = _LOCK_SQL + " RETURNING seq, hash"
_NUMBER_SQL = (
    "UPDATE executions SET chain_seq = ? + numbered.n FROM (SELECT command_id AS numbered_id,"  # noqa: S608 # nosec B608 - fixed names
    " row_number() OVER (ORDER BY finished_at, command_id) AS n FROM executions"
    f" WHERE {_UNCHAINED} ORDER BY finished_at, command_id LIMIT ?) AS numbered"
    f" WHERE executions.command_id = numbered.numbered_id RETURNING {_EXECUTION_COLUMNS}"
)
_NUMBER_EVENTS_SQL = (
    "UPDATE execution_events SET chain_seq = ? + numbered.n FROM (SELECT id AS numbered_id,"  # noqa: S608 # nosec B608 - fixed names
    " row_number() OVER (ORDER BY id) AS n FROM execution_events WHERE chain_seq IS NULL"
    " ORDER BY id LIMIT ?) AS numbered WHERE execution_events.id = numbered.numbered_id"
    f" RETURNING {_EVENT_COLUMNS}"
)
_SEQ = EXECUTION_FIELDS.index("chain_seq")
_EVENT_SEQ = EVENT_FIELDS.index("chain_seq")
_BATCH = 500  # rows read per statement by verification, export and pruning; chained a batch
MAX_PROBLEMS = 20  # a verification names at most this many


def canonical(seq: int, kind: str, row: Mapping[str, Any] | Any) -> bytes:
    """The canonical content of entry ``seq`` covering ``row`` (see the module docstring)."""
    names = EXECUTION_FIELDS if kind == "execution" else EVENT_FIELDS
    return _canonical(seq, kind, {name: row[name] for name in names})


def _canonical(seq: int, kind: str, values: dict[str, Any]) -> bytes:
    # orjson's sorted compact UTF-8 is byte for byte json.dumps(sort_keys=True,
    # separators=(",", ":"), ensure_ascii=False) for strings, integers and null (control
    # characters escaped alike; tests/test_auditchain.py recomputes with the json module),
    # at a fraction of the time, on every request's path
    return orjson.dumps({"kind": kind, "row": values, "seq": seq}, option=orjson.OPT_SORT_KEYS)


_INTEGER_FIELDS = frozenset(
    ("chain_seq", "decided_by_key_id", "duration_ms", "key_id", "timeout_s", "worker_pid")
)


def _as_stored(columns: Mapping[str, Any], seq: int) -> dict[str, Any] | None:
    """An execution's fields as the database stores ``columns`` (the others NULL), or None
    when a value might be stored otherwise (a bool, a float, text in an integer column ...)."""
    for name, value in columns.items():
        if value is None:
            continue
        if name in _INTEGER_FIELDS:
            if type(value) is not int:
                return None
        elif not isinstance(value, str) or name not in _FIELD_SET:
            return None
    values = {name: columns.get(name) for name in EXECUTION_FIELDS}
    values["chain_seq"] = seq
    return values


def link(previous: str, content: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(previous) + content).hexdigest()


def checkpoint_message(seq: int, digest: str, at: str) -> bytes:
    body = {"at": at, "hash": digest, "seq": seq}
    return CHECKPOINT_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def arguments_hash(params: Any) -> str:
    """SHA-256 of an execution's arguments as canonical JSON (what the export shows; for a
    request held for approval, its ``params_hash``)."""
    try:
        text = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what orjson will not write (an integer past 64 bits): the json module
        text = json.dumps(
            params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode()
    return hashlib.sha256(text).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One chain entry as written, with the row it covers (for the audit file)."""

    seq: int
    kind: str
    hash: str
    row: dict[str, Any]


# -- the signing key ---------------------------------------------------------------------------


class Signer:
    """The Ed25519 key checkpoints are signed with: a PEM (PKCS#8) file, created private on
    first use; several workers creating it at once end up with the same one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._key: Any = None
        self._lock = threading.Lock()

    def private_key(self) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        with self._lock:
            if self._key is None:
                if not self.path.exists():
                    self._create(Ed25519PrivateKey.generate(), serialization)
                loaded = serialization.load_pem_private_key(self.path.read_bytes(), None)
                if not isinstance(loaded, Ed25519PrivateKey):
                    raise ValueError(f"{self.path} is not an Ed25519 private key")
                self._key = loaded
            return self._key

    def _create(self, key: Any, serialization: Any) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(partial, self.path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)

    def public_key(self) -> str:
        return public_key_text(self.private_key().public_key())

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private_key().sign(message)).decode()

    def existing_public_key(self) -> str | None:
        """The key's public half if the file exists (verification never creates one)."""
        return self.public_key() if self.path.exists() else None


def public_key_text(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(path: Path) -> str:
    """A trusted key from a file: a PEM public or private key, or the base64 raw public key
    (what ``waygate audit public-key`` prints)."""
    from cryptography.hazmat.primitives import serialization

    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        return public_key_text(serialization.load_pem_private_key(data, None).public_key())
    if b"PUBLIC KEY" in data:
        return public_key_text(serialization.load_pem_public_key(data))
    text = data.decode().strip()
    if len(base64.b64decode(text, validate=True)) != 32:
        raise ValueError(f"{path}: not an Ed25519 public key")
    return text


def signature_valid(public_key: str, signature: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(public_key: str) -> str:
    return hashlib.sha256(public_key.encode()).hexdigest()[:16]


# -- verification ------------------------------------------------------------------------------


@dataclass
class Verification:
    """What a verification found: intact (no problems) or the problems, first first."""

    first_seq: int = 0  # the entry it started after (the anchor: a checkpoint, or 0)
    last_seq: int = 0  # the last entry it checked
    last_hash: str = ZERO_HASH
    executions: int = 0
    events: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    unchained: int = 0  # finished rows not yet in the chain (sealed by the housekeeping)
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        return self.problem_count == 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def summary(self) -> str:
        if not self.intact:
            more = self.problem_count - 1
            return f"audit BROKEN: {self.problems[0]}" + (
                f" (and {more} more problem{'s' * (more > 1)})" if more else ""
            )
        entries = self.executions + self.events
        waiting = f"; {self.unchained} finished rows not yet chained" if self.unchained else ""
        return (
            f"audit intact: {entries} entries after entry {self.first_seq} up to"
            f" {self.last_seq} ({self.executions} executions, {self.events} events),"
            f" {self.checkpoints} signed checkpoints verified{waiting} in {self.seconds:.2f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "summary": self.summary(),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "executions": self.executions,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "problems": self.problems,
            "problem_count": self.problem_count,
            "unchained": self.unchained,
            "seconds": round(self.seconds, 3),
        }


def _describe(kind: str, command_id: str, event: Any = None) -> str:
    if kind == "execution":
        return f"execution {command_id}"
    return f"event {event} of execution {command_id}"


# -- the chain ---------------------------------------------------------------------------------


# How far past its newest checkpoint a chain may run before verification calls it broken
# (checkpoints deleted): this many times the checkpoint spacing, room for bursts between two
# housekeeping rounds and for a service that was stopped a while.
UNSIGNED_ENTRIES_FACTOR = 10


class ChainMoved(Exception):
    """A batch found its rows changed under it and was rolled back (retried later)."""


class AuditChain:
    """Writes the chain inside the audit's own transactions, signs checkpoints, verifies,
    prunes whole prefixes, exports; hands committed entries to the audit file
    (waygate/auditfile.py)."""

    def __init__(
        self,
        storage: Storage,
        signer: Signer,
        *,
        checkpoint_entries: int = 1000,
        checkpoint_interval_s: float = 60.0,
        trusted_keys: Iterable[str] = (),
        audit_file: AuditFile | None = None,
        on_verified: Callable[[Verification], None] | None = None,
        delay_s: float = 0.0,
    ):
        self.storage = storage
        # delay_s > 0: a finished execution is written unchained and chained in a batch
        # within delay_s of its commit, off the request's path (pending()); 0: in the
        # transaction that writes it
        self.delay_s = delay_s
        self._batches = (  # a graceful stop chains what this process left (DeferredRun)
            DeferredRun(
                self, "seal_pending", after_s=delay_s, retry_s=1.0, name="waygate-audit-chain"
            )
            if delay_s
            else None
        )
        self.signer = signer
        self.checkpoint_entries = checkpoint_entries
        self.checkpoint_interval_s = checkpoint_interval_s
        self.trusted_keys = set(trusted_keys)
        self.audit_file = audit_file
        self.on_verified = on_verified
        self._insert_sql: dict[tuple[str, ...], str] = {}
        self._watch: tuple[int, str] | None = None  # the housekeeping's verified position

    # -- writing (on the caller's transaction) --------------------------------------------------

    def insert_execution(self, tx: Any, columns: Mapping[str, Any]) -> Entry:
        """INSERT a finished execution as the chain's next entry. Its content is taken from
        the values written when each is what its column stores as given (text, integer,
        NULL; no column has a default), else read back with RETURNING."""
        names = tuple(columns)
        sql = self._insert_sql.get(names)
        if sql is None:
            marks = ",".join("?" * (len(names) + 1))
            sql = self._insert_sql[names] = (
                f"INSERT INTO executions ({', '.join(names)}, chain_seq) VALUES ({marks})"  # noqa: S608 # nosec B608 - fixed names
            )
        seq, previous = tx.execute(_NEXT_SQL).fetchone()
        values = _as_stored(columns, seq)
        if values is None:
            row = tx.execute(f"{sql} RETURNING {_EXECUTION_COLUMNS}", [*columns.values(), seq])
            return self._link(tx, seq, previous, "execution", row.fetchone())
        tx.execute(sql, [*columns.values(), seq])
        return self._linked(tx, seq, previous, "execution", values)

    def insert_event(self, tx: Any, columns: Mapping[str, Any]) -> Entry:
        """INSERT an execution event as the chain's next entry."""
        names = ", ".join(columns)
        marks = ",".join("?" * (len(columns) + 1))
        seq, previous = tx.execute(_NEXT_SQL).fetchone()
        row = tx.execute(
            f"INSERT INTO execution_events ({names}, chain_seq) VALUES ({marks})"  # noqa: S608 # nosec B608 - fixed names
            f" RETURNING {_EVENT_COLUMNS}",
            [*columns.values(), seq],
        ).fetchone()
        return self._link(tx, seq, previous, "event", row)

    @staticmethod
    def lock(tx: Any) -> None:
        """Lock the chain's head first in a transaction that will chain what it writes."""
        tx.execute(_LOCK_SQL)

    def seal(self, tx: Any, command_ids: Iterable[str]) -> list[Entry]:
        """Chain executions the caller's transaction has just finished, after ``lock()``
        (those not finished, or chained already, are skipped)."""
        entries = []
        for command_id in command_ids:
            seq, previous = tx.execute(_NEXT_SQL).fetchone()
            row = tx.execute(_SEAL_SQL, (seq, command_id)).fetchone()
            if row is None:  # give the number back: the head is still this transaction's
                tx.execute("UPDATE audit_chain_head SET seq = seq - 1 WHERE id = 1")
                continue
            entries.append(self._link(tx, seq, previous, "execution", row))
        return entries

    def _link(self, tx: Any, seq: int, previous: str, kind: str, row: Any) -> Entry:
        # the RETURNING row's columns are the fields, in their order
        names = EXECUTION_FIELDS if kind == "execution" else EVENT_FIELDS
        return self._linked(tx, seq, previous, kind, dict(zip(names, row, strict=True)))

    def _linked(self, tx: Any, seq: int, previous: str, kind: str, values: dict) -> Entry:
        digest = link(previous, _canonical(seq, kind, values))
        tx.execute(
            _LINK_SQL,
            (seq, kind, values["command_id"], values["id"] if kind == "event" else None, digest),
        )
        return Entry(seq, kind, digest, values)

    def published(self, entries: Iterable[Entry]) -> None:
        """Entries committed: to the audit file, when there is one (never fails the caller:
        the database holds the record)."""
        if self.audit_file is None:
            return
        lines = [export_line(entry) for entry in entries]
        if lines:
            self.audit_file.write(lines)

    def seal_unchained(self, limit: int = _BATCH) -> int:
        """Chain finished executions and events that are not yet, in one transaction: those
        a deferred chain (``delay_s``) left for this batch, those finished by a path that does
        not chain in its own transaction, those written before the chain began. Executions
        in the order they finished, then events in theirs; at most ``limit`` of each. The
        number chained."""
        done: list[Entry] = []

        def work(tx: Any) -> None:
            done.clear()
            # the head first (see _LOCK_SQL): the batch is the chain's next stretch
            seq, previous = tx.execute(_HEAD_SQL).fetchone()
            rows = [
                ("execution", dict(zip(EXECUTION_FIELDS, row, strict=True)))
                for row in sorted(
                    tx.execute(_NUMBER_SQL, (seq, limit)).fetchall(), key=lambda r: r[_SEQ]
                )
            ]
            rows += [
                ("event", dict(zip(EVENT_FIELDS, row, strict=True)))
                for row in sorted(
                    tx.execute(_NUMBER_EVENTS_SQL, (seq + len(rows), limit)).fetchall(),
                    key=lambda r: r[_EVENT_SEQ],
                )
            ]
            if not rows:
                return
            # Numbered in the statements' snapshots: a row deleted meanwhile (PostgreSQL
            # skips it once its deleter commits) would leave its number unused, a hole in
            # the chain for good. Then nothing of this batch is kept; the next one numbers
            # what is still there.
            if [values["chain_seq"] for _, values in rows] != list(
                range(seq + 1, seq + 1 + len(rows))
            ):
                raise ChainMoved("rows went while this batch numbered them; chained again next")
            links = []
            for kind, values in rows:
                seq = values["chain_seq"]
                previous = link(previous, _canonical(seq, kind, values))
                event_id = values["id"] if kind == "event" else None
                links.append((seq, kind, values["command_id"], event_id, previous))
                done.append(Entry(seq, kind, previous, values))
            tx.executemany(_LINK_SQL, links)
            tx.execute(
                "UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, previous)
            )

        self.storage.write_grouped(work)
        self.published(done)
        return len(done)

    def pending(self) -> None:
        """An execution was written finished and unchained (``deferred``): chain it, with
        what else is waiting, ``delay_s`` from now."""
        if self._batches is not None:
            self._batches.due()

    @property
    def deferred(self) -> bool:
        """Whether finished executions are chained in batches after their commit, not in
        their own transaction."""
        return self._batches is not None

    @property
    def closed(self) -> bool:
        return getattr(self.storage, "closed", False)

    def seal_pending(self) -> bool:
        """Chain everything waiting, batch after batch; whether the database took it (a
        refusal is logged and retried by the caller)."""
        try:
            while self.seal_unchained() >= _BATCH:
                pass
            return True
        except (*DatabaseError, ChainMoved) as exc:
            if not self.closed:
                log.warning("audit chain: finished executions not chained yet, retrying: %s", exc)
            return False

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, *, force: bool = False, seq: int | None = None) -> int | None:
        """Sign the chain's head (or entry ``seq``) when a checkpoint is due (``force``:
        now); the checkpoint's entry number, or None when none was due or the chain is
        empty. Several workers or hosts signing the same entry keep the first."""
        conn = self.storage.conn
        if seq is None:
            head = conn.execute("SELECT seq, hash FROM audit_chain_head WHERE id = 1").fetchone()
        else:
            head = conn.execute(
                "SELECT seq, hash FROM audit_chain WHERE seq = ?", (seq,)
            ).fetchone()
        if head is None or head[0] == 0:
            return None
        seq, digest = head[0], head[1]
        last = conn.execute(
            "SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if last is not None and last[0] >= seq and not force:
            return None
        if not force and last is not None:
            age = (utcnow() - parse_iso(last[1])).total_seconds()
            if seq - last[0] < self.checkpoint_entries and age < self.checkpoint_interval_s:
                return None
        at = isoformat()
        self.storage.execute_write(
            "INSERT INTO audit_checkpoints (seq, hash, at, public_key, signature)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
            (
                seq,
                digest,
                at,
                self.signer.public_key(),
                self.signer.sign(checkpoint_message(seq, digest, at)),
            ),
        )
        return seq

    # -- verification --------------------------------------------------------------------------

    def trusted(self) -> set[str]:
        own = self.signer.existing_public_key()
        return self.trusted_keys | ({own} if own else set())

    def verify(
        self,
        *,
        start: tuple[int, str] | None = None,
        max_entries: int | None = None,
        until: int | None = None,
    ) -> Verification:
        """Walk the chain from the oldest checkpoint kept (or from ``start``, a position an
        earlier verification reached), recomputing every entry from its row; check every
        checkpoint's signature and key, and the head. ``max_entries`` bounds the work (the
        housekeeping's rounds); without it the walk reaches the head."""
        began = time.monotonic()
        report = Verification()
        conn = self.storage.conn
        trusted = self.trusted()
        # every checkpoint's signature is checked by a whole verification; one that goes on
        # from ``start`` checks those of the stretch it walks (a round stays bounded)
        signed = {
            row[0]: row
            for row in conn.execute(
                "SELECT seq, hash, at, public_key, signature FROM audit_checkpoints ORDER BY seq"
            ).fetchall()
        }
        checkpoints = {number: row[1] for number, row in signed.items()}
        from_seq = start[0] if start is not None else -1
        # Pruning removes a prefix of the chain and keeps a checkpoint at the entry it
        # stopped at: the walk starts there, or at the beginning when nothing was pruned.
        oldest = conn.execute(
            "SELECT seq, hash, kind, command_id, event_id FROM audit_chain ORDER BY seq LIMIT 1"
        ).fetchone()
        anchor = oldest[0] if oldest is not None and oldest[0] > 1 else 0
        if oldest is not None and oldest[0] == 1 and 1 in checkpoints and self._pruned(oldest):
            anchor = 1  # pruning stopped at the first entry: its checkpoint is the anchor
        if start is not None and start[0] >= anchor:
            seq, previous = start
        elif anchor and anchor not in checkpoints:
            report.problem(
                f"entries 1 to {anchor - 1} are missing and no checkpoint anchors entry"
                f" {anchor}: the oldest rows were deleted, not pruned"
            )
            seq, previous = anchor, oldest[1]
        elif anchor and checkpoints[anchor] != oldest[1]:
            report.problem(
                f"the checkpoint at entry {anchor} (where verification starts) does not match"
                " the chain's entry there: it was changed"
            )
            seq, previous = anchor, oldest[1]
        else:
            seq, previous = anchor, checkpoints.get(anchor, ZERO_HASH)
        report.first_seq = seq
        walked = 0
        while max_entries is None or walked < max_entries:
            batch = conn.execute(
                "SELECT seq, kind, command_id, event_id, hash FROM audit_chain WHERE seq > ?"
                " AND seq <= ? ORDER BY seq LIMIT ?",
                (
                    seq,
                    until if until is not None else 2**62,
                    _BATCH if max_entries is None else min(_BATCH, max_entries - walked),
                ),
            ).fetchall()
            if not batch:
                break
            rows = self._rows_of(batch)
            for entry in batch:
                seq, previous = self._check_entry(report, entry, rows, seq, previous)
                if seq in checkpoints and checkpoints[seq] != entry[4]:
                    report.problem(
                        f"the checkpoint at entry {seq} does not match the chain: entries"
                        " up to it were rewritten after it was signed"
                    )
            walked += len(batch)
        report.last_seq, report.last_hash = seq, previous
        at_end = until is None and (max_entries is None or walked < max_entries)
        upper = 2**62 if at_end else seq
        for number, row in signed.items():
            if from_seq < number <= upper:
                self._check_signature(report, row, trusted)
                report.checkpoints += 1
        if at_end:
            self._check_head(report, seq, previous)
            self._check_signed_recently(report, seq, checkpoints)
            past = [number for number in checkpoints if number > seq]
            if past:
                report.problem(
                    f"the checkpoint at entry {past[0]} is past the chain's end (entry {seq}):"
                    " the newest entries were deleted"
                )
        report.unchained = self._count_unchained()
        report.seconds = time.monotonic() - began
        return report

    def _check_signed_recently(
        self, report: Verification, seq: int, checkpoints: Mapping[int, str]
    ) -> None:
        """The housekeeping signs a checkpoint every ``checkpoint_entries`` entries (or
        ``checkpoint_interval_s``): a chain far longer than that past its newest checkpoint
        had its checkpoints deleted (and may have been rewritten since), or nothing signs."""
        newest = max(checkpoints, default=0)
        unsigned = seq - newest
        if unsigned > UNSIGNED_ENTRIES_FACTOR * self.checkpoint_entries:
            report.problem(
                f"{unsigned} entries since the newest signed checkpoint"
                f" ({f'entry {newest}' if newest else 'there is none'}), where one is signed"
                f" every {self.checkpoint_entries} entries: checkpoints were deleted (and the"
                " chain may have been rewritten), or no service has signed for a long time"
            )

    def _check_signature(self, report: Verification, row: Any, trusted: set[str]) -> None:
        seq, digest, at, public_key, signature = (row[i] for i in range(5))
        if not signature_valid(public_key, signature, checkpoint_message(seq, digest, at)):
            report.problem(
                f"the checkpoint at entry {seq} has a signature that does not verify: it was"
                " forged or edited"
            )
        elif public_key not in trusted:
            report.problem(
                f"the checkpoint at entry {seq} is signed by key {fingerprint(public_key)},"
                " which this verifier does not trust (pass it with --trust if it is yours)"
            )

    def _rows_of(self, batch: list[Any]) -> dict[tuple[str, Any], Any]:
        conn = self.storage.conn
        ids = [e[2] for e in batch if e[1] == "execution"]
        events = [e[3] for e in batch if e[1] == "event"]
        rows: dict[tuple[str, Any], Any] = {}
        if ids:
            for row in conn.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE command_id IN"  # noqa: S608 # nosec B608 - fixed names
                f" ({','.join('?' * len(ids))})",
                ids,
            ).fetchall():
                rows["execution", row["command_id"]] = row
        if events:
            for row in conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM execution_events WHERE id IN"  # noqa: S608 # nosec B608 - fixed names
                f" ({','.join('?' * len(events))})",
                events,
            ).fetchall():
                rows["event", row["id"]] = row
        return rows

    @staticmethod
    def _check_entry(
        report: Verification, entry: Any, rows: dict, seq: int, previous: str
    ) -> tuple[int, str]:
        number, kind, command_id, event_id, stored = (entry[i] for i in range(5))
        what = _describe(kind, command_id, event_id)
        if number != seq + 1:
            report.problem(
                f"entries {seq + 1} to {number - 1} are missing: rows were deleted from the"
                f" chain before {what} (entry {number})"
            )
            return number, stored  # resume after the gap, from the stored hash
        row = rows.get((kind, command_id if kind == "execution" else event_id))
        report.executions += kind == "execution"
        report.events += kind == "event"
        if row is None:
            report.problem(f"{what} (entry {number}) is missing: its row was deleted")
            return number, stored
        if row["chain_seq"] != number:
            report.problem(
                f"{what} is out of order: the chain has it at entry {number}, its row says"
                f" {row['chain_seq']} (rows were reordered or their ids swapped)"
            )
            return number, stored
        computed = link(previous, canonical(number, kind, row))
        if computed != stored:
            report.problem(
                f"{what} (entry {number}) was altered after it was recorded: its row no"
                " longer matches the chain"
            )
            return number, stored
        return number, computed

    def _check_head(self, report: Verification, seq: int, digest: str) -> None:
        head = self.storage.conn.execute(
            "SELECT seq, hash FROM audit_chain_head WHERE id = 1"
        ).fetchone()
        if head is None:
            report.problem("the chain's head row is missing")
        elif head[0] > seq:
            report.problem(
                f"entries {seq + 1} to {head[0]} are missing: the newest rows of the chain"
                " were deleted"
            )
        elif head[0] < seq:
            report.problem(f"the chain's head says entry {head[0]}, the chain goes to {seq}")
        elif head[1] != digest and report.intact:
            report.problem(f"the chain's head does not match entry {seq}: it was edited")

    def _count_unchained(self) -> int:
        conn = self.storage.conn
        executions = conn.execute(
            f"SELECT count(*) FROM executions WHERE {_UNCHAINED}"  # noqa: S608 # nosec B608 - fixed names
        ).fetchone()[0]
        events = conn.execute(
            "SELECT count(*) FROM execution_events WHERE chain_seq IS NULL"
        ).fetchone()[0]
        return executions + events

    def check(self) -> Verification:
        """A whole verification whose verdict is reported (the metrics), as an admin asks."""
        report = self.verify()
        if self.on_verified is not None:
            self.on_verified(report)
        return report

    def watch(self, max_entries: int = 5000) -> Verification:
        """The housekeeping's verification: on from where its last round stopped (from the
        anchor after a restart, a break or pruning), at most ``max_entries`` a round; the
        result is reported (the metrics) when it reaches the head or finds a problem."""
        report = self.verify(start=self._watch, max_entries=max_entries)
        finished = report.last_seq >= self._head_seq() or not report.intact
        self._watch = (report.last_seq, report.last_hash) if report.intact else None
        if finished and self.on_verified is not None:
            self.on_verified(report)
        if not report.intact:
            log.error("%s", report.summary())
        return report

    def _head_seq(self) -> int:
        row = self.storage.conn.execute("SELECT seq FROM audit_chain_head WHERE id = 1").fetchone()
        return row[0] if row else 0

    # -- pruning -------------------------------------------------------------------------------

    def _pruned(self, entry: Any) -> bool:
        """Whether the row of a chain entry is gone (pruned up to it: the entry stays as the
        anchor of its checkpoint)."""
        _, _, kind, command_id, event_id = entry
        if kind == "execution":
            sql, key = "SELECT 1 FROM executions WHERE command_id = ?", command_id
        else:
            sql, key = "SELECT 1 FROM execution_events WHERE id = ?", event_id
        return self.storage.conn.execute(sql, (key,)).fetchone() is None

    def prunable_prefix(
        self, *, cutoff: str | None = None, executions: int | None = None
    ) -> int | None:
        """The last entry of the longest prefix of the chain that may go: every entry's
        execution created before ``cutoff`` (retention), or ``executions`` executions in all
        (the size budget). None when nothing may."""
        conn = self.storage.conn
        first = conn.execute("SELECT min(seq) FROM audit_chain").fetchone()[0]
        if first is None:
            return None
        end, seen, seq = None, 0, first - 1
        while True:
            batch = conn.execute(
                "SELECT c.seq, c.kind, x.created_at, x.status FROM audit_chain c LEFT JOIN"
                " executions x ON x.command_id = c.command_id WHERE c.seq > ? ORDER BY c.seq"
                " LIMIT ?",
                (seq, _BATCH),
            ).fetchall()
            for number, kind, created_at, status in batch:
                unfinished = status in ("pending", "running", "awaiting_approval")
                if unfinished or (cutoff is not None and created_at and created_at >= cutoff):
                    return end
                if executions is not None and kind == "execution" and created_at:
                    if seen >= executions:
                        return end
                    seen += 1
                end = seq = number
            if len(batch) < _BATCH:
                return end

    def prune_prefix(self, end: int, batch: int = _BATCH, pause_s: float = 0.01) -> int:
        """Delete the executions of entries up to ``end`` (with their events) and the entries
        and checkpoints before it, keeping a checkpoint at ``end`` (signed now if there is
        none) where verification then starts; the executions deleted. What goes is verified
        first: a prefix that fails verification is kept (pruning never removes the evidence,
        nor signs over it), and the failure is logged."""
        report = self.verify(until=end)
        if not report.intact:
            log.error("not pruning the audit up to entry %d: %s", end, report.summary())
            return 0
        self.checkpoint(force=True, seq=end)
        deleted = 0
        while True:
            n = self.storage.execute_write(
                "DELETE FROM executions WHERE command_id IN (SELECT command_id FROM executions"
                " x WHERE chain_seq <= ? AND NOT EXISTS (SELECT 1 FROM execution_events e"
                " WHERE e.command_id = x.command_id AND (e.chain_seq IS NULL OR e.chain_seq > ?))"
                " ORDER BY chain_seq LIMIT ?)",
                (end, end, batch),
            ).rowcount
            deleted += n
            if n < batch:
                break
            time.sleep(pause_s)
        for table in ("audit_chain", "audit_checkpoints"):
            while (
                self.storage.execute_write(
                    f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE seq < ?"  # noqa: S608 # nosec B608 - fixed names
                    " ORDER BY seq LIMIT ?)",
                    (end, batch * 4),
                ).rowcount
                == batch * 4
            ):
                time.sleep(pause_s)
        self._watch = None
        return deleted

    # -- export --------------------------------------------------------------------------------

    def export(self, since: str | None = None, until: str | None = None) -> Iterator[dict]:
        """Every execution created in [since, until), oldest first, as one object with its
        events and chain fields; read in batches, so memory stays flat however many."""
        conn = self.storage.conn
        after: tuple[str, str] | None = None
        while True:
            where, args = [], []
            if since:
                where.append("created_at >= ?")
                args.append(since)
            if until:
                where.append("created_at < ?")
                args.append(until)
            if after:  # a range on created_at (its index), then past the last one sent
                where.append("created_at >= ? AND (created_at > ? OR command_id > ?)")
                args += [after[0], after[0], after[1]]
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            rows = conn.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions{clause}"  # noqa: S608 # nosec B608 - fixed names
                " ORDER BY created_at, command_id LIMIT ?",
                [*args, _BATCH],
            ).fetchall()
            if not rows:
                return
            yield from self._exported(rows)
            if len(rows) < _BATCH:
                return
            after = (rows[-1]["created_at"], rows[-1]["command_id"])

    def _exported(self, rows: list[Any]) -> Iterator[dict]:
        conn = self.storage.conn
        ids = [row["command_id"] for row in rows]
        marks = ",".join("?" * len(ids))
        events: dict[str, list[Any]] = {}
        for event in conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM execution_events WHERE command_id IN ({marks})"  # noqa: S608 # nosec B608 - fixed names
            " ORDER BY id",
            ids,
        ).fetchall():
            events.setdefault(event["command_id"], []).append(event)
        seqs = [row["chain_seq"] for row in rows if row["chain_seq"] is not None]
        seqs += [e["chain_seq"] for es in events.values() for e in es if e["chain_seq"]]
        hashes = {}
        if seqs:
            for entry in conn.execute(
                f"SELECT seq, hash FROM audit_chain WHERE seq IN ({','.join('?' * len(seqs))})",  # noqa: S608 # nosec B608
                seqs,
            ).fetchall():
                hashes[entry[0]] = entry[1]
        for row in rows:
            record = execution_record(row, hashes.get(row["chain_seq"]))
            record["events"] = [
                event_record(e, hashes.get(e["chain_seq"]))
                for e in events.get(row["command_id"], [])
            ]
            yield record


def _chain_fields(seq: int | None, digest: str | None) -> dict[str, Any] | None:
    return None if seq is None else {"seq": seq, "hash": digest}


def _text_hash(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def execution_record(row: Any, digest: str | None) -> dict[str, Any]:
    """An execution as the export and the audit file show it: who, what (the arguments by
    hash, the result by hash: they may hold secrets), when, how it ended, its chain entry."""
    return {
        "type": "execution",
        "command_id": row["command_id"],
        "action": row["action"],
        "plugin": row["plugin"],
        "mode": row["mode"],
        "status": row["status"],
        "principal": row["principal"],
        "key_name": row["key_name"],
        "key_id": row["key_id"],
        "arguments_hash": row["arguments_hash"] or row["params_hash"],
        "result_hash": _text_hash(row["result"]),
        "error": row["error"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "duration_ms": row["duration_ms"],
        "timeout_s": row["timeout_s"],
        "host": row["host"],
        "trace_id": row["trace_id"],
        "decided_by": row["decided_by"],
        "decided_by_principal": row["decided_by_principal"],
        "decided_at": row["decided_at"],
        "decision_reason": row["decision_reason"],
        "chain": _chain_fields(row["chain_seq"], digest),
    }


def event_record(row: Any, digest: str | None) -> dict[str, Any]:
    return {
        "type": "event",
        "command_id": row["command_id"],
        "event": row["event"],
        "at": row["at"],
        "principal": row["principal"],
        "key_name": row["key_name"],
        "key_id": row["key_id"],
        "reason": row["reason"],
        "chain": _chain_fields(row["chain_seq"], digest),
    }


def export_line(entry: Entry) -> dict[str, Any]:
    if entry.kind == "execution":
        return execution_record(entry.row, entry.hash)
    return event_record(entry.row, entry.hash)
