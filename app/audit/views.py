"""AuditEvent read and search, for IG officers only."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.audit import balp
from app.audit.models import AuditIndex, AuditRecord
from app.auth.access import AuditReader
from app.auth.tokens import Principal
from app.errors import not_found
from app.fhir import search
from app.fhir.http import FhirContext, FhirResponse, fhir_context
from app.ig.reviews import show_reviews
from app.ig.subjects import person_records
from app.linkage.queue import linkage_settled

# patient= reaches every record of the person, so what is still queued for linkage is linked first
router = APIRouter(prefix="/fhir/AuditEvent", tags=["Audit"], dependencies=[Depends(linkage_settled)])
SEARCH_PARAMS = ("patient", "agent", "date", "entity", "type", "subtype", "outcome", "purpose", "_id")
DEFAULT_COUNT, MAX_COUNT = 50, 500


@router.get("/{event_id}", summary="Read one AuditEvent (IG officers)")
def read_event(event_id: str, _: AuditReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    with ctx.db.session() as s:  # the IG officer's own reads are audited too
        row = s.execute(select(AuditRecord).where(AuditRecord.event_id == event_id)).scalar_one_or_none()
        if row is None:
            raise not_found(f"AuditEvent/{event_id} is not known")
        body = show_reviews(s, [json.loads(row.body)])[0]
        balp.record(s, balp.AccessEvent(ctx.principal, "read", request_id=ctx.request_id).entity(f"AuditEvent/{event_id}"))
        return FhirResponse(body)


def _reference_value(value: str) -> str:
    return value.split("/_history", 1)[0].rstrip("/")


DATE_MESSAGE = "date must be a FHIR date or dateTime, optionally with a prefix (eq, ne, lt, gt, le, ge, sa, eb, ap)"


@router.get("", summary="Search the audit (IG officers): patient, agent, date, entity, type, subtype, outcome, purpose")
def search_events(request: Request, _: AuditReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    params = list(request.query_params.multi_items())
    with ctx.db.session() as s:
        paging, total, resources = search_audit(s, ctx.principal, params, search.SearchLimits.of(ctx.settings), request_id=ctx.request_id)
    return FhirResponse(search.searchset(f"{ctx.base}/AuditEvent", params, paging, total,
                                         ((f"{ctx.base}/AuditEvent/{r['id']}", r) for r in resources)))


def search_audit(s: Session, principal: Principal, params: list[tuple[str, str]], limits: search.SearchLimits, *,
                 request_id: str = "") -> tuple[search.Paging, int, list[dict[str, Any]]]:
    """The audit search (the API's and the IG pages'): the matching events newest first, each
    with its standing review; the search is itself audited in the caller's transaction."""
    search.check_limits(params, limits, "AuditEvent")
    conds = []
    patients: list[list[str]] = []
    paging = search.Paging.start(DEFAULT_COUNT, MAX_COUNT)
    for key, value in params:
        if paging.take(key, value) or key in search.FORMAT_PARAMS:
            continue
        if key not in SEARCH_PARAMS:
            raise search.unknown_parameter("AuditEvent", key, SEARCH_PARAMS)
        values = search.values(key, value, f"AuditEvent?{key}")
        if key == "patient":
            patients.append(values)
        elif key == "entity":
            wanted = [_reference_value(v.split("|", 1)[-1]) for v in values]
            conds.append(AuditRecord.seq.in_(select(AuditIndex.event_seq).where(AuditIndex.param == "entity", AuditIndex.value.in_(wanted))))
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
    for values in patients:  # any record of the person, through linkage
        found: set[str] = set()
        for v in values:
            found |= person_records(s, v).index_values | {_reference_value(v.split("|", 1)[-1])}
        conds.append(AuditRecord.seq.in_(select(AuditIndex.event_seq).where(AuditIndex.param == "patient", AuditIndex.value.in_(sorted(found)))))
    where = and_(*conds) if conds else True
    total = s.scalar(select(func.count()).select_from(AuditRecord).where(where)) or 0
    rows = s.execute(select(AuditRecord.body).where(where).order_by(AuditRecord.seq.desc())
                     .offset(paging.offset).limit(paging.count)).scalars().all() if paging.count else []
    query = "&".join(f"{k}={v}" for k, v in params)
    searched = balp.AccessEvent(principal, "search-type", query=f"AuditEvent?{query}", request_id=request_id)
    searched.outcome_desc = f"{total} match(es)"
    searched.about(v for values in patients for v in values)
    balp.record(s, searched)  # the IG officer's own searches are audited, in the search's transaction
    return paging, total, show_reviews(s, [json.loads(b) for b in rows])
