"""Manual linkage operations (HAPI MDM style), each with who and why, each reversible:

* ``confirm(candidate)``  the pair is one person: their persons merge; a "match" decision.
                          Reversed by ``reject`` of the same candidate.
* ``reject(candidate)``   the pair are different people: a "no-match" decision; if they were
                          together, the second record leaves. Reversed by ``confirm``.
* ``unlink(record)``      the record leaves its person for a new one; "no-match" decisions
                          with every former co-member. Reversed by ``merge``.
* ``merge(from, into)``   every record of one person joins another; the first stays, inactive,
                          pointing at the second. Reversed by ``unlink``.

A later decision on a pair revokes the earlier one (kept, with who/why/when revoked). Every
operation writes linkage events. Automatic re-matching never overrides an active decision.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import FhirError, not_found, unprocessable
from app.linkage.models import Link, LinkedPerson, ManualDecision, ReviewCandidate
from app.linkage.service import (
    LinkageService, _now, manual_level, pair, record_from_features, split_ref,
)


def _conflict(msg: str) -> FhirError:
    return FhirError(409, "conflict", msg, spine_code="CONFLICT")


class LinkageAdmin:
    def __init__(self, session: Session, actor: str):
        self.session = session
        self.actor = actor
        self.svc = LinkageService(session)

    # -------------------------------------------------------------- look-ups
    def candidate(self, cid: int) -> ReviewCandidate:
        # ids are 32-bit integers (linkage_candidate.id); a larger number names no candidate and
        # must not reach the driver (PostgreSQL refuses it as out of range: a 500, not a 404)
        row = self.session.get(ReviewCandidate, cid) if 0 < cid < 2**31 else None
        if row is None:
            raise not_found(f"Review candidate {cid} is not known")
        return row

    def link(self, ref: str) -> Link:
        t, i = split_ref(ref)
        row = self.session.get(Link, (t, i))
        if row is None:
            raise not_found(f"{ref} is not a linked record")
        return row

    def person(self, pid: str) -> LinkedPerson:
        row = self.session.get(LinkedPerson, pid)
        if row is None:
            raise not_found(f"Person/{pid} is not known")
        return row

    # -------------------------------------------------------------- decisions
    def _decide(self, a: str, b: str, decision: str, reason: str, candidate_id: int | None = None) -> ManualDecision:
        a, b = pair(a, b)
        now = _now()
        self.session.execute(
            update(ManualDecision)
            .where(ManualDecision.a_ref == a, ManualDecision.b_ref == b, ManualDecision.active.is_(True))
            .values(active=False, revoked_by=self.actor, revoked_reason=f"superseded by a '{decision}' decision: {reason}", revoked_at=now)
        )
        row = ManualDecision(a_ref=a, b_ref=b, decision=decision, actor=self.actor, reason=reason, created_at=now,
                             candidate_id=candidate_id, active=True)
        self.session.add(row)
        return row

    def _revoke_between(self, refs_a: list[str], refs_b: list[str], decision: str, reason: str) -> int:
        if not refs_a or not refs_b:
            return 0
        conds = [(ManualDecision.a_ref == x) & (ManualDecision.b_ref == y) for x, y in (pair(p, q) for p in refs_a for q in refs_b)]
        res = self.session.execute(
            update(ManualDecision).where(ManualDecision.active.is_(True), ManualDecision.decision == decision, or_(*conds))
            .values(active=False, revoked_by=self.actor, revoked_reason=reason, revoked_at=_now())
        )
        return res.rowcount or 0

    # -------------------------------------------------------------- moves
    def _detach(self, link: Link, reason: str, action: str, candidate_id: int | None = None) -> str:
        old = link.person_id
        new = self.svc._new_person()
        link.person_id, link.how, link.assurance, link.probability, link.matched_ref, link.updated_at = (
            new, "manual", "level4", 1.0, None, _now())
        self.session.flush()
        self.svc._event(action, self.actor, reason, record=link.ref, from_person=old, to_person=new, candidate_id=candidate_id)
        self.svc._touch(old)
        self.svc.reset_if_alone(old)
        self.svc._retire_if_empty(old, self.actor, reason)
        return new

    def _merge(self, from_id: str, into_id: str, reason: str, candidate_id: int | None = None,
               pair_refs: tuple[str, str] | None = None) -> dict[str, Any]:
        src, dst = self.person(from_id), self.person(into_id)
        for p in (src, dst):
            if not p.active:
                raise unprocessable(f"Person/{p.id} is not active" + (f" (merged into Person/{p.merged_into})" if p.merged_into else ""))
        if src.id == dst.id:
            raise unprocessable("A person cannot be merged into itself")
        moving, staying = self.svc.members(src.id), self.svc.members(dst.id)
        mref, sref = [m.ref for m in moving], [m.ref for m in staying]
        self._revoke_between(mref, sref, "no-match", f"merged: {reason}")
        a, b = pair_refs or (sref[0], mref[0]) if (sref and mref) else (None, None)
        if a and b:
            self._decide(a, b, "match", reason, candidate_id)
        recs = {m.ref: record_from_features(m.ref, m.features) for m in moving + staying}
        now = _now()

        def lvl(m: Link) -> str:
            same = next((recs[o.ref] for o in (staying if m in moving else moving) if recs[o.ref].nhs_number and recs[o.ref].nhs_number == recs[m.ref].nhs_number), None)
            return manual_level(recs[m.ref], same) if same is not None else "level2"

        for group in (moving, staying):
            if len(group) == 1 and group[0].matched_ref is None:  # a lone founder takes the merge's level
                group[0].assurance, group[0].matched_ref = lvl(group[0]), (mref[0] if group is staying else sref[0]) if mref and sref else None
        for m in moving:
            m.person_id, m.how, m.updated_at = dst.id, "manual", now
            if m.assurance == "level1":
                m.assurance = "level2"
            self.svc._event("merge", self.actor, reason, record=m.ref, from_person=src.id, to_person=dst.id, candidate_id=candidate_id)
        src.active, src.merged_into = False, dst.id
        self.session.flush()
        self.svc._touch(src.id, dst.id)
        return {"from": f"Person/{src.id}", "into": f"Person/{dst.id}", "moved": mref}

    # -------------------------------------------------------------- operations
    def confirm(self, cid: int, reason: str) -> dict[str, Any]:
        c = self.candidate(cid)
        if c.status == "confirmed":
            raise _conflict(f"Review candidate {cid} is already confirmed")
        if c.status == "superseded":
            # a record of the pair changed after it was queued: what was reviewed is not what
            # would be joined, and a confirmation is never undone by re-matching
            raise _conflict(
                f"Review candidate {cid} is superseded: a record of the pair changed after it was queued. "
                "Review the pair's current candidate, or join the records with merge"
            )
        la, lb = self.link(c.a_ref), self.link(c.b_ref)
        result: dict[str, Any] = {"candidate": cid, "status": "confirmed"}
        if la.person_id != lb.person_id:
            na = len(self.svc.members(la.person_id))
            nb = len(self.svc.members(lb.person_id))
            src, dst = (lb, la) if na >= nb else (la, lb)
            result["merge"] = self._merge(src.person_id, dst.person_id, f"confirmed candidate {cid}: {reason}", cid, (c.a_ref, c.b_ref))
        else:
            self._decide(c.a_ref, c.b_ref, "match", reason, cid)
        ra, rb = record_from_features(la.ref, la.features), record_from_features(lb.ref, lb.features)
        lb.how = la.how = "manual"
        level = manual_level(ra, rb)
        for l in (la, lb):
            if l.assurance == "level1" or l.matched_ref is None:
                l.assurance, l.matched_ref = level, (lb.ref if l is la else la.ref)
        c.status, c.decided_by, c.decided_reason, c.decided_at, c.updated_at = "confirmed", self.actor, reason, _now(), _now()
        self.svc._event("confirm", self.actor, reason, record=c.b_ref, to_person=la.person_id, candidate_id=cid,
                        detail={"pair": [c.a_ref, c.b_ref]})
        result["person"] = f"Person/{la.person_id}"
        return result

    def reject(self, cid: int, reason: str) -> dict[str, Any]:
        c = self.candidate(cid)
        if c.status == "rejected":
            raise _conflict(f"Review candidate {cid} is already rejected")
        la, lb = self.link(c.a_ref), self.link(c.b_ref)
        self._decide(c.a_ref, c.b_ref, "no-match", reason, cid)
        result: dict[str, Any] = {"candidate": cid, "status": "rejected"}
        if la.person_id == lb.person_id:
            result["unlinked"] = c.b_ref
            result["person"] = f"Person/{self._detach(lb, f'rejected candidate {cid}: {reason}', 'unlink', cid)}"
        c.status, c.decided_by, c.decided_reason, c.decided_at, c.updated_at = "rejected", self.actor, reason, _now(), _now()
        self.svc._event("reject", self.actor, reason, record=c.b_ref, candidate_id=cid, detail={"pair": [c.a_ref, c.b_ref]})
        return result

    def unlink(self, ref: str, reason: str) -> dict[str, Any]:
        link = self.link(ref)
        others = [m for m in self.svc.members(link.person_id) if m.ref != ref]
        if not others:
            raise unprocessable(f"{ref} is the only record of Person/{link.person_id}; there is nothing to unlink it from")
        old = link.person_id
        self._revoke_between([ref], [m.ref for m in others], "match", f"unlinked: {reason}")
        for m in others:
            self._decide(ref, m.ref, "no-match", reason)
        new = self._detach(link, reason, "unlink")
        # members that had joined via this record keep their level; one left alone is level4 (_detach)
        return {"record": ref, "from": f"Person/{old}", "person": f"Person/{new}", "noMatchWith": [m.ref for m in others]}

    def merge(self, from_id: str, into_id: str, reason: str) -> dict[str, Any]:
        return self._merge(from_id, into_id, reason)


def candidate_json(c: ReviewCandidate, persons: dict[str, str | None] | None = None) -> dict[str, Any]:
    persons = persons or {}

    def ts(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    return {
        "id": c.id,
        "status": c.status,
        "a": {"reference": c.a_ref, "person": f"Person/{persons[c.a_ref]}" if persons.get(c.a_ref) else None},
        "b": {"reference": c.b_ref, "person": f"Person/{persons[c.b_ref]}" if persons.get(c.b_ref) else None},
        "probability": c.probability,
        "matchWeight": c.match_weight,
        "assurance": "level1",
        "explanation": c.explanation,
        "created": ts(c.created_at),
        "updated": ts(c.updated_at),
        "decidedBy": c.decided_by,
        "decisionReason": c.decided_reason,
        "decided": ts(c.decided_at),
    }


def persons_of(session: Session, refs: set[str]) -> dict[str, str]:
    if not refs:
        return {}
    conds = [(Link.res_type == t) & (Link.res_id == i) for t, i in map(split_ref, refs)]
    return {f"{r.res_type}/{r.res_id}": r.person_id for r in session.execute(select(Link.res_type, Link.res_id, Link.person_id).where(or_(*conds)))}
