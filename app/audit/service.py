"""Writing and verifying the audit chain. Written in the caller's transaction: if the audit
row cannot be written, the transaction fails and nothing it would have disclosed is sent."""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import re
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterable

import msgspec
import orjson

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from app.audit.models import AuditHead, AuditIndex, AuditRecord
from app.db import insert_rows, pipelined, scan_cache
from app.urls import CANONICAL_BASE

log = logging.getLogger(__name__)

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


def _append_pg_params(event: dict[str, Any], columns: AuditColumns, index: Iterable[tuple[str, str]]) -> dict[str, Any]:
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = event_text(event)
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
    body = event_text(event)
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
        body = event_text(event)
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
_NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"


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
            if ident.get("system") == _NHS_NUMBER:  # an NHS number without a record (BALP events)
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


# ---------------------------------------------------------------- the walk's typed reading of a body

class _Code(msgspec.Struct, gc=False):
    code: str | None = None
    system: str | None = None


class _CodeOnly(msgspec.Struct, gc=False):
    """A Coding where only its code is read (its other keys skipped, not kept)."""

    code: str | None = None


class _Concept(msgspec.Struct, gc=False):
    coding: list[_Code] | None = None


class _Identifier(msgspec.Struct, gc=False):
    system: str | None = None
    value: str | None = None


class _Who(msgspec.Struct, gc=False):
    identifier: _Identifier | None = None


class _Agent(msgspec.Struct, gc=False):
    requestor: bool | None = None
    role: list[_Concept] | None = None
    who: _Who | None = None


class _Extension(msgspec.Struct, gc=False):
    url: str | None = None
    valueBoolean: bool | None | msgspec.UnsetType = msgspec.UNSET
    valueString: str | None | msgspec.UnsetType = msgspec.UNSET


class _What(msgspec.Struct, gc=False):
    reference: str | None = None
    display: str | None = None
    identifier: _Identifier | None = None


class _Detail(msgspec.Struct, gc=False):
    type: str | None = None
    valueString: str | None = None


class _Entity(msgspec.Struct, gc=False):
    role: _CodeOnly | None = None
    what: _What | None = None
    detail: list[_Detail] | None = None


class _Body(msgspec.Struct, gc=False):
    """What columns_from_body and index_from_body read of a body, typed: a body whose parts are
    not these types (a code that is a number, an agent that is not an object) fails to decode
    and the event is walked the exact way, with the dicts orjson gives."""

    id: str | None = None
    recorded: str | None = None
    type: _CodeOnly | None = None
    subtype: list[_Code] | None = None
    action: str | None = None
    outcome: str | None = None
    purposeOfEvent: list[_Concept] | None = None
    agent: msgspec.Raw = msgspec.Raw(b"null")  # read by _agent_facts, once per distinct list
    extension: list[_Extension] | None = None
    entity: list[_Entity] | None = None


_BODY = msgspec.json.Decoder(_Body)


_AGENTS = msgspec.json.Decoder(list[_Agent] | None)
_AGENT_FACTS: dict[bytes, tuple[Any, Any, Any]] = {}  # an agent list's JSON -> (agent_sub, agent_org, agent_role)


def _agent_facts(raw: msgspec.Raw) -> tuple[Any, Any, Any]:
    """The agent columns of an agent list, read once per distinct list (the same users and
    organisations recur through the chain): keyed by the list's exact JSON, so the same bytes
    give the same columns; a list of another shape raises ValidationError (the exact walk's)."""
    key = bytes(raw)
    facts = _AGENT_FACTS.get(key)
    if facts is None:
        user = org = None
        for a in _AGENTS.decode(key) or ():
            if a.requestor:
                if user is None:
                    user = a
            elif org is None:
                org = a
        role = sub = org_code = None
        if user is not None:
            for r in user.role or ():
                if r.coding:
                    role = r.coding[0].code
                    break
            if user.who is not None and user.who.identifier is not None:
                sub = user.who.identifier.value
        if org is not None and org.who is not None and org.who.identifier is not None:
            org_code = org.who.identifier.value
        if len(_AGENT_FACTS) >= 10_000:
            _AGENT_FACTS.clear()
        facts = _AGENT_FACTS[key] = (sub, org_code, role)
    return facts


def _typed_facts(seq: int, b: _Body) -> tuple[tuple[Any, ...], str]:
    """_implied_columns and index_from_body of event ``seq``'s typed body (plain loops: verify
    calls it a million times), the index rows as the fast walk's SQL folds the stored ones:
    sorted by (param, value), each as seq:len(param):param len(value):value."""
    sub, org_code, role = _agent_facts(b.agent)
    subtype = purpose = None
    for c in b.subtype or ():
        if c.system == _SUBTYPE_SYSTEM:
            subtype = c.code
            break
    for p in b.purposeOfEvent or ():
        if p.coding:
            purpose = p.coding[0].code
            break
    review = policy = None
    seen_review = seen_policy = False
    for x in b.extension or ():  # _ext(): the first extension of the url; valueBoolean when the key is there (even null)
        if x.url == _EXT_IG_REVIEW and not seen_review:
            seen_review = True
            review = x.valueBoolean if x.valueBoolean is not msgspec.UNSET else (None if x.valueString is msgspec.UNSET else x.valueString)
        elif x.url == _EXT_POLICY_VERSION and not seen_policy:
            seen_policy = True
            policy = x.valueBoolean if x.valueBoolean is not msgspec.UNSET else (None if x.valueString is msgspec.UNSET else x.valueString)
    columns = (b.type.code if b.type is not None else None, subtype, b.action, b.outcome, purpose, sub, org_code, role, bool(review), policy)
    rows: set[tuple[str, str]] = set()
    add = rows.add
    for e in b.entity or ():
        code = e.role.code if e.role is not None else None
        if code == "1":
            what = e.what
            if what is not None:
                value = what.reference or what.display
                if value:
                    add(("7:patient", value[:255]))
                ident = what.identifier
                if ident is not None and ident.system == _NHS_NUMBER and ident.value:
                    add(("7:patient", ident.value[:255]))
            for d in e.detail or ():
                if d.type == "nhs-number" and d.valueString:
                    add(("7:patient", d.valueString[:255]))
        elif code == "4":
            value = ((e.what.reference if e.what is not None else None) or "").split("#", 1)[0]
            if value:
                add(("6:entity", value[:255]))
            for d in e.detail or ():
                if d.type == "subject" and d.valueString:
                    add(("6:entity", d.valueString[:255]))
    # "6:entity" sorts before "7:patient" as "entity" before "patient"
    return columns, "".join([f"{seq}:{p}{len(v)}:{v}" for p, v in sorted(rows)])


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


# The fast walk's statements, per batch: where it ends; its events with their head row's hash;
# and all their search rows folded into one string in (event, pk) order, each row as
# seq:len(param):param len(value):value (lengths in characters, so that no two different lists
# of rows make the same string), with the count of head rows in the range and (SQLite, which
# stores any type in any column) of search rows that are not text. The instant comes as the
# database holds it (SQLite) or as the chain hashes it (PostgreSQL formats it); each event is
# hashed on the fetching thread, over the bytes the chain hashed (hashlib lets go of the GIL;
# PostgreSQL would decompress each body twice, to hash it and to send it).
_NO_END = (1 << 63) - 1  # beyond any seq: the walk's last batch ends at the newest event
_FAST_END = "SELECT max(seq), count(*) FROM (SELECT seq FROM audit_event WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?) b"
_FAST_EVENTS = ("SELECT e.seq, event_id, {recorded}, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub, agent_org, "
                "agent_role, review_required, policy_version, {body}, prev_hash, e.hash, h.hash "
                "FROM audit_event e LEFT JOIN audit_head h ON h.seq = e.seq AND h.seq > ? AND h.seq <= ? "
                "WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq")
_FAST_INDEX = ("SELECT (SELECT {concat} FROM (SELECT {row} AS r, event_seq, pk FROM audit_index "
               "WHERE event_seq > ? AND event_seq <= ? {order}) i), "
               "(SELECT count(*) FROM audit_head WHERE seq > ? AND seq <= ?)")


def _fast_sql(dialect: str) -> tuple[str, str]:
    """The fast walk's events and search-rows statements for this database."""
    if dialect == "postgresql":
        return (_FAST_EVENTS.format(recorded=_WALK_RECORDED[dialect], body="body"),
                _FAST_INDEX.format(concat="string_agg(r, '' ORDER BY event_seq, pk)", order="",
                                   row="event_seq || ':' || length(param) || ':' || param || length(value) || ':' || value"))
    # SQLite: group_concat takes the rows in the order of the inner query (ix_audit_index_event
    # gives (event_seq, pk) without a sort); rows in another order only send the batch to the
    # exact walk. SQLite stores any type in any column: a row whose param or value is not text
    # (or whose event_seq is not an integer) ends in "!", which no row the bodies imply does
    return (_FAST_EVENTS.format(recorded="recorded", body=_WALK_BODY.get(dialect, "body")),
            _FAST_INDEX.format(concat="group_concat(r, '')", order="ORDER BY event_seq, pk",
                               row="printf('%s:%d:%s%d:%s%s', event_seq, length(param), param, length(value), value, "
                                   "CASE WHEN typeof(param) = 'text' AND typeof(value) = 'text' AND typeof(event_seq) = 'integer' "
                                   "THEN '' ELSE '!' END)"))


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


def _bodies_agree(rows: list[Any]) -> str | None:
    """The fast walk's check of each row's body against its columns, rows as (seq, event_id,
    the instant as the body writes it, (type_code .. policy_version), body): the search rows
    the bodies imply, folded as the fast walk's SQL folds the stored ones; None when in doubt."""
    decode, pieces = _BODY.decode, []
    try:
        for seq, event_id, said, stored_columns, body in rows:
            b = decode(body)
            if b.id != event_id or b.recorded is None or b.recorded != said:
                return None
            columns, index_text = _typed_facts(seq, b)
            if columns != stored_columns:  # bool == 0/1 too: a review flag stored otherwise is for the exact walk
                return None
            pieces.append(index_text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return "".join(pieces)


def _driver_sql(dialect: str, q: str) -> str:
    """A walk statement in the driver's own placeholders."""
    return q.replace("?", "%s") if dialect == "postgresql" else q


class _FastWalk:
    """The fast walk's reading and checking of batches on one driver cursor: verify's own, or
    a worker process's (verify's workers)."""

    def __init__(self, cursor: Any, dialect: str, batch: int, expect_head: str | None) -> None:
        self.cursor, self.batch, self.expect_head = cursor, batch, expect_head
        self.events_sql, self.index_sql = (_driver_sql(dialect, q) for q in _fast_sql(dialect))
        self.end_sql = _driver_sql(dialect, _FAST_END)
        self.sqlite = dialect == "sqlite"

    def fetch(self, lo: int, end: int | None = None) -> tuple[int, list[Any], tuple[Any, ...], list[Any] | None, bool] | None:
        """The fast walk's rows of the batch after ``lo`` (up to ``end`` when given; None at the
        end); when the chain holds within it (each event's hash over its stored bytes, each
        linked to the one before, each recorded in the head table), each event as _bodies_agree
        takes it, else None; and whether the anchor is among them."""
        cursor, batch, expect_head = self.cursor, self.batch, self.expect_head
        if end is not None and lo >= end:
            return None
        cursor.execute(self.end_sql, (lo, _NO_END if end is None else end, batch))
        hi, n = cursor.fetchone()
        if end is None:
            if hi is None:
                return None
        elif n < batch:
            hi = end  # a span's last batch runs to its end: head and search rows in a gap are checked too
        cursor.execute(self.events_sql, (lo, hi, lo, hi))
        rows = cursor.fetchall()
        cursor.execute(self.index_sql, (lo, hi, lo, hi))
        others = cursor.fetchone()
        sha256, instant, sqlite = hashlib.sha256, _SQLITE_INSTANT.fullmatch, self.sqlite
        agree: list[Any] | None = []
        append = agree.append
        before = rows[0][14] if rows else None
        for r in rows:
            seq, event_id, recorded, _, _, _, _, _, _, _, _, _, _, stored, row_prev, row_hash, head = r
            if sqlite:  # "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) as the chain hashes it; anything else is for the exact walk
                if type(recorded) is not str or not instant(recorded):
                    agree = None
                    break
                recorded = f"{recorded[:10]}T{recorded[11:]}Z"
            if head != row_hash or row_prev != before or sha256(
                    f"{row_prev}|{event_id}|{recorded}|".encode() + stored if type(stored) is bytes
                    else f"{row_prev}|{event_id}|{recorded}|{stored}".encode()).hexdigest() != row_hash:
                agree = None
                break
            before = row_hash
            # the body writes the instant to the millisecond: the same instant when the rest is zeros
            append((seq, event_id, f"{recorded[:23]}Z" if recorded[23:26] == "000" else None, r[3:13], stored))
        return hi, rows, others, agree, expect_head is not None and any(r[15] == expect_head for r in rows)

    @staticmethod
    def clean(prev_hash: str, rows: list[Any], others: tuple[Any, ...], agree: list[Any] | None) -> bool:
        """Whether every check of a fetched batch holds, its first event linked to ``prev_hash``;
        False when in doubt."""
        if agree is None or (rows and rows[0][14] != prev_hash):
            return False
        # the searchable columns and search rows the bodies imply, against the stored ones
        implied = _bodies_agree(agree)
        stored_index, heads = others
        # every search row of the range, in order, is one the bodies imply; every head row is an event's
        return not (implied is None or heads != len(rows) or (stored_index or "") != implied)


@dataclass(frozen=True)
class _Span:
    """A worker's fast walk of the events in (lo, hi]: clean, or in doubt somewhere (then the
    serial walk takes the chain over from the span's start); its first event's previous-hash
    and its last event's hash, for verify to link the spans."""

    lo: int
    hi: int
    clean: bool
    count: int = 0
    first_prev: str | None = None
    last_hash: str | None = None
    anchored: bool = False
    last_seq: int = 0  # its newest event's
    cpu: float = 0.0  # the worker's CPU seconds for the span (its threads; the benchmark's figure)


def _walk_span(fast: _FastWalk, lo: int, hi: int) -> _Span:
    """The fast walk of the events in (lo, hi], the next batch fetched while one is checked."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="audit-verify")
    count, first_prev, last_hash, anchored, last_seq = 0, None, None, False, 0
    try:
        ahead = pool.submit(fast.fetch, lo, hi)
        while True:
            got = ahead.result()
            if got is None:
                return _Span(lo, hi, True, count, first_prev, last_hash, anchored, last_seq)
            ahead = pool.submit(fast.fetch, got[0], hi)
            _, rows, others, agree, seen = got
            if not rows:  # a span's end with no events (a gap in the seqs)
                if not fast.clean("", rows, others, agree):
                    return _Span(lo, hi, False)
                continue
            if first_prev is None:
                first_prev = last_hash = rows[0][14]  # the link into the span: verify checks it against the span before
            if not fast.clean(last_hash, rows, others, agree):  # type: ignore[arg-type]
                return _Span(lo, hi, False)
            count, last_hash, anchored, last_seq = count + len(rows), rows[-1][15], anchored or seen, rows[-1][0]
    finally:
        pool.shutdown(wait=True)


_SPAN_ENGINES: dict[str, Any] = {}  # a worker process's engine, kept for its next span
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


def _span_engine(url: str) -> Any:
    """A worker process's engine, kept for its next span; the collector paused (a process of
    verify's own: see collector_paused)."""
    from app.db import make_engine

    gc.disable()
    engine = _SPAN_ENGINES.get(url)
    if engine is None:
        engine = _SPAN_ENGINES[url] = make_engine(url).execution_options(familyview_readonly=True)
    return engine


def _span_worker(url: str, snapshot: str | None, lo: int, hi: int, batch: int, expect_head: str | None) -> _Span:
    """A worker process's span of the chain, on a connection of its own; on PostgreSQL in the
    snapshot verify exported (the same committed events verify's own transaction sees)."""
    with _span_engine(url).connect() as conn, scan_cache(conn):
        try:
            if snapshot is not None:
                if not _SNAPSHOT_ID.fullmatch(snapshot):
                    raise ValueError("not a PostgreSQL snapshot id")
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            else:
                conn.exec_driver_sql("SELECT 1")  # SQLite: BEGIN (a read transaction) before the walk's reads
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            started = time.process_time()
            try:
                span = _walk_span(_FastWalk(cursor, conn.dialect.name, batch, expect_head), lo, hi)
                return dataclasses.replace(span, cpu=time.process_time() - started)
            finally:
                cursor.close()
        finally:
            conn.rollback()


_PARALLEL_MIN_EVENTS = 100_000  # below this, starting the workers costs more than they save
_WALK_WHILE_WORKERS_START = True  # (the tests turn it off to have the workers walk a short chain)
_SPANS_PER_WORKER = 8  # spans much smaller than an equal share: a worker on a busier core does fewer, and they end close together


def _warm_worker(url: str) -> int:
    """A worker process ready to walk: its engine made and connected."""
    with _span_engine(url).connect():
        return os.getpid()


class _Workers:
    """verify's worker processes, started on a thread of this process's own while verify walks
    the chain's first batches itself (the fork server's imports and the workers' connections
    take most of a second); then the rest of the chain, cut into spans of consecutive events,
    is theirs to walk the fast way side by side (the walk is Python bound: threads would share
    one core). The spans end at the newest event verify's transaction sees; on PostgreSQL the
    workers read in its exported snapshot, on SQLite each in a read transaction of its own
    (which sees the same events up to there, unless someone alters them while verify runs)."""

    def __init__(self, session: Session, dialect: str, batch: int, expect_head: str | None, workers: int, top: int) -> None:
        self.batch, self.expect_head, self.workers, self.top = batch, expect_head, workers, top
        self.snapshot = session.execute(text("SELECT pg_export_snapshot()")).scalar() if dialect == "postgresql" else None
        self.url = session.get_bind().url.render_as_string(hide_password=False)
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

        # forked from a fork server of its own (single-threaded, this module imported once), not from
        # this process, whose threads may hold locks (SQLite's among them) a fork would copy held
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        main = sys.modules["__main__"]
        # without the script's path the workers do not each run the caller's script again first
        # (multiprocessing's rule, for functions defined there; these are this module's): seconds
        # of imports for a benchmark. Hidden while they start (a submit starts one while all are busy)
        script = main.__dict__.pop("__file__", None)
        try:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self.warm = [self.pool.submit(_warm_worker, self.url) for _ in range(self.workers)]
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

    def walk(self, lo: int) -> list[_Span]:
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
            futures = [self.pool.submit(_span_worker, self.url, self.snapshot, a, min(a + size, self.top), self.batch, self.expect_head)
                       for a in range(lo, self.top, size)]
            return [f.result() for f in futures]
        except Exception as exc:
            log.warning("audit verify: the worker processes failed (%s); walking the chain in this process", type(exc).__name__)
            return []

    def close(self) -> None:
        self.thread.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _parallel_spans(session: Session, dialect: str, batch: int, expect_head: str | None, workers: int) -> list[_Span]:
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

    Each event's hash recomputed over its stored bytes and linked to the one before; each
    searchable column and each audit_index row against what the hash-chained body says; the
    head table against the events (the newest events deleted); and, when given, the anchor an
    IG officer kept from an earlier verify.

    Each batch is first checked the fast way (_FAST_EVENTS brings each event with its head
    row's hash, _FAST_INDEX all the batch's search rows folded into one string; bodies read
    typed by msgspec, no dicts; the next batch fetched meanwhile on a second thread). Any doubt there (a check that fails, a body of another shape) and the same batch is
    walked again the exact way (orjson dicts, columns_from_body, index_from_body), which names
    the problem: the fast way only ever says a batch is clean.

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
        return _driver_sql(dialect, q)

    sqlite = dialect == "sqlite"
    walk = sql(_WALK.format(recorded=_WALK_RECORDED.get(dialect, "recorded"), body=_WALK_BODY.get(dialect, "body")))
    heads_sql, index_sql = sql(_WALK_HEADS), sql(_WALK_INDEX)
    fast = _FastWalk(cursor, dialect, batch, expect_head)
    sha256, loads = hashlib.sha256, orjson.loads

    def broken(seq: int, event_id: str | None, problem: str) -> VerifyResult:
        return VerifyResult(False, checked, seq, event_id, problem, last_seq, prev_hash, rechecked, worker_cpu)

    def fast_batch(hi: int, rows: list[Any], others: tuple[Any, ...], agree: list[Any] | None, anchored: bool) -> bool:
        """Whether every check of the batch holds (then the walk advances past it); False when
        in doubt, and nothing is advanced."""
        nonlocal prev_hash, checked, last_seq, anchor_seen
        if not fast.clean(prev_hash, rows, others, agree):
            return False
        prev_hash, last_seq = rows[-1][15], hi
        anchor_seen = anchor_seen or anchored
        checked += len(rows)
        return True

    def exact_batch() -> VerifyResult | None:
        """The next batch walked the exact way: the problem it finds, else None (state advanced)."""
        nonlocal prev_hash, checked, last_seq, anchor_seen, rechecked
        cursor.execute(walk, (last_seq, batch))
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
            stored_rows = index.get(seq, [])
            # (SQLite stores any type: a value that is not text is not the body's, and does not sort beside text)
            if any(type(p) is not str or type(v) is not str for p, v in stored_rows) or sorted(stored_rows) != index_from_body(event):
                return broken(seq, event_id, "its audit_index search rows disagree with its body (index rows were altered, inserted or deleted)")
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
