"""Audit export for IG officers: every AuditEvent recorded in a period, as NDJSON (one stored,
hash-chained FHIR AuditEvent per line, byte for byte) or CSV (the searchable columns and the
chain hashes), streamed in chain order in bounded memory: a keyset walk of ``batch`` events at
a time on one read transaction (one snapshot), never the whole period in memory."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, select

from app.audit.models import AuditRecord
from app.db import Database
from app.fhir import search
from app.ig.disclosure import safe_cell

FORMATS = ("ndjson", "csv")
CSV_COLUMNS = ("seq", "id", "recorded", "type", "subtype", "action", "outcome", "purpose_of_use", "agent", "agent_organisation",
               "agent_role", "review_required", "policy_version", "prev_hash", "hash")
DATE_MESSAGE = "from and to must be FHIR dates or dateTimes (e.g. 2026-12-01 or 2026-12-01T09:00:00Z)"


def period(start: str | None, end: str | None) -> Any:
    """The SQL condition for [from, to], each covering its precision (to=2026-12-06 takes that whole day)."""
    conds = []
    if start:
        conds.append(search.instant_condition(AuditRecord.recorded, f"ge{start}", "from", DATE_MESSAGE))
    if end:
        conds.append(search.instant_condition(AuditRecord.recorded, f"le{end}", "to", DATE_MESSAGE))
    return and_(*conds) if conds else None


def _instant(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rows(db: Database, where: Any, batch: int, columns) -> Iterator[Any]:
    with db.session(readonly=True) as session:
        last = 0
        while True:
            q = select(AuditRecord.seq, *columns).where(AuditRecord.seq > last)
            if where is not None:
                q = q.where(where)
            rows = session.execute(q.order_by(AuditRecord.seq).limit(batch)).all()
            if not rows:
                return
            yield from rows
            last = rows[-1].seq


def ndjson(db: Database, where: Any, *, batch: int = 2000) -> Iterator[bytes]:
    """Each event's stored body, one per line, in chain order (chunks of a batch)."""
    lines: list[str] = []
    for row in _rows(db, where, batch, (AuditRecord.body,)):
        lines.append(row.body)
        if len(lines) >= batch:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def csv_rows(db: Database, where: Any, *, batch: int = 2000) -> Iterator[bytes]:
    """A header, then a row per event: who, what kind, when, outcome and the chain hashes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    cols = (AuditRecord.event_id, AuditRecord.recorded, AuditRecord.type_code, AuditRecord.subtype_code, AuditRecord.action,
            AuditRecord.outcome, AuditRecord.purpose_of_use, AuditRecord.agent_sub, AuditRecord.agent_org, AuditRecord.agent_role,
            AuditRecord.review_required, AuditRecord.policy_version, AuditRecord.prev_hash, AuditRecord.hash)
    n = 0
    for r in _rows(db, where, batch, cols):
        writer.writerow((r.seq, r.event_id, _instant(r.recorded), r.type_code, r.subtype_code, r.action, r.outcome,
                         r.purpose_of_use or "", safe_cell(r.agent_sub), safe_cell(r.agent_org), r.agent_role,
                         "true" if r.review_required else "false", r.policy_version or "", r.prev_hash, r.hash))
        n += 1
        if n % batch == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
