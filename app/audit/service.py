"""Writing and verifying the audit chain. Written in the caller's transaction: if the audit
row cannot be written, the transaction fails and nothing it would have disclosed is sent."""
from __future__ import annotations

import gc
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Iterable

import orjson

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from app.audit.models import AuditHead, AuditIndex, AuditRecord
from app.db import insert_rows, pipelined
from app.urls import CANONICAL_BASE

GENESIS = "0" * 64
_CHAIN_LOCK_KEY = 7_274_220_261  # pg_advisory_xact_lock key serialising appends to the chain


def chain_hash(prev_hash: str, event_id: str, recorded: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{event_id}|{recorded}|{body}".encode()).hexdigest()


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


_LAST_HASH = select(AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_INSERT_EVENT = insert(AuditRecord).returning(AuditRecord.seq)


# PostgreSQL: read the chain head, hash and insert the event and its search rows in one
# statement (after the advisory lock, so its snapshot sees the latest committed event).
# sha256 over "prev|id|recorded|body" in UTF-8, exactly as chain_hash() computes it.
_APPEND_PG = text(
    """
    WITH prev AS (SELECT coalesce((SELECT hash FROM audit_event ORDER BY seq DESC LIMIT 1), :genesis) AS h),
    ev AS (
        INSERT INTO audit_event (event_id, recorded, type_code, subtype_code, action, outcome, purpose_of_use,
                                 agent_sub, agent_org, agent_role, review_required, policy_version, body, prev_hash, hash)
        SELECT :event_id, :recorded, :type_code, :subtype_code, :action, :outcome, :purpose_of_use,
               :agent_sub, :agent_org, :agent_role, :review_required, :policy_version, :body, prev.h,
               encode(sha256(convert_to(prev.h || :suffix, 'UTF8')), 'hex')
        FROM prev
        RETURNING seq, hash
    )
    INSERT INTO audit_index (event_seq, param, value)
    SELECT ev.seq, v.param, v.value FROM ev, unnest(CAST(:params AS text[]), CAST(:vals AS text[])) AS v(param, value)
    """
)


_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


def _append_pg_params(event: dict[str, Any], columns: AuditColumns, index: Iterable[tuple[str, str]]) -> dict[str, Any]:
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    entries = sorted({(p, v[:255]) for p, v in index if v})
    return {
        "genesis": GENESIS, "event_id": event["id"], "recorded": recorded, "body": body,
        "suffix": f"|{event['id']}|{_recorded_text(recorded)}|{body}",
        "params": [p for p, _ in entries], "vals": [v for _, v in entries], **columns.__dict__,
    }


def append_each(session: Session, entries: list[tuple[dict[str, Any], AuditColumns, Iterable[tuple[str, str]]]]) -> None:
    """Append a few events, in order, as ``append`` one by one would; on PostgreSQL the chain
    lock and every event's statement go in one round trip (a pipeline: each statement runs
    after the one before it, so each reads the head the previous one wrote)."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        for entry in entries:
            append(session, *entry)
        return
    pipelined(conn, [(_CHAIN_LOCK, {"k": _CHAIN_LOCK_KEY})] + [(_APPEND_PG, _append_pg_params(*entry)) for entry in entries])


def append(session: Session, event: dict[str, Any], columns: AuditColumns, index: Iterable[tuple[str, str]]) -> None:
    """Append one AuditEvent to the chain, in the caller's transaction."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":  # the chain lock and the append in one round trip
        pipelined(conn, [(_CHAIN_LOCK, {"k": _CHAIN_LOCK_KEY}), (_APPEND_PG, _append_pg_params(event, columns, index))])
        return
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    entries = sorted({(p, v[:255]) for p, v in index if v})
    prev_hash = conn.execute(_LAST_HASH).scalar() or GENESIS  # SQLite: BEGIN IMMEDIATE serialises writers
    digest = chain_hash(prev_hash, event["id"], _recorded_text(recorded), body)
    seq = conn.execute(
        _INSERT_EVENT,
        {"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev_hash, "hash": digest, **columns.__dict__},
    ).scalar_one()
    # one executemany of a statement built once (a multi-row VALUES is compiled afresh per event)
    insert_rows(conn, AuditIndex.__table__, [{"event_seq": seq, "param": p, "value": v} for p, v in entries])


def append_many(session: Session, entries: list[tuple[dict[str, Any], AuditColumns, Iterable[tuple[str, str]]]]) -> None:
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
        body = json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        digest = chain_hash(prev, event["id"], _recorded_text(recorded), body)
        rows.append({"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev, "hash": digest, **columns.__dict__})
        index.append(sorted({(p, v[:255]) for p, v in idx if v}))
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
            if ident.get("system") == "https://fhir.nhs.uk/Id/nhs-number":  # an NHS number without a record (BALP events)
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

    def __str__(self) -> str:
        if self.ok:
            return (f"audit chain intact: {self.checked} events verified\n"
                    f"head: event #{self.head_seq or 0}, hash {self.head_hash}\n"
                    f"(keep this anchor; `familyview audit verify --expect-count {self.checked} --expect-head {self.head_hash}` "
                    f"later proves that no event up to here was removed)")
        where = f"event #{self.broken_at} ({self.event_id})" if self.event_id else f"event #{self.broken_at}"
        return f"audit chain BROKEN at {where}: {self.problem}; {self.checked} events before it verified"


_COLUMN_NAMES = tuple(AuditColumns.__dataclass_fields__)
# the walk reads raw driver rows (no ORM objects, no type conversion per value): a million
# events are a million tuples. The instant comes as the chain hashes it: PostgreSQL formats
# it; SQLite holds it as text ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), reshaped in Python.
_WALK = ("SELECT seq, event_id, {recorded}, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub, agent_org, "
         "agent_role, review_required, policy_version, {body}, prev_hash, hash FROM audit_event WHERE seq > ? ORDER BY seq LIMIT ?")
_WALK_RECORDED = {"postgresql": "to_char(recorded AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", "sqlite": "recorded"}
_WALK_BODY = {"postgresql": "body", "sqlite": "CAST(body AS BLOB)"}  # SQLite: the stored UTF-8 bytes, hashed as they are
_WALK_HEADS = "SELECT seq, hash FROM audit_head WHERE seq > ? AND seq <= ?"
_WALK_INDEX = "SELECT event_seq, param, value FROM audit_index WHERE event_seq > ? AND event_seq <= ?"
_SQLITE_INSTANT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)


def _sqlite_recorded(stored: Any) -> str | None:
    """A SQLite row's instant as the chain hashes it; None when it is not an instant."""
    if isinstance(stored, str) and _SQLITE_INSTANT.fullmatch(stored):
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


def verify(session: Session, batch: int = 2000, *, expect_head: str | None = None, expect_count: int | None = None) -> VerifyResult:
    """Walk the chain from the first event; name the first link that does not hold.

    Each event's hash recomputed over its stored bytes and linked to the one before; each
    searchable column and each audit_index row against what the hash-chained body says; the
    head table against the events (the newest events deleted); and, when given, the anchor an
    IG officer kept from an earlier verify."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # one snapshot for the whole walk: at READ COMMITTED an event appended by the running
        # service between two of its statements would look like a deleted newest event
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]

    def sql(q: str) -> str:
        return q.replace("?", "%s") if dialect == "postgresql" else q

    walk = sql(_WALK.format(recorded=_WALK_RECORDED.get(dialect, "recorded"), body=_WALK_BODY.get(dialect, "body")))
    heads_sql, index_sql = sql(_WALK_HEADS), sql(_WALK_INDEX)
    sqlite = dialect == "sqlite"
    sha256, loads = hashlib.sha256, orjson.loads
    prev_hash, checked, last_seq = GENESIS, 0, 0
    anchor_seen = expect_head is None or expect_head == GENESIS

    def broken(seq, event_id, problem):
        return VerifyResult(False, checked, seq, event_id, problem, last_seq, prev_hash)

    try:
        while True:
            cursor.execute(walk, (last_seq, batch))
            rows = cursor.fetchall()
            if not rows:
                break
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
                seq, event_id, recorded, stored, row_prev, row_hash = r[0], r[1], r[2], r[13], r[14], r[15]
                if row_prev != prev_hash:
                    return broken(seq, event_id, "its previous-hash does not match the event before it (a row was removed or re-ordered)")
                if sqlite:
                    recorded = _sqlite_recorded(recorded)
                    if recorded is None:
                        return broken(seq, event_id, "its searchable column recorded is not an instant (a column was altered)")
                body = stored if isinstance(stored, bytes) else stored.encode()
                if sha256(f"{prev_hash}|{event_id}|{recorded}|".encode() + body).hexdigest() != row_hash:
                    return broken(seq, event_id, "its content does not match its hash (the row was altered)")
                if heads.get(seq) != row_hash:
                    return broken(seq, event_id, "the head table does not record this event with this hash (the event was inserted or altered outside the gateway)")
                try:
                    event = loads(body)
                except orjson.JSONDecodeError:
                    return broken(seq, event_id, "its body is not valid JSON")
                column = _body_problem(r, event, recorded)
                if column:
                    return broken(seq, event_id, f"its searchable column {column} disagrees with its body (a column was altered)")
                if sorted(index.get(seq, ())) != index_from_body(event):
                    return broken(seq, event_id, "its audit_index search rows disagree with its body (index rows were altered, inserted or deleted)")
                prev_hash = row_hash
                anchor_seen = anchor_seen or row_hash == expect_head
                checked += 1
                last_seq = seq
    finally:
        cursor.close()
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
    return VerifyResult(True, checked, head_seq=last_seq or None, head_hash=prev_hash)
