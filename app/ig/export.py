"""Audit export for IG officers: every AuditEvent recorded in a period, as NDJSON (one stored,
hash-chained FHIR AuditEvent per line, byte for byte) or CSV (the searchable columns and the
chain hashes), streamed in chain order in bounded memory: a keyset walk of ``batch`` events at
a time on one read transaction (one snapshot), never the whole period in memory."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from psycopg.types.string import ByteaBinaryLoader
from sqlalchemy import String, and_, bindparam, literal_column, select, type_coerce

from app.audit.models import AuditRecord
from app.db import Database, scan_cache
from app.fhir import search
from app.ig.disclosure import safe_cell

FORMATS = ("ndjson", "csv")
CSV_COLUMNS = ("seq", "id", "recorded", "type", "subtype", "action", "outcome", "purpose_of_use", "agent", "agent_organisation",
               "agent_role", "review_required", "policy_version", "prev_hash", "hash", "hash_form")
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


def _batches(db: Database, where: Any, batch: int, columns: Callable[[str], tuple[Any, ...]], *,
             text_as_bytes: bool = False) -> Iterator[list[Any]]:
    """The period's rows, seq first, in chain order, ``batch`` at a time (a keyset walk on one
    read transaction); plain driver tuples: no ORM objects, no Row objects, no conversion per
    value. The next batch is fetched on a second thread while the caller writes this one (the
    database, PostgreSQL's own process or SQLite without the GIL, works beside the Python).
    ``text_as_bytes``: PostgreSQL sends text in binary and it comes as the UTF-8 bytes it is
    (no decode to str and encode back)."""
    with db.session(readonly=True) as session, scan_cache(session.connection()):
        connection = session.connection()
        dialect = connection.dialect.name
        q = select(AuditRecord.seq, *columns(dialect))
        if where is not None:
            q = q.where(where)
        q = q.where(AuditRecord.seq > bindparam("last")).order_by(AuditRecord.seq).limit(batch)
        fetch: Callable[[int], list[Any]]
        if text_as_bytes and dialect == "postgresql":
            compiled = q.compile(dialect=connection.dialect)
            statement, params = str(compiled), compiled.params
            cursor = connection.connection.driver_connection.cursor(binary=True)  # type: ignore[union-attr]
            cursor.adapters.register_loader("text", ByteaBinaryLoader)

            def fetch(last: int) -> list[Any]:
                cursor.execute(statement, {**params, "last": last})
                return cursor.fetchall()
        else:
            def fetch(last: int) -> list[Any]:
                result = connection.execute(q, {"last": last})
                return result.cursor.fetchall() if result.cursor is not None else []  # the driver's tuples, as they come

        pool = ThreadPoolExecutor(1, thread_name_prefix="audit-export")
        try:
            ahead = pool.submit(fetch, 0)
            while True:
                rows = ahead.result()
                if not rows:
                    return
                ahead = pool.submit(fetch, rows[-1][0])
                yield rows
        finally:
            pool.shutdown(wait=True)


def ndjson(db: Database, where: Any, *, batch: int = 500) -> Iterator[bytes]:
    """Each event's stored body, one per line, in chain order (a chunk per batch)."""
    # SQLite hands over the stored UTF-8 bytes as they are (no decode to str and encode back)
    body = {"sqlite": literal_column("CAST(audit_event.body AS BLOB)")}
    for rows in _batches(db, where, batch, lambda dialect: (body.get(dialect, AuditRecord.body),), text_as_bytes=True):
        if isinstance(rows[0][1], bytes):
            yield b"\n".join([body for _, body in rows]) + b"\n"
        else:
            yield ("\n".join([body for _, body in rows]) + "\n").encode()


# A CSV row joined by the database: its cells as the export writes them (the agent and the
# organisation defused as safe_cell() does), joined with commas; NULL when a cell is not as the
# gateway stores it (SQLite: an instant not in its stored form, a review flag not 0 or 1). A row
# with no cell to quote is that line as it is (exactly as csv.writer, QUOTE_MINIMAL, writes it);
# any other is written from its cells by csv.writer, read on its own (rare).
_SQLITE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]"


def _csv_line(dialect: str) -> Any:
    e = "audit_event."
    char = "chr" if dialect == "postgresql" else "char"
    formula = f"('=', '+', '-', '@', {char}(9), {char}(13))"

    def defused(x: str) -> str:
        return f"CASE WHEN substr({x}, 1, 1) IN {formula} THEN '''' || {x} ELSE {x} END"

    if dialect == "postgresql":
        recorded = f"""to_char({e}recorded AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
        review = f"CASE WHEN {e}review_required THEN 'true' ELSE 'false' END"
        ok = "true"
    else:
        recorded = f"substr({e}recorded, 1, 10) || 'T' || substr({e}recorded, 12, 12) || 'Z'"
        review = f"CASE {e}review_required WHEN 1 THEN 'true' ELSE 'false' END"
        ok = (f"typeof({e}recorded) = 'text' AND {e}recorded GLOB '{_SQLITE_GLOB}' AND typeof({e}review_required) = 'integer' "
              f"AND {e}review_required IN (0, 1)")
    cells = [f"{e}seq", f"{e}event_id", recorded, f"{e}type_code", f"{e}subtype_code", f"{e}action", f"{e}outcome",
             f"coalesce({e}purpose_of_use, '')", defused(f"{e}agent_sub"), defused(f"{e}agent_org"), f"{e}agent_role", review,
             f"coalesce({e}policy_version, '')", f"{e}prev_hash", f"{e}hash", f"{e}hash_form"]
    return literal_column(f"CASE WHEN {ok} THEN " + " || ',' || ".join(cells) + " END")


def csv_rows(db: Database, where: Any, *, batch: int = 2000) -> Iterator[bytes]:
    """A header, then a row per event: who, what kind, when, outcome, the chain hashes and the
    hash's form (app.audit.walk: 2 seals the searchable columns and search rows the body implies)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()

    dialects: list[str] = []

    def cols(dialect: str) -> tuple[Any, ...]:
        dialects.append(dialect)
        return (_csv_line(dialect),)

    commas = len(CSV_COLUMNS) - 1
    for rows in _batches(db, where, batch, cols):
        lines = [line if line is not None and line.count(",") == commas and '"' not in line and "\n" not in line and "\r" not in line
                 else _csv_row_in_python(db, seq, dialects[0], writer, buffer) for seq, line in rows]
        lines.append("")
        yield "\r\n".join(lines).encode()


def _csv_row_in_python(db: Database, seq: int, dialect: str, writer: Any, buffer: io.StringIO) -> str:
    """One event's CSV row from its cells, as csv.writer writes it (a row the database could not
    write: rare, so read on its own)."""
    with db.session(readonly=True) as session:
        (_, event_id, recorded, type_code, subtype_code, action, outcome, purpose, sub, org, role, review, policy, prev_hash,
         hash_, form) = session.connection().execute(
            select(AuditRecord.seq, AuditRecord.event_id, _recorded_column(dialect), AuditRecord.type_code, AuditRecord.subtype_code,
                   AuditRecord.action, AuditRecord.outcome, AuditRecord.purpose_of_use, AuditRecord.agent_sub, AuditRecord.agent_org,
                   AuditRecord.agent_role, AuditRecord.review_required, AuditRecord.policy_version, AuditRecord.prev_hash,
                   AuditRecord.hash, AuditRecord.hash_form).where(AuditRecord.seq == seq)).one()
    cells = (str(seq), event_id, _sqlite_instant(recorded) if dialect == "sqlite" else recorded, type_code, subtype_code, action,
             outcome, purpose or "", safe_cell(sub), safe_cell(org), role, "true" if review else "false", policy or "", prev_hash, hash_, str(form))
    buffer.seek(0)
    buffer.truncate()
    writer.writerow(cells)
    return buffer.getvalue()[:-2]
