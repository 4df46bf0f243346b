"""The IG review queue: every safeguarding override (an audited view flagged for review) and
every break-the-glass view, oldest first, until an IG officer signs it off.

``queue`` and ``record_review`` are plain service functions (the routes and the IG pages
call them); a review is written to ``ig_review`` and, in the same transaction, as an
AuditEvent on the chain (subtype ig-review) whose entity is the event reviewed."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.audit import balp
from app.audit.models import AuditRecord
from app.auth.tokens import Principal
from app.errors import FhirError, not_found
from app.ig.models import Review

OUTCOMES = ("appropriate", "inappropriate", "needs-follow-up")
CLOSING = ("appropriate", "inappropriate")  # needs-follow-up keeps the event in the queue
BREAK_GLASS = "BTG"
EXT_REVIEW = f"{balp.FV}/StructureDefinition/audit-ig-review"


def needs_review():
    """The events that belong in the queue: flagged for review, or a break-glass view, that succeeded."""
    return and_(or_(AuditRecord.review_required.is_(True), AuditRecord.purpose_of_use == BREAK_GLASS),
                AuditRecord.outcome == balp.OUTCOME_SUCCESS)


@dataclass
class ReviewStatus:
    outcome: str
    note: str
    reviewer: str
    reviewer_org: str
    reviewed_at: datetime
    review_event: str

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "note": self.note, "reviewer": self.reviewer, "reviewerOrganization": self.reviewer_org,
                "reviewed": _instant(self.reviewed_at), "reviewEvent": f"AuditEvent/{self.review_event}"}


@dataclass
class QueueItem:
    event_id: str
    recorded: datetime
    agent: str
    agent_org: str
    agent_role: str
    purpose_of_use: str | None
    reason: str  # safeguarding-override | break-glass
    summary: str
    overdue: bool
    age_days: int
    last_review: ReviewStatus | None

    def to_json(self) -> dict[str, Any]:
        return {"event": f"AuditEvent/{self.event_id}", "recorded": _instant(self.recorded), "agent": self.agent,
                "agentOrganization": self.agent_org, "agentRole": self.agent_role, "purposeOfUse": self.purpose_of_use,
                "reason": self.reason, "summary": self.summary, "ageDays": self.age_days, "overdue": self.overdue,
                "lastReview": self.last_review.to_json() if self.last_review else None}


def _instant(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def latest_reviews(session: Session, seqs: list[int]) -> dict[int, ReviewStatus]:
    """The standing (latest) review of each event."""
    if not seqs:
        return {}
    newest = select(func.max(Review.id)).where(Review.event_seq.in_(seqs)).group_by(Review.event_seq)
    rows = session.scalars(select(Review).where(Review.id.in_(newest)))
    return {r.event_seq: ReviewStatus(r.outcome, r.note, r.reviewer_sub, r.reviewer_org, r.reviewed_at, r.review_event_id) for r in rows}


def queue(session: Session, *, overdue_days: int, now: datetime | None = None, offset: int = 0, count: int = 50,
          only_overdue: bool = False) -> tuple[int, list[QueueItem]]:
    """Open items, oldest first: (total open, this page)."""
    now = now or datetime.now(timezone.utc)
    closed = select(Review.event_seq).where(
        Review.id.in_(select(func.max(Review.id)).group_by(Review.event_seq)), Review.outcome.in_(CLOSING))
    where = [needs_review(), AuditRecord.seq.not_in(closed)]
    cutoff = now - timedelta(days=overdue_days)
    if only_overdue:
        where.append(AuditRecord.recorded < cutoff)
    total = session.scalar(select(func.count()).select_from(AuditRecord).where(*where)) or 0
    rows = session.execute(
        select(AuditRecord.seq, AuditRecord.event_id, AuditRecord.recorded, AuditRecord.agent_sub, AuditRecord.agent_org,
               AuditRecord.agent_role, AuditRecord.purpose_of_use, AuditRecord.body)
        .where(*where).order_by(AuditRecord.seq).offset(offset).limit(count)).all()
    reviews = latest_reviews(session, [r.seq for r in rows])
    items = []
    for r in rows:
        recorded = r.recorded if r.recorded.tzinfo else r.recorded.replace(tzinfo=timezone.utc)
        body = json.loads(r.body)
        items.append(QueueItem(
            r.event_id, recorded, r.agent_sub, r.agent_org, r.agent_role, r.purpose_of_use,
            "break-glass" if r.purpose_of_use == BREAK_GLASS else "safeguarding-override",
            str(body.get("outcomeDesc") or ""), recorded < cutoff, (now - recorded).days, reviews.get(r.seq)))
    return total, items


def read_queue(session: Session, principal: Principal, *, overdue_days: int, offset: int = 0, count: int = 50,
               only_overdue: bool = False, request_id: str = "") -> tuple[int, list[QueueItem]]:
    """The queue as an IG officer reads it (the API and the pages): the read itself audited."""
    total, items = queue(session, overdue_days=overdue_days, offset=offset, count=count, only_overdue=only_overdue)
    balp.record(session, balp.AccessEvent(principal, "ig-review-queue", action="R", request_id=request_id, outcome_desc=f"{total} open"))
    return total, items


def record_review(session: Session, principal: Principal, event_id: str, outcome: str, note: str, *,
                  request_id: str = "", now: datetime | None = None) -> ReviewStatus:
    """Record an IG officer's review of a queued event, audited in the same transaction."""
    if outcome not in OUTCOMES:
        raise FhirError(400, "value", f"outcome must be one of {', '.join(OUTCOMES)}", expression="outcome", spine_code="INVALID_VALUE")
    if not note.strip():
        raise FhirError(400, "required", "A review needs a note", expression="note", spine_code="MISSING_VALUE")
    row = session.execute(select(AuditRecord.seq, AuditRecord.body).where(AuditRecord.event_id == event_id)).one_or_none()
    if row is None:
        raise not_found(f"AuditEvent/{event_id} is not known")
    reviewable = session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.seq == row.seq, needs_review()))
    if not reviewable:
        raise FhirError(409, "business-rule", f"AuditEvent/{event_id} is not a safeguarding override or break-glass view awaiting review",
                        spine_code="INVALID_VALUE")
    standing = latest_reviews(session, [row.seq]).get(row.seq)
    if standing is not None and standing.outcome in CLOSING:
        raise FhirError(409, "conflict", f"AuditEvent/{event_id} was already reviewed as {standing.outcome}", spine_code="CONFLICT")
    reviewed = balp.AccessEvent(principal, "ig-review", action="U", request_id=request_id, outcome_desc=f"review: {outcome}")
    reviewed.entity(f"AuditEvent/{event_id}", outcome=outcome, note=note.strip())
    body = json.loads(row.body)
    reviewed.about(e["what"]["reference"] for e in body.get("entity") or []
                   if (e.get("role") or {}).get("code") == "1" and "reference" in (e.get("what") or {}))
    review_event = balp.record(session, reviewed)
    at = now or datetime.now(timezone.utc)
    session.add(Review(event_seq=row.seq, event_id=event_id, outcome=outcome, note=note.strip(), reviewer_sub=principal.sub,
                       reviewer_org=principal.org, reviewed_at=at, review_event_id=review_event))
    session.flush()
    return ReviewStatus(outcome, note.strip(), principal.sub, principal.org, at, review_event)


def show_reviews(session: Session, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as read, each with its standing review as an extension (the stored,
    hash-chained body is not changed: the review is its own event on the chain)."""
    if not events:
        return events
    seqs = dict(session.execute(select(AuditRecord.event_id, AuditRecord.seq).where(AuditRecord.event_id.in_([e["id"] for e in events]))).all())
    reviews = latest_reviews(session, list(seqs.values()))
    for e in events:
        status = reviews.get(seqs.get(e["id"], -1))
        if status is not None:
            e.setdefault("extension", []).append({"url": EXT_REVIEW, "extension": [
                {"url": "outcome", "valueCode": status.outcome},
                {"url": "note", "valueString": status.note},
                {"url": "reviewer", "valueString": status.reviewer},
                {"url": "reviewed", "valueDateTime": _instant(status.reviewed_at)},
                {"url": "reviewEvent", "valueReference": {"reference": f"AuditEvent/{status.review_event}"}},
            ]})
    return events
