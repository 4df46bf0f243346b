"""AuditEvent read and search, for IG officers only."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, func, select

from app.audit.models import AuditIndex, AuditRecord
from app.errors import FhirError, bad_request, not_found
from app.fhir.http import FhirContext, FhirResponse, fhir_context
from app.fhir.indexing import date_range

router = APIRouter(prefix="/fhir/AuditEvent", tags=["Audit"])
SEARCH_PARAMS = ("patient", "agent", "date", "entity", "type", "subtype", "outcome", "purpose", "_id")
_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge")


def _require_ig(ctx: FhirContext) -> None:
    if ctx.principal.role != "ig-officer":
        raise FhirError(403, "forbidden", "Only IG officers may read the audit", spine_code="ACCESS_DENIED")


@router.get("/{event_id}", summary="Read one AuditEvent (IG officers)")
def read_event(event_id: str, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    _require_ig(ctx)
    with ctx.db.session(readonly=True) as s:
        row = s.execute(select(AuditRecord).where(AuditRecord.event_id == event_id)).scalar_one_or_none()
        if row is None:
            raise not_found(f"AuditEvent/{event_id} is not known")
        return FhirResponse(row.body)


def _reference_value(value: str) -> str:
    return value.split("/_history", 1)[0].rstrip("/")


def _date_cond(raw: str):
    prefix, value = (raw[:2], raw[2:]) if raw[:2] in _PREFIXES and raw[2:3].isdigit() else ("eq", raw)
    try:
        low, high = date_range(value)
    except ValueError:
        raise bad_request("date must be a FHIR date or dateTime, optionally with a prefix (ge, le, gt, lt, eq, ne)", expression="AuditEvent?date") from None
    lo = datetime.fromisoformat(low).replace(tzinfo=timezone.utc)
    hi = datetime.fromisoformat(high).replace(tzinfo=timezone.utc, microsecond=999999)
    col = AuditRecord.recorded
    return {"eq": and_(col >= lo, col <= hi), "ne": ~and_(col >= lo, col <= hi), "lt": col < lo, "gt": col > hi, "le": col <= hi, "ge": col >= lo}[prefix]


@router.get("", summary="Search the audit (IG officers): patient, agent, date, entity, type, subtype, outcome, purpose")
def search_events(request: Request, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    _require_ig(ctx)
    params = list(request.query_params.multi_items())
    conds, count, offset = [], 50, 0
    for key, value in params:
        if key == "_count":
            count = min(max(int(value), 0), 500) if value.isdigit() else _bad_int("_count")
            continue
        if key == "_offset":
            offset = int(value) if value.isdigit() else _bad_int("_offset")
            continue
        if key in ("_format", "_pretty"):
            continue
        if key not in SEARCH_PARAMS:
            raise bad_request(f"Unknown search parameter '{key}' for AuditEvent. Supported: {', '.join(SEARCH_PARAMS)}", expression=f"AuditEvent?{key}", code="not-supported")
        values = [v for v in value.split(",") if v]
        if not values:
            raise bad_request(f"{key} needs a value", expression=f"AuditEvent?{key}", code="required")
        if key in ("patient", "entity"):
            wanted = [_reference_value(v.split("|", 1)[-1]) for v in values]
            conds.append(AuditRecord.seq.in_(select(AuditIndex.event_seq).where(AuditIndex.param == key, AuditIndex.value.in_(wanted))))
        elif key == "agent":
            conds.append((AuditRecord.agent_sub.in_(values)) | (AuditRecord.agent_org.in_(values)))
        elif key == "date":
            conds += [_date_cond(v) for v in values]
        elif key == "type":
            conds.append(AuditRecord.type_code.in_([v.split("|")[-1] for v in values]))
        elif key == "subtype":
            conds.append(AuditRecord.subtype_code.in_([v.split("|")[-1] for v in values]))
        elif key == "outcome":
            conds.append(AuditRecord.outcome.in_(values))
        elif key == "purpose":
            conds.append(AuditRecord.purpose_of_use.in_([v.split("|")[-1] for v in values]))
        elif key == "_id":
            conds.append(AuditRecord.event_id.in_(values))
    where = and_(*conds) if conds else True
    with ctx.db.session(readonly=True) as s:
        total = s.scalar(select(func.count()).select_from(AuditRecord).where(where))
        rows = s.execute(select(AuditRecord.body).where(where).order_by(AuditRecord.seq.desc()).offset(offset).limit(count)).scalars().all()
    filters = [(k, v) for k, v in params if k not in ("_count", "_offset")]
    links = [{"relation": "self", "url": f"{ctx.base}/AuditEvent?{urlencode(filters + [('_count', count), ('_offset', offset)])}"}]
    if offset + count < total and count:
        links.append({"relation": "next", "url": f"{ctx.base}/AuditEvent?{urlencode(filters + [('_count', count), ('_offset', offset + count)])}"})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if rows:
        bundle["entry"] = [{"fullUrl": f"{ctx.base}/AuditEvent/{json.loads(b)['id']}", "resource": json.loads(b), "search": {"mode": "match"}} for b in rows]
    return FhirResponse(bundle)


def _bad_int(name: str):
    raise bad_request(f"{name} must be a whole number", expression=name)
