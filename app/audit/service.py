"""Writing and verifying the audit chain. Written in the caller's transaction: if the audit
row cannot be written, the transaction fails and nothing it would have disclosed is sent."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterable

import orjson

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from app.audit import walk
from app.audit.models import AuditHead, AuditIndex, AuditRecord
from app.audit.walk import NHS_NUMBER, SQLITE_INSTANT, AuditUrls
from app.db import insert_rows, pipelined, scan_cache
from app.urls import CANONICAL_BASE

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_CHAIN_LOCK_KEY = 7_274_220_261  # pg_advisory_xact_lock key serialising appends to the chain


def chain_hash(prev_hash: str, event_id: str, recorded: str, body: str, facts: str | None = None) -> str:
    """An event's hash: of form 2 over ``facts`` too (its columns and search rows, as _sealed spells them), of form 1 without."""
    return hashlib.sha256(f"{walk.sealed_prefix(prev_hash, event_id, recorded, facts)}{body}".encode()).hexdigest()


def _recorded_text(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditColumns:
    """The searchable facts of an event, kept beside its FHIR body."""

    type_code: str
    subtype_code: str
    action: str
    outcome: str
    purpose_of_use: str | None
    agent_sub: str
    agent_org: str
    agent_role: str
    review_required: bool
    policy_version: str | None


_COLUMN_NAMES = tuple(AuditColumns.__dataclass_fields__)


class AuditMismatch(ValueError):
    """An event's searchable columns or search rows are not what its body says: a writer's bug.
    The append fails (and with it the access: no audit, no disclosure) rather than seal a
    column an IG search would read otherwise than the body."""


# An event's search rows as the caller gives them to append: its own list (the family view's
# event derives them from what it disclosed), or None for the rows its body implies (index_from_body)
SearchRows = Iterable[tuple[str, str]] | None


def _sealed(event: dict[str, Any], columns: AuditColumns, index: SearchRows) -> tuple[dict[str, Any], list[tuple[str, str]], str]:
    """An event's searchable columns and search rows as they are stored, and the facts its hash
    seals of them (form 2): strings as plain str (an enum's value), the flag as a bool, each
    search row once, cut to the column's 255 characters, sorted; checked against what the body
    implies (columns_from_body, index_from_body), which a verifier outside the gateway
    recomputes the hash with (sealed_facts_of_body), and which verify's fast walk no longer reads."""
    values = tuple(None if v is None else bool(v) if name == "review_required" else str.__str__(v)
                   for name, v in columns.__dict__.items())
    implied = _implied_columns(event)
    if values != implied:
        wrong = next(name for name, got, want in zip(_COLUMN_NAMES, values, implied) if got != want)
        raise AuditMismatch(f"audit event {event.get('id')}: its column {wrong} is not what its body says")
    entries = index_from_body(event)
    if index is not None and sorted({(p, v[:255]) for p, v in index if v}) != entries:
        raise AuditMismatch(f"audit event {event.get('id')}: its search rows are not what its body says")
    facts = walk.sealed_facts(values, entries)
    if facts is None:  # pragma: no cover - the columns are str, bool and None by now, the rows text
        raise AuditMismatch("audit columns and search rows are text (and the review flag a bool)")
    return {**dict(zip(_COLUMN_NAMES, values)), "hash_form": walk.FORM_SEALED}, entries, facts


_LAST_HASH = select(AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_INSERT_EVENT = insert(AuditRecord).returning(AuditRecord.seq)


# PostgreSQL: read the chain head, hash and insert the event and its search rows in one
# statement (after the advisory lock, so its snapshot sees the latest committed event).
# sha256 over "prev|id|recorded|facts|body" in UTF-8, exactly as chain_hash() computes it.
_APPEND_PG = text(
    """
    WITH prev AS (SELECT coalesce((SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1), :genesis) AS h),
    ev AS (
        INSERT INTO audit_event (event_id, recorded, type_code, subtype_code, action, outcome, purpose_of_use,
                                 agent_sub, agent_org, agent_role, review_required, policy_version, body, prev_hash, hash, hash_form)
        SELECT :event_id, :recorded, :type_code, :subtype_code, :action, :outcome, :purpose_of_use,
               :agent_sub, :agent_org, :agent_role, :review_required, :policy_version, :body, prev.h,
               encode(sha256(convert_to(prev.h || :suffix, 'UTF8')), 'hex'), :hash_form
        FROM prev
        RETURNING seq, hash
    )
    INSERT INTO audit_index (event_seq, param, value)
    SELECT ev.seq, v.param, v.value FROM ev, unnest(CAST(:params AS text[]), CAST(:vals AS text[])) AS v(param, value)
    """
)


_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


_EVENT_TEXT = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def event_text(event: dict[str, Any]) -> str:
    """An event's body as stored and hashed: compact JSON, keys sorted, non-ASCII as is. By
    orjson, ten times as fast as json.dumps (a transaction's event names every record it
    wrote), and the same text for what events hold (strings, integers, booleans, nulls; a
    float in exponent form may be spelt otherwise, which is as valid);
    anything else orjson would write its own way (a subclass, a date) goes to json.dumps as
    before. The chain hashes the text stored, so verifying never re-serialises."""
    try:
        return orjson.dumps(event, option=_EVENT_TEXT).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _append_pg_params(event: dict[str, Any], columns: AuditColumns, index: SearchRows) -> dict[str, Any]:
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = event_text(event)
    stored, entries, facts = _sealed(event, columns, index)
    return {
        "genesis": GENESIS, "event_id": event["id"], "recorded": recorded, "body": body,
        "suffix": walk.sealed_prefix("", event["id"], _recorded_text(recorded), facts) + body,
        "params": [p for p, _ in entries], "vals": [v for _, v in entries], **stored,
    }


def append_each(session: Session, entries: list[tuple[dict[str, Any], AuditColumns, SearchRows]]) -> None:
    """Append a few events, in order, as ``append`` one by one would; on PostgreSQL the chain
    lock and every event's statement go in one round trip (a pipeline: each statement runs
    after the one before it, so each reads the head the previous one wrote)."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        for entry in entries:
            append(session, *entry)
        return
    pipelined(conn, append_statements(entries))


def append_statements(entries: list[tuple[dict[str, Any], AuditColumns, SearchRows]]) -> list[tuple[Any, dict[str, Any]]]:
    """PostgreSQL: the statements that append the events, in order (the chain lock first), for
    append_each, or for a writer to send in the round trip of the writes they audit
    (app.db.insert_tables' ``after``): the chain's hashes are computed by the server."""
    return [(_CHAIN_LOCK, {"k": _CHAIN_LOCK_KEY})] + [(_APPEND_PG, _append_pg_params(*entry)) for entry in entries]


def append(session: Session, event: dict[str, Any], columns: AuditColumns, index: SearchRows = None) -> None:
    """Append one AuditEvent to the chain, in the caller's transaction; its search rows those
    its body implies, or ``index`` (checked against them)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":  # the chain lock and the append in one round trip
        pipelined(conn, [(_CHAIN_LOCK, {"k": _CHAIN_LOCK_KEY}), (_APPEND_PG, _append_pg_params(event, columns, index))])
        return
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = event_text(event)
    stored, entries, facts = _sealed(event, columns, index)
    prev_hash = conn.execute(_LAST_HASH).scalar() or GENESIS  # SQLite: BEGIN IMMEDIATE serialises writers
    digest = chain_hash(prev_hash, event["id"], _recorded_text(recorded), body, facts)
    seq = conn.execute(
        _INSERT_EVENT,
        {"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev_hash, "hash": digest, **stored},
    ).scalar_one()
    # one executemany of a statement built once (a multi-row VALUES is compiled afresh per event)
    insert_rows(conn, AuditIndex.__table__, [{"event_seq": seq, "param": p, "value": v} for p, v in entries])


def append_many(session: Session, entries: list[tuple[dict[str, Any], AuditColumns, SearchRows]]) -> None:
    """Append several events at once, in order, in the caller's transaction: one read of the
    chain head, the hashes chained in Python, one bulk insert of the events and one of their
    search rows (a batch of accesses, an import, the audit benchmark). The same chain as
    ``append`` one by one."""
    if not entries:
        return
    conn = session.connection()
    rows, index = [], []
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_KEY})
    prev = conn.execute(_LAST_HASH).scalar() or GENESIS
    for event, columns, idx in entries:
        recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
        body = event_text(event)
        stored, sorted_rows, facts = _sealed(event, columns, idx)
        digest = chain_hash(prev, event["id"], _recorded_text(recorded), body, facts)
        rows.append({"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev, "hash": digest, **stored})
        index.append(sorted_rows)
        prev = digest
    insert_rows(conn, AuditRecord.__table__, rows)  # seq assigned in order (one writer holds the chain)
    seqs = dict(conn.execute(select(AuditRecord.event_id, AuditRecord.seq).where(AuditRecord.event_id.in_([r["event_id"] for r in rows]))).all())
    insert_rows(conn, AuditIndex.__table__, [{"event_seq": seqs[r["event_id"]], "param": p, "value": v}
                                             for r, entries_ in zip(rows, index) for p, v in entries_])


# ---------------------------------------------------------------- what the body says

_FV = CANONICAL_BASE
_EXT_IG_REVIEW = f"{_FV}/StructureDefinition/audit-ig-review-required"
_EXT_POLICY_VERSION = f"{_FV}/StructureDefinition/audit-policy-version"
_SUBTYPE_SYSTEM = f"{_FV}/CodeSystem/audit-subtype"
_URLS = AuditUrls(_EXT_IG_REVIEW, _EXT_POLICY_VERSION, _SUBTYPE_SYSTEM)  # the fast walk's (app.audit.walk)


def _ext(body: dict[str, Any], url: str) -> Any:
    for e in body.get("extension") or []:
        if e.get("url") == url:
            return e.get("valueBoolean", e.get("valueString"))
    return None


def columns_from_body(body: dict[str, Any]) -> AuditColumns:
    """The searchable columns an event's (hash-chained) body implies."""
    return AuditColumns(*_implied_columns(body))


def _implied_columns(body: dict[str, Any]) -> tuple[Any, ...]:
    """columns_from_body's values in AuditColumns' order (verify compares a million of these)."""
    agents = body.get("agent") or []
    user = next((a for a in agents if a.get("requestor")), {})
    org = next((a for a in agents if not a.get("requestor")), {})
    subtypes = [c.get("code") for c in body.get("subtype") or [] if c.get("system") == _SUBTYPE_SYSTEM]
    purposes = [c.get("code") for p in body.get("purposeOfEvent") or [] for c in p.get("coding") or []]
    roles = [c.get("code") for r in user.get("role") or [] for c in r.get("coding") or []]
    return (
        (body.get("type") or {}).get("code"),
        subtypes[0] if subtypes else None,
        body.get("action"),
        body.get("outcome"),
        purposes[0] if purposes else None,
        ((user.get("who") or {}).get("identifier") or {}).get("value"),
        ((org.get("who") or {}).get("identifier") or {}).get("value"),
        roles[0] if roles else None,
        bool(_ext(body, _EXT_IG_REVIEW)),
        _ext(body, _EXT_POLICY_VERSION),
    )


def sealed_facts_of_body(body: dict[str, Any]) -> str | None:
    """The facts an event of form 2 seals (app.audit.walk), as its body implies them: what a
    verifier outside the gateway recomputes the hash with, from the export's body and hashes
    alone; None for a body whose columns are of types the writer never stores."""
    return walk.sealed_facts(_implied_columns(body), index_from_body(body))


def index_from_body(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The audit_index rows an event's body implies (as append() writes them): each data
    subject's reference and NHS numbers (patient), each item and the member it is about (entity)."""
    rows: set[tuple[str, str]] = set()
    add = rows.add  # verify derives these for every event of the chain: one set, no lists
    for e in body.get("entity") or []:
        role = (e.get("role") or {}).get("code")
        if role == "1":
            what = e.get("what") or {}
            value = what.get("reference") or what.get("display")
            if value:
                add(("patient", value[:255]))
            ident = what.get("identifier") or {}
            if ident.get("system") == NHS_NUMBER:  # an NHS number without a record (BALP events)
                value = ident.get("value")
                if value:
                    add(("patient", value[:255]))
            for d in e.get("detail") or []:
                if d.get("type") == "nhs-number":
                    value = d.get("valueString")
                    if value:
                        add(("patient", value[:255]))
        elif role == "4":
            value = ((e.get("what") or {}).get("reference") or "").split("#", 1)[0]
            if value:
                add(("entity", value[:255]))
            for d in e.get("detail") or []:
                if d.get("type") == "subject":
                    value = d.get("valueString")
                    if value:
                        add(("entity", value[:255]))
    return sorted(rows)


# ---------------------------------------------------------------- verification

@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_at: int | None = None
    event_id: str | None = None
    problem: str | None = None
    head_seq: int | None = None
    head_hash: str = GENESIS
    rechecked: int = field(default=0, compare=False)  # events walked the exact way (a clean chain needs none)
    worker_cpu: float = field(default=0.0, compare=False)  # CPU seconds of verify's worker processes (the benchmark's figure)

    def __str__(self) -> str:
        if self.ok:
            return (f"audit chain intact: {self.checked} events verified\n"
                    f"head: event #{self.head_seq or 0}, hash {self.head_hash}\n"
                    f"(keep this anchor; `familyview audit verify --expect-count {self.checked} --expect-head {self.head_hash}` "
                    f"later proves that no event up to here was removed)")
        where = f"event #{self.broken_at} ({self.event_id})" if self.event_id else f"event #{self.broken_at}"
        return f"audit chain BROKEN at {where}: {self.problem}; {self.checked} events before it verified"


# the walk reads raw driver rows (no ORM objects, no type conversion per value): a million
# events are a million tuples. The instant comes as the chain hashes it: PostgreSQL formats
# it; SQLite holds it as text ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), reshaped in Python.
_WALK = f"SELECT {walk.WALK_COLUMNS} FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?"
_WALK_HEADS = "SELECT seq, hash FROM audit_head WHERE seq > ? AND seq <= ?"
_WALK_INDEX = "SELECT event_seq, param, value FROM audit_index WHERE event_seq > ? AND event_seq <= ? ORDER BY event_seq, pk"

def _sqlite_recorded(stored: Any) -> str | None:
    """A SQLite row's instant as the chain hashes it; None when it is not an instant."""
    if isinstance(stored, str) and SQLITE_INSTANT.fullmatch(stored):
        return f"{stored[:10]}T{stored[11:]}Z"
    try:
        return _recorded_text(stored if isinstance(stored, datetime) else datetime.fromisoformat(str(stored)))
    except ValueError:
        return None


def _body_problem(row: tuple[Any, ...], body: dict[str, Any], recorded: str) -> str | None:
    """Name the first searchable column of a walked row that disagrees with its body."""
    if body.get("id") != row[1]:
        return "event_id"
    said = body.get("recorded")
    # the body's instant is written to the millisecond ("...T09:00:00.123Z"); equal text is the same instant
    if not (isinstance(said, str) and len(said) == 24 and said[23] == "Z" and recorded == f"{said[:23]}000Z"):
        try:
            when = datetime.fromisoformat(str(said).replace("Z", "+00:00"))
        except ValueError:
            return "recorded"
        if _recorded_text(when) != recorded:
            return "recorded"
    implied = _implied_columns(body)  # in the walk's column order, type_code .. policy_version
    actual = (*row[3:11], bool(row[11]), row[12])
    if implied == actual:
        return None
    return next(name for name, want, got in zip(_COLUMN_NAMES, implied, actual) if want != got)


def _body_disagrees(row: tuple[Any, ...], event: dict[str, Any], recorded: str, stored_rows: list[tuple[Any, Any]], text_rows: bool) -> str | None:
    """What of an event's searchable columns and search rows disagrees with its (parsed) body, named."""
    column = _body_problem(row, event, recorded)
    if column:
        return f"its searchable column {column} disagrees with its body (a column was altered)"
    if not text_rows or sorted(stored_rows) != index_from_body(event):
        return "its audit_index search rows disagree with its body (index rows were altered, inserted or deleted)"
    return None


def _unsealed(row: tuple[Any, ...], body: bytes, recorded: str, stored_rows: list[tuple[Any, Any]], text_rows: bool) -> str:
    """Why an event's hash does not hold, named as closely as the row lets: when the body, with
    the columns and search rows it implies, still gives the hash (form 2), the body is as
    written and a column or search row was altered; otherwise the content was."""
    unaltered = "its content does not match its hash (the row was altered)"
    if row[16] != walk.FORM_SEALED:
        return unaltered
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return unaltered
    implied = sealed_facts_of_body(event)
    if implied is None:
        return unaltered
    prefix = walk.sealed_prefix(row[14], row[1], recorded, implied)
    if hashlib.sha256(prefix.encode() + body).hexdigest() != row[15]:
        problem = _body_problem(row, event, recorded)  # the instant and the id are sealed outside the facts
        return f"its searchable column {problem} disagrees with its body (a column was altered)" if problem in ("recorded", "event_id") else unaltered
    return _body_disagrees(row, event, recorded, stored_rows, text_rows) or unaltered


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused, for `familyview audit verify` (a process of its own):
    the walk allocates a few hundred containers per event (the parsed body) and keeps none, so
    the collector finds nothing, yet its passes cost a fifth of the walk. Not for a server's
    threads (the IG chain-status page verifies too): the pause is process-wide."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


_PARALLEL_MIN_EVENTS = 100_000  # below this, starting the workers costs more than they save
_WALK_WHILE_WORKERS_START = True  # (the tests turn it off to have the workers walk a short chain)
_SPANS_PER_WORKER = 8  # spans much smaller than an equal share: a worker on a busier core does fewer, and they end close together


class _Workers:
    """verify's worker processes, started on a thread of this process's own while verify walks
    the chain's first batches itself (the fork server imports app.audit.walk, which is made to
    be quick to import, and the workers connect); then the rest of the chain, cut into spans of consecutive events,
    is theirs to walk the fast way side by side (the walk is Python bound: threads would share
    one core). The spans end at the newest event verify's transaction sees; on PostgreSQL the
    workers read in its exported snapshot, on SQLite each in a read transaction of its own
    (which sees the same events up to there, unless someone alters them while verify runs)."""

    def __init__(self, session: Session, dialect: str, batch: int, expect_head: str | None, workers: int, top: int) -> None:
        self.batch, self.expect_head, self.workers, self.top = batch, expect_head, workers, top
        self.snapshot = session.execute(text("SELECT pg_export_snapshot()")).scalar() if dialect == "postgresql" else None
        bind = session.get_bind()
        args, kwargs = bind.dialect.create_connect_args(bind.url)  # type: ignore[union-attr]  # the driver's connect(), as the engine's
        kwargs.pop("context", None)  # (psycopg: SQLAlchemy's type adapters, not the workers')
        self.connect: walk.Connect = (dialect, list(args), dict(kwargs))
        # each worker fetches its next batch on a second thread while it checks one, unless the
        # workers already have every core (then it only adds switching); cores counted as the CLI's default counts them
        self.fetch_ahead = workers < (os.cpu_count() or 1)
        self.pool: Any = None
        self.warm: list[Any] = []
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="audit-verify-workers", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, session: Session, dialect: str, batch: int, expect_head: str | None, workers: int) -> "_Workers | None":
        """The workers for this chain; None when it is too short to be worth them or the database
        is not one a second process can read."""
        bind = session.get_bind()
        if workers < 2 or dialect not in ("sqlite", "postgresql") or (dialect == "sqlite" and bind.url.database in (None, "", ":memory:")):
            return None
        top = session.execute(select(func.max(AuditRecord.seq))).scalar() or 0
        return cls(session, dialect, batch, expect_head, workers, top) if top >= _PARALLEL_MIN_EVENTS else None

    def _start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forked from a fork server of its own (single-threaded, the walk module imported once), not
        # from this process, whose threads may hold locks (SQLite's among them) a fork would copy held
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([walk.__name__])
        main = sys.modules["__main__"]
        # without the script's path the workers do not each run the caller's script again first
        # (multiprocessing's rule, for functions defined there; these are the walk module's): seconds
        # of imports for a benchmark. Hidden while they start (a submit starts one while all are busy)
        script = main.__dict__.pop("__file__", None)
        try:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.warm = [self.pool.submit(walk.warm_worker, self.connect) for _ in range(self.workers)]
        except Exception as exc:  # noqa: BLE001 - reported by walk(), in verify's thread
            self.failed = exc
        finally:
            if script is not None:
                main.__file__ = script

    def wait_until_up(self) -> None:
        """Until the workers are up (or failed to start)."""
        self.thread.join()
        for f in self.warm:
            f.exception()

    def ready(self) -> bool:
        """Whether the workers are up (or failed to start): time to hand them the rest of the chain."""
        return not self.thread.is_alive() and (self.failed is not None or all(f.done() for f in self.warm))

    def walk(self, lo: int) -> list[walk.Span]:
        """The events after ``lo`` walked in spans by the workers, in order; [] when the workers
        could not start or connect (the serial walk then does it all)."""
        self.thread.join()
        try:
            if self.failed is not None:
                raise self.failed
            for f in self.warm:
                f.result()
            if lo >= self.top:
                return []
            # cut by seq, not by counting rows (SQLite would read the whole table to count them):
            # the chain's seqs run from 1 with few gaps, and a span with no events is walked as empty
            size = max(self.batch, -(-(self.top - lo) // (self.workers * _SPANS_PER_WORKER)))
            futures = [self.pool.submit(walk.span_worker, self.connect, self.snapshot, a, min(a + size, self.top), self.batch,
                                       self.expect_head, _URLS, self.fetch_ahead)
                       for a in range(lo, self.top, size)]
            return [f.result() for f in futures]
        except Exception as exc:
            log.warning("audit verify: the worker processes failed (%s); walking the chain in this process", type(exc).__name__)
            return []

    def close(self) -> None:
        self.thread.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _parallel_spans(session: Session, dialect: str, batch: int, expect_head: str | None, workers: int) -> list[walk.Span]:
    """The whole chain walked in spans by worker processes (the tests' view of them)."""
    helpers = _Workers.start(session, dialect, batch, expect_head, workers)
    if helpers is None:
        return []
    try:
        return helpers.walk(0)
    finally:
        helpers.close()


def verify(session: Session, batch: int = 2000, *, expect_head: str | None = None, expect_count: int | None = None,
           workers: int = 1) -> VerifyResult:
    """Walk the chain from the first event; name the first link that does not hold.

    Each event's hash recomputed over what it seals and linked to the one before (form 2, what
    append writes: the body, the searchable columns and the audit_index rows; form 1, events
    appended before migration 0020: the body, and each searchable column and audit_index row
    against what the body says); the head table against the events (the newest events deleted);
    and, when given, the anchor an IG officer kept from an earlier verify.

    Each batch is first checked the fast way (app.audit.walk: the events, their head rows, and
    each event's search rows folded into one string; bodies of form 1 read typed by msgspec, no
    dicts; the next batch fetched meanwhile on a second thread). Any doubt there (a check that
    fails, a body of another shape) and the same batch is walked again the exact way (orjson
    dicts, columns_from_body, index_from_body), which names the problem: the fast way only ever
    says a batch is clean.

    With ``workers`` > 1 (`familyview audit verify`, a process of its own) on a long chain,
    worker processes start while verify walks the first batches itself; the rest of the chain
    is then cut into spans that the workers walk the fast way side by side; the clean, linked
    spans from the first on count as walked, and the walk goes on from the first span in doubt
    (or whose first event does not link to the span before) as above: only the serial walk
    names a problem."""
    with scan_cache(session.connection()):
        return _verify(session, batch, expect_head, expect_count, workers)


def _verify(session: Session, batch: int, expect_head: str | None, expect_count: int | None, workers: int) -> VerifyResult:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # one snapshot for the whole walk: at READ COMMITTED an event appended by the running
        # service between two of its statements would look like a deleted newest event
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    prev_hash, checked, last_seq, rechecked, worker_cpu = GENESIS, 0, 0, 0, 0.0
    anchor_seen = expect_head is None or expect_head == GENESIS
    helpers = _Workers.start(session, dialect, batch, expect_head, workers)
    if helpers is not None and not _WALK_WHILE_WORKERS_START:
        helpers.wait_until_up()

    def hand_over_to_the_workers() -> None:
        """The rest of the chain walked by the workers: the clean spans from the first, each
        linked to the one before, count as walked; the walk goes on after them."""
        nonlocal prev_hash, checked, last_seq, anchor_seen, worker_cpu, helpers
        assert helpers is not None
        try:
            spans = helpers.walk(last_seq)
        finally:
            helpers.close()
            helpers = None
        worker_cpu = sum(span.cpu for span in spans)
        for span in spans:
            if span.clean and span.count == 0:  # no events in it
                continue
            if not span.clean or span.first_prev != prev_hash:
                break
            prev_hash, last_seq, checked = span.last_hash or prev_hash, span.last_seq, checked + span.count
            anchor_seen = anchor_seen or span.anchored

    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]

    def sql(q: str) -> str:
        return walk.driver_sql(dialect, q)

    sqlite = dialect == "sqlite"
    walk_sql = sql(_WALK.format(recorded=walk.WALK_RECORDED.get(dialect, "recorded"), body=walk.WALK_BODY.get(dialect, "body")))
    heads_sql, index_sql = sql(_WALK_HEADS), sql(_WALK_INDEX)
    fast = walk.FastWalk(cursor, dialect, batch, expect_head, _URLS)
    sha256 = hashlib.sha256

    def broken(seq: int, event_id: str | None, problem: str) -> VerifyResult:
        return VerifyResult(False, checked, seq, event_id, problem, last_seq, prev_hash, rechecked, worker_cpu)

    def fast_batch(hi: int, rows: list[Any], agree: list[Any] | None, anchored: bool) -> bool:
        """Whether every check of the batch holds (then the walk advances past it); False when
        in doubt, and nothing is advanced."""
        nonlocal prev_hash, checked, last_seq, anchor_seen
        if not fast.clean(prev_hash, rows, agree):
            return False
        prev_hash, last_seq = rows[-1][15], hi
        anchor_seen = anchor_seen or anchored
        checked += len(rows)
        return True

    def exact_batch() -> VerifyResult | None:
        """The next batch walked the exact way: the problem it finds, else None (state advanced)."""
        nonlocal prev_hash, checked, last_seq, anchor_seen, rechecked
        cursor.execute(walk_sql, (last_seq, batch))
        rows = cursor.fetchall()
        if not rows:
            return None
        hi = rows[-1][0]
        cursor.execute(heads_sql, (last_seq, hi))
        heads = dict(cursor.fetchall())
        cursor.execute(index_sql, (last_seq, hi))
        index: dict[int, list[tuple[str, str]]] = {}
        for seq, param, value in cursor.fetchall():
            index.setdefault(seq, []).append((param, value))
        seqs = {r[0] for r in rows}
        stray = sorted(set(heads) - seqs)
        if stray:
            return broken(stray[0], None, "the head table records this event but it is missing from the audit (a row was removed)")
        stray = sorted(set(index) - seqs)
        if stray:
            return broken(stray[0], None, "audit_index holds search rows for an event that does not exist (index rows were inserted)")
        for r in rows:
            seq, event_id, recorded, stored, row_prev, row_hash, form = r[0], r[1], r[2], r[13], r[14], r[15], r[16]
            if row_prev != prev_hash:
                return broken(seq, event_id, "its previous-hash does not match the event before it (a row was removed or re-ordered)")
            if sqlite:
                recorded = _sqlite_recorded(recorded)
                if recorded is None:
                    return broken(seq, event_id, "its searchable column recorded is not an instant (a column was altered)")
            body = stored if isinstance(stored, bytes) else stored.encode()
            stored_rows = index.get(seq, [])
            # (SQLite stores any type: a value that is not text is not the body's, and does not sort beside text)
            text_rows = all(type(p) is str and type(v) is str for p, v in stored_rows)
            if form not in (walk.FORM_BODY, walk.FORM_SEALED):
                return broken(seq, event_id, f"its hash form {form!r} is not one the gateway writes (a column was altered)")
            # form 2: the search rows are a set, sealed sorted whatever order they were stored in
            sealed = walk.sealed_facts(r[3:13], sorted(stored_rows)) if form == walk.FORM_SEALED and text_rows else None
            if (form == walk.FORM_SEALED and sealed is None) or \
                    sha256(walk.sealed_prefix(prev_hash, event_id, recorded, sealed).encode() + body).hexdigest() != row_hash:
                return broken(seq, event_id, _unsealed(r, body, recorded, stored_rows, text_rows))
            if heads.get(seq) != row_hash:
                return broken(seq, event_id, "the head table does not record this event with this hash (the event was inserted or altered outside the gateway)")
            if form == walk.FORM_BODY:  # the hash seals the body alone: the body proves the columns and search rows
                try:
                    problem = _body_disagrees(r, orjson.loads(body), recorded, stored_rows, text_rows)
                except orjson.JSONDecodeError:
                    problem = "its body is not valid JSON"
                if problem:
                    return broken(seq, event_id, problem)
            prev_hash = row_hash
            anchor_seen = anchor_seen or row_hash == expect_head
            checked += 1
            rechecked += 1
            last_seq = seq
        return None

    # the next batch is fetched on a second thread while this one is checked: the database
    # (PostgreSQL's own process; SQLite without the GIL) works beside the Python
    pool = ThreadPoolExecutor(1, thread_name_prefix="audit-verify")
    try:
        ahead = pool.submit(fast.fetch, last_seq)
        while True:
            if helpers is not None and helpers.ready():
                ahead.result()  # (its batch is the workers' now)
                hand_over_to_the_workers()
                ahead = pool.submit(fast.fetch, last_seq)
            got = ahead.result()
            if got is None:
                break
            ahead = pool.submit(fast.fetch, got[0])
            if fast_batch(*got):
                continue
            ahead.result()  # the connection is the exact walk's again
            problem = exact_batch()
            if problem is not None:
                return problem
            if last_seq != got[0]:  # pragma: no cover - the exact walk covers the same rows
                raise RuntimeError("audit verify: the exact walk did not cover the batch the fast walk doubted")
            ahead = pool.submit(fast.fetch, last_seq)
    finally:
        pool.shutdown(wait=True)
        cursor.close()
        if helpers is not None:  # the chain was walked before they were up
            helpers.close()
    after = session.execute(select(func.min(AuditHead.seq), func.count()).where(AuditHead.seq > last_seq)).one()
    if after[1]:
        return broken(after[0], None, f"the head table records {after[1]} newer event(s) that are missing from the audit (the newest events were deleted)")
    # index rows up to last_seq were compared batch by batch above; only rows beyond the last
    # event can remain (a range query, not NOT IN, which PostgreSQL cannot plan as an anti-join)
    stray = session.execute(select(func.min(AuditIndex.event_seq)).where(AuditIndex.event_seq > last_seq)).scalar()
    if stray is not None:
        return broken(stray, None, "audit_index holds search rows for an event that does not exist (index rows were inserted, or the event deleted)")
    if expect_count is not None and checked < expect_count:
        return broken(last_seq + 1, None, f"the chain holds {checked} events, fewer than the {expect_count} of the anchor (the newest events were deleted)")
    if not anchor_seen:
        return broken(last_seq + 1, None, f"no event has the anchored head hash {expect_head} (the events from the anchor back were deleted or altered)")
    return VerifyResult(True, checked, head_seq=last_seq or None, head_hash=prev_hash, rechecked=rechecked, worker_cpu=worker_cpu)
