"""Builders of synthetic FHIR test data. NHS numbers start with 999 and pass Modulus 11."""
from __future__ import annotations

import itertools
import uuid
from typing import Any

from app.fhir.indexing import NHS_NUMBER_SYSTEM
from app.fhir.validation import is_valid_nhs_number


def nhs_numbers(start: int = 0):
    """Valid synthetic NHS numbers 999xxxxxxC in order."""
    for n in itertools.count(start):
        stem = f"999{n:06d}"
        for d in range(10):
            if is_valid_nhs_number(stem + str(d)):
                yield stem + str(d)
                break


_NHS = nhs_numbers(500)


def next_nhs() -> str:
    return next(_NHS)


def patient(family: str, given: str, *, nhs: str | None = None, gender: str = "female", birth: str = "1995-02-03", local_id: str | None = None, **extra) -> dict[str, Any]:
    idents = []
    if nhs:
        idents.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    idents.append({"system": "https://test.example.nhs.uk/Id/patient", "value": local_id or uuid.uuid4().hex[:10]})
    return {"resourceType": "Patient", "identifier": idents, "name": [{"family": family, "given": [given]}], "gender": gender, "birthDate": birth, **extra}


def entry(resource: dict[str, Any], *, method: str = "POST", url: str | None = None, full_url: str | None = None, **request) -> dict[str, Any]:
    full_url = full_url or f"urn:uuid:{uuid.uuid4()}"
    return {"fullUrl": full_url, "resource": resource, "request": {"method": method, "url": url or resource["resourceType"], **request}}


def bundle(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def family_bundle(nhs: str | None = None, suffix: str = "", org: str = "RMT01") -> dict[str, Any]:
    """Patient + RelatedPerson + Consent linked by urn:uuid, as the source ``org`` records them
    (the Consent names its recorder in Consent.organization)."""
    nhs = nhs or next_nhs()
    p = patient("Taylor" + suffix, "Amy", nhs=nhs, local_id="p-" + nhs)
    p_entry = entry(p)
    rp = {
        "resourceType": "RelatedPerson",
        "identifier": [{"system": "https://test.example.nhs.uk/Id/related-person", "value": "rp-" + nhs}],
        "patient": {"reference": p_entry["fullUrl"]},
        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]}],
        "name": [{"family": "Smyth", "given": ["Jon"]}],
        "gender": "male",
        "birthDate": "1998-04-03",
    }
    consent = {
        "resourceType": "Consent",
        "identifier": [{"system": "https://test.example.nhs.uk/Id/consent", "value": "c-" + nhs}],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": p_entry["fullUrl"]},
        "organization": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": org}}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]},
    }
    return bundle([p_entry, entry(rp), entry(consent)])
