"""The audit chain's fast walk: each batch of events read with their head rows and search rows,
hashed over what each event's hash seals, and linked, on one driver cursor. What
`familyview audit verify`'s worker processes run, so it imports only the standard library,
msgspec and the database driver (not SQLAlchemy, not the consent engine that app.urls brings):
a worker is up in a fraction of the time the service module takes to import, while verify's
own process walks the chain's first batches (app.audit.service: verify, the exact walk that
names a problem, the workers' pool)."""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"


class AuditUrls(msgspec.Struct, frozen=True, gc=False):
    """The gateway's canonical URLs a body's columns are read by (app.audit.service names them
    from app.urls; passed in, so that this module does not import it)."""

    ig_review: str
    policy_version: str
    subtype_system: str


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
    """What app.audit.service's columns_from_body and index_from_body read of a body, typed: a body whose parts are
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


BODY = msgspec.json.Decoder(_Body)


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


def typed_facts(b: _Body, urls: AuditUrls) -> tuple[tuple[Any, ...], str]:
    """app.audit.service's _implied_columns and index_from_body of an event's typed body (plain
    loops: verify may call it a million times, for a chain of form 1), the index rows as the fast
    walk's SQL folds the stored ones: sorted by (param, value), each as len(param):param len(value):value."""
    ig_review, policy_version, subtype_system = urls.ig_review, urls.policy_version, urls.subtype_system
    sub, org_code, role = _agent_facts(b.agent)
    subtype = purpose = None
    for c in b.subtype or ():
        if c.system == subtype_system:
            subtype = c.code
            break
    for p in b.purposeOfEvent or ():
        if p.coding:
            purpose = p.coding[0].code
            break
    review = policy = None
    seen_review = seen_policy = False
    for x in b.extension or ():  # _ext(): the first extension of the url; valueBoolean when the key is there (even null)
        if x.url == ig_review and not seen_review:
            seen_review = True
            review = x.valueBoolean if x.valueBoolean is not msgspec.UNSET else (None if x.valueString is msgspec.UNSET else x.valueString)
        elif x.url == policy_version and not seen_policy:
            seen_policy = True
            policy = x.valueBoolean if x.valueBoolean is not msgspec.UNSET else (None if x.valueString is msgspec.UNSET else x.valueString)
    columns = (b.type.code if b.type is not None else None, subtype, b.action, b.outcome, purpose, sub, org_code, role, bool(review), policy)
    patients: set[str] = set()  # (values, not (param, value) tuples: a million events' worth of them)
    entities: set[str] = set()
    for e in b.entity or ():
        code = e.role.code if e.role is not None else None
        if code == "1":
            what = e.what
            if what is not None:
                value = what.reference or what.display
                if value:
                    patients.add(value[:255])
                ident = what.identifier
                if ident is not None and ident.system == NHS_NUMBER and ident.value:
                    patients.add(ident.value[:255])
            for d in e.detail or ():
                if d.type == "nhs-number" and d.valueString:
                    patients.add(d.valueString[:255])
        elif code == "4":
            value = e.what.reference if e.what is not None else None
            if value:
                if "#" in value:
                    value = value.split("#", 1)[0]
                if value:
                    entities.add(value[:255])
            for d in e.detail or ():
                if d.type == "subject" and d.valueString:
                    entities.add(d.valueString[:255])
    # sorted by (param, value): "entity" rows before "patient" rows
    return columns, "".join([f"6:entity{len(v)}:{v}" for v in sorted(entities)] + [f"7:patient{len(v)}:{v}" for v in sorted(patients)])


# ---------------------------------------------------------------- what an event's hash seals

# The hash's two forms, kept per event (audit_event.hash_form). Form 1 (events written before
# migration 0020): sha256 over "prev|id|recorded|body"; the searchable columns and search rows
# are then proved by reading the body, which is most of a walk's cost. Form 2 (what append
# writes): sha256 over "prev|id|recorded|facts|body", where the facts are the event's searchable
# columns and its search rows, so that altering any of them breaks the hash as altering the
# body does, and a walk proves the chain without reading the body. A downgrade of an event from
# form 2 to 1 (or back) changes its hash, which breaks the chain after it. The facts are
# self-delimiting: the ten columns of AuditColumns in order, each as len:text, ~ (none) or T/F
# (the review flag); then the count of search rows and each, sorted by (param, value), as
# len(param):param len(value):value.
FORM_BODY, FORM_SEALED = 1, 2
_FLAGS = {True: "T", False: "F"}  # (SQLite keeps the review flag as 1/0, which are equal to these keys)


def column_facts(columns: tuple[Any, ...]) -> str | None:
    """The searchable columns as form 2 seals them; None when a value is of no type the writer
    stores (SQLite keeps any type in any column)."""
    parts: list[str] = []
    append = parts.append
    for v in columns:
        t = type(v)
        if t is str:
            append(f"{len(v)}:{v}")
        elif v is None:
            append("~")
        elif t is bool or t is int:
            flag = _FLAGS.get(v)
            if flag is None:
                return None
            append(flag)
        else:
            return None
    return "".join(parts)


def index_facts(rows: list[tuple[Any, Any]]) -> str | None:
    """An event's search rows, sorted by (param, value), as form 2 seals them; None when one is not text."""
    parts = [f"{len(rows)}:"]
    for p, v in rows:
        if type(p) is not str or type(v) is not str:
            return None
        parts.append(f"{len(p)}:{p}{len(v)}:{v}")
    return "".join(parts)


def sealed_facts(columns: tuple[Any, ...], rows: list[tuple[Any, Any]]) -> str | None:
    """What form 2 seals of an event: its columns, then its search rows sorted by (param, value);
    None when a value is of no type the writer stores."""
    sealed_columns, sealed_rows = column_facts(columns), index_facts(rows)
    return None if sealed_columns is None or sealed_rows is None else sealed_columns + sealed_rows


def sealed_prefix(prev_hash: str, event_id: str, recorded: str, facts: str | None) -> str:
    """What an event's hash covers before its body, in form 1 (``facts`` None) or form 2."""
    return f"{prev_hash}|{event_id}|{recorded}|" if facts is None else f"{prev_hash}|{event_id}|{recorded}|{facts}|"


# ---------------------------------------------------------------- the fast walk

WALK_RECORDED = {"postgresql": "to_char(recorded AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", "sqlite": "recorded"}
WALK_BODY = {"postgresql": "body", "sqlite": "CAST(body AS BLOB)"}  # SQLite: the stored UTF-8 bytes, hashed as they are
SQLITE_INSTANT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)


# The fast walk's statements, per batch: where it ends; its events; their head rows (read on
# their own, a range of the head table's key: a join would look each event's up); and their
# search rows, one row per event that has any, in event order: their count and the rows folded
# into one string in pk order (the order append inserts them: sorted), each row as
# len(param):param len(value):value (lengths in characters, so that no two different lists of
# rows make the same string; SQLite, which stores any type in any column, marks a row that is
# not text). The instant comes as the database holds it (SQLite) or as the chain hashes it
# (PostgreSQL formats it); each event is hashed on the fetching thread, over the bytes the chain
# hashed (hashlib lets go of the GIL; PostgreSQL would decompress each body twice, to hash it
# and to send it).
_NO_END = (1 << 63) - 1  # beyond any seq: the walk's last batch ends at the newest event
_FAST_END = "SELECT max(seq), count(*) FROM (SELECT seq FROM audit_event WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?) b"
# an event's row as both walks read it (this module's and app.audit.service's exact walk): the
# walks index it by position (r[3:13] the searchable columns, r[13] the body, r[14] prev_hash,
# r[15] hash, r[16] the hash's form)
WALK_COLUMNS = ("seq, event_id, {recorded}, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub, agent_org, "
                "agent_role, review_required, policy_version, {body}, prev_hash, hash, hash_form")
_FAST_EVENTS = f"SELECT {WALK_COLUMNS} FROM audit_event WHERE seq > ? AND seq <= ? ORDER BY seq"
_FAST_HEADS = "SELECT seq, hash FROM audit_head WHERE seq > ? AND seq <= ? ORDER BY seq"
_FAST_INDEX = {
    "postgresql": "SELECT event_seq, count(*), string_agg(length(param) || ':' || param || length(value) || ':' || value, '' ORDER BY pk) "
                  "FROM audit_index WHERE event_seq > ? AND event_seq <= ? GROUP BY event_seq ORDER BY event_seq",
    # group_concat takes the rows in the order of the inner query (ix_audit_index_event gives
    # (event_seq, pk) without a sort); rows in another order only send the batch to the exact
    # walk. A row whose param or value is not text (or whose event_seq is not an integer) ends
    # in "!", which no row a writer seals does
    "sqlite": "SELECT event_seq, count(*), group_concat(r, '') FROM (SELECT event_seq, "
              "printf('%d:%s%d:%s%s', length(param), param, length(value), value, "
              "CASE WHEN typeof(param) = 'text' AND typeof(value) = 'text' AND typeof(event_seq) = 'integer' THEN '' ELSE '!' END) AS r "
              "FROM audit_index WHERE event_seq > ? AND event_seq <= ? ORDER BY event_seq, pk) i GROUP BY event_seq ORDER BY event_seq",
}


def fast_sql(dialect: str) -> tuple[str, str]:
    """The fast walk's events and search-rows statements for this database."""
    return (_FAST_EVENTS.format(recorded=WALK_RECORDED.get(dialect, "recorded"), body=WALK_BODY.get(dialect, "body")),
            _FAST_INDEX["postgresql" if dialect == "postgresql" else "sqlite"])


def bodies_agree(rows: list[Any], urls: AuditUrls) -> bool:
    """The fast walk's check of events of form 1, each as (event_id, the instant as the body
    writes it, (type_code .. policy_version), body, its stored search rows folded): the
    searchable columns and search rows the body implies against the stored ones; False when in doubt."""
    decode = BODY.decode
    try:
        for event_id, said, stored_columns, body, stored_index in rows:
            b = decode(body)
            if b.id != event_id or b.recorded is None or b.recorded != said:
                return False
            columns, index_text = typed_facts(b, urls)
            # (bool == 0/1 too: a review flag stored otherwise is for the exact walk)
            if columns != stored_columns or index_text != stored_index:
                return False
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


def driver_sql(dialect: str, q: str) -> str:
    """A walk statement in the driver's own placeholders."""
    return q.replace("?", "%s") if dialect == "postgresql" else q


class FastWalk:
    """The fast walk's reading and checking of batches on one driver cursor: verify's own, or
    a worker process's (verify's workers)."""

    def __init__(self, cursor: Any, dialect: str, batch: int, expect_head: str | None, urls: AuditUrls) -> None:
        self.cursor, self.batch, self.expect_head, self.urls = cursor, batch, expect_head, urls
        self.events_sql, self.index_sql = (driver_sql(dialect, q) for q in fast_sql(dialect))
        self.end_sql, self.heads_sql = driver_sql(dialect, _FAST_END), driver_sql(dialect, _FAST_HEADS)
        self.sqlite = dialect == "sqlite"

    def fetch(self, lo: int, end: int | None = None) -> tuple[int, list[Any], list[Any] | None, bool] | None:
        """The fast walk's rows of the batch after ``lo`` (up to ``end`` when given; None at the
        end); when the chain holds within it (each event's hash over what it seals, each linked
        to the one before, each recorded in the head table, no search rows but its events'),
        the events of form 1 as bodies_agree takes them, else None; and whether the anchor is among them."""
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
        cursor.execute(self.events_sql, (lo, hi))
        rows = cursor.fetchall()
        cursor.execute(self.heads_sql, (lo, hi))
        heads = cursor.fetchall()
        cursor.execute(self.index_sql, (lo, hi))
        groups = cursor.fetchall()
        sha256, instant, sqlite, facts_of = hashlib.sha256, SQLITE_INSTANT.fullmatch, self.sqlite, column_facts
        form_1: list[Any] = []  # events of form 1, for bodies_agree
        doubt = False
        before = rows[0][14] if rows else None
        g, ng = 0, len(groups)
        for r in rows:
            seq, event_id, recorded, _, _, _, _, _, _, _, _, _, _, stored, row_prev, row_hash, form = r
            if sqlite:  # "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) as the chain hashes it; anything else is for the exact walk
                if type(recorded) is not str or not instant(recorded):
                    doubt = True
                    break
                recorded = f"{recorded[:10]}T{recorded[11:]}Z"
            if g < ng and groups[g][0] == seq:
                _, count, folded = groups[g]
                g += 1
            else:
                count, folded = 0, ""
            if form == FORM_SEALED:
                columns = facts_of(r[3:13])
                if columns is None:
                    doubt = True
                    break
                head = f"{row_prev}|{event_id}|{recorded}|{columns}{count}:{folded}|"
            elif form == FORM_BODY:
                head = f"{row_prev}|{event_id}|{recorded}|"
                # the body writes the instant to the millisecond: the same instant when the rest is zeros
                form_1.append((event_id, f"{recorded[:23]}Z" if recorded[23:26] == "000" else None, r[3:13], stored, folded))
            else:
                doubt = True
                break
            if row_prev != before or sha256(head.encode() + stored if type(stored) is bytes
                                            else f"{head}{stored}".encode()).hexdigest() != row_hash:
                doubt = True
                break
            before = row_hash
        # each event recorded in the head table with its hash, and no other head row in the range;
        # every group of search rows taken by an event (none for an event that is not there)
        doubt = doubt or g != ng or heads != [(r[0], r[15]) for r in rows]
        return hi, rows, None if doubt else form_1, expect_head is not None and any(r[15] == expect_head for r in rows)

    def clean(self, prev_hash: str, rows: list[Any], agree: list[Any] | None) -> bool:
        """Whether every check of a fetched batch holds, its first event linked to ``prev_hash``;
        False when in doubt."""
        if agree is None or (rows and rows[0][14] != prev_hash):
            return False
        # events of form 1: the searchable columns and search rows their bodies imply, against the stored ones
        return not agree or bodies_agree(agree, self.urls)


@dataclass(frozen=True)
class Span:
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


class _Now:
    """A batch fetched on the walk's own thread, in the shape of a fetch done ahead on another."""

    def __init__(self, fetch: Any, *args: Any) -> None:
        self.got = fetch(*args)

    def result(self) -> Any:
        return self.got


def walk_span(fast: FastWalk, lo: int, hi: int, *, fetch_ahead: bool = True) -> Span:
    """The fast walk of the events in (lo, hi], the next batch fetched on a second thread while
    one is checked (``fetch_ahead``: the database's work, and the hashing, beside the Python's);
    without it, on this thread: when verify's workers already keep every core busy, a second
    thread in each only adds switching between them (1-3% of their CPU in the benchmark's runs)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="audit-verify") if fetch_ahead else None
    submit = pool.submit if pool is not None else _Now
    count, first_prev, last_hash, anchored, last_seq = 0, None, None, False, 0
    try:
        ahead = submit(fast.fetch, lo, hi)
        while True:
            got = ahead.result()
            if got is None:
                return Span(lo, hi, True, count, first_prev, last_hash, anchored, last_seq)
            ahead = submit(fast.fetch, got[0], hi)
            _, rows, agree, seen = got
            if not rows:  # a span's end with no events (a gap in the seqs)
                if not fast.clean("", rows, agree):
                    return Span(lo, hi, False)
                continue
            if first_prev is None:
                first_prev = last_hash = rows[0][14]  # the link into the span: verify checks it against the span before
            if not fast.clean(last_hash, rows, agree):  # type: ignore[arg-type]
                return Span(lo, hi, False)
            count, last_hash, anchored, last_seq = count + len(rows), rows[-1][15], anchored or seen, rows[-1][0]
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")



# ---------------------------------------------------------------- a worker process's side

# The driver's own connect() arguments, as SQLAlchemy's dialect makes them from the database
# URL (app.audit.service passes them: this module does not import SQLAlchemy), and the driver.
Connect = tuple[str, list[Any], dict[str, Any]]
_CONNECTIONS: dict[str, Any] = {}  # a worker process's connection, kept for its next span


def _connection(connect: Connect) -> Any:
    """A worker process's read connection to the chain's database, made once and kept; its
    cyclic garbage collector paused (a process of verify's own: app.audit.service.collector_paused)."""
    gc.disable()
    key = repr(connect)
    conn = _CONNECTIONS.get(key)
    if conn is None:
        dialect, args, kwargs = connect
        if dialect == "sqlite":
            import sqlite3

            conn = sqlite3.connect(*args, **{**kwargs, "isolation_level": None, "timeout": 30})
            # as app.db's engine reads: memory-mapped, with a small page cache for a table read once
            # (app.db.scan_cache); and never a write
            for pragma in ("busy_timeout=30000", "mmap_size=2147418112", "cache_size=-2048", "query_only=1"):
                conn.execute(f"PRAGMA {pragma}")
        elif dialect == "postgresql":
            import psycopg

            conn = psycopg.connect(*args, **kwargs)
        else:
            raise ValueError(f"verify's workers do not read {dialect}")
        _CONNECTIONS[key] = conn
    return conn


def warm_worker(connect: Connect) -> int:
    """A worker process ready to walk: its connection made."""
    _connection(connect)
    return os.getpid()


def span_worker(connect: Connect, snapshot: str | None, lo: int, hi: int, batch: int, expect_head: str | None,
                urls: AuditUrls, fetch_ahead: bool = True) -> Span:
    """A worker process's span of the chain, in a read transaction of its own; on PostgreSQL in
    the snapshot verify exported (the same committed events verify's own transaction sees)."""
    dialect = connect[0]
    conn = _connection(connect)
    cursor = conn.cursor()
    try:
        if dialect == "postgresql":
            if snapshot is None or not _SNAPSHOT_ID.fullmatch(snapshot):
                raise ValueError("not a PostgreSQL snapshot id")
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the driver's BEGIN comes first
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        else:
            cursor.execute("BEGIN")  # a read transaction: the walk's reads see one state of the file
        started = time.process_time()
        span = walk_span(FastWalk(cursor, dialect, batch, expect_head, urls), lo, hi, fetch_ahead=fetch_ahead)
        return dataclasses.replace(span, cpu=time.process_time() - started)
    finally:
        cursor.close()
        conn.rollback()  # (sqlite3 too, with isolation_level None: ROLLBACK when a transaction is open)
