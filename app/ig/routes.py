"""HTTP surface of information governance (IG officers): thin views over the services of
``app.ig`` (parse, call, return). The IG pages call the same services.

    GET  /ig/reviews?overdue=true&_count=&_offset=     the review queue, oldest first
    POST /ig/reviews/{event_id}  {"outcome", "note"}    record a review
    GET  /fhir/Patient/{id}/$disclosure-report          every disclosure of the person (FHIR Bundle or CSV);
                                                        also RelatedPerson/{id}: any record of the person
    GET  /fhir/Patient/$disclosure-report?identifier=https://fhir.nhs.uk/Id/nhs-number|NNN
    GET  /ig/audit/export?from=&to=&format=ndjson|csv   the audit of a period, streamed
    GET  /ig/notifications?status=&recipient=           every notification to record holders, with delivery status
    GET  /notifications?status=                         a holder's own notifications (its token's organisation)
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.audit import balp
from app.auth.access import AuditExporter, DisclosureReporter, IgReviewer, NotificationReader, OwnNotificationReader
from app.errors import FhirError, bad_request
from app.fhir import search
from app.fhir.http import CSV, NDJSON, FhirContext, FhirResponse, fhir_context, json_object, produces, required_text
from app.ig import disclosure, export, notifications, reviews
from app.linkage.queue import linkage_settled

router = APIRouter(prefix="/ig", tags=["Information governance"])


@router.get("/reviews", summary="The IG review queue: open safeguarding overrides and break-glass views, oldest first")
def review_queue(request: Request, principal: IgReviewer) -> FhirResponse:
    paging = search.Paging.start(50, 500)
    only_overdue = False
    for name, value in request.query_params.multi_items():
        if paging.take(name, value) or name in search.FORMAT_PARAMS:
            continue
        if name != "overdue":
            raise bad_request(f"Unknown parameter '{name}' (supported: overdue, _count, _offset)", expression=name, code="not-supported")
        if value not in ("true", "false"):
            raise bad_request("overdue must be true or false", expression="overdue")
        only_overdue = value == "true"
    settings = request.app.state.settings
    with request.app.state.db.session() as session:
        total, items = reviews.read_queue(session, principal, overdue_days=settings.ig_review_overdue_days, offset=paging.offset,
                                          count=paging.count, only_overdue=only_overdue, request_id=getattr(request.state, "request_id", ""))
    return FhirResponse({"total": total, "overdueAfterDays": settings.ig_review_overdue_days, "offset": paging.offset,
                         "items": [i.to_json() for i in items]})


@router.post("/reviews/{event_id}", summary="Record an IG review of an override: outcome appropriate | inappropriate | needs-follow-up, and a note")
async def review(event_id: str, request: Request, principal: IgReviewer) -> FhirResponse:
    body = await json_object(request, "outcome", "note")
    outcome, note = required_text(body, "outcome"), required_text(body, "note")
    request_id = getattr(request.state, "request_id", "")

    def work() -> dict[str, Any]:
        with request.app.state.db.session() as session:
            return reviews.record_review(session, principal, event_id, outcome, note, request_id=request_id).to_json()

    return FhirResponse({"event": f"AuditEvent/{event_id}", **await run_in_threadpool(work)}, status_code=201)


@router.get("/audit/export", summary="Export the audit of a period (from, to: FHIR dates or dateTimes) as NDJSON or CSV, streamed",
            openapi_extra=produces(NDJSON, CSV, only=True))
def audit_export(request: Request, principal: AuditExporter,
                 start: str | None = Query(None, alias="from", description="first date or dateTime included"),
                 end: str | None = Query(None, alias="to", description="last date or dateTime included (the whole day for a date)"),
                 format: str | None = Query(None, description="ndjson (default) or csv; or _format, or Accept")) -> StreamingResponse:
    for name in request.query_params:
        if name not in ("from", "to", "format", "_format"):
            raise bad_request(f"Unknown parameter '{name}' (supported: from, to, format)", expression=name, code="not-supported")
    for name in ("from", "to", "format"):
        if len(request.query_params.getlist(name)) > 1:
            raise bad_request(f"{name} may be given only once", expression=name)
    if format is not None and format not in export.FORMATS:
        raise bad_request("format must be ndjson or csv", expression="format")
    chosen = format or ("csv" if getattr(request.state, "media_type", None) == CSV else "ndjson")
    where = export.period(start, end)
    db = request.app.state.db
    event = balp.AccessEvent(principal, "audit-export", action="R", request_id=getattr(request.state, "request_id", ""),
                             query=str(request.url.query), outcome_desc=f"audit exported as {chosen}")
    with db.session() as session:  # recorded before the first byte: an export that cannot be audited does not start
        balp.record(session, event)
    if chosen == "csv":
        return StreamingResponse(export.csv_rows(db, where), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="audit.csv"'})
    return StreamingResponse(export.ndjson(db, where), media_type="application/fhir+ndjson",
                             headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'})


def _notifications(request: Request, principal, allowed: tuple[str, ...], target_org: str | None) -> FhirResponse:
    paging = search.Paging.start(50, 500)
    status = None
    for name, value in request.query_params.multi_items():
        if paging.take(name, value) or name in search.FORMAT_PARAMS:
            continue
        if name not in allowed:
            raise bad_request(f"Unknown parameter '{name}' (supported: {', '.join(allowed + ('_count', '_offset'))})", expression=name, code="not-supported")
        if name == "status":
            if value not in notifications.STATUSES:
                raise bad_request(f"status must be one of {', '.join(notifications.STATUSES)}", expression="status")
            status = value
        elif name == "recipient":
            target_org = value
    with request.app.state.db.session() as session:
        total, found = notifications.read_notifications(session, principal, target_org=target_org, status=status, offset=paging.offset,
                                                        count=paging.count, query=str(request.url.query),
                                                        request_id=getattr(request.state, "request_id", ""))
    return FhirResponse({"total": total, "offset": paging.offset, "notifications": [n.to_json() for n in found]})


@router.get("/notifications", summary="Notifications to record holders and their delivery status (IG officers)")
def ig_notifications(request: Request, principal: NotificationReader) -> FhirResponse:
    return _notifications(request, principal, ("status", "recipient"), None)


holder_router = APIRouter(tags=["Information governance"])


@holder_router.get("/notifications", summary="A record holder's own notifications of disclosures, with delivery status")
def own_notifications(request: Request, principal: OwnNotificationReader) -> FhirResponse:
    return _notifications(request, principal, ("status",), principal.org)


report_router = APIRouter(prefix="/fhir/Patient", tags=["Information governance"], dependencies=[Depends(linkage_settled)])
record_router = APIRouter(prefix="/fhir", tags=["Information governance"], dependencies=[Depends(linkage_settled)])


def _report(request: Request, ctx: FhirContext, asked_for: str) -> Response:
    with ctx.db.session() as session:
        report = disclosure.read_report(session, ctx.principal, asked_for, request_id=ctx.request_id)
    if getattr(request.state, "media_type", None) == CSV:
        return Response(disclosure.to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="disclosure-report.csv"'})
    return FhirResponse(disclosure.to_bundle(report, ctx.base))


@report_router.get("/$disclosure-report", summary="Subject access: every disclosure of a person's data, by identifier (NHS number)",
                   openapi_extra=produces(CSV))
def disclosure_report_by_identifier(
    request: Request, _: DisclosureReporter,
    identifier: str | None = Query(None, description="https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN"),
    ctx: FhirContext = Depends(fhir_context),
) -> Response:
    for name in request.query_params:
        if name not in ("identifier", "_format"):
            raise bad_request(f"Unknown parameter '{name}' (supported: identifier, _format)", expression=name, code="not-supported")
    if len(request.query_params.getlist("identifier")) != 1 or not (identifier or "").strip():
        raise FhirError(400, "required", "Give one identifier=https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN", expression="identifier", spine_code="MISSING_VALUE")
    system, sep, value = identifier.partition("|")
    if sep and system != "https://fhir.nhs.uk/Id/nhs-number":
        raise bad_request("identifier must be an NHS number (https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN)", expression="identifier")
    from app.identifiers import is_valid_nhs_number

    value = value if sep else system
    if not is_valid_nhs_number(value):
        raise FhirError(422, "value", "identifier is not a valid NHS number (10 digits, Modulus 11)", expression="identifier", spine_code="INVALID_IDENTIFIER_VALUE")
    return _report(request, ctx, value)


@record_router.get("/{res_type}/{record_id}/$disclosure-report",
                   summary="Subject access: every disclosure of the data of the person Patient/{id} or RelatedPerson/{id} is, through all their linked records",
                   openapi_extra=produces(CSV))
def disclosure_report_by_record(res_type: str, record_id: str, request: Request, _: DisclosureReporter,
                                ctx: FhirContext = Depends(fhir_context)) -> Response:
    if res_type not in ("Patient", "RelatedPerson"):
        raise FhirError(404, "not-supported", "$disclosure-report is an operation on Patient and RelatedPerson", spine_code="INVALID_RESOURCE")
    for name in request.query_params:
        if name != "_format":
            raise bad_request(f"Unknown parameter '{name}' (supported: _format)", expression=name, code="not-supported")
    from app.fhir import store

    with ctx.db.session(readonly=True) as session:
        row = store.get_current(session, res_type, record_id)
        if row is None or row.deleted:
            raise FhirError(404, "not-found", f"{res_type}/{record_id} is not known")
    return _report(request, ctx, f"{res_type}/{record_id}")


def install(app, *, operations: list, extra_resources: list) -> None:
    app.include_router(router)
    app.include_router(report_router)
    app.include_router(holder_router)
    app.include_router(record_router)
    operations.append({"code": "disclosure-report", "url": f"{balp.FV}/OperationDefinition/disclosure-report"})
