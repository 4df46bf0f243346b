"""The storage-integrated linkage service: links each Patient/RelatedPerson as it is written.

Python API for the family view (and anyone else reading linkage)::

    from app.linkage.service import linked_records, linked_person_id, LinkedRecord

    linked_person_id(session, "RelatedPerson", "abc") -> str | None
        The id of the linked person (FHIR Person) the record belongs to, or None when
        the record is not linked (not a Patient/RelatedPerson, or not stored).

    linked_records(session, "RelatedPerson", "abc", min_assurance="level2") -> list[LinkedRecord]
        Every record of the same linked person, the queried record included, each as
        LinkedRecord(res_type, res_id, assurance, probability, how):
        - the queried record itself: assurance "level4", probability 1.0, how "self";
        - every other member: ``assurance`` is the confidence that it is the same person
          as the queried record: level3/level4 when the two share a valid NHS number,
          otherwise the weaker of the two records' own link levels
          (level4 verified NHS number both sides, level3 valid NHS number match, level2
          confident demographic match or a manual confirmation); ``probability`` is the
          other record's match probability; ``how`` is "auto" or "manual".
        Members whose pairwise assurance is below ``min_assurance`` are left out. level1
        (possible match) never makes a record a member: possible pairs live in the review
        queue (``linkage_candidate``) until an admin confirms them, so the view cannot see
        them whatever ``min_assurance`` says. [] when the record is not linked.

Both read only committed, fully-linked state: linking runs in the ingest transaction
(``app.linkage.hooks.LinkageHook.after_write``), or, queued, right after it (``app.linkage.queue``), and
then every reader of linkage calls ``queue.settle`` first, so a reader never sees a record
without its link.

Design (why it is what it is)
-----------------------------
* One row per record in ``linkage_link`` holds the record's person, its assurance and its
  matching normal form (``features``, JSON), so a new record is compared against its
  candidates without parsing FHIR bodies; ``linkage_key`` holds 64-bit hashes of the
  blocking keys (``matching.blocking_keys``), primary key (hash, record), so the candidate
  look-up is one indexed IN-list scan whose cost depends on bucket sizes, not table size.
* Every record belongs to exactly one linked person (HAPI MDM's golden record). A new
  record joins the person of its best auto-link pair (probability >= settings
  ``linkage_auto_link_probability`` and the rules of ``matching.classify``), unless that
  person holds a record with a conflicting valid NHS number or a record an admin said is
  not this person; otherwise it founds a new person. Pairs between the review threshold
  and the link threshold become open review candidates (level1).
* A member's ``assurance`` is the level of the pair it joined by; a person's only record
  is level4 (it is that record), and the founder takes the level of the first pair that
  joins it.
* Re-linking on change: the record's keys and features are replaced; if it no longer
  matches any co-member (and no manual decision holds it), it moves to the person it now
  matches, or splits into a new person; a record alone in its person moves to the person
  it now matches (e.g. a new NHS number arrives). Every move is an event.
* Manual decisions (``linkage_decision``) are pair facts: "match" holds records together,
  "no-match" keeps a record out of any person containing the other record. Automatic
  matching never overrides an active decision, so a rejected pair never auto-links again.
* Concurrency: before reading candidates, the transaction takes PostgreSQL transaction-level
  advisory locks on the hashes of all blocking keys of the records it links (sorted, so two
  writers cannot deadlock). Two records that could match share a key, so their linking is
  serialised and the second sees the first committed. On SQLite, BEGIN IMMEDIATE already
  serialises writers.
* Cost: one ``link_written`` call (the records of one ingest transaction) makes a fixed number
  of statements whatever its size: the existing links of its records, the candidates of all
  their blocking keys (one IN-list join), the persons those belong to, the decisions and the
  review rows of the records are read once; then the records are linked one after another in
  memory, each against the start-of-call state overlaid with what this call linked before it
  (so records of one transaction that match each other end as one person, exactly as if each
  had been linked in its own transaction); then each table gets one executemany. Statements
  are built once at import and run on ``session.connection()`` (Core, no ORM unit of work);
  candidates are taken in linkage_key index order (hash, record), as the per-record query did.
* One record is linked in three steps (``_link_one``): ``_search``, the candidate search (the
  batch's state and, when it lacks them, the database), scoring each candidate; ``choose``
  (``app.linkage.choice``, pure: no database), which decides where the record belongs and
  which pairs go to review; ``_apply``, the write into the batch.
* The ingest hook (``app.linkage.hooks.LinkageHook``) sits above this module and the queue:
  the queue imports this module, and this module imports neither.
"""
from __future__ import annotations

import bisect
import heapq
import itertools

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Iterable

from sqlalchemy import Integer, bindparam, delete, insert, or_, select, text, union_all, update
from sqlalchemy.orm import Session

from app.audit import balp
from app.auth.tokens import Principal
from app.db import in_list, insert_tables, new_id, pipelined, ref_lists
from app.ingest.hooks import Written
from app.linkage.choice import Candidate, Choice, Current, Member, choose, persons_to_check, score_candidate
from app.linkage.matching import (
    level_for_label,
    MatchParams,
    PersonRecord,
    Thresholds,
    blocking_keys,
    load_params,
)
from app.linkage.models import BlockingKey, Link, LinkageEvent, LinkedPerson, ManualDecision, ReviewCandidate
from app.linkage.matching import LEVELS, level_rank  # noqa: F401  (re-exported: admin and api read them here)

LINKED_TYPES = ("Patient", "RelatedPerson")
AUTO_ACTOR = "linkage:auto"


def _weaker(a: str, b: str) -> str:
    return a if level_rank(a) <= level_rank(b) else b


def _now() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@lru_cache(maxsize=65536)  # a household's keys recur on its records, and the worker hashes what the write hashed
def key_hash(key: str) -> int:
    """Signed 64-bit hash of a blocking key (BIGINT column and advisory-lock id)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def split_ref(ref: str) -> tuple[str, str]:
    t, _, i = ref.partition("/")
    return t, i


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


# ------------------------------------------------------------------ record normal form
def settle_alone(link) -> bool:
    """A record left alone in its person (the others moved, split or were unlinked) is that
    person: level4, matched with no one, as a person's only record always is. True when that
    changed the record (a Link row or the batch's row)."""
    if link.assurance == "level4" and link.matched_ref is None:
        return False
    link.assurance, link.probability, link.matched_ref = "level4", 1.0, None
    return True


def features_json(rec: PersonRecord) -> str:
    return json.dumps(
        {
            "g": list(rec.given_names), "f": list(rec.family_names),
            "d": rec.birth_date.isoformat() if rec.birth_date else None, "dt": rec.birth_date_text,
            "s": rec.sex, "p": rec.postcode, "n": rec.nhs_number, "v": rec.nhs_verified,
            "a": list(rec.address_lines), "l": rec.locality, "r": rec.region,
            "o": [list(x) for x in rec.other_ids],
            **({"mb": True} if rec.multiple_birth else {}),
            **({"bo": rec.birth_order} if rec.birth_order is not None else {}),
        },
        separators=(",", ":"),
    )


def _feature_fields(ref: str, d: dict) -> dict:
    """PersonRecord fields from stored features (``features_json``), the birth date as stored."""
    return dict(
        record_ref=ref, given_names=tuple(d["g"]), family_names=tuple(d["f"]),
        birth_date=d["d"], birth_date_text=d.get("dt"), sex=d["s"], postcode=d["p"],
        nhs_number=d["n"], nhs_verified=bool(d["v"]), address_lines=tuple(d["a"]),
        locality=d["l"], region=d["r"], other_ids=tuple(tuple(x) for x in d["o"]),
        multiple_birth=d.get("mb", False), birth_order=d.get("bo"),
    )


def record_from_features(ref: str, features: str) -> PersonRecord:
    """The record stored as ``features`` (already in normal form, so it is not normalised again:
    ``_record_from_features_normalising`` gives the same record, more slowly)."""
    fields = _feature_fields(ref, json.loads(features))
    bd = fields["birth_date"]
    fields["birth_date"] = date.fromisoformat(bd) if bd else None
    rec = object.__new__(PersonRecord)
    rec.__dict__.update(fields)
    return rec


def _record_from_features_normalising(ref: str, features: str) -> PersonRecord:
    return PersonRecord(**_feature_fields(ref, json.loads(features)))


pair_level = level_for_label  # assurance of a pair from its decision, without re-scoring


def manual_level(a: PersonRecord | None, b: PersonRecord | None) -> str:
    """Assurance of a pair an admin confirmed: NHS levels when the numbers agree, else level2."""
    if a is not None and b is not None and a.nhs_number and a.nhs_number == b.nhs_number:
        return "level4" if a.nhs_verified and b.nhs_verified else "level3"
    return "level2"


# ------------------------------------------------------------------ audit
LINKAGE_AGENT = Principal(sub=AUTO_ACTOR, role="linkage", org="FAMILYVIEW")


def audit_decisions(session: Session, results: list["LinkResult"]) -> None:
    """Automatic linkage decisions that put a record with another (join, move, split) or queue
    a pair for review are audited as one event, in the linking transaction: a wrong link puts
    one person's records in another's family view. A record that starts a person alone is not."""
    decided = [r for r in results if r.action in ("join", "move", "split") or r.queued]
    if not decided:
        return
    event = balp.AccessEvent(LINKAGE_AGENT, "linkage-auto", action="U")
    for r in decided:
        event.entity(r.ref, action=r.action, person=f"Person/{r.person_id}", assurance=r.assurance,
                     **({"queued-for-review": " ".join(r.queued)} if r.queued else {}))
        event.about([r.ref])
    event.outcome_desc = f"{len(decided)} record(s) linked or queued for review"
    balp.record(session, event)


# ------------------------------------------------------------------ public read API
@dataclass(frozen=True)
class LinkedRecord:
    res_type: str
    res_id: str
    assurance: str
    probability: float
    how: str  # "auto" | "manual" | "self"

    @property
    def reference(self) -> str:
        return f"{self.res_type}/{self.res_id}"


def linked_person_id(session: Session, res_type: str, res_id: str) -> str | None:
    return session.scalar(select(Link.person_id).where(Link.res_type == res_type, Link.res_id == res_id))


def linked_records(session: Session, res_type: str, res_id: str, min_assurance: str = "level2") -> list[LinkedRecord]:
    if min_assurance not in LEVELS:
        raise ValueError(f"min_assurance must be one of {', '.join(LEVELS)}")
    me = session.get(Link, (res_type, res_id))
    if me is None:
        return []
    out = [LinkedRecord(res_type, res_id, "level4", 1.0, "self")]
    rows = session.execute(
        select(Link.res_type, Link.res_id, Link.assurance, Link.probability, Link.how, Link.nhs_number, Link.features)
        .where(Link.person_id == me.person_id)
        .order_by(Link.res_type, Link.res_id)
    ).all()
    me_verified = None
    for r in rows:
        if (r.res_type, r.res_id) == (res_type, res_id):
            continue
        level = _weaker(me.assurance, r.assurance)
        if me.nhs_number and r.nhs_number == me.nhs_number:  # the pair itself shares a valid NHS number
            if me_verified is None:
                me_verified = bool(json.loads(me.features).get("v"))
            level = "level4" if me_verified and json.loads(r.features).get("v") else "level3"
        if level_rank(level) >= level_rank(min_assurance):
            out.append(LinkedRecord(r.res_type, r.res_id, level, r.probability, r.how))
    return out


_ME, _OTHER = Link.__table__.alias("me"), Link.__table__.alias("other")
# built once: the family view asks this for every family it assembles
_LINKED_MANY = (
    select(_ME.c.res_type.label("me_type"), _ME.c.res_id.label("me_id"), _ME.c.assurance.label("me_assurance"),
           _ME.c.nhs_number.label("me_nhs"), _ME.c.features.label("me_features"),
           _OTHER.c.res_type, _OTHER.c.res_id, _OTHER.c.assurance, _OTHER.c.probability, _OTHER.c.how, _OTHER.c.nhs_number, _OTHER.c.features)
    .join(_OTHER, _OTHER.c.person_id == _ME.c.person_id)
    .where(in_list(_ME.c.res_type, "types"), in_list(_ME.c.res_id, "ids"))
    .order_by(_OTHER.c.res_type, _OTHER.c.res_id)
)


# session.info key of a callable(refs) run before linked_records_many reads: the queued
# linkage of those records settled first (app.linkage.queue.settle_on_read)
BEFORE_LINKAGE_READ = "familyview.before_linkage_read"


def linked_records_many(session: Session, refs: Iterable[tuple[str, str]], min_assurance: str = "level2") -> dict[tuple[str, str], list[LinkedRecord]]:
    """`linked_records` for many records in one query (the family view asks for a whole family)."""
    if min_assurance not in LEVELS:
        raise ValueError(f"min_assurance must be one of {', '.join(LEVELS)}")
    refs = set(refs)
    if not refs:
        return {}
    before_read = session.info.get(BEFORE_LINKAGE_READ)
    if before_read is not None:
        before_read(refs)
    rows = session.connection().execute(
        _LINKED_MANY, ref_lists(refs)
    ).all()
    out: dict[tuple[str, str], list[LinkedRecord]] = {}
    for r in rows:
        me = (r.me_type, r.me_id)
        if me not in refs:
            continue
        found = out.setdefault(me, [LinkedRecord(r.me_type, r.me_id, "level4", 1.0, "self")])
        if (r.res_type, r.res_id) == me:
            continue
        level = _weaker(r.me_assurance, r.assurance)
        if r.me_nhs and r.nhs_number == r.me_nhs:  # the pair itself shares a valid NHS number
            level = "level4" if json.loads(r.me_features).get("v") and json.loads(r.features).get("v") else "level3"
        if level_rank(level) >= level_rank(min_assurance):
            found.append(LinkedRecord(r.res_type, r.res_id, level, r.probability, r.how))
    return out


# ------------------------------------------------------------------ linking
@dataclass
class _Found:
    """What the candidate search found for one record (``LinkageService._search``)."""

    existing: "_Row | None"  # its link row before this write
    candidates: list[Candidate]  # scored, in the order found (co-members of its person last)
    current: Current | None
    decisions: dict[str, str]
    person_of: dict[str, str]
    members: dict[str, list[Member]]


@dataclass
class LinkResult:
    ref: str
    person_id: str
    action: str  # create | join | stay | move | split
    assurance: str
    candidates_compared: int = 0
    queued: list[str] = field(default_factory=list)


# Statements of the hot path, built once (no per-record select()/alias construction, no ORM
# unit of work): every call runs on ``session.connection()``; IN lists are expanding.
_L, _K, _P = Link.__table__, BlockingKey.__table__, LinkedPerson.__table__
_C, _D, _E = ReviewCandidate.__table__, ManualDecision.__table__, LinkageEvent.__table__
_LINK_COLS = (_L.c.res_type, _L.c.res_id, _L.c.person_id, _L.c.assurance, _L.c.probability, _L.c.how,
              _L.c.matched_ref, _L.c.nhs_number, _L.c.source_org, _L.c.features, _L.c.updated_at)
_IN_CHUNK = 900  # values per expanding IN list (well under SQLite's and psycopg's parameter limits)

_SEL_LINKS_BY_REF = select(*_LINK_COLS).where(
    in_list(_L.c.res_type, "types"), in_list(_L.c.res_id, "ids"))
_SEL_LINKS_BY_PERSON = select(*_LINK_COLS).where(in_list(_L.c.person_id, "pids"))
_SEL_CANDIDATES = (
    select(_K.c.key_hash, *_LINK_COLS)
    .select_from(_L.join(_K, (_K.c.res_type == _L.c.res_type) & (_K.c.res_id == _L.c.res_id)))
    .where(in_list(_K.c.key_hash, "hashes"))
    .limit(bindparam("lim", type_=Integer()))
)
_SEL_DECISIONS = union_all(
    select(_D.c.id, _D.c.a_ref, _D.c.b_ref, _D.c.decision).where(in_list(_D.c.a_ref, "refs"), _D.c.active.is_(True)),
    select(_D.c.id, _D.c.a_ref, _D.c.b_ref, _D.c.decision).where(in_list(_D.c.b_ref, "refs"), _D.c.active.is_(True)),
)
_REVIEW_COLS = (_C.c.id, _C.c.a_ref, _C.c.b_ref, _C.c.status, _C.c.probability, _C.c.match_weight, _C.c.explanation,
                _C.c.created_at, _C.c.updated_at)
_SEL_REVIEWS = union_all(
    select(*_REVIEW_COLS).where(in_list(_C.c.a_ref, "refs")),
    select(*_REVIEW_COLS).where(in_list(_C.c.b_ref, "refs")),
)
_INS_PERSON = insert(_P)
_UPD_LINK = update(_L).where(_L.c.res_type == bindparam("b_type"), _L.c.res_id == bindparam("b_id"))  # SET from the parameters
_DEL_KEYS = delete(_K).where(_K.c.res_type == bindparam("b_type"), _K.c.res_id == bindparam("b_id"))
_TOUCH = update(_P).where(_P.c.id == bindparam("b_id")).values(
    version_id=_P.c.version_id + bindparam("n", type_=Integer()), updated_at=bindparam("at", type_=_P.c.updated_at.type))
_RETIRE = update(_P).where(_P.c.id == bindparam("b_id")).values(active=False)
_INS_EVENT = insert(_E)
_INS_REVIEW = insert(_C)
_UPD_REVIEW = update(_C).where(_C.c.id == bindparam("b_id"))  # SET from the parameters
_ANY_MEMBER = select(Link.res_id).where(Link.person_id == bindparam("pid")).limit(1)
_PG_LOCKS = text("SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT unnest(CAST(:hs AS bigint[])) AS h ORDER BY 1) s")


def _chunks(values: list, n: int = _IN_CHUNK) -> Iterable[list]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def _row_order(row: "_Row") -> tuple[str, str]:
    return row.res_type, row.res_id


def _ref_order(ref: str) -> tuple[str, str]:
    return split_ref(ref)


class _Row:
    """A ``linkage_link`` row as this transaction sees it (start-of-batch state plus its own changes)."""

    __slots__ = ("res_type", "res_id", "person_id", "assurance", "probability", "how", "matched_ref", "nhs_number",
                 "source_org", "features", "updated_at", "ref")

    def __init__(self, res_type, res_id, person_id, assurance, probability, how, matched_ref, nhs_number, source_org,
                 features, updated_at):
        self.res_type, self.res_id, self.person_id, self.assurance, self.probability = res_type, res_id, person_id, assurance, probability
        self.how, self.matched_ref, self.nhs_number, self.source_org = how, matched_ref, nhs_number, source_org
        self.features, self.updated_at = features, updated_at
        self.ref = f"{res_type}/{res_id}"


_IN_CALL_CANDIDATES = 50


class _Batch:
    """One ``link_written`` call: what the database held when it started (read in a few batched
    queries) overlaid with what this call has linked so far, and the writes to make at the end.

    The records are linked one after another against this view exactly as if each one's writes
    had gone to the database before the next was linked; the writes go out at the end, each
    table in one executemany."""

    def __init__(self, comparisons: int = 1 << 62, reviews: int = 1 << 62) -> None:
        # per-call budgets (one request's records): comparisons scored, review rows queued
        self.comparisons_left = comparisons
        self.reviews_left = reviews
        self.capped: dict[str, int] = {}                    # what a budget cut: comparisons / reviews -> how many
        self.links: dict[str, _Row] = {}                    # every link row known, current state
        self.members: dict[str, dict[str, None]] = {}       # person -> its records (for persons fully known)
        self.by_hash: dict[int, list[str]] = {}             # start-of-batch key rows (hash -> records)
        self.truncated = False                              # the batched key query hit its limit
        self.new_keys: dict[str, list[int]] = {}            # record linked here -> its key hashes now
        self.done: dict[str, None] = {}                     # records linked here, in order (their old keys are gone)
        self.done_by_hash: dict[int, list[str]] = {}        # their new keys
        self.decisions: dict[str, dict[str, str]] = {}
        self.reviews: dict[tuple[str, str], dict] = {}
        self.reviews_by_ref: dict[str, dict[tuple[str, str], None]] = {}
        self.parsed: dict[tuple[str, str], PersonRecord] = {}
        # pending writes
        self.new_persons: dict[str, datetime] = {}
        self.link_insert: dict[str, None] = {}
        self.link_update: dict[str, None] = {}
        self.founders: dict[str, None] = {}
        self.key_delete: dict[str, None] = {}
        self.touched: dict[str, list] = {}                  # person -> [count, last time]
        self.retired: dict[str, None] = {}
        self.events: list[dict] = []
        self.review_insert: list[dict] = []
        self.review_update: dict[int, dict] = {}

    def record(self, ref: str, features: str) -> PersonRecord:
        key = (ref, features)
        rec = self.parsed.get(key)
        if rec is None:
            rec = self.parsed[key] = record_from_features(ref, features)
        return rec

    def add_row(self, row) -> _Row:
        """A row read from the database; this transaction's own view wins when it has one."""
        ref = f"{row[0]}/{row[1]}"
        known = self.links.get(ref)
        if known is None:
            known = self.links[ref] = _Row(*row)
        return known

    def event(self, action: str, actor: str, reason: str, *, record: str | None = None, from_person: str | None = None,
              to_person: str | None = None, detail: dict | None = None) -> None:
        self.events.append(dict(
            at=_now(), action=action, record_ref=record, from_person=from_person, to_person=to_person,
            candidate_id=None, actor=actor, reason=reason,
            detail=json.dumps(detail, separators=(",", ":")) if detail else None,
        ))

    def new_person(self) -> str:
        pid = new_id()
        self.new_persons[pid] = _now()
        self.members[pid] = {}
        return pid

    def touch(self, *person_ids: str | None) -> None:
        for pid in {p for p in person_ids if p}:
            t = self.touched.setdefault(pid, [0, None])
            t[0] += 1
            t[1] = _now()


class LinkageService:
    """Links records inside the caller's transaction. One instance per session."""

    def __init__(self, session: Session, *, thresholds: Thresholds | None = None, params: MatchParams | None = None,
                 max_candidates: int = 500, max_reviews_per_record: int = 10, max_reviews_per_call: int = 500,
                 max_comparisons_per_call: int = 5_000):
        self.session = session
        self.thresholds = thresholds or Thresholds()
        self.params = params or load_params()
        self.max_candidates = max_candidates
        # bounds on one call (one request's records), so a bundle of near-identical records cannot
        # flood the review queue or hold the write lock for seconds (issue 18, finding 2)
        self.max_reviews_per_record = max_reviews_per_record
        self.max_reviews_per_call = max_reviews_per_call
        self.max_comparisons_per_call = max_comparisons_per_call

    @classmethod
    def from_settings(cls, session: Session, settings) -> "LinkageService":
        return cls(
            session,
            thresholds=Thresholds(
                link=settings.linkage_auto_link_probability,
                possible=settings.linkage_review_probability,
                twin_guard=settings.linkage_twin_guard,
            ),
            max_candidates=settings.linkage_max_candidates,
            max_reviews_per_record=settings.linkage_max_reviews_per_record,
            max_reviews_per_call=settings.linkage_max_reviews_per_request,
            max_comparisons_per_call=settings.linkage_max_comparisons_per_request,
        )

    # -------------------------------------------------------------- locking
    def lock_keys(self, hashes: Iterable[int]) -> None:
        """PostgreSQL: transaction-level advisory locks on every key hash, in sorted order."""
        hs = sorted(set(hashes))
        if not hs:
            return
        conn = self.session.connection()
        if conn.dialect.name != "postgresql":
            return
        conn.execute(_PG_LOCKS, {"hs": hs})

    # -------------------------------------------------------------- helpers (admin operations)
    def _event(self, action: str, actor: str, reason: str, *, record: str | None = None, from_person: str | None = None,
               to_person: str | None = None, candidate_id: int | None = None, detail: dict | None = None) -> None:
        self.session.connection().execute(_INS_EVENT, dict(
            at=_now(), action=action, record_ref=record, from_person=from_person, to_person=to_person,
            candidate_id=candidate_id, actor=actor, reason=reason,
            detail=json.dumps(detail, separators=(",", ":")) if detail else None,
        ))

    def _new_person(self) -> str:
        """Insert a new linked person (Core, no ORM flush) and return its id."""
        now = _now()
        pid = new_id()
        self.session.connection().execute(_INS_PERSON, dict(id=pid, version_id=1, created_at=now, updated_at=now, active=True))
        return pid

    def _touch(self, *person_ids: str | None) -> None:
        pids = sorted({p for p in person_ids if p})
        if pids:
            now = _now()
            self.session.connection().execute(_TOUCH, [{"b_id": p, "n": 1, "at": now} for p in pids])

    def reset_if_alone(self, person_id: str) -> None:
        """A record left alone in its person by an admin operation (settle_alone)."""
        members = self.members(person_id)
        if len(members) == 1:
            settle_alone(members[0])

    def _retire_if_empty(self, person_id: str, actor: str, reason: str) -> None:
        left = self.session.scalar(_ANY_MEMBER, {"pid": person_id})
        if left is None:
            self.session.execute(update(LinkedPerson).where(LinkedPerson.id == person_id).values(active=False))
            self._event("retire", actor, reason, from_person=person_id)

    def decisions_for(self, ref: str) -> dict[str, str]:
        rows = self.session.execute(
            select(ManualDecision.a_ref, ManualDecision.b_ref, ManualDecision.decision)
            .where(ManualDecision.active.is_(True), or_(ManualDecision.a_ref == ref, ManualDecision.b_ref == ref))
            .order_by(ManualDecision.id)
        ).all()
        return {(r.b_ref if r.a_ref == ref else r.a_ref): r.decision for r in rows}

    def members(self, person_id: str) -> list[Link]:
        return list(self.session.scalars(select(Link).where(Link.person_id == person_id)))

    # -------------------------------------------------------------- the hook's work
    def link_written(self, written: list[Written]) -> list[LinkResult]:
        items = []
        for w in written:
            if w.res_type not in LINKED_TYPES:
                continue
            resource = dict(w.resource)
            resource["id"] = w.res_id
            rec = PersonRecord.from_fhir(resource)
            items.append((w.res_type, w.res_id, rec, sorted({key_hash(k) for k in blocking_keys(rec)}), w.source_org))
        if not items:
            return []
        results = self._link_batch(items, AUTO_ACTOR, lock=[h for item in items for h in item[3]])
        audit_decisions(self.session, results)
        return results

    def link_record(self, res_type: str, res_id: str, rec: PersonRecord, keys: set[str] | None = None, *,
                    source_org: str, actor: str = AUTO_ACTOR) -> LinkResult:
        keys = blocking_keys(rec) if keys is None else keys
        return self._link_batch([(res_type, res_id, rec, sorted({key_hash(k) for k in keys}), source_org)], actor)[0]

    def _link_batch(self, items: list[tuple[str, str, PersonRecord, list[int], str]], actor: str,
                    lock: list[int] | None = None) -> list[LinkResult]:
        """Link the records; ``lock``: key hashes to lock first (lock_keys), with the first reads."""
        s = self.session
        if s.new or s.dirty or s.deleted:  # pending ORM changes (an admin operation) must be visible to Core reads
            s.flush()
        conn = s.connection()
        b = _Batch(self.max_comparisons_per_call, self.max_reviews_per_call)
        self._prefetch(conn, b, items, lock)
        results = [self._link_one(conn, b, res_type, res_id, rec, hashes, source_org, actor)
                   for res_type, res_id, rec, hashes, source_org in items]
        if b.capped:  # said once per call, so an administrator sees why fewer pairs were queued or compared
            b.event("capped", actor, "linkage bounds reached for one request: "
                    + ", ".join(f"{n} {what} not made" for what, n in sorted(b.capped.items())),
                    detail={"records": len(items), **b.capped})
        self._write(conn, b)
        if s.identity_map:  # ORM copies of rows changed here underneath the session are stale now
            for obj in list(s.identity_map.values()):
                if isinstance(obj, (Link, LinkedPerson, ReviewCandidate)):
                    s.expire(obj)
        return results

    # -------------------------------------------------------------- batched reads
    def _rows_by_ref(self, conn, b: _Batch, refs: Iterable[str]) -> None:
        want = {r for r in refs if r not in b.links}
        if not want:
            return
        pairs = [split_ref(r) for r in sorted(want)]
        types = sorted({t for t, _ in pairs})
        for ids in _chunks(sorted({i for _, i in pairs})):
            for row in conn.execute(_SEL_LINKS_BY_REF, {"types": types, "ids": ids}):
                if f"{row[0]}/{row[1]}" in want:
                    b.add_row(row)

    def _ensure_members(self, conn, b: _Batch, person_ids: Iterable[str]) -> None:
        need = sorted({p for p in person_ids if p not in b.members})
        if not need:
            return
        found: dict[str, dict[str, None]] = {p: {} for p in need}
        for pids in _chunks(need):
            for row in conn.execute(_SEL_LINKS_BY_PERSON, {"pids": pids}):
                cur = b.add_row(row)
                if cur.person_id in found:
                    found[cur.person_id][cur.ref] = None
        for ref in b.done:  # records this call moved into one of them
            pid = b.links[ref].person_id
            if pid in found:
                found[pid][ref] = None
        b.members.update(found)

    def _candidate_rows(self, conn, b: _Batch, hashes: list[int], limit: int) -> tuple[dict[int, list[str]], bool]:
        by_hash: dict[int, list[str]] = {}
        truncated = False
        for chunk in _chunks(hashes):
            rows = conn.execute(_SEL_CANDIDATES, {"hashes": chunk, "lim": limit}).all()
            truncated = truncated or len(rows) >= limit
            for row in rows:
                by_hash.setdefault(row[0], []).append(b.add_row(row[1:]))
        return {h: [r.ref for r in sorted(rows, key=_row_order)] for h, rows in by_hash.items()}, truncated

    def _prefetch(self, conn, b: _Batch, items, lock: list[int] | None = None) -> None:
        """What the call's records need from the database, read together: on PostgreSQL the key
        locks (``lock``, see lock_keys) and the first four look-ups in one round trip (each runs
        after the one before it, so the reads see what the lock holders committed)."""
        refs = [f"{t}/{i}" for t, i, *_ in items]
        ref_list = sorted(set(refs))
        all_hashes = sorted({h for item in items for h in item[3]})
        limit = self.max_candidates * 4 * len(items)
        want = sorted({r for r in refs if r not in b.links})
        pairs = [split_ref(r) for r in want]
        statements: list = []
        if lock and conn.dialect.name == "postgresql":
            statements.append((_PG_LOCKS, {"hs": sorted(set(lock))}))
        first = len(statements)
        if want:
            statements += [(_SEL_LINKS_BY_REF, {"types": sorted({t for t, _ in pairs}), "ids": ids})
                           for ids in _chunks(sorted({i for _, i in pairs}))]
        n_links = len(statements)
        statements += [(_SEL_CANDIDATES, {"hashes": chunk, "lim": limit}) for chunk in _chunks(all_hashes)]
        n_cands = len(statements)
        statements += [(_SEL_DECISIONS, {"refs": chunk}) for chunk in _chunks(ref_list, _IN_CHUNK // 2)]
        n_decisions = len(statements)
        statements += [(_SEL_REVIEWS, {"refs": chunk}) for chunk in _chunks(ref_list, _IN_CHUNK // 2)]
        results = pipelined(conn, statements)
        wanted = set(want)
        for found in results[first:n_links]:
            for row in found:
                if f"{row[0]}/{row[1]}" in wanted:
                    b.add_row(row)
        if all_hashes:
            by_hash: dict[int, list[_Row]] = {}
            truncated = False
            for found in results[n_links:n_cands]:
                truncated = truncated or len(found) >= limit
                for row in found:
                    by_hash.setdefault(row[0], []).append(b.add_row(row[1:]))
            b.by_hash = {h: [r.ref for r in sorted(rows, key=_row_order)] for h, rows in by_hash.items()}
            b.truncated = truncated
        # decisions on any of the records, in the order they were made (a later one wins)
        rows = {}
        for found in results[n_cands:n_decisions]:
            for r in found:
                rows[r.id] = r
        mine = set(ref_list)
        barred: set[str] = set()
        for _, r in sorted(rows.items()):
            if r.a_ref in mine:
                b.decisions.setdefault(r.a_ref, {})[r.b_ref] = r.decision
            if r.b_ref in mine:
                b.decisions.setdefault(r.b_ref, {})[r.a_ref] = r.decision
            if r.decision == "no-match":
                barred.update((r.a_ref, r.b_ref))
        self._rows_by_ref(conn, b, barred)
        # the review queue rows of any of the records
        for found in results[n_decisions:]:
            for r in found:
                key = (r.a_ref, r.b_ref)
                if key not in b.reviews:
                    b.reviews[key] = r._asdict()
                    b.reviews_by_ref.setdefault(r.a_ref, {})[key] = None
                    b.reviews_by_ref.setdefault(r.b_ref, {})[key] = None
        # every person a record could join or leave, with all its records
        self._ensure_members(conn, b, [row.person_id for row in b.links.values()])

    # -------------------------------------------------------------- one record
    def _link_one(self, conn, b: _Batch, res_type: str, res_id: str, rec: PersonRecord, hashes: list[int],
                  source_org: str, actor: str) -> LinkResult:
        """Link one record: the candidate search, the pure choice (``app.linkage.choice``), the write."""
        ref = f"{res_type}/{res_id}"
        now = _now()
        found = self._search(conn, b, ref, rec, hashes)
        choice = choose(ref, rec, found.candidates, current=found.current, decisions=found.decisions,
                        person_of=found.person_of, members=found.members)
        return self._apply(conn, b, ref, res_type, res_id, rec, source_org, actor, now, found, choice)

    def _search(self, conn, b: _Batch, ref: str, rec: PersonRecord, hashes: list[int]) -> _Found:
        """The candidate search: the records sharing a blocking key with ``rec`` and the other
        records of its person, scored against it; the decisions on it; the records of every
        person it could join. Files the record's new keys in the batch's key index."""
        existing = b.links.get(ref)

        # 1. candidates through the blocking keys: start-of-call key rows (less the old keys of
        #    records linked since) plus the new keys of records linked in this call
        limit = self.max_candidates * 4
        by_hash = b.by_hash
        if b.truncated and hashes:
            by_hash, _ = self._candidate_rows(conn, b, hashes, limit)
            self._ensure_members(conn, b, [b.links[r].person_id for refs in by_hash.values() for r in refs])
        # (in key order, as an index scan of linkage_key returns them: hash, then record)
        cand: list[str] = []
        done, done_by_hash = b.done, b.done_by_hash
        for h in hashes:
            stored = (r for r in by_hash.get(h, ()) if r not in done)
            mine = done_by_hash.get(h)
            # both in key order already: merged lazily, only as far as the limit reads
            if mine and len(mine) > 2 * _IN_CALL_CANDIDATES:
                mine = mine[:2 * _IN_CALL_CANDIDATES]  # see _IN_CALL_CANDIDATES (beyond it, skipped below anyway)
            rows = heapq.merge(stored, mine, key=_ref_order) if mine else stored
            cand.extend(itertools.islice(rows, limit - len(cand)))
            if len(cand) >= limit:
                break
        # 2. replace this record's keys
        if existing is not None and ref not in b.link_insert:
            b.key_delete[ref] = None
        for h in b.new_keys.get(ref, ()):
            done_by_hash[h].remove(ref)
        b.done.pop(ref, None)
        b.done[ref] = None
        b.new_keys[ref] = hashes
        for h in hashes:
            bisect.insort(done_by_hash.setdefault(h, []), ref, key=_ref_order)

        # 3. score the candidates, then the other records of its person
        scored: dict[str, Candidate] = {}
        params, thresholds, max_candidates = self.params, self.thresholds, self.max_candidates

        def consider(other_ref: str, person_id: str, features: str) -> None:
            if other_ref == ref or other_ref in scored or len(scored) >= max_candidates:
                return
            scored[other_ref] = score_candidate(rec, other_ref, person_id, b.record(other_ref, features), params, thresholds)

        links = b.links
        # records of this call with the same features in the same person score alike: one of each is
        # compared (a bundle of identical records costs one comparison per person, not per record)
        # and at most _IN_CALL_CANDIDATES records of this call are compared with each record: a call's
        # records all against each other is the quadratic part of a bulk load
        same: set[tuple[str, str]] = set()
        skipped = in_call = 0
        for n, r in enumerate(cand):
            if b.comparisons_left <= 0:
                skipped += len(cand) - n
                break
            row = links[r]
            if r in done:
                twin = (row.person_id, row.features)
                if twin in same:
                    continue
                same.add(twin)
                in_call += 1
                if in_call > _IN_CALL_CANDIDATES:
                    skipped += 1
                    continue
            before = len(scored)
            consider(r, row.person_id, row.features)
            b.comparisons_left -= len(scored) - before
        if skipped:
            b.capped["comparisons"] = b.capped.get("comparisons", 0) + skipped
        current = None
        if existing is not None:
            current_id = existing.person_id
            self._ensure_members(conn, b, [current_id])
            co_members = [links[r] for r in b.members[current_id] if r != ref]
            for m in co_members:
                consider(m.ref, m.person_id, m.features)
            current = Current(current_id, existing.how, existing.assurance, existing.probability, existing.matched_ref,
                              tuple(m.ref for m in co_members))

        # 4. what can bar a person: the decisions on the record, the records of the persons it could join
        decisions = b.decisions.get(ref, {})
        person_of = {r: links[r].person_id for r in decisions if r in links}
        candidates = list(scored.values())
        check = persons_to_check(rec, candidates, decisions)
        members: dict[str, list[Member]] = {}
        if check:
            self._ensure_members(conn, b, check)
            orders = rec.birth_order is not None
            for pid in check:
                members[pid] = [
                    Member(r, links[r].nhs_number,
                           b.record(r, links[r].features).birth_order if orders and r != ref else None)
                    for r in b.members[pid]]
        return _Found(existing, candidates, current, decisions, person_of, members)

    def _apply(self, conn, b: _Batch, ref: str, res_type: str, res_id: str, rec: PersonRecord, source_org: str,
               actor: str, now: datetime, found: _Found, choice: Choice) -> LinkResult:
        """The write (into the batch; ``_write`` sends it): the link row, the founder's level,
        the persons left behind, the events and the review queue."""
        existing, links = found.existing, b.links
        current_id = existing.person_id if existing is not None else None
        action, via = choice.action, choice.via
        level, prob, matched, how = choice.assurance, choice.probability, choice.matched_ref, choice.how
        target = choice.person_id if choice.person_id is not None else b.new_person()
        features = features_json(rec)

        self._ensure_members(conn, b, [target])
        if via is not None and action in ("join", "move"):
            # the founder of a one-record person takes the level of the first pair that joins it
            tmembers = [r for r in b.members[target] if r != ref]
            if len(tmembers) == 1 and links[tmembers[0]].matched_ref is None:
                f = links[tmembers[0]]
                f.assurance, f.probability, f.matched_ref = level, prob, ref
                b.founders[f.ref] = None

        if existing is None:
            links[ref] = _Row(res_type, res_id, target, level, prob, how, matched, rec.nhs_number, source_org, features, now)
            b.link_insert[ref] = None
        else:
            existing.person_id, existing.assurance, existing.probability, existing.how = target, level, prob, how
            existing.matched_ref, existing.nhs_number, existing.features, existing.updated_at = matched, rec.nhs_number, features, now
            if ref not in b.link_insert:
                b.link_update[ref] = None
            if current_id != target:
                b.members[current_id].pop(ref, None)
        b.members[target][ref] = None

        why = via.score.explain() if via is not None else ""
        if action == "create":
            b.event("create", actor, "no auto-link match among candidates", record=ref, to_person=target,
                    detail={"candidates": len(found.candidates)})
        elif action == "join":
            b.event("join", actor, f"auto-link with {via.ref} ({level}): {why}", record=ref, to_person=target)
            b.touch(target)
        elif action in ("move", "split"):
            reason = (f"record changed: now matches {via.ref} ({level}): {why}" if via is not None
                      else "record changed: no longer matches the other records of its person")
            b.event(action, actor, reason, record=ref, from_person=current_id, to_person=target)
            b.touch(current_id, target)
            left = [links[r] for r in b.members[current_id] if r in links]
            if len(left) == 1 and settle_alone(left[0]):
                b.founders[left[0].ref] = None
            if not b.members[current_id]:
                b.retired[current_id] = None
                b.event("retire", actor, f"its last record {ref} moved to Person/{target}", from_person=current_id)
        elif existing is not None:
            b.touch(target)

        # review queue: possible pairs (and auto-link pairs that were not taken) outside the person
        queued = self._queue(b, ref, choice.review, now)
        return LinkResult(ref, target, action, level, len(found.candidates), queued)

    def _queue(self, b: _Batch, ref: str, review: Iterable[Candidate], now: datetime) -> list[str]:
        # the most likely pairs first, at most so many per record and per call: a reviewer works the
        # top of the queue, and a flood of near-identical records must not bury it (pairs already
        # queued are kept up to date whatever the bounds)
        ranked = sorted(review, key=lambda c: (-c.score.probability, c.ref))
        known = b.reviews_by_ref.get(ref, {})
        want: dict[tuple[str, str], Candidate] = {}
        dropped = 0
        for c in ranked:
            key = pair(ref, c.ref)
            if key in known:
                want[key] = c
            elif len(want) >= self.max_reviews_per_record or b.reviews_left <= 0:
                dropped += 1
            else:
                want[key] = c
                b.reviews_left -= 1
        if dropped:
            b.capped["review pairs"] = b.capped.get("review pairs", 0) + dropped
        existing = {key: b.reviews[key] for key in b.reviews_by_ref.get(ref, ())}

        def dirty(row: dict) -> None:
            if row["id"] is not None:
                b.review_update[row["id"]] = row

        for key, row in existing.items():
            if row["status"] == "open" and key not in want:
                row["status"], row["updated_at"] = "superseded", now
                dirty(row)
        queued = []
        for key, c in want.items():
            row = existing.get(key)
            expl = f"{c.label} ({c.reason}): {c.score.explain()}" if c.reason else f"{c.label}: {c.score.explain()}"
            if row is None:
                row = dict(id=None, a_ref=key[0], b_ref=key[1], probability=c.score.probability,
                           match_weight=c.score.match_weight, explanation=expl, status="open", created_at=now, updated_at=now)
                b.reviews[key] = row
                b.reviews_by_ref.setdefault(key[0], {})[key] = None
                b.reviews_by_ref.setdefault(key[1], {})[key] = None
                b.review_insert.append(row)
                queued.append(c.ref)
            elif row["status"] in ("open", "superseded"):
                row["status"], row["probability"], row["match_weight"], row["explanation"], row["updated_at"] = (
                    "open", c.score.probability, c.score.match_weight, expl, now)
                dirty(row)
                queued.append(c.ref)
        return queued

    # -------------------------------------------------------------- batched writes
    def _write(self, conn, b: _Batch) -> None:
        """The call's changes, in order; inserts that follow one another go together
        (insert_tables: on PostgreSQL one round trip for all of them)."""
        inserts: list = []

        def execute(statement, rows) -> None:  # an update or delete: the inserts before it first
            if inserts:
                insert_tables(conn, inserts)
                inserts.clear()
            conn.execute(statement, rows)

        if b.new_persons:
            rows = []
            for pid, created in b.new_persons.items():
                n, at = b.touched.pop(pid, (0, None))
                rows.append(dict(id=pid, version_id=1 + n, created_at=created, updated_at=at or created,
                                 active=pid not in b.retired))
            inserts.append((_P, rows))
        links = b.links
        if b.link_insert:
            inserts.append((_L, [
                dict(res_type=r.res_type, res_id=r.res_id, person_id=r.person_id, assurance=r.assurance,
                     probability=r.probability, how=r.how, matched_ref=r.matched_ref, nhs_number=r.nhs_number,
                     source_org=r.source_org, features=r.features, updated_at=r.updated_at)
                for r in map(links.get, b.link_insert)]))
        if b.link_update:
            execute(_UPD_LINK, [
                dict(b_type=r.res_type, b_id=r.res_id, person_id=r.person_id, assurance=r.assurance,
                     probability=r.probability, how=r.how, matched_ref=r.matched_ref, nhs_number=r.nhs_number,
                     features=r.features, updated_at=r.updated_at)
                for r in map(links.get, b.link_update)])
        founders = [r for r in b.founders if r not in b.link_insert and r not in b.link_update]
        if founders:
            execute(_UPD_LINK, [
                dict(b_type=r.res_type, b_id=r.res_id, assurance=r.assurance, probability=r.probability, matched_ref=r.matched_ref)
                for r in map(links.get, founders)])
        if b.key_delete:
            execute(_DEL_KEYS, [dict(b_type=r.res_type, b_id=r.res_id) for r in map(links.get, b.key_delete)])
        keys = [{"key_hash": h, "res_type": r.res_type, "res_id": r.res_id}
                for r in map(links.get, b.done) for h in b.new_keys[r.ref]]
        if keys:
            inserts.append((_K, keys))
        if b.touched:
            execute(_TOUCH, [{"b_id": pid, "n": n, "at": at} for pid, (n, at) in b.touched.items()])
        retire = [pid for pid in b.retired if pid not in b.new_persons]
        if retire:
            execute(_RETIRE, [{"b_id": pid} for pid in retire])
        if b.events:
            inserts.append((_E, b.events))
        if b.review_insert:
            execute(_INS_REVIEW, [{k: v for k, v in row.items() if k != "id"} for row in b.review_insert])
        if b.review_update:
            execute(_UPD_REVIEW, [
                dict(b_id=row["id"], status=row["status"], probability=row["probability"], match_weight=row["match_weight"],
                     explanation=row["explanation"], updated_at=row["updated_at"])
                for row in b.review_update.values()])
        if inserts:
            insert_tables(conn, inserts)
