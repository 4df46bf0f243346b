"""HTTP surface of record linkage, installed by ``app.main``:

FHIR ``Person`` (read-only view of the linked-person index)
    GET /fhir/Person/{id}
    GET /fhir/Person?_id=…  |  ?link=Patient/123  |  ?identifier=system|value   (AND-ed)
    Person.link lists every member record with ``target`` and ``assurance`` (level2..level4;
    a record alone in its person is level4). level1 (possible matches) are NOT listed in
    Person: they are in the review queue below until an admin confirms them. A merged
    person is returned inactive, with one link to the Person it was merged into.
    Readable by admin and ig-officer (all links) and by source systems for persons that
    hold one of their own records (only their own records' links are shown).

Review queue and admin operations (admin role only; JSON in, JSON out; errors are
OperationOutcomes). Every POST needs ``{"reason": "..."}``; who is the token's ``sub``.
    GET  /linkage/candidates?status=open|confirmed|rejected|superseded|all&_count=&_offset=
    GET  /linkage/candidates/{id}
    POST /linkage/candidates/{id}/confirm   {"reason"}
    POST /linkage/candidates/{id}/reject    {"reason"}
    POST /linkage/unlink                    {"record": "RelatedPerson/x", "reason"}
    POST /linkage/merge                     {"from": "Person/a", "into": "Person/b", "reason"}
    GET  /linkage/events?record=Type/id&person=Person/id&_count=
"""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, or_, select
from starlette.concurrency import run_in_threadpool

from app.audit import balp
from app.auth import access
from app.auth.access import LinkageAdministrator, PersonReader
from app.auth.tokens import Principal
from app.errors import FhirError, bad_request, not_found
from app.fhir import search, store
from app.fhir.http import FhirContext, FhirResponse, fhir_context, json_object, required_text
from app.fhir.indexing import NHS_NUMBER_SYSTEM, parse_reference
from app.fhir.models import SearchToken
from app.linkage.admin import LinkageAdmin, candidate_json, persons_of
from app.linkage.models import Link, LinkageEvent, LinkedPerson, ReviewCandidate
from app.linkage.queue import linkage_settled
from app.linkage.service import LINKED_TYPES

PERSON_SEARCH_PARAMS = ("_id", "link", "identifier")
CANDIDATE_STATUSES = ("open", "confirmed", "rejected", "superseded")

# every reader of linkage links what is still queued first (app.linkage.queue)
fhir_router = APIRouter(prefix="/fhir", tags=["FHIR Person (record linkage)"], dependencies=[Depends(linkage_settled)])
admin_router = APIRouter(prefix="/linkage", tags=["Record linkage administration"], dependencies=[Depends(linkage_settled)])


# ------------------------------------------------------------------ FHIR Person
def _check_person_access(principal: Principal, op: str) -> None:
    access.check(principal, "person.read")
    access.check_scope(principal, "Person", op)


def person_resource(session, person: LinkedPerson, principal: Principal) -> dict[str, Any] | None:
    """The FHIR Person, with the links this requester may see; None when it may see none."""
    links = list(session.scalars(select(Link).where(Link.person_id == person.id).order_by(Link.res_type, Link.res_id)))
    sees_all = access.sees_all_orgs(principal, "person.read")
    visible = links if sees_all else [l for l in links if l.source_org == principal.org]
    if not person.active and not sees_all:
        return None
    if not visible and not sees_all:
        return None
    body: dict[str, Any] = {
        "resourceType": "Person",
        "id": person.id,
        "meta": {"versionId": str(person.version_id), "lastUpdated": store.format_instant(person.updated_at)},
    }
    nhs = sorted({l.nhs_number for l in visible if l.nhs_number})
    if nhs:
        body["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": n} for n in nhs]
    body["active"] = person.active
    if visible:
        body["link"] = [{"target": {"reference": l.ref}, "assurance": l.assurance} for l in visible]
    elif person.merged_into:
        body["link"] = [{"target": {"reference": f"Person/{person.merged_into}"}, "assurance": "level4"}]
    return body


@fhir_router.get("/Person/{person_id}", summary="Read a linked person")
def read_person(person_id: str, _: PersonReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    _check_person_access(ctx.principal, "r")
    with ctx.db.session() as session:
        person = session.get(LinkedPerson, person_id)
        if person is None:
            raise not_found(f"Person/{person_id} is not known")
        body = person_resource(session, person, ctx.principal)
        if body is not None:
            balp.record(session, balp.AccessEvent(ctx.principal, "read", request_id=ctx.request_id).entity(f"Person/{person_id}")
                        .about(link["target"]["reference"] for link in body.get("link", []) if not link["target"]["reference"].startswith("Person/")))
    if body is None:
        raise FhirError(403, "forbidden", f"Person/{person_id} holds no record sent by your organisation", spine_code="ACCESS_DENIED")
    return FhirResponse(body, headers={"ETag": f'W/"{person.version_id}"'})


def _person_ids_for(session, principal: Principal, name: str, value: str) -> set[str]:
    """Person ids matching one parameter; a source system matches only through its own records."""
    expr = f"Person.{name}"
    own = [] if access.sees_all_orgs(principal, "person.read") else [Link.source_org == principal.org]
    if name == "_id":
        return {v for v in value.split(",") if v}
    if name == "link":
        refs = []
        for v in value.split(","):
            parsed = parse_reference(v.strip()) if v.strip() else None
            if parsed is None or parsed[0] not in LINKED_TYPES:
                raise bad_request(f"link must reference a Patient or RelatedPerson, e.g. Patient/123 (got {v!r})", expression=expr)
            refs.append(parsed)
        return set(session.scalars(select(Link.person_id).where(or_(*[(Link.res_type == t) & (Link.res_id == i) for t, i in refs]), *own)))
    if name == "identifier":
        conds = []
        for v in value.split(","):
            system, sep, code = v.partition("|")
            if not sep:
                system, code = None, v
            if not code:
                raise bad_request("identifier must be system|value or value", expression=expr)
            c = (SearchToken.code == code)
            if system:
                c = c & (SearchToken.system == system)
            conds.append(c)
        sub = select(SearchToken.res_type, SearchToken.res_id).where(
            SearchToken.res_type.in_(LINKED_TYPES), SearchToken.param == "identifier", or_(*conds))
        sq = sub.subquery()
        return set(session.scalars(select(Link.person_id).join(sq, (Link.res_type == sq.c.res_type) & (Link.res_id == sq.c.res_id)).where(*own)))
    raise search.unknown_parameter("Person", name, PERSON_SEARCH_PARAMS + ("_count", "_offset"))


@fhir_router.get("/Person", summary="Search linked persons by _id, link or identifier")
def search_person(request: Request, _: PersonReader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    _check_person_access(ctx.principal, "s")
    params = list(request.query_params.multi_items())
    search.check_limits(params, search.SearchLimits.of(ctx.settings), "Person")
    paging = search.Paging.start(ctx.settings.default_page_size, ctx.settings.max_page_size)
    filters = []
    for key, value in params:
        name, _, modifier = key.partition(":")
        if paging.take(key, value) or key in search.FORMAT_PARAMS:
            continue
        if name not in PERSON_SEARCH_PARAMS:
            raise search.unknown_parameter("Person", name, PERSON_SEARCH_PARAMS + ("_count", "_offset"))
        if modifier:
            raise search.unsupported_modifier(name, modifier, (), f"Person?{name}")
        filters.append((name, value))
    with ctx.db.session() as session:
        ids: set[str] | None = None
        for name, value in filters:
            found = _person_ids_for(session, ctx.principal, name, value)
            ids = found if ids is None else ids & found
        # what this requester may see, in SQL, so that total and paging count only that
        where = [] if ids is None else [LinkedPerson.id.in_(sorted(ids))]
        if not access.sees_all_orgs(ctx.principal, "person.read"):
            where += [LinkedPerson.active.is_(True),
                      LinkedPerson.id.in_(select(Link.person_id).where(Link.source_org == ctx.principal.org))]
        elif ids is None:
            where.append(LinkedPerson.active.is_(True))
        if ids is not None and not ids:
            total, persons = 0, []
        else:
            total = session.scalar(select(func.count()).select_from(LinkedPerson).where(*where)) or 0
            persons = list(session.scalars(
                select(LinkedPerson).where(*where).order_by(LinkedPerson.id).offset(paging.offset).limit(paging.count))) if paging.count else []
        bodies = [b for b in (person_resource(session, p, ctx.principal) for p in persons) if b is not None]
        event = balp.AccessEvent(ctx.principal, "search-type", request_id=ctx.request_id,
                                 query="Person?" + "&".join(f"{k}={v}" for k, v in params), outcome_desc=f"{total} match(es)")
        for b in bodies:
            event.entity(f"Person/{b['id']}")
            event.about(link["target"]["reference"] for link in b.get("link", []) if not link["target"]["reference"].startswith("Person/"))
        balp.record(session, event)
    return FhirResponse(search.searchset(f"{ctx.base}/Person", params, paging, total,
                                         ((f"{ctx.base}/Person/{b['id']}", b) for b in bodies)))


# ------------------------------------------------------------------ admin operations
admin_principal = access.Access("linkage.admin")  # the table's row; LinkageAdministrator is its Annotated form


def _record_ref(value: str, name: str) -> str:
    parsed = parse_reference(value)
    if parsed is None or parsed[0] not in LINKED_TYPES or "/" in value.replace(f"{parsed[0]}/{parsed[1]}", "", 1):
        raise bad_request(f"'{name}' must be a Patient or RelatedPerson reference such as Patient/123", expression=name)
    return f"{parsed[0]}/{parsed[1]}"


def _person_id(value: str, name: str) -> str:
    t, _, i = value.partition("/")
    if t != "Person" or not i or "/" in i:
        raise bad_request(f"'{name}' must be a Person reference such as Person/abc", expression=name)
    return i


def _paging(request: Request, default: int, max_count: int, allowed: tuple[str, ...]) -> search.Paging:
    """_count and _offset as every search endpoint reads them (app.fhir.search); 400 for a
    parameter the endpoint does not take."""
    paging = search.Paging.start(default, max_count)
    search.check_limits(list(request.query_params.multi_items()), search.SearchLimits.of(request.app.state.settings), request.url.path)
    for name, value in request.query_params.multi_items():
        if not paging.take(name, value) and name not in allowed and name not in search.FORMAT_PARAMS:
            raise bad_request(f"Unknown parameter '{name}' (supported: {', '.join(allowed + ('_count', '_offset'))})",
                              expression=name, code="not-supported")
    return paging


@admin_router.get("/candidates", summary="The review queue (possible matches, level1)")
def list_candidates(request: Request, principal: LinkageAdministrator) -> FhirResponse:
    status = request.query_params.get("status", "open")
    if status not in CANDIDATE_STATUSES + ("all",):
        raise bad_request(f"status must be one of {', '.join(CANDIDATE_STATUSES)}, all", expression="status")
    paging = _paging(request, 50, 500, ("status",))
    count, offset = paging.count, paging.offset
    db = request.app.state.db
    with db.session(readonly=True) as session:
        where = [] if status == "all" else [ReviewCandidate.status == status]
        total = session.scalar(select(func.count()).select_from(ReviewCandidate).where(*where))
        rows = list(session.scalars(select(ReviewCandidate).where(*where)
                                    .order_by(ReviewCandidate.probability.desc(), ReviewCandidate.id).offset(offset).limit(count)))
        persons = persons_of(session, {r.a_ref for r in rows} | {r.b_ref for r in rows})
        out = [candidate_json(r, persons) for r in rows]
    return FhirResponse({"total": total, "offset": offset, "count": len(out), "candidates": out})


@admin_router.get("/candidates/{cid}", summary="One review candidate")
def get_candidate(cid: int, request: Request, principal: LinkageAdministrator) -> FhirResponse:
    with request.app.state.db.session(readonly=True) as session:
        c = LinkageAdmin(session, principal.sub).candidate(cid)
        return FhirResponse(candidate_json(c, persons_of(session, {c.a_ref, c.b_ref})))


def _refs_in(value: Any) -> list[str]:
    """Every record or Person reference in an admin operation's result."""
    if isinstance(value, str):
        return [value] if value.split("/", 1)[0] in ("Patient", "RelatedPerson", "Person") and "/" in value else []
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v)]
    return []


def _run(request: Request, principal: Principal, work, action: str, reason: str, candidate: int | None = None) -> FhirResponse:
    """An admin's linkage decision and its audit event (subtype linkage-<action>), in one transaction."""
    with request.app.state.db.session() as session:
        admin = LinkageAdmin(session, principal.sub)
        result = work(admin)
        refs = _refs_in(result)
        if candidate is not None:
            c = admin.candidate(candidate)
            refs = [c.a_ref, c.b_ref] + refs
        event = balp.AccessEvent(principal, f"linkage-{action}", action="U", request_id=getattr(request.state, "request_id", ""),
                                 outcome_desc=f"{action}: {reason}")
        for ref in dict.fromkeys(refs):
            event.entity(ref)
        event.about(r for r in dict.fromkeys(refs) if not r.startswith("Person/"))
        balp.record(session, event)
    return FhirResponse(result)


@admin_router.post("/candidates/{cid}/confirm", summary="Confirm a possible match (the two records are one person)")
async def confirm_candidate(cid: int, request: Request, principal: LinkageAdministrator) -> FhirResponse:
    reason = required_text(await json_object(request, "reason"), "reason")
    return await run_in_threadpool(_run, request, principal, lambda a: a.confirm(cid, reason), "confirm", reason, cid)


@admin_router.post("/candidates/{cid}/reject", summary="Reject a possible match (two different people)")
async def reject_candidate(cid: int, request: Request, principal: LinkageAdministrator) -> FhirResponse:
    reason = required_text(await json_object(request, "reason"), "reason")
    return await run_in_threadpool(_run, request, principal, lambda a: a.reject(cid, reason), "reject", reason, cid)


@admin_router.post("/unlink", summary="Take a record out of its linked person")
async def unlink(request: Request, principal: LinkageAdministrator) -> FhirResponse:
    body = await json_object(request, "reason")
    ref = _record_ref(required_text(body, "record"), "record")
    reason = required_text(body, "reason")
    return await run_in_threadpool(_run, request, principal, lambda a: a.unlink(ref, reason), "unlink", reason)


@admin_router.post("/merge", summary="Merge one linked person into another")
async def merge(request: Request, principal: LinkageAdministrator) -> FhirResponse:
    body = await json_object(request, "reason")
    src = _person_id(required_text(body, "from"), "from")
    dst = _person_id(required_text(body, "into"), "into")
    reason = required_text(body, "reason")
    return await run_in_threadpool(_run, request, principal, lambda a: a.merge(src, dst, reason), "merge", reason)


@admin_router.get("/events", summary="The linkage event log")
def events(request: Request, principal: LinkageAdministrator) -> FhirResponse:
    count = _paging(request, 100, 1000, ("record", "person")).count
    where = []
    if (rec := request.query_params.get("record")) is not None:
        where.append(LinkageEvent.record_ref == _record_ref(rec, "record"))
    if (per := request.query_params.get("person")) is not None:
        pid = _person_id(per, "person")
        where.append(or_(LinkageEvent.from_person == pid, LinkageEvent.to_person == pid))
    with request.app.state.db.session(readonly=True) as session:
        rows = list(session.scalars(select(LinkageEvent).where(*where).order_by(LinkageEvent.id.desc()).limit(count)))
    return FhirResponse({"events": [
        {"id": e.id, "at": e.at.isoformat(), "action": e.action, "record": e.record_ref,
         "from": f"Person/{e.from_person}" if e.from_person else None, "to": f"Person/{e.to_person}" if e.to_person else None,
         "candidate": e.candidate_id, "actor": e.actor, "reason": e.reason,
         "detail": json.loads(e.detail) if e.detail else None}
        for e in rows
    ]})


PERSON_CAPABILITY = {
    "type": "Person",
    "documentation": "Linked persons from record linkage (read-only). link.target lists each Patient/RelatedPerson "
                     "of the person, link.assurance level2..level4; possible matches (level1) are in the review queue "
                     "(/linkage/candidates, admin), not in Person.",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "versioning": "versioned",
    "readHistory": False,
    "updateCreate": False,
    "conditionalCreate": False,
    "conditionalUpdate": False,
    "conditionalDelete": "not-supported",
    "searchParam": [
        {"name": "_id", "type": "token"},
        {"name": "link", "type": "reference", "documentation": "A Patient or RelatedPerson the person links to"},
        {"name": "identifier", "type": "token", "documentation": "An identifier of any linked record (system|value)"},
    ],
}


def install(app, *, operations: list[dict[str, Any]], extra_resources: list[dict[str, Any]]) -> None:
    app.include_router(fhir_router)
    app.include_router(admin_router)
    extra_resources.append(PERSON_CAPABILITY)
