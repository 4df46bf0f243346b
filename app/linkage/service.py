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
(:class:`LinkageHook.after_write`), so a reader never sees a record without its link.

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
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterable

from sqlalchemy import bindparam, delete, insert, or_, select, text, update
from sqlalchemy.orm import Session

from app.ingest.hooks import Written
from app.linkage.matching import (
    LINK,
    NON_MATCH,
    POSSIBLE,
    MatchParams,
    MatchScore,
    PersonRecord,
    Thresholds,
    blocking_keys,
    classify,
    load_params,
    score,
)
from app.linkage.models import BlockingKey, Link, LinkageEvent, LinkedPerson, ManualDecision, ReviewCandidate

LINKED_TYPES = ("Patient", "RelatedPerson")
LEVELS = ("level1", "level2", "level3", "level4")
AUTO_ACTOR = "linkage:auto"


def level_rank(level: str | None) -> int:
    return LEVELS.index(level) + 1 if level in LEVELS else 0


def _weaker(a: str, b: str) -> str:
    return a if level_rank(a) <= level_rank(b) else b


def _now() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def key_hash(key: str) -> int:
    """Signed 64-bit hash of a blocking key (BIGINT column and advisory-lock id)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def split_ref(ref: str) -> tuple[str, str]:
    t, _, i = ref.partition("/")
    return t, i


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


# ------------------------------------------------------------------ record normal form
def features_json(rec: PersonRecord) -> str:
    return json.dumps(
        {
            "g": list(rec.given_names), "f": list(rec.family_names),
            "d": rec.birth_date.isoformat() if rec.birth_date else None, "dt": rec.birth_date_text,
            "s": rec.sex, "p": rec.postcode, "n": rec.nhs_number, "v": rec.nhs_verified,
            "a": list(rec.address_lines), "l": rec.locality, "r": rec.region,
            "o": [list(x) for x in rec.other_ids],
        },
        separators=(",", ":"),
    )


def record_from_features(ref: str, features: str) -> PersonRecord:
    d = json.loads(features)
    return PersonRecord(
        record_ref=ref, given_names=tuple(d["g"]), family_names=tuple(d["f"]),
        birth_date=d["d"], birth_date_text=d.get("dt"), sex=d["s"], postcode=d["p"],
        nhs_number=d["n"], nhs_verified=d["v"], address_lines=tuple(d["a"]),
        locality=d["l"], region=d["r"], other_ids=tuple(tuple(x) for x in d["o"]),
    )


def pair_level(a: PersonRecord, b: PersonRecord, label: str) -> str | None:
    """Assurance of a pair from its decision (``matching.assurance_level`` without re-scoring)."""
    if label == NON_MATCH:
        return None
    if label == POSSIBLE:
        return "level1"
    if a.nhs_number and a.nhs_number == b.nhs_number:
        return "level4" if a.nhs_verified and b.nhs_verified else "level3"
    return "level2"


def manual_level(a: PersonRecord | None, b: PersonRecord | None) -> str:
    """Assurance of a pair an admin confirmed: NHS levels when the numbers agree, else level2."""
    if a is not None and b is not None and a.nhs_number and a.nhs_number == b.nhs_number:
        return "level4" if a.nhs_verified and b.nhs_verified else "level3"
    return "level2"


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
    .where(_ME.c.res_type.in_(bindparam("types", expanding=True)), _ME.c.res_id.in_(bindparam("ids", expanding=True)))
    .order_by(_OTHER.c.res_type, _OTHER.c.res_id)
)


def linked_records_many(session: Session, refs: Iterable[tuple[str, str]], min_assurance: str = "level2") -> dict[tuple[str, str], list[LinkedRecord]]:
    """`linked_records` for many records in one query (the family view asks for a whole family)."""
    if min_assurance not in LEVELS:
        raise ValueError(f"min_assurance must be one of {', '.join(LEVELS)}")
    refs = set(refs)
    if not refs:
        return {}
    rows = session.connection().execute(
        _LINKED_MANY, {"types": sorted({t for t, _ in refs}), "ids": sorted({i for _, i in refs})}
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
class _Scored:
    ref: str
    person_id: str
    rec: PersonRecord
    score: MatchScore
    label: str
    level: str | None


@dataclass
class LinkResult:
    ref: str
    person_id: str
    action: str  # create | join | stay | move | split
    assurance: str
    candidates_compared: int = 0
    queued: list[str] = field(default_factory=list)


class LinkageService:
    """Links records inside the caller's transaction. One instance per session."""

    def __init__(self, session: Session, *, thresholds: Thresholds | None = None, params: MatchParams | None = None,
                 max_candidates: int = 500):
        self.session = session
        self.thresholds = thresholds or Thresholds()
        self.params = params or load_params()
        self.max_candidates = max_candidates

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
        )

    # -------------------------------------------------------------- locking
    def lock_keys(self, hashes: Iterable[int]) -> None:
        """PostgreSQL: transaction-level advisory locks on every key hash, in sorted order."""
        hs = sorted(set(hashes))
        if not hs or self.session.get_bind().dialect.name != "postgresql":
            return
        self.session.execute(
            text("SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT unnest(CAST(:hs AS bigint[])) AS h ORDER BY 1) s"),
            {"hs": hs},
        )

    # -------------------------------------------------------------- helpers
    def _event(self, action: str, actor: str, reason: str, *, record: str | None = None, from_person: str | None = None,
               to_person: str | None = None, candidate_id: int | None = None, detail: dict | None = None) -> None:
        self.session.connection().execute(insert(LinkageEvent.__table__), dict(
            at=_now(), action=action, record_ref=record, from_person=from_person, to_person=to_person,
            candidate_id=candidate_id, actor=actor, reason=reason,
            detail=json.dumps(detail, separators=(",", ":")) if detail else None,
        ))

    def _new_person(self) -> str:
        """Insert a new linked person (Core, no ORM flush) and return its id."""
        now = _now()
        pid = str(uuid.uuid4())
        self.session.connection().execute(insert(LinkedPerson.__table__), dict(
            id=pid, version_id=1, created_at=now, updated_at=now, active=True))
        return pid

    def _touch(self, *person_ids: str | None) -> None:
        for pid in {p for p in person_ids if p}:
            self.session.connection().execute(
                update(LinkedPerson.__table__).where(LinkedPerson.id == pid)
                .values(version_id=LinkedPerson.version_id + 1, updated_at=_now())
            )

    def _retire_if_empty(self, person_id: str, actor: str, reason: str) -> None:
        left = self.session.scalar(select(Link.res_id).where(Link.person_id == person_id).limit(1))
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
            items.append((w, rec, blocking_keys(rec)))
        if not items:
            return []
        self.lock_keys(key_hash(k) for _, _, keys in items for k in keys)
        return [self.link_record(w.res_type, w.res_id, rec, keys, source_org=w.source_org) for w, rec, keys in items]

    def link_record(self, res_type: str, res_id: str, rec: PersonRecord, keys: set[str] | None = None, *,
                    source_org: str, actor: str = AUTO_ACTOR) -> LinkResult:
        s = self.session
        ref = f"{res_type}/{res_id}"
        keys = blocking_keys(rec) if keys is None else keys
        hashes = sorted({key_hash(k) for k in keys})
        now = _now()
        existing = s.get(Link, (res_type, res_id))

        # 1. candidates through the blocking keys (indexed), never the whole table
        cand_rows = []
        if hashes:
            cand_rows = s.execute(
                select(Link.res_type, Link.res_id, Link.person_id, Link.features)
                .join(BlockingKey, (BlockingKey.res_type == Link.res_type) & (BlockingKey.res_id == Link.res_id))
                .where(BlockingKey.key_hash.in_(hashes))
                .limit(self.max_candidates * 4)
            ).all()
        # 2. replace this record's keys
        if existing is not None:
            s.execute(delete(BlockingKey).where(BlockingKey.res_type == res_type, BlockingKey.res_id == res_id))
        if hashes:
            s.connection().execute(insert(BlockingKey.__table__), [{"key_hash": h, "res_type": res_type, "res_id": res_id} for h in hashes])

        scored: dict[str, _Scored] = {}

        def consider(other_ref: str, person_id: str, features: str) -> None:
            if other_ref == ref or other_ref in scored or len(scored) >= self.max_candidates:
                return
            other = record_from_features(other_ref, features)
            sc = score(rec, other, self.params)
            label = classify(sc, self.thresholds)
            scored[other_ref] = _Scored(other_ref, person_id, other, sc, label, pair_level(rec, other, label))

        for r in cand_rows:
            consider(f"{r.res_type}/{r.res_id}", r.person_id, r.features)
        current_id = existing.person_id if existing is not None else None
        co_members: list[Link] = []
        if current_id is not None:
            co_members = [m for m in self.members(current_id) if m.ref != ref]
            for m in co_members:
                consider(m.ref, m.person_id, m.features)

        decisions = self.decisions_for(ref)
        barred_refs = {o for o, d in decisions.items() if d == "no-match"}
        held_refs = {o for o, d in decisions.items() if d == "match"}
        barred_persons: set[str] = set()
        if barred_refs:
            barred_persons = set(s.scalars(select(Link.person_id).where(
                or_(*[(Link.res_type == t) & (Link.res_id == i) for t, i in map(split_ref, barred_refs)]))))
        # a person holding a conflicting valid NHS number is barred too
        linkable = {c.person_id for c in scored.values() if c.label == LINK and c.ref not in barred_refs}
        if rec.nhs_number and linkable:
            for pid, nhs in s.execute(select(Link.person_id, Link.nhs_number).where(
                    Link.person_id.in_(sorted(linkable)), Link.nhs_number.is_not(None))).all():
                if nhs != rec.nhs_number:
                    barred_persons.add(pid)

        best_by_person: dict[str, _Scored] = {}
        for c in scored.values():
            if c.label != LINK or c.ref in barred_refs or c.person_id in barred_persons:
                continue
            b = best_by_person.get(c.person_id)
            if b is None or (level_rank(c.level), c.score.match_weight) > (level_rank(b.level), b.score.match_weight):
                best_by_person[c.person_id] = c

        # 3. decide where the record belongs
        features = features_json(rec)
        action, target, via = "create", None, None
        stays = False
        if current_id is not None and co_members:
            co_refs = {m.ref for m in co_members}
            stays = existing.how == "manual" or bool(held_refs & co_refs) or current_id in best_by_person
        others = [c for pid, c in best_by_person.items() if pid != current_id]
        best_other = max(others, key=lambda c: (level_rank(c.level), c.score.match_weight), default=None)
        if stays:
            action, target, via = "stay", current_id, best_by_person.get(current_id)
        elif best_other is not None:
            action, target, via = ("join" if existing is None else "move"), best_other.person_id, best_other
        elif current_id is not None and not co_members:
            action, target = "stay", current_id
        elif current_id is not None:
            action, target = "split", self._new_person()
        else:
            target = self._new_person()

        if via is not None:
            level, prob, matched = via.level, via.score.probability, via.ref
        elif action == "stay" and existing is not None and existing.how == "manual":
            level, prob, matched = existing.assurance, existing.probability, existing.matched_ref
        elif action == "stay" and co_members:  # held by a manual match decision
            level, prob, matched = "level2", 1.0, sorted(held_refs)[0] if held_refs else None
        else:
            level, prob, matched = "level4", 1.0, None
        how = existing.how if (existing is not None and action == "stay") else "auto"

        if via is not None and action in ("join", "move"):
            # the founder of a one-record person takes the level of the first pair that joins it
            conn = s.connection()
            tmembers = conn.execute(select(Link.res_type, Link.res_id, Link.matched_ref).where(Link.person_id == target).limit(3)).all()
            tmembers = [m for m in tmembers if (m.res_type, m.res_id) != (res_type, res_id)]
            if len(tmembers) == 1 and tmembers[0].matched_ref is None:
                conn.execute(update(Link.__table__).where(Link.res_type == tmembers[0].res_type, Link.res_id == tmembers[0].res_id)
                             .values(assurance=level, probability=prob, matched_ref=ref))

        values = dict(person_id=target, assurance=level, probability=prob, how=how, matched_ref=matched,
                      nhs_number=rec.nhs_number, features=features, updated_at=now)
        if existing is None:
            s.connection().execute(insert(Link.__table__), dict(res_type=res_type, res_id=res_id, source_org=source_org, **values))
        else:
            for k, v in values.items():
                setattr(existing, k, v)
            s.flush()

        why = via.score.explain() if via is not None else ""
        if action == "create":
            self._event("create", actor, "no auto-link match among candidates", record=ref, to_person=target,
                        detail={"candidates": len(scored)})
        elif action == "join":
            self._event("join", actor, f"auto-link with {via.ref} ({level}): {why}", record=ref, to_person=target)
            self._touch(target)
        elif action in ("move", "split"):
            reason = (f"record changed: now matches {via.ref} ({level}): {why}" if via is not None
                      else "record changed: no longer matches the other records of its person")
            self._event(action, actor, reason, record=ref, from_person=current_id, to_person=target)
            self._touch(current_id, target)
            self._retire_if_empty(current_id, actor, f"its last record {ref} moved to Person/{target}")
        elif existing is not None:
            self._touch(target)

        # 4. review queue: possible pairs (and auto-link pairs that were not taken) outside the person
        queued = self._queue(ref, target, scored, decisions, now)
        return LinkResult(ref, target, action, level, len(scored), queued)

    def _queue(self, ref: str, target: str, scored: dict[str, _Scored], decisions: dict[str, str], now: datetime) -> list[str]:
        s = self.session
        want: dict[tuple[str, str], _Scored] = {}
        for c in scored.values():
            if c.person_id == target or c.ref in decisions or c.label == NON_MATCH:
                continue
            want[pair(ref, c.ref)] = c
        existing = {
            (r.a_ref, r.b_ref): r
            for r in s.scalars(select(ReviewCandidate).where(or_(ReviewCandidate.a_ref == ref, ReviewCandidate.b_ref == ref)))
        }
        for key, row in existing.items():
            if row.status == "open" and key not in want:
                row.status, row.updated_at = "superseded", now
        queued = []
        for key, c in want.items():
            row = existing.get(key)
            expl = f"{c.label}: {c.score.explain()}"
            if row is None:
                s.add(ReviewCandidate(a_ref=key[0], b_ref=key[1], probability=c.score.probability,
                                      match_weight=c.score.match_weight, explanation=expl, status="open",
                                      created_at=now, updated_at=now))
                queued.append(c.ref)
            elif row.status in ("open", "superseded"):
                row.status, row.probability, row.match_weight, row.explanation, row.updated_at = (
                    "open", c.score.probability, c.score.match_weight, expl, now)
                queued.append(c.ref)
        return queued


class LinkageHook:
    """Ingest hook: links every written Patient/RelatedPerson in the write's transaction."""

    def __init__(self, settings):
        self.settings = settings

    def prepare(self, resource: dict[str, Any]) -> None:  # nothing to stamp
        return None

    def after_write(self, session: Session, written: list[Written]) -> None:
        if any(w.res_type in LINKED_TYPES for w in written):
            LinkageService.from_settings(session, self.settings).link_written(written)
