"""AuditEvent read and search, for IG officers only."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, func, select

from app.audit.models import AuditIndex, AuditRecord
from app.auth.access import AuditReader
from app.errors import not_found
from app.fhir import search
from app.fhir.http import FhirContext, FhirResponse, fhir_context

router = APIRouter(prefix="/fhir/AuditEvent", tags=["Audit"])
SEARCH_PARAMS = ("patient", "agent", "date", "entity", "type", "subtype", "outcome", "purpose", "_id")
DEFAULT_COUNT, MAX_COUNT = 50, 500


@router.get("/{event_id}", summary="Read one AuditEvent (IG officers)")
def read_event(event_id: str, _: AuditReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    with ctx.db.session(readonly=True) as s:
        row = s.execute(select(AuditRecord).where(AuditRecord.event_id == event_id)).scalar_one_or_none()
        if row is None:
            raise not_found(f"AuditEvent/{event_id} is not known")
        return FhirResponse(row.body)


def _reference_value(value: str) -> str:
    return value.split("/_history", 1)[0].rstrip("/")


DATE_MESSAGE = "date must be a FHIR date or dateTime, optionally with a prefix (eq, ne, lt, gt, le, ge, sa, eb, ap)"


@router.get("", summary="Search the audit (IG officers): patient, agent, date, entity, type, subtype, outcome, purpose")
def search_events(request: Request, _: AuditReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    params = list(request.query_params.multi_items())
    search.check_limits(params, search.SearchLimits.of(ctx.settings), "AuditEvent")
    conds = []
    paging = search.Paging.start(DEFAULT_COUNT, MAX_COUNT)
    for key, value in params:
        if paging.take(key, value) or key in search.FORMAT_PARAMS:
            continue
        if key not in SEARCH_PARAMS:
            raise search.unknown_parameter("AuditEvent", key, SEARCH_PARAMS)
        values = search.values(key, value, f"AuditEvent?{key}")
        if key in ("patient", "entity"):
            wanted = [_reference_value(v.split("|", 1)[-1]) for v in values]
            conds.append(AuditRecord.seq.in_(select(AuditIndex.event_seq).where(AuditIndex.param == key, AuditIndex.value.in_(wanted))))
        elif key == "agent":
            conds.append((AuditRecord.agent_sub.in_(values)) | (AuditRecord.agent_org.in_(values)))
        elif key == "date":
            conds += [search.instant_condition(AuditRecord.recorded, v, "AuditEvent?date", DATE_MESSAGE) for v in values]
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
        total = s.scalar(select(func.count()).select_from(AuditRecord).where(where)) or 0
        rows = s.execute(select(AuditRecord.body).where(where).order_by(AuditRecord.seq.desc())
                         .offset(paging.offset).limit(paging.count)).scalars().all() if paging.count else []
    resources = [json.loads(b) for b in rows]
    return FhirResponse(search.searchset(f"{ctx.base}/AuditEvent", params, paging, total,
                                         ((f"{ctx.base}/AuditEvent/{r['id']}", r) for r in resources)))
