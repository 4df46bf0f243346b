"""Find a family by name and date of birth, within the requester's own caseload only: a
Patient matches when its family name (and given name, when given) and date of birth agree and
the requester's organisation has a legitimate relationship with them or with the infant they
are recorded as parent or carer of (the same rule as the family view, app.family.relationship).
Everyone else is invisible, so the search cannot be used to look people up. Every search is
audited, with what it returned."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from app.audit import service as audit_store
from app.audit.events import ENTITY_ROLE, ENTITY_TYPE, FV, OUTCOME_SUCCESS, ROLE_SYSTEM, _b64
from app.auth.tokens import Principal
from app.fhir.indexing import normalise_string
from app.identifiers import NHS_NUMBER_SYSTEM as NHS_SYSTEM
from app.fhir.models import SearchDate, SearchString, StoredResource
from app.family.graph import _rows_to_recs, route_people
from app.family.relationship import relationship_with_any

MAX_CANDIDATES = 50


@dataclass(frozen=True)
class CaseloadMatch:
    res_id: str
    name: str
    birth_date: str
    nhs_number: str | None


def _name(body: dict[str, Any]) -> str:
    for n in body.get("name") or []:
        if n.get("use") != "old":
            return n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
    return "(no name recorded)"


def _nhs(body: dict[str, Any]) -> str | None:
    return next((i.get("value") for i in body.get("identifier") or [] if i.get("system") == NHS_SYSTEM), None)


def find_in_caseload(session: Session, principal: Principal, *, family: str, given: str | None, birth_date: date,
                     today: date | None = None, request_id: str = "") -> tuple[list[CaseloadMatch], str]:
    """The matches in the requester's caseload and the AuditEvent id of the search."""
    today = today or date.today()
    fam, giv, day = normalise_string(family), normalise_string(given or ""), birth_date.isoformat()
    family_match = select(SearchString.res_id).where(
        SearchString.res_type == "Patient", SearchString.param == "family", SearchString.value.startswith(fam))
    born = select(SearchDate.res_id).where(
        SearchDate.res_type == "Patient", SearchDate.param == "birthdate",
        SearchDate.low <= f"{day}T23:59:59", SearchDate.high >= f"{day}T00:00:00")
    stmt = select(StoredResource.res_type, StoredResource.res_id, StoredResource.body, StoredResource.source_org).where(
        and_(StoredResource.res_type == "Patient", StoredResource.deleted.is_(False),
             StoredResource.res_id.in_(family_match), StoredResource.res_id.in_(born))).limit(MAX_CANDIDATES)
    candidates = _rows_to_recs(session.connection().execute(stmt).all())
    matches: list[CaseloadMatch] = []
    for rec in candidates:
        if rec.body.get("birthDate") != day:
            continue
        if giv and not any(normalise_string(g).startswith(giv) for n in rec.body.get("name") or [] for g in n.get("given") or []):
            continue
        if not relationship_with_any(principal, route_people(session, rec, today)).holds:
            continue
        matches.append(CaseloadMatch(rec.res_id, _name(rec.body), day, _nhs(rec.body)))
    event_id = _audit(session, principal, matches, query=f"family={family}&given={given or ''}&birthdate={day}", request_id=request_id)
    return matches, event_id


def _audit(session: Session, principal: Principal, matches: list[CaseloadMatch], *, query: str, request_id: str) -> str:
    """A BALP query event: who searched, the query (base64, as BALP records it) and each match."""
    event_id = str(uuid.uuid4())
    entities: list[dict[str, Any]] = [{
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": ENTITY_ROLE, "code": "24", "display": "Query"},
        "query": _b64(query),
        "detail": [{"type": "request-id", "valueString": request_id or "-"}],
    }]
    for m in matches:
        person: dict[str, Any] = {"what": {"reference": f"Patient/{m.res_id}"},
                                  "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                                  "role": {"system": ENTITY_ROLE, "code": "1", "display": "Patient"}}
        if m.nhs_number:
            person["detail"] = [{"type": "nhs-number", "valueString": m.nhs_number}]
        entities.append(person)
    event = {
        "resourceType": "AuditEvent", "id": event_id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search-type"},
                    {"system": f"{FV}/CodeSystem/audit-subtype", "code": "caseload-search", "display": "Find a family in own caseload"}],
        "action": "E",
        "recorded": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": OUTCOME_SUCCESS,
        "outcomeDesc": f"{len(matches)} match(es) in the caseload of {principal.org}",
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}],
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
             "role": [{"coding": [{"system": ROLE_SYSTEM, "code": principal.role}]}],
             "who": {"identifier": {"system": f"{FV}/Id/user", "value": principal.sub}}, "requestor": True},
            {"who": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": principal.org}},
             "requestor": False},
        ],
        "source": {"site": "familyview", "observer": {"display": "familyview pages"}},
        "entity": entities,
    }
    columns = audit_store.AuditColumns(
        type_code="rest", subtype_code="caseload-search", action="E", outcome=OUTCOME_SUCCESS, purpose_of_use="TREAT",
        agent_sub=principal.sub, agent_org=principal.org, agent_role=principal.role, review_required=False, policy_version=None)
    audit_store.append(session, event, columns)  # (its search rows: those its body implies)
    return event_id
