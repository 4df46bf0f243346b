"""Writing and verifying the audit chain. Written in the caller's transaction: if the audit
row cannot be written, the transaction fails and nothing it would have disclosed is sent."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from app.audit.models import AuditIndex, AuditRecord

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
        RETURNING seq
    )
    INSERT INTO audit_index (event_seq, param, value)
    SELECT ev.seq, v.param, v.value FROM ev, unnest(CAST(:params AS text[]), CAST(:vals AS text[])) AS v(param, value)
    """
)


def append(session: Session, event: dict[str, Any], columns: AuditColumns, index: Iterable[tuple[str, str]]) -> None:
    """Append one AuditEvent to the chain, in the caller's transaction."""
    conn = session.connection()
    recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    body = json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    entries = sorted({(p, v[:255]) for p, v in index if v})
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_KEY})
        conn.execute(_APPEND_PG, {
            "genesis": GENESIS, "event_id": event["id"], "recorded": recorded, "body": body,
            "suffix": f"|{event['id']}|{_recorded_text(recorded)}|{body}",
            "params": [p for p, _ in entries], "vals": [v for _, v in entries], **columns.__dict__,
        })
        return
    prev_hash = conn.execute(_LAST_HASH).scalar() or GENESIS  # SQLite: BEGIN IMMEDIATE serialises writers
    digest = chain_hash(prev_hash, event["id"], _recorded_text(recorded), body)
    seq = conn.execute(
        _INSERT_EVENT,
        {"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev_hash, "hash": digest, **columns.__dict__},
    ).scalar_one()
    if entries:
        conn.execute(insert(AuditIndex).values([{"event_seq": seq, "param": p, "value": v} for p, v in entries]))


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_at: int | None = None
    event_id: str | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} events verified"
        return f"audit chain BROKEN at event #{self.broken_at} ({self.event_id}): {self.problem}; {self.checked} events before it verified"


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain from the first event; name the first link that does not hold."""
    prev_hash, checked, last_seq = GENESIS, 0, 0
    while True:
        rows = session.execute(
            select(AuditRecord).where(AuditRecord.seq > last_seq).order_by(AuditRecord.seq).limit(batch)
        ).scalars().all()
        if not rows:
            return VerifyResult(True, checked)
        for r in rows:
            if r.prev_hash != prev_hash:
                return VerifyResult(False, checked, r.seq, r.event_id, "its previous-hash does not match the event before it (a row was removed or re-ordered)")
            expected = chain_hash(prev_hash, r.event_id, _recorded_text(r.recorded), r.body)
            if r.hash != expected:
                return VerifyResult(False, checked, r.seq, r.event_id, "its content does not match its hash (the row was altered)")
            try:
                body = json.loads(r.body)
            except json.JSONDecodeError:
                return VerifyResult(False, checked, r.seq, r.event_id, "its body is not valid JSON")
            if body.get("id") != r.event_id or body.get("outcome") != r.outcome:
                return VerifyResult(False, checked, r.seq, r.event_id, "its searchable columns disagree with its body (a column was altered)")
            prev_hash = r.hash
            checked += 1
            last_seq = r.seq
            session.expunge(r)
