"""`$family-view` over HTTP: parse, run the service in one transaction, return with X-Audit-Event."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.exc import SQLAlchemyError

from app.auth.tokens import Principal, Scope
from app.errors import FhirError
from app.family.service import FamilyViewRequest, FamilyViewService
from app.fhir.http import FhirContext, FhirResponse, fhir_context
from app.linkage.queue import linkage_settled

log = logging.getLogger("familyview")
router = APIRouter(prefix="/fhir/Patient", tags=["Family view"], dependencies=[Depends(linkage_settled)])


def _notifier(ctx: FhirContext):
    """Notifications to a data controller are stored as Communications owned by that controller."""

    def notify(session, target_org: str, communication: dict) -> None:
        system = Principal(sub="familyview", role="admin", org=target_org, scopes=(Scope("system", "*", frozenset("cruds")),))
        from app.ingest.service import IngestService

        IngestService(session, system, ctx.settings, [], base=ctx.base).store_generated(communication)

    return notify


def _run(ctx: FhirContext, request: Request, req: FamilyViewRequest) -> FhirResponse:
    req.request_id = getattr(request.state, "request_id", "")
    try:
        with ctx.db.session() as session:
            result = FamilyViewService(session, ctx.principal, notify=_notifier(ctx)).run(req)
    except SQLAlchemyError:
        log.error("family view not returned: the audit could not be written (request_id=%s)", req.request_id, exc_info=False)
        raise FhirError(503, "transient", "The request could not be recorded in the audit, so nothing is disclosed. Try again later.", spine_code="SERVICE_UNAVAILABLE")
    headers = {"X-Audit-Event": f"AuditEvent/{result.audit_event_id}"}
    return FhirResponse(result.body, status_code=result.status, headers=headers)


_PURPOSE = Query(None, description="direct-care | safeguarding")
_JUSTIFICATION = Query(None, description="Why the child may be at risk (required for safeguarding)")


@router.get("/$family-view", summary="The infant-family view, by the infant's identifier (e.g. NHS number)")
def family_view_by_identifier(
    request: Request,
    identifier: str | None = Query(None, description="system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990001103"),
    purpose: str | None = _PURPOSE,
    justification: str | None = _JUSTIFICATION,
    ctx: FhirContext = Depends(fhir_context),
) -> FhirResponse:
    return _run(ctx, request, FamilyViewRequest(purpose, justification, identifier=identifier))


@router.get("/{patient_id}/$family-view", summary="The infant-family view of Patient/{id} (pre-birth: the pregnant mother)")
def family_view_by_id(
    patient_id: str,
    request: Request,
    purpose: str | None = _PURPOSE,
    justification: str | None = _JUSTIFICATION,
    ctx: FhirContext = Depends(fhir_context),
) -> FhirResponse:
    return _run(ctx, request, FamilyViewRequest(purpose, justification, res_id=patient_id))
