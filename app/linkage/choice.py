"""Where a record belongs, given what the candidate search found: the pure middle of linking.

``LinkageService`` links a record in three steps (``app.linkage.service``):

1. the candidate search (database and the batch's state): the stored records sharing a
   blocking key with it and the other records of its current person, each scored against
   it (:func:`score_candidate`), the admin's decisions on it, and the records of every
   person it could join (:func:`persons_to_check`);
2. :func:`choose` (this module, no database): join which person at which assurance, stay,
   move, split off or found a new person, and which pairs go to the review queue;
3. the write: the link row, the founder's level, the events, the review rows.

The rules :func:`choose` applies, in order:

* a pair joins only when ``matching.decide`` labels it "link" (the twin guard, conflicting
  NHS numbers, birth orders, the household rule and the identifier slips all act there);
* a person is barred when an admin said one of its records is not this one ("no-match"),
  or, for a link pair, when one of its records carries another valid NHS number or
  another birth order (Twin 1 / Twin 2);
* the best pair of each person is the one of the highest assurance level, then the
  highest match weight (the first found on a tie);
* a record that has other records in its person stays there when it was put there by
  hand, when an admin's "match" decision holds it to one of them, or when it still
  auto-links to one of them; otherwise it goes to the best other person ("join" when new,
  "move" when it was linked), or, with none, founds a new person ("create" when new,
  "split" when it was linked); a record alone in its person stays unless it now joins
  another;
* the level: that of the pair it joins or stays by; a manual link keeps its own; a record
  held only by a "match" decision is level2; a record alone is level4 (it is its person);
* review: every pair outside the chosen person that no decision settled and that is not
  a non-match, in the order found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from app.linkage.matching import (
    LINK,
    NON_MATCH,
    MatchParams,
    MatchScore,
    PersonRecord,
    Thresholds,
    decide,
    level_for_label,
    level_rank,
    score,
)


@dataclass
class Candidate:
    """A stored record scored against the record being linked."""

    ref: str
    person_id: str  # the person the stored record belongs to (when it was scored)
    rec: PersonRecord
    score: MatchScore
    label: str  # matching.decide: link | possible | non-match
    level: str | None  # the assurance the pair would give (matching.level_for_label)
    reason: str | None = None  # the rule that set the label, if one did (matching.decide)


def score_candidate(
    rec: PersonRecord, other_ref: str, person_id: str, other: PersonRecord, params: MatchParams, thresholds: Thresholds
) -> Candidate:
    """Score and decide one pair (pure)."""
    sc = score(rec, other, params)
    decision = decide(sc, thresholds)
    return Candidate(
        other_ref, person_id, other, sc, decision.label, level_for_label(rec, other, decision.label), decision.reason
    )


@dataclass(frozen=True)
class Current:
    """The record's link as stored before this write (None for a new record)."""

    person_id: str
    how: str  # auto | manual
    assurance: str
    probability: float
    matched_ref: str | None
    co_members: tuple[str, ...] = ()  # the other records of its person


@dataclass(frozen=True)
class Member:
    """A record of a person the record could join: what can bar that person."""

    ref: str
    nhs_number: str | None  # its valid NHS number, as linked (the record itself: before this write)
    birth_order: int | None = None


@dataclass(frozen=True)
class Choice:
    action: str  # create | join | stay | move | split
    person_id: str | None  # the person to link to; None: a new person (create, split)
    assurance: str
    probability: float
    matched_ref: str | None
    how: str  # auto | manual
    via: Candidate | None  # the pair it joins or stays by
    review: tuple[Candidate, ...]  # pairs for the review queue


def _barred_by_decision(decisions: Mapping[str, str]) -> set[str]:
    return {o for o, d in decisions.items() if d == "no-match"}


def persons_to_check(rec: PersonRecord, candidates: Iterable[Candidate], decisions: Mapping[str, str]) -> set[str]:
    """The persons whose records :func:`choose` must see (``members``): those of the link pairs
    no decision bars, when the record carries a valid NHS number or a birth order."""
    if not (rec.nhs_number or rec.birth_order is not None):
        return set()
    barred = _barred_by_decision(decisions)
    return {c.person_id for c in candidates if c.label == LINK and c.ref not in barred}


def _rules_out(ref: str, rec: PersonRecord, m: Member) -> bool:
    """A member that bars its person: another valid NHS number, or another birth order."""
    if rec.nhs_number and m.nhs_number is not None and m.nhs_number != rec.nhs_number:
        return True
    return (
        rec.birth_order is not None and m.ref != ref and m.birth_order is not None and m.birth_order != rec.birth_order
    )


def _rank(c: Candidate) -> tuple[int, float]:
    return level_rank(c.level), c.score.match_weight


def choose(
    ref: str,
    rec: PersonRecord,
    candidates: Sequence[Candidate],
    *,
    current: Current | None = None,
    decisions: Mapping[str, str] | None = None,
    person_of: Mapping[str, str] | None = None,
    members: Mapping[str, Sequence[Member]] | None = None,
) -> Choice:
    """Where the record ``ref`` (normal form ``rec``) belongs.

    ``candidates``: the scored pairs, each stored record once, in the order found (co-members
    of its current person last); ``decisions``: the admin's active decisions on the record
    (other record -> "match" | "no-match"); ``person_of``: the person of each record a
    decision names (when linked); ``members``: the records of each person
    :func:`persons_to_check` names."""
    decisions = decisions or {}
    person_of = person_of or {}
    members = members or {}
    barred_refs = _barred_by_decision(decisions)
    held_refs = {o for o, d in decisions.items() if d == "match"}
    barred_persons = {person_of[r] for r in barred_refs if r in person_of}
    for pid in persons_to_check(rec, candidates, decisions):
        if any(_rules_out(ref, rec, m) for m in members[pid]):
            barred_persons.add(pid)

    best_by_person: dict[str, Candidate] = {}
    for c in candidates:
        if c.label != LINK or c.ref in barred_refs or c.person_id in barred_persons:
            continue
        bp = best_by_person.get(c.person_id)
        if bp is None or _rank(c) > _rank(bp):
            best_by_person[c.person_id] = c

    current_id = current.person_id if current is not None else None
    co_members = current.co_members if current is not None else ()
    stays = False
    if current is not None and co_members:
        stays = current.how == "manual" or bool(held_refs & set(co_members)) or current_id in best_by_person
    others = [c for pid, c in best_by_person.items() if pid != current_id]
    best_other = max(others, key=_rank, default=None)
    action: str
    target: str | None
    via: Candidate | None = None
    if stays:
        action, target, via = "stay", current_id, best_by_person.get(current_id)  # type: ignore[arg-type]
    elif best_other is not None:
        action, target, via = ("join" if current is None else "move"), best_other.person_id, best_other
    elif current is not None and not co_members:
        action, target = "stay", current_id
    elif current is not None:
        action, target = "split", None
    else:
        action, target = "create", None

    level: str
    matched: str | None
    if via is not None:
        assert via.level is not None  # a link pair always has a level
        level, prob, matched = via.level, via.score.probability, via.ref
    elif action == "stay" and current is not None and current.how == "manual":
        level, prob, matched = current.assurance, current.probability, current.matched_ref
    elif action == "stay" and co_members:  # held by a manual match decision
        level, prob, matched = "level2", 1.0, sorted(held_refs)[0] if held_refs else None
    else:
        level, prob, matched = "level4", 1.0, None
    how = current.how if (current is not None and action == "stay") else "auto"

    review = tuple(c for c in candidates if not (c.person_id == target or c.ref in decisions or c.label == NON_MATCH))
    return Choice(action, target, level, prob, matched, how, via, review)
