"""Who may record a person's Consent, over real HTTP: a Consent speaks for the records of the
organisation that recorded it, so only a source may post one, naming itself in
Consent.organization; an administrator cannot; every Consent write is audited."""
from __future__ import annotations

import json

import pytest

from tests.conftest import FHIR_JSON, GP_ORG, MATERNITY_ORG
from tests.fhirdata import bundle, entry, next_nhs, patient

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def _consent(nhs: str, organization: list | None, key: str = "c1") -> dict:
    resource = {
        "resourceType": "Consent",
        "identifier": [{"system": "https://test.example.nhs.uk/Id/consent", "value": f"{key}-{nhs}"}],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": NHS, "value": nhs}},
        "dateTime": "2026-01-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"},
    }
    if organization is not None:
        resource["organization"] = organization
    return resource


def _count(client, res_type: str) -> int:
    r = client.get(f"/{res_type}", params={"_count": 0})
    assert r.status_code == 200, r.text
    return r.json()["total"]


@pytest.mark.parametrize("organization, why", [
    (None, "missing"),
    ([], "empty"),
    ([{"identifier": {"system": ODS, "value": MATERNITY_ORG}}], "another organisation"),
    ([{"identifier": {"system": "https://example.org/other-system", "value": GP_ORG}}], "not an ODS code"),
    ([{"display": "Meadow Lane Surgery"}], "a name only"),
])
def test_a_consent_must_name_its_recorder(live, organization, why):
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    r = gp.post("/Consent", json=_consent(nhs, organization), headers=FHIR_JSON)
    assert r.status_code == 422, (why, r.text)
    issue = r.json()["issue"][0]
    assert issue["code"] == "business-rule" and issue["expression"] == ["Consent.organization"]
    assert GP_ORG in issue["diagnostics"]
    assert _count(gp, "Consent") == 0


def test_in_a_transaction_the_entry_is_named_and_nothing_is_written(live):
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    p = entry(patient("Hughes", "Craig", nhs=nhs, gender="male", local_id="p-" + nhs))
    c = _consent(nhs, [{"identifier": {"system": ODS, "value": MATERNITY_ORG}}])
    r = gp.post("", content=json.dumps(bundle([p, entry(c)])), headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.organization"]
    assert _count(gp, "Patient") == 0 and _count(gp, "Consent") == 0


@pytest.mark.parametrize("organization", [
    [{"identifier": {"system": ODS, "value": GP_ORG}}],
    [{"reference": f"Organization?identifier={ODS}|{GP_ORG}"}],
    [{"identifier": {"system": ODS, "value": MATERNITY_ORG}}, {"identifier": {"system": ODS, "value": GP_ORG}}],
])
def test_a_consent_naming_its_recorder_is_stored_and_its_write_audited(live, organization):
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    if organization[0].get("reference"):  # a conditional reference resolves against the stored Organization
        org = {"resourceType": "Organization", "identifier": [{"system": ODS, "value": GP_ORG}], "name": "Meadow Lane Surgery"}
        assert gp.post("/Organization", json=org, headers=FHIR_JSON).status_code == 201
    r = gp.post("/Consent", json=_consent(nhs, organization), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    consent_id = r.json()["id"]
    ig = live.client("ig-officer", "X26")
    found = ig.get("/AuditEvent", params={"entity": f"Consent/{consent_id}"}).json()
    assert found["total"] == 1
    event = found["entry"][0]["resource"]
    assert [s["code"] for s in event["subtype"]] == ["create", "consent-write"] and event["action"] == "C"
    assert event["agent"][1]["who"]["identifier"]["value"] == GP_ORG
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["recorded-by"] == GP_ORG and details["provision-type"] == "deny" and details["version"] == "1"
    # the IG officer finds it by the person's NHS number too (subject access)
    by_person = ig.get("/AuditEvent", params={"patient": nhs, "subtype": "consent-write"}).json()
    assert by_person["total"] == 1
    # an update is audited as one
    stored = gp.get(f"/Consent/{consent_id}").json()
    stored["status"] = "inactive"
    assert gp.put(f"/Consent/{consent_id}", json=stored, headers=FHIR_JSON).status_code == 200
    events = ig.get("/AuditEvent", params={"entity": f"Consent/{consent_id}", "subtype": "consent-write"}).json()
    assert events["total"] == 2
    assert {e["resource"]["action"] for e in events["entry"]} == {"C", "U"}
    # and the source's read of it in between (every access is audited)
    assert ig.get("/AuditEvent", params={"entity": f"Consent/{consent_id}", "subtype": "read"}).json()["total"] == 1


def test_an_administrator_cannot_record_a_consent(live):
    admin = live.client("admin", GP_ORG)
    nhs = next_nhs()
    r = admin.post("/Consent", json=_consent(nhs, [{"identifier": {"system": ODS, "value": GP_ORG}}]), headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    assert r.json()["issue"][0]["code"] == "forbidden"
    gp = live.source(GP_ORG, "general-practice")
    assert _count(gp, "Consent") == 0


def test_another_source_cannot_change_a_consent_it_did_not_record(live):
    gp = live.source(GP_ORG, "general-practice")
    maternity = live.source(MATERNITY_ORG, "maternity")
    nhs = next_nhs()
    stored = gp.post("/Consent", json=_consent(nhs, [{"identifier": {"system": ODS, "value": GP_ORG}}]), headers=FHIR_JSON).json()
    stored["provision"] = {"type": "permit"}
    stored["organization"] = [{"identifier": {"system": ODS, "value": MATERNITY_ORG}}]
    r = maternity.put(f"/Consent/{stored['id']}", json=stored, headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    assert gp.get(f"/Consent/{stored['id']}").json()["provision"] == {"type": "deny"}


def test_a_consent_may_name_its_recorder_by_the_organization_sent_in_the_same_transaction(live):
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    org = entry({"resourceType": "Organization", "identifier": [{"system": ODS, "value": GP_ORG}], "name": "Meadow Lane Surgery"})
    p = entry(patient("Hughes", "Craig", nhs=nhs, gender="male", local_id="p-" + nhs))
    c = _consent(nhs, [{"reference": org["fullUrl"]}])
    r = gp.post("", content=json.dumps(bundle([org, p, entry(c)])), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    # an urn:uuid to an Organization of another ODS code is refused, and the transaction writes nothing
    other = entry({"resourceType": "Organization", "identifier": [{"system": ODS, "value": "RZZ98"}], "name": "Elsewhere"})
    nhs2 = next_nhs()
    c2 = _consent(nhs2, [{"reference": other["fullUrl"]}], key="c2")
    r = gp.post("", content=json.dumps(bundle([other, entry(c2)])), headers=FHIR_JSON)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.organization"]
    assert _count(gp, "Consent") == 1 and _count(gp, "Organization") == 1
