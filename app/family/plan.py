"""Where each item of the family view is decided: who is shown, which of their details and
records, on which decision, what is withheld and why, what must be audited, reviewed and told.

Pure: a :class:`ViewPlan` is made from the assembled :class:`FamilyGraph` (plain data), the
requester and the purpose, with no database, HTTP or clock of its own, so that a test (or an IG
officer's question) can take any family through the policy without a server. The service reads
the store before and writes the audit after; :mod:`app.family.render` turns the plan into FHIR."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Iterable

from consent import (
    ConsentRecord,
    DataItem,
    DataSubject,
    DisclosureDecision,
    DisclosureRequest,
    LegitimateRelationship,
    ObligationKind,
    Policy,
    Purpose,
    Requester,
    decide,
    effective_category,
    label_resource,
    record_date,
)

from app.family.contract import (
    EXT_ASSURANCE,
    EXT_EDD,
    EXT_FAMILY_ROLE,
    EXT_INFERRED,
    EXT_NAME_SOURCE,
    EXT_RELATIONSHIP_PROVENANCE,
    FV,
    ODS_SYSTEM,
)
from app.family.members import FamilyGraph, FamilyMember, Rec, Relationship, organisations_of
from app.fhir.indexing import NHS_NUMBER_SYSTEM, parse_reference
from app.linkage.matching import level_rank, normalise_postcode

DATA_CATEGORY = f"{FV}/CodeSystem/data-category"
DERIVED_TAG = {
    "system": f"{FV}/CodeSystem/provenance",
    "code": "derived",
    "display": "Derived by familyview, not recorded by a source",
}
LOCAL_SAFEGUARDING = f"{FV}/CodeSystem/local-safeguarding"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PERSON_CONFIDENTIALITY = ("R", "V")  # labels that belong to the person, not to one copy of their record
YOUNG_PARENT_AGE = 20
MOTHER_RESTRICTED = (
    "Withheld: the mother's record is restricted, so the address, contact and GP practice details "
    "that the infant shares with her are not shown for the infant either."
)
MOTHER_SHARED_CONTACT = (
    "Withheld: the mother's record is restricted, so contact details recorded for this person "
    "that are also hers are not shown."
)


# ---------------------------------------------------------------- the plan


@dataclass
class DecidedItem:
    """One item decided, as the audit records it (AuditItem's fields)."""

    reference: str  # e.g. Condition/123 or Patient/456#contact
    subject: str  # the family member's key reference
    category: str
    decision: DisclosureDecision
    disclosed: bool


@dataclass
class Withheld:
    """One suppressed issue of the view: what is withheld about whom, and why, never what it says.

    ``kind`` "record" (a clinical record or derived indicator: said only to exist, with its
    holder) or "person" (identity or contact details, named by data category). ``entry`` is the
    Bundle entry of the member, None when the member is withheld whole."""

    kind: str
    entry: int | None
    who: str
    role: str
    decision: DisclosureDecision
    category: str | None = None
    what: str = ""
    reason: str | None = None
    holder: str | None = None
    holder_name: str | None = None


@dataclass
class Override:
    """A safeguarding view that disclosed what consent does not cover: what it overrode, and what
    follows (the IG review, the holders told), for the practitioner to read."""

    refusal_overridden: bool
    break_glass: bool
    review_queued: bool
    holders_told: list[tuple[str, str | None]]  # (ODS code, name) of each organisation notified


@dataclass
class ViewPlan:
    """Everything the view shows, withholds, records and owes, decided for one request."""

    people: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (member key, resource as shown)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (record reference, resource as shown)
    withheld: list[Withheld] = field(default_factory=list)
    items: list[DecidedItem] = field(default_factory=list)  # the items decided, in order
    merged: list[DecidedItem] = field(default_factory=list)  # other records of a member drawn on by the entry
    notifications: dict[str, list[str]] = field(default_factory=dict)  # data controller ODS -> references disclosed
    review_required: bool = False
    purpose_of_use: str | None = None
    refusal: DisclosureDecision | None = None  # no lawful route to the family: nothing else was decided
    care: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # care team, episodes, professionals as shown
    override: Override | None = None  # safeguarding disclosed what consent does not cover
    no_father_known: bool = False  # no source records a father or a man in a caring role

    def note(
        self,
        decision: DisclosureDecision,
        reference: str,
        subject: str,
        category: str,
        disclosed: bool,
        requester_org: str,
    ) -> None:
        self.items.append(DecidedItem(reference, subject, category, decision, disclosed))
        if disclosed and decision.obligation(ObligationKind.QUEUE_IG_REVIEW):
            self.review_required = True
        if decision.consent_conflict:  # Consents of different holders disagree: an IG officer looks
            self.review_required = True
        if disclosed:
            for ob in decision.obligations:
                # the requester's own organisation holds the record: there is nobody else to tell
                if ob.kind is ObligationKind.NOTIFY_DATA_CONTROLLER and ob.target and ob.target != requester_org:
                    self.notifications.setdefault(ob.target, []).append(reference)


# ---------------------------------------------------------------- reading the records


def record_labels(rec: Rec) -> tuple[set[str], set[str]]:
    """(data categories, security labels) stamped on a record at ingest."""
    categories, labels = set(), set()
    for c in (rec.body.get("meta") or {}).get("security") or []:
        system, code = c.get("system"), c.get("code")
        if system == DATA_CATEGORY:
            categories.add(code)
        elif system in (ACT_CODE, CONFIDENTIALITY) and code:
            labels.add(code)
    return categories, labels


def clinical_labels(rec: Rec) -> tuple[set[str], set[str]]:
    """A clinical record's labels: those stamped at ingest, and those the code lists and terms in
    force now give its codes and text. A record stored before a list gained its code (or a term
    its words) is decided as the lists now read it, with no re-labelling run to forget."""
    categories, labels = record_labels(rec)
    for c in label_resource(rec.body):
        if c["system"] == DATA_CATEGORY:
            categories.add(c["code"])
        elif c["system"] == ACT_CODE:
            labels.add(c["code"])
    return categories, labels


def person_labels(member: FamilyMember) -> set[str]:
    """The security labels the decisions about a person read: the primary record's own, and
    every restricted (R) or very restricted (V) label on any linked record of the person from
    any source. A label is the person's, as PDS treats it: one unlabelled copy (say, their GP's)
    must not undo the restriction another source recorded, so the strictest applies (V also
    carries R where a source recorded R)."""
    if not member.records:
        return set()
    labels = set(record_labels(member.primary)[1])
    for rec in member.records:
        labels |= record_labels(rec)[1] & set(PERSON_CONFIDENTIALITY)
    return labels


def telecom_key(point: dict[str, Any]) -> tuple[str, str]:
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
                value = "0" + value[len(prefix) :].lstrip("0")
    return system, value.strip().lower()


def postcode_key(address: Any) -> str | None:
    return normalise_postcode(address.get("postalCode")) if isinstance(address, dict) else None


def contributing_records(member: FamilyMember) -> list[Rec]:
    """The records of a member whose details are merged into the member's entry: the primary
    record first, then every other record joined to it at level2 (a demographic match) or
    surer. A level1 possible match, left to a reviewer, is never one of them."""
    primary = member.primary
    return [primary] + [
        r for r in member.records if r.ref != primary.ref and level_rank(r.assurance) >= level_rank("level2")
    ]


def merged_telecom(member: FamilyMember) -> list[dict[str, Any]]:
    """Every contact point of the member's contributing records, the primary record's first, de-duplicated."""
    out, seen = [], set()
    for rec in contributing_records(member):
        for point in rec.body.get("telecom") or []:
            if not isinstance(point, dict) or not point.get("value"):
                continue
            key = telecom_key(point)
            if key not in seen:
                seen.add(key)
                out.append(point)
    return out


def contact_points(records: Iterable[Rec]) -> tuple[set[tuple[str, str]], set[str]]:
    """The contact points (as compared) and home postcodes these records give."""
    phones: set[tuple[str, str]] = set()
    homes: set[str] = set()
    for r in records:
        phones |= {telecom_key(t) for t in r.body.get("telecom") or [] if isinstance(t, dict) and t.get("value")}
        homes |= {k for a in r.body.get("address") or [] if (k := postcode_key(a))}
    return phones, homes


def restricted_mothers_contact(graph: FamilyGraph) -> tuple[set[tuple[str, str]], set[str]]:
    """The contact points (as compared) and home postcodes of every mother whose record is
    restricted (R) or very restricted (V): shown on another member's entry (the partner she
    lives with), they would show hers."""
    return contact_points(
        r
        for member in graph.members
        if member.role == "mother" and member.records and person_labels(member) & set(PERSON_CONFIDENTIALITY)
        for r in member.records
    )


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


# ---------------------------------------------------------------- what the view shows of a person


def organisation_reference(ods: str, org_names: dict[str, str]) -> dict[str, Any]:
    """An organisation by ODS code, with the name it gave itself where a source described it."""
    ref: dict[str, Any] = {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": ods}}
    if org_names.get(ods):
        ref["display"] = org_names[ods]
    return ref


def name_organisations(node: Any, org_names: dict[str, str]) -> None:
    """Give every Reference that names an organisation by ODS code its name (Reference.display),
    in place, where a source described the organisation and the reference has no display."""
    if isinstance(node, list):
        for v in node:
            name_organisations(v, org_names)
        return
    if not isinstance(node, dict):
        return
    ident = node.get("identifier")
    if (
        isinstance(ident, dict)
        and ident.get("system") == ODS_SYSTEM
        and set(node) <= {"reference", "type", "identifier", "display", "id", "extension"}
        and not node.get("display")
        and org_names.get(ident.get("value") or "")
    ):
        node["display"] = org_names[ident["value"]]
    for v in node.values():
        if isinstance(v, (dict, list)):
            name_organisations(v, org_names)


def _name_key(name: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    family = str(name.get("family") or "").strip().lower()
    given = tuple(str(g).strip().lower() for g in name.get("given") or [])
    return family, given, "" if family or given else str(name.get("text") or "").strip().lower()


def member_names(member: FamilyMember, org_names: dict[str, str]) -> list[dict[str, Any]]:
    """The entry's own names, then the names the person's other records carry (maternity's
    "Jon Smyth" beside his GP's "Jonathan Smith"), once each, every one with its source."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, tuple[str, ...], str]] = set()
    for n, rec in enumerate(contributing_records(member)):
        for name in rec.body.get("name") or []:
            if not isinstance(name, dict):
                continue
            key = _name_key(name)
            if n > 0 and key in seen:
                continue
            seen.add(key)
            shown = copy.deepcopy(name)
            shown["extension"] = [e for e in shown.get("extension") or [] if e.get("url") != EXT_NAME_SOURCE] + [
                {
                    "url": EXT_NAME_SOURCE,
                    "extension": [
                        {"url": "organization", "valueReference": organisation_reference(rec.source_org, org_names)},
                        {"url": "record", "valueReference": {"reference": rec.ref}},
                        {"url": "linked", "valueBoolean": n > 0},
                    ],
                }
            ]
            out.append(shown)
    return out


def relationship_provenance(relationships: list[Relationship], org_names: dict[str, str]) -> list[dict[str, Any]]:
    """Who recorded each relationship and when (the source organisation and the date), once per
    recording RelatedPerson and code."""
    out, seen = [], set()
    for rel in relationships:
        if (rel.record.ref, rel.code) in seen:
            continue
        seen.add((rel.record.ref, rel.code))
        body = rel.record.body
        coding = next(
            (
                c
                for concept in body.get("relationship") or []
                for c in (concept.get("coding") or [])
                if isinstance(c, dict) and c.get("code") == rel.code
            ),
            {"code": rel.code},
        )
        recorded = (body.get("period") or {}).get("start") or (body.get("meta") or {}).get("lastUpdated")
        ext: list[dict[str, Any]] = [
            {
                "url": "relationship",
                "valueCoding": {k: coding[k] for k in ("system", "code", "display") if coding.get(k)},
            },
            {"url": "recordedOn", "valueCode": rel.recorded_on},
            {"url": "source", "valueReference": organisation_reference(rel.record.source_org, org_names)},
        ]
        if recorded:
            ext.append({"url": "recorded", "valueDateTime": recorded})
        ext.append({"url": "record", "valueReference": {"reference": rel.record.ref}})
        out.append({"url": EXT_RELATIONSHIP_PROVENANCE, "extension": ext})
    return out


def person_resource(
    member: FamilyMember, graph: FamilyGraph, org_names: dict[str, str] | None = None
) -> dict[str, Any]:
    """The member's entry before any redaction: the primary record with every identifier, name
    (each with its source) and contact point of their contributing records, the GP practice by
    name, the family role and how surely they were joined."""
    org_names = org_names or {}
    ext: list[dict[str, Any]] = [{"url": EXT_FAMILY_ROLE, "valueCode": member.role}]
    if member.unborn:
        mother = graph.members[1] if len(graph.members) > 1 else None
        family = (
            (mother.primary.body.get("name") or [{}])[0].get("family") if mother and mother.records else None
        ) or ""
        return {
            "resourceType": "Patient",
            "id": f"unborn-{graph.subject.res_id}",
            "meta": {"tag": [DERIVED_TAG]},
            "extension": ext
            + ([{"url": EXT_EDD, "valueDate": member.expected_delivery}] if member.expected_delivery else []),
            "name": [{"use": "temp", "text": f"Unborn baby {family}".strip()}],
            "link": [{"other": {"reference": graph.subject.ref}, "type": "seealso"}],
        }
    resource = copy.deepcopy(member.primary.body)
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
    names = member_names(member, org_names)
    if names:
        resource["name"] = names
    name_organisations(resource.get("generalPractitioner"), org_names)
    if telecom:
        # contact recorded by any source (say, the father's mobile in the midwife's record while
        # the entry is his GP's Patient); whether it is shown is decided for the person after this
        resource["telecom"] = telecom
    weakest = member.weakest_assurance
    if weakest not in ("level3", "level4"):
        ext.append({"url": EXT_ASSURANCE, "valueCode": weakest})
        ext.append(
            {
                "url": EXT_INFERRED,
                "extension": [
                    {"url": "inferred", "valueBoolean": True},
                    {"url": "assurance", "valueCode": weakest},
                    {
                        "url": "basis",
                        "valueString": "records joined by a demographic match (name, date of birth, sex, postcode), not by NHS number",
                    },
                ],
            }
        )
    resource["extension"] = [
        e
        for e in resource.get("extension") or []
        if e.get("url") not in (EXT_FAMILY_ROLE, EXT_ASSURANCE, EXT_INFERRED, EXT_RELATIONSHIP_PROVENANCE)
    ] + ext
    return resource


def indicators(member: FamilyMember, graph: FamilyGraph, today: date) -> list[dict[str, Any]]:
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
    return [
        {
            "resourceType": "Flag",
            "id": f"young-parent-{member.primary.res_id}",
            "meta": {"tag": [DERIVED_TAG], "security": [{"system": DATA_CATEGORY, "code": "young-parent"}]},
            "status": "active",
            "category": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "clinical"}]}
            ],
            "code": {
                "coding": [
                    {"system": LOCAL_SAFEGUARDING, "code": "YOUNG-PARENT", "display": "Young parent (under 20)"}
                ],
                "text": f"Young {member.role}: {age} at the {'birth' if graph.mode == 'infant' else 'time of this view'}",
            },
        }
    ]


# ---------------------------------------------------------------- the decisions


@dataclass
class Asker:
    """Who asks, why, and on what footing: everything of the request a decision reads."""

    requester: Requester
    purpose: Purpose
    justification: str | None
    relationship: LegitimateRelationship
    policy: Policy

    _subjects: dict[str, DataSubject] = field(default_factory=dict, repr=False)

    def subject(self, member: FamilyMember) -> DataSubject:
        """The member as a data subject, made once per member: every item of theirs is decided
        about the same person, with the same identifiers and record holders."""
        found = self._subjects.get(member.key)
        if found is None:
            nhs_numbers = tuple((NHS_NUMBER_SYSTEM, n) for n in {r.nhs_number for r in member.records} if n)
            found = DataSubject(member.key, member.role, nhs_numbers, record_holders=record_holders(member))
            self._subjects[member.key] = found
        return found

    def request(self, member: FamilyMember, consents: tuple[ConsentRecord, ...], item: DataItem) -> DisclosureRequest:
        return DisclosureRequest(
            requester=self.requester,
            purpose=self.purpose,
            justification=self.justification,
            relationship=self.relationship,
            subject=self.subject(member),
            item=item,
            consents=consents,
        )

    def decide(self, member: FamilyMember, consents: tuple[ConsentRecord, ...], item: DataItem) -> DisclosureDecision:
        return decide(self.request(member, consents, item), self.policy)


def carried_from_mother(graph: FamilyGraph, asker: Asker) -> tuple[set[str], DisclosureDecision | None]:
    """The fields (address, telecom, generalPractitioner) removed from a mother because her
    record is restricted (R) or very restricted (V), which must not be shown on the infant's
    entry either (sources send the baby's address and GP practice as hers), and the decision
    that removed them from her."""
    if graph.infant.unborn:
        return set(), None
    restricted_fields = set(asker.policy.restricted_redact_fields)
    for member in graph.members:
        labels = frozenset(person_labels(member))
        if member.role != "mother" or not labels & set(PERSON_CONFIDENTIALITY):
            continue
        consents = member_consents(member)
        source = member.primary.source_org
        identity = asker.decide(member, consents, DataItem("identity", "Patient", labels, source, reference=member.key))
        if not identity.permitted:
            return restricted_fields, identity
        contact = asker.decide(
            member, consents, DataItem("contact", "Patient", labels, source, reference=member.key + "#contact")
        )
        removed = set(identity.redacted_fields) & restricted_fields
        if not contact.permitted and contact.reason_code in ("restricted", "very-restricted"):
            removed |= {"address", "telecom"}
        if removed:
            return removed, contact if not contact.permitted else identity
    return set(), None


def plan_view(graph: FamilyGraph, asker: Asker, today: date, holder_names: dict[str, str] | None = None) -> ViewPlan:
    """Decide every item of the family's view. The first member's identity decides whether there
    is any lawful route to the family at all: without one, ``refusal`` is set and nothing else
    is decided."""
    plan = ViewPlan()
    holder_names = holder_names or {}
    org = asker.requester.org
    carried, carried_decision = carried_from_mother(graph, asker)
    entries: dict[str, int] = {}  # member key -> the Bundle entry of the member shown
    mothers_contact, mothers_homes = restricted_mothers_contact(graph)

    def note_merged(
        member: FamilyMember, decision: DisclosureDecision, category: str, resource: dict[str, Any] | None
    ) -> None:
        """Name each other record of the member that the entry drew on, with the member's
        decision: its identity (identifiers), and its contact when it holds any, shown only
        if one of its contact points is in the entry."""
        shown = {telecom_key(t) for t in (resource or {}).get("telecom") or []}
        for rec in contributing_records(member)[1:]:
            if category == "identity":
                plan.merged.append(DecidedItem(rec.ref, member.key, "identity", decision, decision.permitted))
            elif rec.body.get("telecom"):
                keys = {telecom_key(t) for t in rec.body["telecom"] if isinstance(t, dict) and t.get("value")}
                plan.merged.append(
                    DecidedItem(rec.ref + "#contact", member.key, "contact", decision, bool(keys & shown))
                )

    for index, member in enumerate(graph.members):
        consents = member_consents(member)
        decide_item: Callable[[DataItem], DisclosureDecision] = lambda item, m=member, c=consents: asker.decide(
            m, c, item
        )  # type: ignore[misc]
        who = member.role.replace("-", " ") if not member.unborn else "unborn baby"
        primary = member.primary if member.records else None
        labels = frozenset(person_labels(member))
        identity = decide_item(
            DataItem("identity", "Patient", labels, primary.source_org if primary else None, reference=member.key)
        )
        if index == 0:
            plan.purpose_of_use = identity.purpose_of_use
            if not identity.permitted:
                plan.note(identity, member.key, member.key, "identity", False, org)
                plan.refusal = identity
                return plan
        plan.note(identity, member.key, member.key, "identity", identity.permitted, org)
        if member.records:
            note_merged(member, identity, "identity", None)
        if not identity.permitted:
            plan.withheld.append(
                Withheld("person", None, who, member.role, identity, "identity", "The identity of a family member")
            )
            continue
        entry = len(plan.people)
        resource = person_resource(member, graph, holder_names)
        redact = set(identity.redacted_fields)
        if primary is not None:  # the unborn baby has no record and no contact details
            contact = decide_item(
                DataItem("contact", "Patient", labels, primary.source_org, reference=member.key + "#contact")
            )
            shares = carried & set(resource) if member is graph.infant else set()
            contact_decision: DisclosureDecision = contact
            if shares and carried_decision is not None:
                # the baby lives with its restricted mother: what was removed from her entry
                # is not shown as the baby's either
                plan.note(carried_decision, member.key + "#contact", member.key, "contact", False, org)
                contact_decision = carried_decision
                redact |= carried
                plan.withheld.append(
                    Withheld(
                        "person",
                        entry,
                        who,
                        member.role,
                        carried_decision,
                        "contact",
                        "Address, contact and GP practice details shared with the mother",
                        MOTHER_RESTRICTED,
                    )
                )
            else:
                plan.note(contact, member.key + "#contact", member.key, "contact", contact.permitted, org)
            if (mothers_contact or mothers_homes) and member.role != "mother" and member is not graph.infant:
                # a number or home this person shares with the restricted mother (the partner she
                # lives with, a household phone the midwife recorded on his record) is hers too,
                # and is not shown on his entry
                if drop_shared_contact(resource, mothers_contact, mothers_homes):
                    plan.withheld.append(
                        Withheld(
                            "person",
                            entry,
                            who,
                            member.role,
                            identity,
                            "contact",
                            "Contact details shared with the mother",
                            MOTHER_SHARED_CONTACT,
                        )
                    )
            redact |= set(contact.redacted_fields)
            if not contact.permitted:
                redact |= {"address", "telecom"}
            if not shares and redact & {"address", "telecom"} and (resource.get("address") or resource.get("telecom")):
                plan.withheld.append(
                    Withheld(
                        "person",
                        entry,
                        who,
                        member.role,
                        contact if not contact.permitted else identity,
                        "contact",
                        "Address and contact details",
                    )
                )
            for name in redact:
                resource.pop(name, None)
            note_merged(member, contact_decision, "contact", resource)
        if member.relationships and primary is not None:
            # who recorded the relationship and when: decided as the member's relationship
            relationship = decide_item(
                DataItem(
                    "relationship",
                    "RelatedPerson",
                    labels,
                    member.relationships[0].record.source_org,
                    reference=member.key + "#relationship",
                )
            )
            plan.note(
                relationship, member.key + "#relationship", member.key, "relationship", relationship.permitted, org
            )
            if relationship.permitted:
                resource["extension"] = resource.get("extension", []) + relationship_provenance(
                    member.relationships, holder_names
                )
            else:
                plan.withheld.append(
                    Withheld(
                        "person",
                        entry,
                        who,
                        member.role,
                        relationship,
                        "relationship",
                        "Who recorded the relationship, and when",
                    )
                )
        entries[member.key] = entry
        plan.people.append((member.key, resource))
        for rec in member.clinical:
            _plan_record(plan, asker, member, consents, rec, entry, who, holder_names)
        for indicator in indicators(member, graph, today):
            # computed here from the birth date: no source holds it, so no data controller to tell
            d = decide_item(DataItem("young-parent", "Flag", frozenset(), None, today, indicator["id"]))
            plan.note(d, f"Flag/{indicator['id']}", member.key, "young-parent", d.permitted, org)
            if d.permitted:
                indicator["subject"] = {"reference": member.key}
                plan.records.append((f"Flag/{indicator['id']}", indicator))
            else:
                plan.withheld.append(Withheld("record", entry, who, member.role, d))
    _plan_care(plan, asker, graph, entries, holder_names)
    plan.no_father_known = not any(m.role in ("father", "male-carer") for m in graph.members)
    plan.override = _override(plan, asker, holder_names)
    return plan


CARE_ACTIVE = {"CareTeam": ("active",), "EpisodeOfCare": ("active", "onhold", "waitlist")}
FAMILY_TYPES = ("Patient", "RelatedPerson", "Group")


def care_key_member(graph: FamilyGraph) -> FamilyMember:
    """Whose care the care entries are: the infant's; pre-birth, the mother's."""
    return graph.members[1] if graph.mode == "pre-birth" and len(graph.members) > 1 else graph.infant


def _reference_type(ref: dict[str, Any]) -> str | None:
    parsed = parse_reference(str(ref.get("reference") or ""))
    return parsed[0] if parsed else ref.get("type")


def care_resource(rec: Rec, org_names: dict[str, str]) -> dict[str, Any]:
    """A care record as shown: as the source sent it, less the family members among a care
    team's participants (they are the member entries, decided as people), with organisations
    by name."""
    shown = copy.deepcopy(rec.body)
    if rec.res_type == "CareTeam" and shown.get("participant"):
        kept = [
            p
            for p in shown["participant"]
            if not (
                isinstance(p, dict)
                and isinstance(p.get("member"), dict)
                and _reference_type(p["member"]) in FAMILY_TYPES
            )
        ]
        if kept:
            shown["participant"] = kept
        else:
            shown.pop("participant")
    name_organisations(shown, org_names)
    return shown


def _names_professional(care: dict[str, Any], prof: Rec) -> bool:
    """Whether a care record (or a PractitionerRole) shown names this professional, literally or by identifier."""
    refs = [p.get("member") for p in care.get("participant") or [] if isinstance(p, dict)]
    refs += [care.get("careManager"), care.get("practitioner")]
    idents = set(prof.identifiers)
    for ref in refs:
        if not isinstance(ref, dict):
            continue
        parsed = parse_reference(str(ref.get("reference") or ""))
        if parsed and f"{parsed[0]}/{parsed[1]}" == prof.ref:
            return True
        ident = ref.get("identifier") or {}
        if ref.get("type") == prof.res_type and (ident.get("system"), ident.get("value")) in idents:
            return True
    return False


def _plan_care(
    plan: ViewPlan, asker: Asker, graph: FamilyGraph, entries: dict[str, int], org_names: dict[str, str]
) -> None:
    """The care team and named professionals of the infant (pre-birth: the mother), each decided
    as that person's care-team data (or, for a record the lists place, its category), shown only
    when the person is."""
    member = care_key_member(graph)
    if member.unborn or member.key not in entries:
        return
    entry = entries[member.key]
    who = member.role.replace("-", " ")
    consents = member_consents(member)
    shown_care: list[dict[str, Any]] = []

    def plan_care(rec: Rec) -> bool:
        """Whether the care record (or professional) is shown; planned as any other record."""
        return _plan_record(
            plan,
            asker,
            member,
            consents,
            rec,
            entry,
            who,
            org_names,
            default="care-team",
            into=plan.care,
            shape=lambda r: care_resource(r, org_names),
        )

    for rec in graph.care:
        if rec.body.get("status") not in CARE_ACTIVE.get(rec.res_type, ()):
            continue
        if plan_care(rec):
            shown_care.append(rec.body)
    # roles first, then the practitioners that the care records or the roles shown name
    for prof in sorted(graph.professionals, key=lambda r: r.res_type != "PractitionerRole"):
        if any(_names_professional(care, prof) for care in shown_care) and plan_care(prof):
            shown_care.append(prof.body)


def _override(plan: ViewPlan, asker: Asker, org_names: dict[str, str]) -> Override | None:
    """What a safeguarding view must say about itself: it disclosed records consent does not
    cover (overriding a refusal, or by break-glass), an IG review is queued, the holders told."""
    if asker.purpose is not Purpose.SAFEGUARDING or plan.refusal is not None:
        return None
    disclosed = [i for i in plan.items if i.disclosed]
    refusal = any(i.decision.consent_overridden is not None for i in disclosed)
    break_glass = plan.purpose_of_use == "BTG"
    relied = any(i.decision.obligation(ObligationKind.QUEUE_IG_REVIEW) for i in disclosed)
    if not (refusal or break_glass or relied):
        return None
    told = [(ods, org_names.get(ods)) for ods in sorted(plan.notifications)]
    return Override(refusal, break_glass, plan.review_required, told)


def drop_shared_contact(resource: dict[str, Any], phones: set[tuple[str, str]], homes: set[str]) -> bool:
    """Remove from a person's entry (or REST read) the contact points and homes that are a
    restricted relative's; whether any was removed."""
    dropped = False

    def same(name: str, value: dict[str, Any]) -> bool:
        return telecom_key(value) in phones if name == "telecom" else postcode_key(value) in homes

    for name in ("telecom", "address"):
        values = resource.get(name) or []
        kept = [x for x in values if not (isinstance(x, dict) and same(name, x))]
        if len(kept) < len(values):
            dropped = True
            if kept:
                resource[name] = kept
            else:
                resource.pop(name)
    return dropped


def _plan_record(
    plan: ViewPlan,
    asker: Asker,
    member: FamilyMember,
    consents: tuple[ConsentRecord, ...],
    rec: Rec,
    entry: int,
    who: str,
    holder_names: dict[str, str],
    default: str = "record",
    into: list[tuple[str, dict[str, Any]]] | None = None,
    shape: Callable[[Rec], dict[str, Any]] | None = None,
) -> bool:
    """One clinical (or care) record: decided once per category it falls in (``default`` when
    no list places it), shown only if every one is permitted, and then as sent less what the
    decisions redact; whether it is shown."""
    categories, labels = clinical_labels(rec)
    decided = []
    for category in sorted(categories or {default}):
        request = asker.request(
            member,
            consents,
            DataItem(category, rec.res_type, frozenset(labels), rec.source_org, record_date(rec.body), rec.ref),
        )
        decided.append((effective_category(request, asker.policy), decide(request, asker.policy)))
    allowed = all(d.permitted for _, d in decided)
    for category, d in decided:
        plan.note(d, rec.ref, member.key, category, allowed, asker.requester.org)
    if allowed:
        shown = shape(rec) if shape is not None else copy.deepcopy(rec.body)
        for _, d in decided:
            for name in d.redacted_fields:
                shown.pop(name, None)
        if rec.assurance not in ("level3", "level4"):
            shown.setdefault("extension", []).append({"url": EXT_ASSURANCE, "valueCode": rec.assurance})
        (plan.records if into is None else into).append((rec.ref, shown))
    else:
        refusal = next(d for _, d in decided if not d.permitted)
        plan.withheld.append(
            Withheld(
                "record",
                entry,
                who,
                member.role,
                refusal,
                holder=rec.source_org,
                holder_name=holder_names.get(rec.source_org),
            )
        )
    return allowed
