"""Audit export for IG officers: every AuditEvent recorded in a period, as NDJSON (one stored,
hash-chained FHIR AuditEvent per line, byte for byte) or CSV (the searchable columns and the
chain hashes), streamed in chain order in bounded memory: a keyset walk of ``batch`` events at
a time on one read transaction (one snapshot), never the whole period in memory."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import String, and_, bindparam, literal_column, select, type_coerce

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


_SQLITE_INSTANT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)


def _sqlite_instant(stored: Any) -> str:
    """A SQLite row's stored instant ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) as _instant() writes it."""
    if isinstance(stored, str) and _SQLITE_INSTANT.fullmatch(stored):
        return f"{stored[:10]}T{stored[11:23]}Z"
    return _instant(stored if isinstance(stored, datetime) else datetime.fromisoformat(str(stored)))


def _recorded_column(dialect: str) -> Any:
    """The instant as the export writes it, formatted by PostgreSQL (no datetime per row), or
    SQLite's stored text (reshaped by _sqlite_instant)."""
    if dialect == "postgresql":
        return literal_column("""to_char(audit_event.recorded AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""")
    return type_coerce(AuditRecord.recorded, String)


def _batches(db: Database, where: Any, batch: int, columns: Callable[[str], tuple[Any, ...]]) -> Iterator[list[Any]]:
    """The period's rows, seq first, in chain order, ``batch`` at a time (a keyset walk on one
    read transaction); plain tuples: no ORM objects and, for the columns given raw, no
    conversion per value."""
    with db.session(readonly=True) as session:
        connection = session.connection()  # Core rows: the ORM's row loading is a third of the cost at a million events
        dialect = connection.dialect.name
        q = select(AuditRecord.seq, *columns(dialect))
        if where is not None:
            q = q.where(where)
        q = q.where(AuditRecord.seq > bindparam("last")).order_by(AuditRecord.seq).limit(batch)
        last = 0
        while True:
            rows = connection.execute(q, {"last": last}).all()
            if not rows:
                return
            yield rows
            last = rows[-1][0]


def ndjson(db: Database, where: Any, *, batch: int = 1000) -> Iterator[bytes]:
    """Each event's stored body, one per line, in chain order (a chunk per batch)."""
    # SQLite hands over the stored UTF-8 bytes as they are (no decode to str and encode back)
    body = {"sqlite": literal_column("CAST(audit_event.body AS BLOB)")}
    for rows in _batches(db, where, batch, lambda dialect: (body.get(dialect, AuditRecord.body),)):
        if isinstance(rows[0][1], bytes):
            yield b"\n".join([body for _, body in rows]) + b"\n"
        else:
            yield ("\n".join([body for _, body in rows]) + "\n").encode()


def csv_rows(db: Database, where: Any, *, batch: int = 2000) -> Iterator[bytes]:
    """A header, then a row per event: who, what kind, when, outcome and the chain hashes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()

    dialects: list[str] = []

    def cols(dialect: str) -> tuple[Any, ...]:
        dialects.append(dialect)
        return (AuditRecord.event_id, _recorded_column(dialect), AuditRecord.type_code, AuditRecord.subtype_code, AuditRecord.action,
                AuditRecord.outcome, AuditRecord.purpose_of_use, AuditRecord.agent_sub, AuditRecord.agent_org, AuditRecord.agent_role,
                AuditRecord.review_required, AuditRecord.policy_version, AuditRecord.prev_hash, AuditRecord.hash)

    commas = len(CSV_COLUMNS) - 1
    for rows in _batches(db, where, batch, cols):
        sqlite = dialects[0] == "sqlite"
        lines = []
        for (seq, event_id, recorded, type_code, subtype_code, action, outcome, purpose, sub, org, role, review, policy,
             prev_hash, hash_) in rows:
            cells = (str(seq), event_id, _sqlite_instant(recorded) if sqlite else recorded, type_code, subtype_code, action, outcome,
                     purpose or "", safe_cell(sub), safe_cell(org), role, "true" if review else "false", policy or "", prev_hash, hash_)
            line = ",".join(cells)
            # a row with no cell to quote is its cells joined, exactly as csv.writer (QUOTE_MINIMAL) writes it
            if line.count(",") == commas and '"' not in line and "\n" not in line and "\r" not in line:
                lines.append(line)
            else:
                buffer.seek(0)
                buffer.truncate()
                writer.writerow(cells)
                lines.append(buffer.getvalue()[:-2])
        lines.append("")
        yield "\r\n".join(lines).encode()
