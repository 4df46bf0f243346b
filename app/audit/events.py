"""AuditEvents in the IHE Basic Audit Log Patterns (BALP) style, for family-view requests.

Each names who asked (user, role, organisation), why (purposeOfUse TREAT / THREAT / BTG and
the justification), about whom (one entity per family member) and what was disclosed or
withheld (one entity per item, with the decision, lawful basis and policy version), and
never the content of anything withheld."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from app.audit.service import AuditColumns, SearchRows
from app.auth.tokens import Principal
from app.urls import CANONICAL_BASE

FV = CANONICAL_BASE
EXT_JUSTIFICATION = f"{FV}/StructureDefinition/audit-justification"
EXT_POLICY_VERSION = f"{FV}/StructureDefinition/audit-policy-version"
EXT_IG_REVIEW = f"{FV}/StructureDefinition/audit-ig-review-required"
EXT_REQUEST_ID = f"{FV}/StructureDefinition/audit-request-id"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ROLE_SYSTEM = f"{FV}/CodeSystem/requester-role"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"

OUTCOME_SUCCESS = "0"
OUTCOME_MINOR_FAILURE = "4"  # refused: no lawful route, or bad request


@dataclass
class AuditItem:
    """One disclosed or withheld item, as the audit records it."""

    reference: str  # e.g. Condition/123 or Patient/456#contact
    subject: str  # the family member's reference
    category: str
    decision: dict[str, Any]  # DisclosureDecision.to_dict()
    disclosed: bool


@dataclass
class FamilyViewAudit:
    principal: Principal
    purpose: str | None
    purpose_of_use: str | None
    justification: str | None
    query: str
    outcome: str
    outcome_desc: str
    request_id: str
    subjects: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (reference, family role, NHS numbers)
    items: list[AuditItem] = field(default_factory=list)
    policy_version: str | None = None
    review_required: bool = False
    lawful_bases: list[str] = field(default_factory=list)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_fhir(self) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        agent_user: dict[str, Any] = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "role": [{"coding": [{"system": ROLE_SYSTEM, "code": self.principal.role}]}],
            "who": {"identifier": {"system": f"{FV}/Id/user", "value": self.principal.sub}},
            "requestor": True,
        }
        if self.purpose_of_use:
            agent_user["purposeOfUse"] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": self.purpose_of_use}]}]
        agent_org = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "datacollector", "display": "data collector"}]},
            "who": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": self.principal.org}},
            "requestor": False,
        }
        entities: list[dict[str, Any]] = [{
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": ENTITY_ROLE, "code": "24", "display": "Query"},
            "description": "family-view request",
            "query": _b64(self.query),
            "detail": [{"type": "purpose", "valueString": self.purpose or "(none)"}],
        }]
        for ref, role, nhs_numbers in self.subjects:
            entities.append({
                "what": {"reference": ref} if "/" in ref else {"display": ref},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": ENTITY_ROLE, "code": "1", "display": "Patient"},
                "detail": [{"type": "family-role", "valueString": role}] + [{"type": "nhs-number", "valueString": n} for n in nhs_numbers],
            })
        for item in self.items:
            d = item.decision
            basis = d.get("lawful_basis") or {}
            details = [
                {"type": "subject", "valueString": item.subject},
                {"type": "category", "valueString": item.category},
                {"type": "decision", "valueString": d["outcome"]},
                {"type": "disclosed", "valueString": "true" if item.disclosed else "false"},
                {"type": "reason", "valueString": d.get("reason_code") or ""},
                {"type": "rule", "valueString": d.get("rule") or "no rule"},
                {"type": "policy-version", "valueString": d.get("policy_version") or ""},
            ]
            if basis:
                details.append({"type": "lawful-basis", "valueString": basis_text(basis)})
            for key in ("consent_relied_on", "consent_overridden"):
                if d.get(key):
                    details.append({"type": key.replace("_", "-"), "valueString": f"{d[key]['reference']} {d[key]['provision']} ({d[key]['decision']})"})
            for ob in d.get("obligations") or []:
                details.append({"type": "obligation", "valueString": ob["kind"] + (f" {ob['target']}" if ob.get("target") else "") + (f" {','.join(ob['fields'])}" if ob.get("fields") else "")})
            entities.append({
                "what": {"reference": item.reference},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": ENTITY_ROLE, "code": "4", "display": "Domain Resource"},
                "securityLabel": [],
                "detail": details,
            })
        for e in entities:
            if not e.get("securityLabel"):
                e.pop("securityLabel", None)
        extensions = [
            {"url": EXT_REQUEST_ID, "valueString": self.request_id},
            {"url": EXT_IG_REVIEW, "valueBoolean": self.review_required},
        ]
        if self.justification:
            extensions.append({"url": EXT_JUSTIFICATION, "valueString": self.justification})
        if self.policy_version:
            extensions.append({"url": EXT_POLICY_VERSION, "valueString": self.policy_version})
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": self.event_id,
            "extension": extensions,
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [
                {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"},
                {"system": f"{FV}/CodeSystem/audit-subtype", "code": "family-view", "display": "$family-view"},
            ],
            "action": "E",
            "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "outcome": self.outcome,
            "outcomeDesc": self.outcome_desc,
            "agent": [agent_user, agent_org],
            "source": {"site": "familyview", "observer": {"display": "familyview FHIR gateway"},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
            "entity": entities,
        }
        if self.purpose_of_use:
            event["purposeOfEvent"] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": self.purpose_of_use}], "text": self.purpose}]
        return event

    def columns(self) -> AuditColumns:
        return AuditColumns(
            type_code="rest", subtype_code="family-view", action="E", outcome=self.outcome,
            purpose_of_use=self.purpose_of_use, agent_sub=self.principal.sub, agent_org=self.principal.org,
            agent_role=self.principal.role, review_required=self.review_required, policy_version=self.policy_version,
        )

    def index(self) -> list[tuple[str, str]]:
        rows = []
        for ref, _role, nhs_numbers in self.subjects:
            rows.append(("patient", ref))
            rows += [("patient", n) for n in nhs_numbers]
        rows += [("entity", i.reference.split("#", 1)[0]) for i in self.items]
        rows += [("entity", i.subject) for i in self.items]
        return rows


def basis_text(basis: dict[str, Any]) -> str:
    parts = [f"UK GDPR Art {basis['article6']}"]
    if basis.get("article9"):
        parts.append(f"Art {basis['article9']}")
    if basis.get("dpa2018_schedule1"):
        parts.append(f"DPA 2018 {basis['dpa2018_schedule1']}")
    return " + ".join(parts)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def consent_write_event(principal: Principal, written: list[Any]) -> tuple[dict[str, Any], AuditColumns, SearchRows]:
    """One BALP create/update event for the Consents a write stored: a change to who may see a
    person's records is an IG fact in its own right (which organisation recorded it, for whom,
    permit or refusal), searchable by patient, entity and agent."""
    now = datetime.now(timezone.utc)
    created = all(w.created for w in written)
    action = "C" if created else "U"
    entities: list[dict[str, Any]] = []
    for w in written:
        body = w.resource
        patient = body.get("patient") if isinstance(body.get("patient"), dict) else {}
        ident = patient.get("identifier") or {}
        provision = body.get("provision") or {}
        rule = next((c.get("code") for c in (body.get("policyRule") or {}).get("coding") or [] if isinstance(c, dict)), None)
        entities.append({
            "what": {"reference": f"Consent/{w.res_id}"},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": ENTITY_ROLE, "code": "4", "display": "Domain Resource"},
            "detail": [
                {"type": "version", "valueString": str(w.version_id)},
                {"type": "status", "valueString": str(body.get("status") or "")},
                {"type": "recorded-by", "valueString": w.source_org},
                {"type": "provision-type", "valueString": str(provision.get("type") or "(none)")},
                {"type": "policy-rule", "valueString": str(rule or "(none)")},
            ],
        })
        literal = str(patient.get("reference") or "")
        person: dict[str, Any] = {"type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                                  "role": {"system": ENTITY_ROLE, "code": "1", "display": "Patient"}}
        if literal and not literal.startswith("Patient?"):
            person["what"] = {"reference": literal}
        elif ident.get("value"):
            person["what"] = {"identifier": ident}
        else:
            continue
        if ident.get("system") == "https://fhir.nhs.uk/Id/nhs-number" and ident.get("value"):
            person["detail"] = [{"type": "nhs-number", "valueString": str(ident["value"])}]
        entities.append(person)
    event_id = str(uuid.uuid4())
    event = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [
            {"system": "http://hl7.org/fhir/restful-interaction", "code": "create" if created else "update",
             "display": "create" if created else "update"},
            {"system": f"{FV}/CodeSystem/audit-subtype", "code": "consent-write", "display": "Consent recorded"},
        ],
        "action": action,
        "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": OUTCOME_SUCCESS,
        "outcomeDesc": f"{len(written)} Consent(s) recorded by {principal.org}",
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "AUT", "display": "author"}]},
             "role": [{"coding": [{"system": ROLE_SYSTEM, "code": principal.role}]}],
             "who": {"identifier": {"system": f"{FV}/Id/user", "value": principal.sub}}, "requestor": True},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "datacollector", "display": "data collector"}]},
             "who": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": principal.org}},
             "requestor": False},
        ],
        "source": {"site": "familyview", "observer": {"display": "familyview FHIR gateway"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }
    columns = AuditColumns(
        type_code="rest", subtype_code="consent-write", action=action, outcome=OUTCOME_SUCCESS, purpose_of_use=None,
        agent_sub=principal.sub, agent_org=principal.org, agent_role=principal.role, review_required=False, policy_version=None,
    )
    return event, columns, None  # (its search rows: those its body implies)
