"""AuditEvents for every other access, in the IHE Basic Audit Log Patterns (BALP) style:
create, read, vread, update, search, history, transaction, operations, login and logout,
linkage decisions, policy changes and IG actions.

One event per interaction (a transaction Bundle is one event with an entity per record it
wrote), appended in the transaction of the access itself (``record``): if the event cannot
be written the access fails with it. Each names who (user, role, organisation), the
purposeOfUse where one was given, the records touched (entity) and whose they are (one
patient entity per data subject: the record's reference and its NHS numbers), so that
``AuditEvent?patient=`` finds it from any record of the person."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.audit import service as audit_store
from app.audit.service import AuditColumns
from app.db import retryable
from app.auth.tokens import Principal
from app.errors import FhirError
from app.urls import CANONICAL_BASE

log = logging.getLogger("familyview")

FV = CANONICAL_BASE
SUBTYPE_SYSTEM = f"{FV}/CodeSystem/audit-subtype"
REST_SYSTEM = "http://hl7.org/fhir/restful-interaction"
EVENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ROLE_SYSTEM = f"{FV}/CodeSystem/requester-role"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
EXT_REQUEST_ID = f"{FV}/StructureDefinition/audit-request-id"
EXT_POLICY_VERSION = f"{FV}/StructureDefinition/audit-policy-version"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

OUTCOME_SUCCESS = "0"
OUTCOME_MINOR_FAILURE = "4"

# subtype -> (event type code, type system, display, restful-interaction code or None, action)
_KINDS: dict[str, tuple[str, str, str, str | None, str]] = {
    "create": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "create", "C"),
    "update": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "update", "U"),
    "read": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "read", "R"),
    "vread": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "vread", "R"),
    "history-instance": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "history-instance", "R"),
    "search-type": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "search-type", "E"),
    "transaction": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "transaction", "E"),
    "batch": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "batch", "E"),
    "operation": ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "operation", "E"),
    "login": ("110114", DCM, "User Authentication", None, "E"),
    "logout": ("110114", DCM, "User Authentication", None, "E"),
}


def record_subjects(res_type: str, res_id: str | None, resource: dict[str, Any] | None) -> list[str]:
    """Whose record this is, as patient index values: a Patient or RelatedPerson is its own
    subject (with its NHS numbers); another record's subject, patient or beneficiary."""
    out: list[str] = []
    body = resource or {}
    if res_type in ("Patient", "RelatedPerson"):
        if res_id:
            out.append(f"{res_type}/{res_id}")
        for ident in body.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("system") == NHS_NUMBER_SYSTEM and isinstance(ident.get("value"), str):
                out.append(ident["value"])
    for key in ("subject", "patient", "beneficiary"):
        ref = body.get(key)
        if isinstance(ref, dict):
            if isinstance(ref.get("reference"), str) and "?" not in ref["reference"]:
                out.append(ref["reference"])
            ident = ref.get("identifier")
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                out.append(ident["value"])
    return out


@dataclass
class AccessEvent:
    """One audited access. ``subtype`` is the interaction (create, read, search-type, ...) or
    the gateway's own name of the action (linkage-confirm, ig-review, disclosure-report, ...)."""

    principal: Principal | None
    subtype: str
    action: str | None = None
    outcome: str = OUTCOME_SUCCESS
    outcome_desc: str = ""
    query: str | None = None
    entities: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (reference, details)
    patients: list[str] = field(default_factory=list)  # references and NHS numbers of the data subjects
    purpose_of_use: str | None = None
    purpose: str | None = None
    request_id: str = ""
    description: str | None = None
    policy_version: str | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def entity(self, reference: str, **details: str) -> "AccessEvent":
        self.entities.append((reference, details))
        return self

    def about(self, values: Iterable[str]) -> "AccessEvent":
        self.patients.extend(v for v in values if v)
        return self

    def refused(self, status: int, message: str) -> "AccessEvent":
        self.outcome, self.outcome_desc = OUTCOME_MINOR_FAILURE, f"{status}: {message}"
        return self

    def to_fhir(self) -> dict[str, Any]:
        type_code, type_system, type_display, rest_code, default_action = _KINDS.get(
            self.subtype, ("rest", EVENT_TYPE_SYSTEM, "RESTful Operation", "operation", "E"))
        p = self.principal
        user: dict[str, Any] = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "role": [{"coding": [{"system": ROLE_SYSTEM, "code": p.role if p else "anonymous"}]}],
            "who": {"identifier": {"system": f"{FV}/Id/user", "value": p.sub if p else "anonymous"}},
            "requestor": True,
        }
        if self.purpose_of_use:
            user["purposeOfUse"] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": self.purpose_of_use}]}]
        org = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "datacollector", "display": "data collector"}]},
            "who": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": p.org if p else "unknown"}},
            "requestor": False,
        }
        subtypes = [{"system": SUBTYPE_SYSTEM, "code": self.subtype}]
        if rest_code:
            subtypes.insert(0, {"system": REST_SYSTEM, "code": rest_code})
        elif type_code == "110114":
            subtypes.insert(0, {"system": DCM, "code": "110122" if self.subtype == "login" else "110123",
                                "display": "Login" if self.subtype == "login" else "Logout"})
        entities: list[dict[str, Any]] = []
        if self.query is not None:
            import base64

            entities.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                             "role": {"system": ENTITY_ROLE, "code": "24", "display": "Query"},
                             "query": base64.b64encode(self.query.encode()).decode()})
        seen: set[str] = set()
        for value in self.patients:
            if value in seen:
                continue
            seen.add(value)
            is_ref = "/" in value
            entities.append({
                "what": {"reference": value} if is_ref else {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": value}},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": ENTITY_ROLE, "code": "1", "display": "Patient"},
            })
        for ref, details in self.entities:
            e: dict[str, Any] = {"what": {"reference": ref},
                                 "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                                 "role": {"system": ENTITY_ROLE, "code": "4", "display": "Domain Resource"}}
            if details:
                e["detail"] = [{"type": k, "valueString": v} for k, v in details.items()]
            entities.append(e)
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": self.event_id,
            "extension": [{"url": EXT_REQUEST_ID, "valueString": self.request_id}] if self.request_id else [],
            "type": {"system": type_system, "code": type_code, "display": type_display},
            "subtype": subtypes,
            "action": self.action or default_action,
            "recorded": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "outcome": self.outcome,
            "agent": [user, org],
            "source": {"site": "familyview", "observer": {"display": "familyview FHIR gateway"},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        }
        if self.policy_version:
            event["extension"].append({"url": EXT_POLICY_VERSION, "valueString": self.policy_version})
        if not event["extension"]:
            del event["extension"]
        if self.outcome_desc:
            event["outcomeDesc"] = self.outcome_desc
        if self.purpose_of_use:
            event["purposeOfEvent"] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": self.purpose_of_use}], "text": self.purpose or self.purpose_of_use}]
        if entities:
            event["entity"] = entities
        return event

    def columns(self, event: dict[str, Any]) -> AuditColumns:
        p = self.principal
        return AuditColumns(
            type_code=event["type"]["code"], subtype_code=self.subtype, action=event["action"], outcome=self.outcome,
            purpose_of_use=self.purpose_of_use, agent_sub=p.sub if p else "anonymous", agent_org=p.org if p else "unknown",
            agent_role=p.role if p else "anonymous", review_required=False, policy_version=self.policy_version,
        )


def interaction_of(method: str, path: str) -> tuple[str, str | None]:
    """The REST interaction a request would have been, and the record it names, for the
    audit of a refusal made before any service ran (the access table, a scope)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["fhir"]:
        parts = parts[1:]
    target = f"{parts[0]}/{parts[1]}" if len(parts) >= 2 and not parts[1].startswith(("$", "_")) else None
    if any(p.startswith("$") for p in parts):
        return "operation", target
    if method == "POST":
        return ("transaction" if not parts else "search-type" if parts[-1] == "_search" else "create"), target
    if method in ("PUT", "PATCH"):
        return "update", target
    if method == "DELETE":
        return "delete", target
    if "_history" in parts:
        return ("vread" if parts[-1] != "_history" else "history-instance"), target
    return ("read" if target and len(parts) == 2 else "search-type"), target


def record(session: Session, access: AccessEvent) -> str:
    """Append the event to the chain in the caller's transaction; returns its id."""
    event = access.to_fhir()
    try:
        audit_store.append(session, event, access.columns(event))  # (its search rows: those its body implies)
    except SQLAlchemyError:
        log.error("access refused: its audit event could not be written (request_id=%s)", access.request_id)
        raise audit_unavailable() from None
    return access.event_id


def record_each(session: Session, entries: list[tuple[dict[str, Any], audit_store.AuditColumns, audit_store.SearchRows]],
                request_id: str = "") -> None:
    """Append a few prepared events (``entry``) in one go (``audit_store.append_each``: one
    round trip on PostgreSQL), in the caller's transaction."""
    try:
        audit_store.append_each(session, entries)
    except SQLAlchemyError:
        log.error("access refused: its audit event could not be written (request_id=%s)", request_id)
        raise audit_unavailable() from None


def appends_with_writes(session: Session, entries: list[tuple[dict[str, Any], audit_store.AuditColumns, audit_store.SearchRows]]
                        ) -> list[tuple[Any, dict[str, Any]]] | None:
    """On PostgreSQL the statements that append these events (``audit_store.append_statements``),
    for a writer to send in the round trip of the writes they audit (``insert_tables``' after),
    the round trip of their own saved; None elsewhere (or for no event), where the writer
    appends them with ``record_each`` after its writes."""
    if not entries or session.get_bind().dialect.name != "postgresql":
        return None
    return audit_store.append_statements(entries)


# errors of writes sent with their audit that are the writes' own, answered as without the audit:
# a key another writer took, a value the database cannot hold, a deadlock or serialization
# victim (retried), the connection lost or a statement timeout
_WRITES_OWN = (IntegrityError, DataError, OperationalError, InterfaceError)


def writes_failed(err: DBAPIError, request_id: str = "") -> DBAPIError | FhirError:
    """What it means when writes sent with their audit (``appends_with_writes``) fail: the
    writes' own error as it is, or else the audit's: 503, no audit, no write."""
    if isinstance(err, _WRITES_OWN) or retryable(err):
        return err
    log.error("access refused: its audit event could not be written (request_id=%s)", request_id)
    return audit_unavailable()


def entry(access: AccessEvent) -> tuple[dict[str, Any], audit_store.AuditColumns, audit_store.SearchRows]:
    """An access as the audit store appends it: its FHIR body, columns and search rows (those its body implies)."""
    event = access.to_fhir()
    return event, access.columns(event), None


def record_many(session: Session, accesses: list[AccessEvent]) -> None:
    """Append several events in one go (``audit_store.append_many``), in the caller's transaction."""
    entries: list[tuple[dict[str, Any], audit_store.AuditColumns, audit_store.SearchRows]] = []
    for access in accesses:
        event = access.to_fhir()
        entries.append((event, access.columns(event), None))  # (its search rows: those its body implies)
    try:
        audit_store.append_many(session, entries)
    except SQLAlchemyError:
        raise audit_unavailable() from None


def audit_unavailable() -> FhirError:
    """No audit, no access: the answer when the audit cannot be written."""
    # a 503 a client can act on: Retry-After, as every other transient 503 (the database restarting mid-write lands here)
    return FhirError(503, "transient", "The request could not be recorded in the audit, so it was not carried out. Try again later.",
                     spine_code="SERVICE_UNAVAILABLE", headers={"Retry-After": "1"})


def session_event(principal: Principal | None, kind: str, *, succeeded: bool = True, reason: str = "",
                  request_id: str = "", user: str | None = None) -> AccessEvent:
    """A sign-in or sign-out (BALP: type 110114 User Authentication, subtype 110122 Login or
    110123 Logout), for the web pages to record with ``record`` in the sign-in's transaction.
    A failed sign-in has no principal: ``user`` names who tried."""
    if kind not in ("login", "logout"):
        raise ValueError("kind must be login or logout")
    if principal is None:
        principal = Principal(sub=user or "anonymous", role="anonymous", org="unknown")
    event = AccessEvent(principal, kind, request_id=request_id)
    if not succeeded:
        event.outcome, event.outcome_desc = OUTCOME_MINOR_FAILURE, reason or "sign-in refused"
    elif reason:
        event.outcome_desc = reason
    return event


GATEWAY = Principal(sub="familyview", role="system", org="FAMILYVIEW")


def record_policy_in_force(session: Session, version: str, source: str) -> bool:
    """A change of the disclosure policy is an IG fact: when the policy a server starts with
    differs from the last one the audit recorded, a policy-change event records it (which
    version, from which file). Returns whether one was written."""
    from sqlalchemy import select

    from app.audit.models import AuditRecord

    last = session.scalar(select(AuditRecord.policy_version).where(AuditRecord.subtype_code == "policy-change")
                          .order_by(AuditRecord.seq.desc()).limit(1))
    if last == version:
        return False
    event = AccessEvent(GATEWAY, "policy-change", action="U", policy_version=version,
                        outcome_desc=f"disclosure policy {version} in force" + (f" (was {last})" if last else ""))
    event.entity(f"{FV}/policy/{source}", version=version)
    record(session, event)
    return True
