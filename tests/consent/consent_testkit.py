"""Synthetic families, requesters and Consents for the consent engine tests.

All NHS numbers start 999 and pass the Modulus 11 check; ODS codes are made up.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from consent import (
    DataItem,
    DataSubject,
    DisclosureRequest,
    LegitimateRelationship,
    Purpose,
    Requester,
)
from consent.model import DATA_CATEGORY_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, REQUESTER_ROLE_SYSTEM

NOW = dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.timezone.utc)
TODAY = NOW.date()

# Organisations (synthetic ODS codes)
HV_ORG = "RHV01"  # health visiting service
MATERNITY_ORG = "RMT01"  # maternity unit
GP_FATHER = "Y90001"  # the father's GP practice
GP_PARTNER = "Y90002"  # the mother's new partner's GP practice
GP_FAMILY = "Y90003"  # the infant's and mother's GP practice
MASH_ORG = "LAMASH1"  # local authority MASH
OTHER_ORG = "RXX99"  # unconnected organisation

# Synthetic NHS numbers: 999..., valid Modulus 11
NHS_INFANT = "9990000018"
NHS_MOTHER = "9990000026"
NHS_FATHER = "9990000034"
NHS_PARTNER = "9990000042"
NHS_YOUNG_FATHER = "9990000050"

SNOMED = "http://snomed.info/sct"
LOCAL = "https://familyview.example.nhs.uk/fhir/CodeSystem/local-safeguarding"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"


def nhs_number_valid(number: str) -> bool:
    if len(number) != 10 or not number.isdigit():
        return False
    total = sum(int(d) * (10 - i) for i, d in enumerate(number[:9]))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(number[9])


def requester(role: str = "health-visitor", org: str = HV_ORG, **kw: Any) -> Requester:
    return Requester(role=role, org=org, user=kw.pop("user", f"user-{role}"), **kw)


HEALTH_VISITOR = requester("health-visitor", HV_ORG, service="health-visiting")
MIDWIFE = requester("midwife", MATERNITY_ORG, service="maternity")
GP = requester("gp", GP_FAMILY, service="general-practice")
MASH = requester("mash", MASH_ORG, service="social-care")
IG_OFFICER = requester("ig-officer", HV_ORG)
ADMIN = requester("admin", HV_ORG)
SOURCE_SYSTEM = requester("source-system", GP_FATHER, service="general-practice")
UNCONNECTED = requester("health-visitor", OTHER_ORG)

RELATED = LegitimateRelationship(True, "episode-of-care")
UNRELATED = LegitimateRelationship(False)


def subject(role: str, nhs: str | None = None, ref: str | None = None) -> DataSubject:
    idents = ((NHS_NUMBER_SYSTEM, nhs),) if nhs else ()
    return DataSubject(reference=ref or f"Patient/{role}", family_role=role, identifiers=idents)


INFANT = subject("infant", NHS_INFANT)
MOTHER = subject("mother", NHS_MOTHER)
FATHER = subject("father", NHS_FATHER)
PARTNER = subject("male-carer", NHS_PARTNER)

SENSITIVE_LABELS = {
    "substance-misuse": frozenset({"ETH", "SUD"}),
    "mental-health": frozenset({"PSY"}),
    "domestic-abuse": frozenset({"SDV"}),
    "violence": frozenset({"VIO"}),
    "childhood-adversity": frozenset(),
    "care-leaver": frozenset(),
    "young-parent": frozenset(),
    "sexual-health": frozenset({"HIV"}),
    "child-safeguarding": frozenset(),
}
SENSITIVE_CATEGORIES = tuple(SENSITIVE_LABELS)
CODES = {
    "substance-misuse": ((SNOMED, "66214007"),),
    "mental-health": ((SNOMED, "35489007"),),
    "domestic-abuse": ((LOCAL, "DA-PERPETRATOR"),),
    "violence": ((SNOMED, "65108000"),),
    "childhood-adversity": ((LOCAL, "ACE"),),
    "care-leaver": ((LOCAL, "CARE-LEAVER"),),
    "young-parent": ((LOCAL, "YOUNG-PARENT"),),
    "sexual-health": ((SNOMED, "86406008"),),  # Human immunodeficiency virus infection
    "child-safeguarding": ((SNOMED, "342191000000101"),),  # Subject to child protection plan
}


def item(
    category: str,
    source_org: str = GP_FATHER,
    labels: frozenset[str] | set[str] | None = None,
    date: dt.date | None = dt.date(2024, 3, 1),
    resource_type: str | None = None,
    reference: str | None = None,
) -> DataItem:
    if labels is None:
        labels = SENSITIVE_LABELS.get(category, frozenset())
    if resource_type is None:
        resource_type = {
            "identity": "Patient", "contact": "Patient", "relationship": "RelatedPerson",
            "care-team": "CareTeam", "record": "Condition", "domestic-abuse": "Flag",
        }.get(category, "Condition")
    return DataItem(
        category=category,
        resource_type=resource_type,
        security_labels=frozenset(labels),
        source_org=source_org,
        date=date,
        reference=reference or f"{resource_type}/{category}-1",
        codes=CODES.get(category, ()),
    )


def request(
    who: Requester = HEALTH_VISITOR,
    purpose: Purpose = Purpose.DIRECT_CARE,
    about: DataSubject = FATHER,
    what: DataItem | None = None,
    relationship: LegitimateRelationship = RELATED,
    justification: str | None = None,
    consents: tuple = (),
    as_of: dt.datetime = NOW,
) -> DisclosureRequest:
    if purpose is Purpose.SAFEGUARDING and justification is None:
        justification = "Health visitor concern: bruising on a non-mobile infant"
    return DisclosureRequest(
        requester=who,
        purpose=purpose,
        subject=about,
        item=what or item("identity"),
        relationship=relationship,
        justification=justification,
        consents=consents,
        as_of=as_of,
    )


# ---------------------------------------------------------------------------
# Consent builders (plain FHIR R4 JSON)
# ---------------------------------------------------------------------------


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def ods_actor(ods: str, role: str = "IRCP", role_system: str = PARTICIPATION) -> dict[str, Any]:
    return {
        "role": {"coding": [coding(role_system, role)]},
        "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}},
    }


def ref_actor(reference: str, role: str = "IRCP") -> dict[str, Any]:
    return {"role": {"coding": [coding(PARTICIPATION, role)]}, "reference": {"reference": reference}}


def role_actor(requester_role: str, ods: str) -> dict[str, Any]:
    return {
        "role": {"coding": [coding(REQUESTER_ROLE_SYSTEM, requester_role)]},
        "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}},
    }


def purpose(code: str = "TREAT") -> dict[str, str]:
    return coding(ACT_REASON, code)


def label(code: str) -> dict[str, str]:
    return coding(ACT_CODE, code)


def category_class(category: str) -> dict[str, str]:
    return coding(DATA_CATEGORY_SYSTEM, category)


def consent(
    id: str,
    provision: dict[str, Any] | None = None,
    *,
    status: str = "active",
    policy_rule: str | None = "OPTIN",
    recorded: str = "2024-01-10T09:00:00Z",
    patient_nhs: str = NHS_FATHER,
    scope: str = "patient-privacy",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [coding(CONSENT_SCOPE, scope)]},
        "category": [{"coding": [coding("http://loinc.org", "59284-0")]}],
        "patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient_nhs}},
        "dateTime": recorded,
    }
    if policy_rule:
        resource["policyRule"] = {"coding": [coding(ACT_CODE, policy_rule)]}
    if provision is not None:
        resource["provision"] = provision
    return resource


def hv_mental_health_consent(id: str = "father-mh-hv", **kw: Any) -> dict[str, Any]:
    """Scenario 3: the father lets the health visiting service see mental-health records for direct care."""
    provision = {
        "type": "permit",
        "period": {"start": "2024-01-01", "end": "2026-01-01"},
        "actor": [ods_actor(HV_ORG)],
        "action": [{"coding": [coding(CONSENT_ACTION, "access")]}],
        "purpose": [purpose("TREAT")],
        "securityLabel": [label("PSY")],
    }
    provision.update(kw.pop("provision_extra", {}))
    return consent(id, provision, **kw)


def refusal(id: str = "father-refuses", **kw: Any) -> dict[str, Any]:
    """Scenario 5: the father refuses all sharing of his records."""
    return consent(id, {"type": "deny", "period": {"start": "2024-01-01"}}, **kw)
