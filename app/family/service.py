"""The infant-family view: assemble the family, decide every item with the consent engine,
apply what it obliges (redact, notify, queue for review), and audit — in one transaction.

No audit, no disclosure: the AuditEvent is written in the same transaction that read the
family, and the view is returned only after that transaction commits."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from consent import (
    ConsentRecord, DataItem, DataSubject, DisclosureDecision, DisclosureRequest, LegitimateRelationship,
    ObligationKind, Purpose, Requester, decide, effective_category, label_resource, load_policy, record_date,
)
from sqlalchemy.orm import Session

from app.audit import service as audit_store
from app.audit.events import OUTCOME_MINOR_FAILURE, OUTCOME_SUCCESS, AuditItem, FamilyViewAudit, basis_text
from app.auth.tokens import Principal
from app.db import plan_once_per_statement
from app.errors import SPINE_ERROR_SYSTEM, FhirError
from app.family.graph import (
    FamilyGraph, FamilyMember, Rec, assemble, find_subject, is_infant, organisation_names, organisations_of, route_people,
)
from app.family.relationship import legitimate_relationship, relationship_with_any
from app.fhir.indexing import NHS_NUMBER_SYSTEM
from app.linkage.matching import normalise_postcode
from app.linkage.service import level_rank

FV = "https://familyview.example.nhs.uk/fhir"
EXT_FAMILY_ROLE = f"{FV}/StructureDefinition/family-role"
EXT_ASSURANCE = f"{FV}/StructureDefinition/linkage-assurance"
EXT_INFERRED = f"{FV}/StructureDefinition/inferred-relationship"
EXT_EDD = f"{FV}/StructureDefinition/expected-delivery-date"
DATA_CATEGORY = f"{FV}/CodeSystem/data-category"
FAMILY_ROLE_SYSTEM = f"{FV}/CodeSystem/family-role"
DERIVED_TAG = {"system": f"{FV}/CodeSystem/provenance", "code": "derived", "display": "Derived by familyview, not recorded by a source"}
LOCAL_SAFEGUARDING = f"{FV}/CodeSystem/local-safeguarding"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
NEVER_ROLES = ("ig-officer", "admin", "source-system")
ROUTE_REFUSALS = ("no-relationship", "role-never-sees-clinical-data", "unknown-role", "justification-required")
MOTHER_RESTRICTED = ("Withheld: the mother's record is restricted, so the address, contact and GP practice details "
                     "that the infant shares with her are not shown for the infant either.")
MOTHER_SHARED_CONTACT = ("Withheld: the mother's record is restricted, so contact details recorded for this person "
                         "that are also hers are not shown.")
PURPOSES = {"direct-care": Purpose.DIRECT_CARE, "safeguarding": Purpose.SAFEGUARDING}
# What a practitioner is told about a withheld record, by the decision's reason code: the same
# words whatever the record is (the engine's own reasons are written for the audit and the IG team).
_RECORD_REASONS = {
    "consent-required": ("Withheld: a confidential record held by another organisation. It is shared for direct care "
                         "only with the person's consent for your organisation and this purpose, and none is in force."),
    "consent-refused": "Withheld: this person has asked that it is not shared with you.",
    "very-restricted": "Withheld: this person's record is very restricted and is shown only for safeguarding.",
    "restricted": "Withheld: this person's record is restricted.",
    "no-rule": "Withheld: no rule in the disclosure policy allows this (no rule).",
}
YOUNG_PARENT_AGE = 20
_POLICY = None


def policy():
    global _POLICY
    if _POLICY is None:
        _POLICY = load_policy()
    return _POLICY


@dataclass
class FamilyViewRequest:
    purpose: str | None
    justification: str | None
    res_id: str | None = None
    identifier: str | None = None
    request_id: str = ""
    problem: FhirError | None = None  # found while reading the request (a repeated parameter, a bad body): refused, audited

    @property
    def query(self) -> str:
        target = f"Patient/{self.res_id}" if self.res_id else f"Patient?identifier={self.identifier}"
        return f"{target}/$family-view?purpose={self.purpose}"


@dataclass
class FamilyViewResult:
    status: int
    body: dict[str, Any]
    audit_event_id: str | None


class _Suppressions:
    """The OperationOutcome's suppressed issues: what is withheld and why, never what it says."""

    def __init__(self) -> None:
        self.issues: list[dict[str, Any]] = []

    def add(self, member_entry: int | None, who: str, category: str, what: str, decision: DisclosureDecision,
            reason: str | None = None, role: str | None = None) -> None:
        """``member_entry`` is the Bundle entry of the member the item is about, or None when the
        member is withheld whole: there is no entry to point at, so the issue has no expression
        (pointing at the infant, or at another member by role, would say something untrue) and
        names the member by family-role code."""
        issue: dict[str, Any] = {
            "severity": "information",
            "code": "suppressed",
            "details": {
                "coding": [
                    {"system": DATA_CATEGORY, "code": category},
                    {"system": SPINE_ERROR_SYSTEM, "code": "ACCESS_DENIED", "display": "Access Denied"},
                ] + ([{"system": FAMILY_ROLE_SYSTEM, "code": role}] if role else []),
                "text": f"{what} about the {who} withheld",
            },
            "diagnostics": reason or decision.reason,
        }
        if member_entry is not None:
            issue["expression"] = [f"Bundle.entry[{member_entry}].resource"]
        self.issues.append(issue)

    def add_record(self, member_entry: int, who: str, role: str, holder: str | None, holder_name: str | None,
                   decision: DisclosureDecision) -> None:
        """A withheld record, said only to exist: whose it is, which organisation holds it and how
        to ask. Never its category, kind, code, display or text (those go to the audit only)."""
        if holder:
            org = f"{holder_name} (ODS {holder})" if holder_name else f"the organisation with ODS code {holder}"
            route = (f"To ask for it, contact {org}; if a child may be at risk, make a safeguarding request with a "
                     "justification.")
        else:
            org, route = "familyview (derived from recorded details)", (
                "If a child may be at risk, make a safeguarding request with a justification.")
        self.issues.append({
            "severity": "information",
            "code": "suppressed",
            "details": {
                "coding": [
                    {"system": SPINE_ERROR_SYSTEM, "code": "ACCESS_DENIED", "display": "Access Denied"},
                    {"system": FAMILY_ROLE_SYSTEM, "code": role},
                ],
                "text": f"A confidential record about the {who}, held by {org}, was withheld",
            },
            "diagnostics": f"{_RECORD_REASONS.get(decision.reason_code, 'Withheld.')} {route}",
            "expression": [f"Bundle.entry[{member_entry}].resource"],
        })

    def outcome(self) -> dict[str, Any]:
        issues = self.issues or [{"severity": "information", "code": "informational", "diagnostics": "Nothing known to this gateway about this family was withheld from you."}]
        return {"resourceType": "OperationOutcome", "issue": issues}


def _labels(rec: Rec) -> tuple[set[str], set[str]]:
    """(data categories, security labels) read from the labels stamped at ingest."""
    categories, labels = set(), set()
    for c in (rec.body.get("meta") or {}).get("security") or []:
        system, code = c.get("system"), c.get("code")
        if system == DATA_CATEGORY:
            categories.add(code)
        elif system in (ACT_CODE, CONFIDENTIALITY) and code:
            labels.add(code)
    return categories, labels


def _record_labels(rec: Rec) -> tuple[set[str], set[str]]:
    """A clinical record's labels: those stamped at ingest, and those the code lists and terms in
    force now give its codes and text. A record stored before a list gained its code (or a term
    its words) is decided as the lists now read it, with no re-labelling run to forget."""
    categories, labels = _labels(rec)
    for c in label_resource(rec.body):
        if c["system"] == DATA_CATEGORY:
            categories.add(c["code"])
        elif c["system"] == ACT_CODE:
            labels.add(c["code"])
    return categories, labels


PERSON_CONFIDENTIALITY = ("R", "V")  # labels that belong to the person, not to one copy of their record


def _person_labels(member: FamilyMember) -> set[str]:
    """The security labels the decisions about a person read: the primary record's own, and
    every restricted (R) or very restricted (V) label on any linked record of the person from
    any source. A label is the person's, as PDS treats it: one unlabelled copy (say, their GP's)
    must not undo the restriction another source recorded, so the strictest applies (V also
    carries R where a source recorded R)."""
    if not member.records:
        return set()
    labels = set(_labels(member.primary)[1])
    for rec in member.records:
        labels |= _labels(rec)[1] & set(PERSON_CONFIDENTIALITY)
    return labels


def _telecom_key(point: dict[str, Any]) -> tuple[str, str]:
    """A contact point as compared for de-duplication: "07700 900101" and "07700-900101" are one number."""
    value = str(point.get("value") or "")
    system = str(point.get("system") or "")
    if system in ("phone", "fax", "sms", "pager", ""):
        # one number however it is written: +44 7700 900808, 0044…, 07700-900808; and a
        # number is the same number whether recorded as phone, sms or fax
        system = "phone"
        value = "".join(ch for ch in value if ch.isdigit() or ch == "+")
        for prefix in ("+44", "0044"):
            if value.startswith(prefix):
                value = "0" + value[len(prefix):].lstrip("0")
    return system, value.strip().lower()


def _postcode_key(address: Any) -> str | None:
    return normalise_postcode(address.get("postalCode")) if isinstance(address, dict) else None


def contributing_records(member: FamilyMember) -> list[Rec]:
    """The records of a member whose details are merged into the member's entry: the primary
    record first, then every other record joined to it at level2 (a demographic match) or
    surer. A level1 possible match, left to a reviewer, is never one of them."""
    primary = member.primary
    return [primary] + [r for r in member.records if r.ref != primary.ref and level_rank(r.assurance) >= level_rank("level2")]


def merged_telecom(member: FamilyMember) -> list[dict[str, Any]]:
    """Every contact point of the member's contributing records, the primary record's first, de-duplicated."""
    out, seen = [], set()
    for rec in contributing_records(member):
        for point in rec.body.get("telecom") or []:
            if not isinstance(point, dict) or not point.get("value"):
                continue
            key = _telecom_key(point)
            if key not in seen:
                seen.add(key)
                out.append(point)
    return out


def _restricted_mothers_contact(graph: FamilyGraph) -> tuple[set[tuple[str, str]], set[str]]:
    """The contact points (as compared) and home postcodes of every mother whose record is
    restricted (R) or very restricted (V): shown on another member's entry (the partner she
    lives with), they would show hers."""
    phones: set[tuple[str, str]] = set()
    homes: set[str] = set()
    for member in graph.members:
        if member.role == "mother" and member.records and _person_labels(member) & set(PERSON_CONFIDENTIALITY):
            for r in member.records:
                phones |= {_telecom_key(t) for t in r.body.get("telecom") or [] if isinstance(t, dict) and t.get("value")}
                homes |= {k for a in r.body.get("address") or [] if (k := _postcode_key(a))}
    return phones, homes


def member_consents(member: FamilyMember) -> tuple[ConsentRecord, ...]:
    """The member's Consents, each with the organisation that recorded it (the posting source,
    which ingest holds to Consent.organization): a Consent speaks for that holder's records."""
    return tuple(ConsentRecord.from_fhir(c.body, holder=c.source_org) for c in member.consents)


def record_holders(member: FamilyMember) -> frozenset[str]:
    """Every organisation that holds a record of the member: the source of a Patient or
    RelatedPerson record of them or of a clinical record about them, and the GP practice a
    Patient record names as theirs (it holds their GP record, sent here or not)."""
    holders = {r.source_org for r in (*member.records, *member.clinical) if r.source_org}
    for rec in member.patient_records:
        holders |= organisations_of(rec, "generalPractitioner")
    return frozenset(holders)


class FamilyViewService:
    def __init__(self, session: Session, principal: Principal, *, notify):
        self.session = session
        self.principal = principal
        self.notify = notify  # callable(session, target_ods, communication) storing a notification
        self.requester = Requester(role=principal.role, org=principal.org, user=principal.sub, service=principal.service)

    # ------------------------------------------------------------ entry point

    def run(self, req: FamilyViewRequest, today: date | None = None) -> FamilyViewResult:
        today = today or date.today()
        audit = FamilyViewAudit(
            principal=self.principal, purpose=req.purpose, justification=req.justification,
            # a valid purpose is audited as given even when the request is refused before a decision
            purpose_of_use=policy().purposes[PURPOSES[req.purpose].value].purpose_of_use if req.purpose in PURPOSES else None,
            query=req.query, outcome=OUTCOME_SUCCESS, outcome_desc="", request_id=req.request_id,
            policy_version=policy().version,
        )
        try:
            bundle = self._view(req, today, audit)
            status = 200
        except FhirError as err:
            status, bundle = err.status, err.outcome()
            audit.outcome = OUTCOME_MINOR_FAILURE
            audit.outcome_desc = f"{err.status}: {err.diagnostics}"
            audit.items = [i for i in audit.items if not i.disclosed]
        audit_store.append(self.session, audit.to_fhir(), audit.columns(), audit.index())
        return FamilyViewResult(status, bundle, audit.event_id)

    # ------------------------------------------------------------ the view

    def _view(self, req: FamilyViewRequest, today: date, audit: FamilyViewAudit) -> dict[str, Any]:
        if req.problem is not None:
            raise req.problem
        if req.res_id is None and not req.identifier:
            raise FhirError(400, "required", "Give the infant as Patient/{id}/$family-view or ?identifier=system|value", expression="identifier", spine_code="MISSING_VALUE")
        plan_once_per_statement(self.session.connection())
        subject = find_subject(self.session, res_id=req.res_id, identifier=req.identifier)
        audit.subjects.append((subject.ref, "requested", [subject.nhs_number] if subject.nhs_number else []))
        purpose = PURPOSES.get(req.purpose or "")
        if purpose is None:
            raise FhirError(400, "required" if not req.purpose else "value", "purpose must be direct-care or safeguarding", expression="purpose", spine_code="MISSING_VALUE" if not req.purpose else "INVALID_VALUE")
        if purpose is Purpose.SAFEGUARDING and not (req.justification or "").strip():
            raise FhirError(400, "required", "A safeguarding request needs a justification (why the child may be at risk)", expression="justification", spine_code="MISSING_VALUE")
        if self.principal.role in NEVER_ROLES:
            raise FhirError(403, "forbidden", f"The {self.principal.role} role does not receive clinical data; IG officers use the audit search", spine_code="ACCESS_DENIED")
        if not is_infant(subject, today):
            # the route first: whether she is pregnant (a 422 or a pre-birth view) is told only
            # to a requester with a relationship or a lawful route; everyone else gets the same 403
            route = relationship_with_any(self.principal, route_people(self.session, subject, today))
            self._refuse_without_route(FamilyMember(role="infant", unborn=True), subject.ref, purpose, req, route, audit)
        graph = assemble(self.session, subject, today)
        relationship = legitimate_relationship(self.principal, graph)
        # every record of a member is named (subject access by any of them finds this request),
        # the member's key record first with the NHS numbers
        audit.subjects = [
            subject for m in graph.members for subject in
            [(m.key, m.role, [n for n in {r.nhs_number for r in m.records} if n])]
            + [(r.ref, m.role, []) for r in (contributing_records(m)[1:] if m.records else [])]
        ]
        return self._disclose(graph, purpose, (req.justification or "").strip() or None, relationship, today, audit)

    def _refuse_without_route(self, key: FamilyMember, asked_for: str, purpose: Purpose, req: FamilyViewRequest,
                              relationship: LegitimateRelationship, audit: FamilyViewAudit) -> DisclosureDecision:
        """The view's first item, the key person's identity, decides whether there is any lawful
        route to the family; without one the answer is one 403, whoever was asked for."""
        justification = (req.justification or "").strip() or None
        identity = self._decide(key, (), purpose, justification, relationship, DataItem("identity", "Patient", frozenset(), None, reference=key.key))
        audit.purpose_of_use = identity.purpose_of_use
        if not identity.permitted and identity.reason_code in ROUTE_REFUSALS:
            audit.items.append(AuditItem(asked_for, asked_for, "identity", identity.to_dict(), False))
            raise FhirError(403, "forbidden", f"No lawful route to this family: {identity.reason}", spine_code="ACCESS_DENIED")
        return identity

    def _carried_from_mother(self, graph: FamilyGraph, purpose: Purpose, justification: str | None,
                             relationship: LegitimateRelationship) -> tuple[set[str], DisclosureDecision | None]:
        """The fields (address, telecom, generalPractitioner) removed from a mother because her
        record is restricted (R) or very restricted (V), which must not be shown on the infant's
        entry either (sources send the baby's address and GP practice as hers), and the decision
        that removed them from her."""
        if graph.infant.unborn:
            return set(), None
        restricted_fields = set(policy().restricted_redact_fields)
        for member in graph.members:
            labels = frozenset(_person_labels(member))
            if member.role != "mother" or not labels & set(PERSON_CONFIDENTIALITY):
                continue
            consents = member_consents(member)
            source = member.primary.source_org
            identity = self._decide(member, consents, purpose, justification, relationship, DataItem("identity", "Patient", labels, source, reference=member.key))
            if not identity.permitted:
                return restricted_fields, identity
            contact = self._decide(member, consents, purpose, justification, relationship, DataItem("contact", "Patient", labels, source, reference=member.key + "#contact"))
            removed = set(identity.redacted_fields) & restricted_fields
            if not contact.permitted and contact.reason_code in ("restricted", "very-restricted"):
                removed |= {"address", "telecom"}
            if removed:
                return removed, contact if not contact.permitted else identity
        return set(), None

    def _request(self, member: FamilyMember, consents: tuple, purpose: Purpose, justification, relationship,
                 item: DataItem) -> DisclosureRequest:
        return DisclosureRequest(
            requester=self.requester, purpose=purpose, justification=justification, relationship=relationship,
            subject=DataSubject(member.key, member.role, tuple((NHS_NUMBER_SYSTEM, n) for n in {r.nhs_number for r in member.records} if n),
                                record_holders=record_holders(member)),
            item=item, consents=consents,
        )

    def _decide(self, member: FamilyMember, consents: tuple, purpose: Purpose, justification, relationship, item: DataItem) -> DisclosureDecision:
        return decide(self._request(member, consents, purpose, justification, relationship, item), policy())

    def _disclose(self, graph: FamilyGraph, purpose: Purpose, justification: str | None, relationship: LegitimateRelationship,
                  today: date, audit: FamilyViewAudit) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        suppressed = _Suppressions()
        notifications: dict[str, list[str]] = {}
        review = False

        def note(decision: DisclosureDecision, reference: str, subject: str, category: str, disclosed: bool) -> None:
            nonlocal review
            audit.items.append(AuditItem(reference, subject, category, decision.to_dict(), disclosed))
            if disclosed and decision.obligation(ObligationKind.QUEUE_IG_REVIEW):
                review = True
            if decision.consent_conflict:  # Consents of different holders disagree: an IG officer looks
                review = True
            if disclosed:
                for ob in decision.obligations:
                    # the requester's own organisation holds the record: there is nobody else to tell
                    if ob.kind is ObligationKind.NOTIFY_DATA_CONTROLLER and ob.target and ob.target != self.principal.org:
                        notifications.setdefault(ob.target, []).append(reference)

        merged: list[AuditItem] = []  # the member's other records whose details went into (or were kept from) the entry

        def note_merged(member: FamilyMember, decision: DisclosureDecision, category: str, resource: dict[str, Any] | None) -> None:
            """Name each other record of the member that the entry drew on, with the member's
            decision: its identity (identifiers), and its contact when it holds any, shown only
            if one of its contact points is in the entry."""
            shown = {_telecom_key(t) for t in (resource or {}).get("telecom") or []}
            for rec in contributing_records(member)[1:]:
                if category == "identity":
                    merged.append(AuditItem(rec.ref, member.key, "identity", decision.to_dict(), decision.permitted))
                elif rec.body.get("telecom"):
                    keys = {_telecom_key(t) for t in rec.body["telecom"] if isinstance(t, dict) and t.get("value")}
                    merged.append(AuditItem(rec.ref + "#contact", member.key, "contact", decision.to_dict(), bool(keys & shown)))

        carried, carried_decision = self._carried_from_mother(graph, purpose, justification, relationship)
        holder_names = organisation_names(self.session, {r.source_org for m in graph.members for r in m.clinical})
        mothers_contact, mothers_homes = _restricted_mothers_contact(graph)
        for index, member in enumerate(graph.members):
            consents = member_consents(member)
            decide_item = lambda item, m=member, c=consents: self._decide(m, c, purpose, justification, relationship, item)  # noqa: E731
            who = member.role.replace("-", " ") if not member.unborn else "unborn baby"
            primary = member.primary if member.records else None
            person_labels = frozenset(_person_labels(member))
            identity = decide_item(DataItem("identity", "Patient", person_labels, primary.source_org if primary else None, reference=member.key))
            if index == 0:
                audit.purpose_of_use = identity.purpose_of_use
                if not identity.permitted:
                    note(identity, member.key, member.key, "identity", False)
                    raise FhirError(403, "forbidden", f"No lawful route to this family: {identity.reason}", spine_code="ACCESS_DENIED")
            note(identity, member.key, member.key, "identity", identity.permitted)
            if member.records:
                note_merged(member, identity, "identity", None)
            if not identity.permitted:
                suppressed.add(None, who, "identity", "The identity of a family member", identity, role=member.role)
                continue
            entry_index = len(entries)
            resource = self._person_resource(member, graph, today)
            redact = set(identity.redacted_fields)
            if not member.unborn:
                contact = decide_item(DataItem("contact", "Patient", person_labels, primary.source_org, reference=member.key + "#contact"))
                shares = carried & set(resource) if member is graph.infant else set()
                if shares:
                    # the baby lives with its restricted mother: what was removed from her entry
                    # is not shown as the baby's either
                    note(carried_decision, member.key + "#contact", member.key, "contact", False)
                    contact_decision = carried_decision
                    redact |= carried
                    suppressed.add(entry_index, who, "contact", "Address, contact and GP practice details shared with the mother",
                                   carried_decision, reason=MOTHER_RESTRICTED, role=member.role)
                else:
                    note(contact, member.key + "#contact", member.key, "contact", contact.permitted)
                    contact_decision = contact
                if (mothers_contact or mothers_homes) and member.role != "mother" and member is not graph.infant:
                    # a number or home this person shares with the restricted mother (the partner she
                    # lives with, a household phone the midwife recorded on his record) is hers too,
                    # and is not shown on his entry
                    shared = False
                    for fname, same in (("telecom", lambda t: _telecom_key(t) in mothers_contact),
                                        ("address", lambda a: _postcode_key(a) in mothers_homes)):
                        items = resource.get(fname) or []
                        kept = [x for x in items if not (isinstance(x, dict) and same(x))]
                        if len(kept) < len(items):
                            shared = True
                            if kept:
                                resource[fname] = kept
                            else:
                                resource.pop(fname)
                    if shared:
                        suppressed.add(entry_index, who, "contact", "Contact details shared with the mother", identity,
                                       reason=MOTHER_SHARED_CONTACT, role=member.role)
                redact |= set(contact.redacted_fields)
                if not contact.permitted:
                    redact |= {"address", "telecom"}
                if not shares and redact & {"address", "telecom"} and (resource.get("address") or resource.get("telecom")):
                    suppressed.add(entry_index, who, "contact", "Address and contact details", contact if not contact.permitted else identity, role=member.role)
                for fname in redact:
                    resource.pop(fname, None)
                note_merged(member, contact_decision, "contact", resource)
            entries.append({"fullUrl": f"urn:familyview:{member.key}", "resource": resource})
            for rec in member.clinical:
                categories, labels = _record_labels(rec)
                items = [DataItem(c, rec.res_type, frozenset(labels), rec.source_org, record_date(rec.body), rec.ref) for c in sorted(categories or {"record"})]
                decided = []
                for item in items:
                    request = self._request(member, consents, purpose, justification, relationship, item)
                    decided.append((effective_category(request, policy()), decide(request, policy())))
                allowed = all(d.permitted for _, d in decided)
                for category, d in decided:
                    note(d, rec.ref, member.key, category, allowed)
                if allowed:
                    copy_ = copy.deepcopy(rec.body)
                    for _, d in decided:
                        for fname in d.redacted_fields:
                            copy_.pop(fname, None)
                    if rec.assurance not in ("level3", "level4"):
                        copy_.setdefault("extension", []).append({"url": EXT_ASSURANCE, "valueCode": rec.assurance})
                    records.append({"fullUrl": f"urn:familyview:{rec.ref}", "resource": copy_})
                else:
                    d = next(d for _, d in decided if not d.permitted)
                    suppressed.add_record(entry_index, who, member.role, rec.source_org, holder_names.get(rec.source_org), d)
            for indicator in self._indicators(member, graph, today):
                # computed here from the birth date: no source holds it, so no data controller to tell
                d = decide_item(DataItem("young-parent", "Flag", frozenset(), None, today, indicator["id"]))
                note(d, f"Flag/{indicator['id']}", member.key, "young-parent", d.permitted)
                if d.permitted:
                    indicator["subject"] = {"reference": member.key}
                    records.append({"fullUrl": f"urn:familyview:Flag/{indicator['id']}", "resource": indicator})
                else:
                    suppressed.add_record(entry_index, who, member.role, None, None, d)
        audit.review_required = review
        bases = sorted({basis_text(i.decision["lawful_basis"]) for i in audit.items if i.disclosed and i.decision.get("lawful_basis")})
        audit.outcome_desc = f"{len([i for i in audit.items if i.disclosed])} items disclosed, {len([i for i in audit.items if not i.disclosed])} withheld; basis: {'; '.join(bases) or 'none'}"
        audit.items += merged  # named for subject access; the counts above are of the items decided
        for target, refs in sorted(notifications.items()):
            self.notify(self.session, target, self._notification(target, refs, audit, graph))
        bundle_entries = entries + records + [{"fullUrl": "urn:familyview:outcome", "resource": suppressed.outcome()}]
        return {
            "resourceType": "Bundle",
            "id": audit.event_id,
            "meta": {"lastUpdated": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                     "tag": [{"system": f"{FV}/CodeSystem/family-view-mode", "code": graph.mode}]},
            "type": "collection",
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "entry": bundle_entries,
        }

    # ------------------------------------------------------------ building blocks

    def _person_resource(self, member: FamilyMember, graph: FamilyGraph, today: date) -> dict[str, Any]:
        ext = [{"url": EXT_FAMILY_ROLE, "valueCode": member.role}]
        if member.unborn:
            mother = graph.members[1] if len(graph.members) > 1 else None
            family = ((mother.primary.body.get("name") or [{}])[0].get("family") if mother and mother.records else None) or ""
            resource: dict[str, Any] = {
                "resourceType": "Patient",
                "id": f"unborn-{graph.subject.res_id}",
                "meta": {"tag": [DERIVED_TAG]},
                "extension": ext + ([{"url": EXT_EDD, "valueDate": member.expected_delivery}] if member.expected_delivery else []),
                "name": [{"use": "temp", "text": f"Unborn baby {family}".strip()}],
                "link": [{"other": {"reference": graph.subject.ref}, "type": "seealso"}],
            }
            return resource
        primary = member.primary
        resource = copy.deepcopy(primary.body)
        identifiers, seen = [], set()
        for rec in contributing_records(member):
            for ident in rec.body.get("identifier") or []:
                key = (ident.get("system"), ident.get("value"))
                if key not in seen:
                    seen.add(key)
                    identifiers.append(ident)
        if identifiers:
            resource["identifier"] = identifiers
        telecom = merged_telecom(member)
        if telecom:
            # contact recorded by any source (say, the father's mobile in the midwife's record while
            # the entry is his GP's Patient); whether it is shown is decided for the person after this
            resource["telecom"] = telecom
        weakest = member.weakest_assurance
        if weakest not in ("level3", "level4"):
            ext.append({"url": EXT_ASSURANCE, "valueCode": weakest})
            ext.append({"url": EXT_INFERRED, "extension": [
                {"url": "inferred", "valueBoolean": True},
                {"url": "assurance", "valueCode": weakest},
                {"url": "basis", "valueString": "records joined by a demographic match (name, date of birth, sex, postcode), not by NHS number"},
            ]})
        resource["extension"] = [e for e in resource.get("extension") or [] if e.get("url") not in (EXT_FAMILY_ROLE, EXT_ASSURANCE, EXT_INFERRED)] + ext
        return resource

    def _indicators(self, member: FamilyMember, graph: FamilyGraph, today: date) -> list[dict[str, Any]]:
        """Derived indicators: a parent under 20 at the birth (pre-birth: today)."""
        if member.role not in ("mother", "father") or member.unborn:
            return []
        born = member.birth_date
        on = graph.birth_or_due if graph.mode == "infant" and graph.birth_or_due else today
        if born is None:
            return []
        age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
        if age >= YOUNG_PARENT_AGE:
            return []
        flag = {
            "resourceType": "Flag",
            "id": f"young-parent-{member.primary.res_id}",
            "meta": {"tag": [DERIVED_TAG], "security": [{"system": DATA_CATEGORY, "code": "young-parent"}]},
            "status": "active",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "clinical"}]}],
            "code": {"coding": [{"system": LOCAL_SAFEGUARDING, "code": "YOUNG-PARENT", "display": "Young parent (under 20)"}],
                     "text": f"Young {member.role}: {age} at the {'birth' if graph.mode == 'infant' else 'time of this view'}"},
        }
        return [flag]

    def _notification(self, target: str, refs: list[str], audit: FamilyViewAudit, graph: FamilyGraph) -> dict[str, Any]:
        return {
            "resourceType": "Communication",
            "status": "preparation",
            "category": [{"coding": [{"system": f"{FV}/CodeSystem/notification", "code": "safeguarding-disclosure"}]}],
            "priority": "urgent",
            "recipient": [{"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": target}}],
            "sender": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": self.principal.org}},
            "sent": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "about": [{"reference": f"AuditEvent/{audit.event_id}"}] + [{"reference": r} for r in sorted(set(refs))],
            "payload": [{"contentString": (
                f"Records you hold were disclosed for safeguarding a child by {self.principal.role} of {self.principal.org} "
                f"(purposeOfUse {audit.purpose_of_use}), without the person's consent as the basis. "
                f"Justification given: {audit.justification}. See AuditEvent/{audit.event_id}; an IG review has been queued."
            )}],
        }
