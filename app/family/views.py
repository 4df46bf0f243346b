"""`$family-view` over HTTP: parse, run the service in one transaction, return with X-Audit-Event."""
from __future__ import annotations

import logging

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from app.auth.access import FamilyViewer  # its refusal of the policy's `never` roles is made, and audited, by the service
from app.auth.tokens import Principal, Scope
from app.errors import FhirError
from app.family.service import FamilyViewRequest, FamilyViewResult, FamilyViewService
from app.ops.refusals import RefusalCoalescer
from app.fhir.http import FhirContext, FhirResponse, fhir_body, fhir_context
from app.ig.notifications import enqueue
from app.linkage.queue import settling_session

log = logging.getLogger("familyview")
router = APIRouter(prefix="/fhir/Patient", tags=["Family view"])


def _notifier(ctx: FhirContext):
    """Notifications to a data controller are stored as Communications owned by that controller,
    and put in the outbox that delivers them to its endpoint, in the disclosure's transaction."""

    def notify(session, target_org: str, communication: dict) -> None:
        system = Principal(sub="familyview", role="admin", org=target_org, scopes=(Scope("system", "*", frozenset("cruds")),))
        from app.ingest.service import IngestService

        stored = IngestService(session, system, ctx.settings, [], base=ctx.base).store_generated(communication)
        audit_event = next((a["reference"].split("/", 1)[1] for a in communication.get("about", []) if a.get("reference", "").startswith("AuditEvent/")), None)
        enqueue(session, ctx.settings, target_org, stored.resource, audit_event)  # delivered after commit (app.ig.notifications)

    return notify


def family_view(ctx: FhirContext, req: FamilyViewRequest, refusals: RefusalCoalescer | None = None) -> FamilyViewResult:
    """The view in one transaction, audited; the API and the pages (app.web) both answer with it
    (refusals: the API's coalescing of a client's flood of refused requests, app.ops.refusals)."""
    limit = ctx.settings.max_justification_length
    if req.justification is not None and len(req.justification) > limit:
        # refused (and audited) like any bad request; the audit keeps only what the limit allows
        req.problem = req.problem or _bad(f"justification is at most {limit} characters", "justification", code="too-costly")
        req.justification = req.justification[:limit]
    try:
        # the family's queued linkage settled as the view reads it (not the whole queue: a
        # family view never waits behind a bulk load of other records)
        with settling_session(ctx.db, ctx.settings) as session:
            return FamilyViewService(session, ctx.principal, notify=_notifier(ctx), refusals=refusals).run(req)
    except SQLAlchemyError:
        log.error("family view not returned: the audit could not be written (request_id=%s)", req.request_id, exc_info=False)
        raise FhirError(503, "transient", "The request could not be recorded in the audit, so nothing is disclosed. Try again later.", spine_code="SERVICE_UNAVAILABLE")


def _run(ctx: FhirContext, request: Request, req: FamilyViewRequest) -> FhirResponse:
    req.request_id = getattr(request.state, "request_id", "")
    result = family_view(ctx, req, getattr(request.app.state, "refusals", None))
    headers = {"X-Audit-Event": f"AuditEvent/{result.audit_event_id}"}
    return FhirResponse(result.body, status_code=result.status, headers=headers)


PARAMETERS = ("identifier", "purpose", "justification")  # each at most once (OperationDefinition: max=1)
# the value[x] a Parameters body may give each parameter in (identifier as a token string or an Identifier)
_VALUE_TYPES = {"identifier": ("valueString", "valueIdentifier"), "purpose": ("valueCode", "valueString"), "justification": ("valueString",)}


def _bad(message: str, expression: str, code: str = "invalid", spine: str = "INVALID_PARAMETER") -> FhirError:
    return FhirError(400, code, message, expression=expression, spine_code=spine)


def _request(items: list[tuple[str, str]], res_id: str | None, problem: FhirError | None = None) -> FamilyViewRequest:
    """The request from its parameters (query string, or a Parameters body): a parameter given
    twice, or an identifier at instance level, is a 400 that the service audits like any refusal."""
    values: dict[str, str] = {}
    for name, value in items:
        if name not in PARAMETERS:
            continue
        if name in values and problem is None:
            problem = _bad(f"{name} may be given only once", name)
        values.setdefault(name, value)
    if res_id is not None and "identifier" in values and problem is None:
        problem = _bad("identifier is not used at instance level: ask for Patient/{id}/$family-view or Patient/$family-view?identifier=…", "identifier")
    return FamilyViewRequest(values.get("purpose"), values.get("justification"), res_id=res_id,
                             identifier=values.get("identifier") if res_id is None else None, problem=problem)


def _parameters(body: Any) -> list[tuple[str, str]]:
    """(name, value) pairs of a Parameters body; 400 for anything else."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise _bad("The body must be a Parameters resource", "Parameters", code="structure", spine="INVALID_RESOURCE")
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise _bad("Parameters.parameter must be a list", "Parameters.parameter", code="structure", spine="INVALID_RESOURCE")
    out = []
    for n, p in enumerate(params):
        where = f"Parameters.parameter[{n}]"
        name = p.get("name") if isinstance(p, dict) else None
        if name not in PARAMETERS:
            raise _bad(f"{where}: $family-view takes identifier, purpose and justification", f"{where}.name")
        given = [k for k in p if k.startswith("value")]
        allowed = _VALUE_TYPES[name]
        if len(given) != 1 or given[0] not in allowed or set(p) - {"name", given[0], "id", "extension"}:
            raise _bad(f"{where}: {name} takes exactly one of {', '.join(allowed)}", where)
        value = p[given[0]]
        if given[0] == "valueIdentifier":
            if not isinstance(value, dict) or not isinstance(value.get("value"), str):
                raise _bad(f"{where}: valueIdentifier needs a value", f"{where}.valueIdentifier.value")
            system = value.get("system")
            value = f"{system}|{value['value']}" if isinstance(system, str) and system else f"|{value['value']}"
        if not isinstance(value, str):
            raise _bad(f"{where}: {given[0]} must be a string", f"{where}.{given[0]}")
        out.append((name, value))
    return out


async def _posted(request: Request, res_id: str | None) -> FamilyViewRequest:
    """A POST: the parameters from the Parameters body (and any in the URL, counted with them).
    A body that cannot be read is refused through the service, so the refusal is audited too."""
    items = [(k, v) for k, v in request.query_params.multi_items()]
    try:
        items += _parameters(await fhir_body(request))
    except FhirError as err:
        return _request([], res_id, problem=err)
    return _request(items, res_id)


_PURPOSE = Query(None, description="direct-care | safeguarding")
_JUSTIFICATION = Query(None, description="Why the child may be at risk (required for safeguarding)")
_POST_BODY = {"requestBody": {"required": True, "description": "A FHIR Parameters resource with identifier (type level; valueString system|value or valueIdentifier), purpose (valueCode) and justification (valueString)",
                              "content": {"application/fhir+json": {"schema": {"type": "object", "required": ["resourceType"],
                                          "properties": {"resourceType": {"type": "string", "enum": ["Parameters"]}, "parameter": {"type": "array", "items": {"type": "object"}}}}}}}}


@router.get("/$family-view", summary="The infant-family view, by the infant's identifier (e.g. NHS number)")
def family_view_by_identifier(
    request: Request,
    _: FamilyViewer,
    identifier: str | None = Query(None, description="system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990001103"),
    purpose: str | None = _PURPOSE,
    justification: str | None = _JUSTIFICATION,
    ctx: FhirContext = Depends(fhir_context),
) -> FhirResponse:
    return _run(ctx, request, _request(request.query_params.multi_items(), None))


@router.post("/$family-view", summary="The infant-family view by identifier, parameters in a Parameters body", openapi_extra=_POST_BODY)
async def family_view_by_identifier_post(request: Request, _: FamilyViewer, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    req = await _posted(request, None)
    return await run_in_threadpool(_run, ctx, request, req)


@router.get("/{patient_id}/$family-view", summary="The infant-family view of Patient/{id} (pre-birth: the pregnant mother)")
def family_view_by_id(
    patient_id: str,
    request: Request,
    _: FamilyViewer,
    purpose: str | None = _PURPOSE,
    justification: str | None = _JUSTIFICATION,
    ctx: FhirContext = Depends(fhir_context),
) -> FhirResponse:
    return _run(ctx, request, _request(request.query_params.multi_items(), patient_id))


@router.post("/{patient_id}/$family-view", summary="The infant-family view of Patient/{id}, parameters in a Parameters body", openapi_extra=_POST_BODY)
async def family_view_by_id_post(patient_id: str, request: Request, _: FamilyViewer, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    req = await _posted(request, patient_id)
    return await run_in_threadpool(_run, ctx, request, req)
