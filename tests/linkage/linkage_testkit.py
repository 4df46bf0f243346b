"""Builders and helpers for the linkage service tests (synthetic data: NHS numbers 999…, Modulus 11)."""
from __future__ import annotations

import json
import uuid
from typing import Any

from tests.conftest import FHIR_JSON
from tests.fhirdata import bundle, entry, next_nhs

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
GP_ID = "https://gp.example.nhs.uk/Id/patient"
MAT_ID = "https://maternity.example.nhs.uk/Id/related-person"
MAT_PATIENT_ID = "https://maternity.example.nhs.uk/Id/patient"
HV_ID = "https://hv.example.nhs.uk/Id/related-person"
ROLE_CODES = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def person(res_type: str, given: str, family: str, birth: str, *, gender: str = "male", nhs: str | None = None,
           postcode: str | None = None, local: tuple[str, str] | None = None, **extra) -> dict[str, Any]:
    idents = []
    if nhs:
        idents.append({"system": NHS_SYSTEM, "value": nhs})
    system, value = local or ((GP_ID if res_type == "Patient" else MAT_ID), uuid.uuid4().hex[:12])
    idents.append({"system": system, "value": value})
    body = {"resourceType": res_type, "identifier": idents, "name": [{"family": family, "given": [given]}],
            "gender": gender, "birthDate": birth, **extra}
    if postcode:
        body["address"] = [{"use": "home", "postalCode": postcode}]
    return body


def mother_and_partner(partner: dict[str, Any], *, code: str = "FTH", mother_given: str = "Emma",
                       mother_family: str = "Taylor", mother_birth: str = "1999-09-09") -> dict[str, Any]:
    """A maternity/HV transaction: the mother as Patient and the man as RelatedPerson on her."""
    mother = person("Patient", mother_given, mother_family, mother_birth, gender="female", nhs=next_nhs(),
                    local=(MAT_PATIENT_ID, uuid.uuid4().hex[:12]))
    m_entry = entry(mother)
    partner = dict(partner)
    partner["patient"] = {"reference": m_entry["fullUrl"]}
    partner["relationship"] = [{"coding": [{"system": ROLE_CODES, "code": code}]}]
    return bundle([m_entry, entry(partner)])


def post_bundle(client, b: dict[str, Any]) -> list[str]:
    r = client.post("", content=json.dumps(b), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    return [e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"]]


def create(client, resource: dict[str, Any]) -> str:
    r = client.post(f"/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return f"{resource['resourceType']}/{r.json()['id']}"


def update(client, ref: str, resource: dict[str, Any]) -> None:
    body = dict(resource, id=ref.split("/")[1])
    r = client.put(f"/{ref}", content=json.dumps(body), headers=FHIR_JSON)
    assert r.status_code == 200, r.text


def persons_for(admin, ref: str) -> list[dict[str, Any]]:
    r = admin.get("/Person", params={"link": ref})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def person_of(admin, ref: str) -> dict[str, Any]:
    found = persons_for(admin, ref)
    assert len(found) == 1, found
    return found[0]


def links(p: dict[str, Any]) -> dict[str, str]:
    return {l["target"]["reference"]: l["assurance"] for l in p.get("link", [])}


def admin_api(live):
    import httpx

    return httpx.Client(base_url=live.base_url + "/linkage",
                        headers={"Authorization": f"Bearer {live.token('admin', 'X26')}"}, timeout=30)
