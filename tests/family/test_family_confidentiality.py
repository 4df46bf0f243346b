"""Findings from exploratory testing of the family view (session s6/view): confidentiality
labels that belong to the person, the infant's own sensitive records, a uniform refusal
for requesters with no route, and the restricted mother's details carried to the infant.

The demo families are shared by every test in this module (one server per backend), so
each test changes only the scenario it is about."""
from __future__ import annotations

from app.demo.scenarios import GP_FAMILY, MASH_ORG, MATERNITY, N, SOCIAL_CARE
from tests.family.test_family_scenarios import JUSTIFICATION, NHS, item_details, view

FHIR_JSON = {"Content-Type": "application/fhir+json"}
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def test_restricted_label_on_one_record_of_the_mother_covers_her_unlabelled_gp_record(world):
    """Scenario 8: maternity labels the mother R; her GP sends its own record of her without
    the label (most mothers have one). The label is the person's, so her address, telecom and
    GP practice are still removed, whichever record the view is built on."""
    gp = world.source(GP_FAMILY.org, GP_FAMILY.service)
    r = gp.post("/Patient", headers=FHIR_JSON, json={
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": N["s8_mother"]}, {"system": "https://meadow-lane.example.nhs.uk/Id/record", "value": "s8-mother-gp"}],
        "name": [{"use": "official", "family": "Morgan", "given": ["Kate"]}], "gender": "female", "birthDate": "1997-03-18",
        "address": [{"use": "home", "line": ["22 Hidden Lane"], "city": "Safehaven", "postalCode": "LS99 9ZZ"}],
        "telecom": [{"system": "phone", "value": "07700 900999", "use": "mobile"}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": GP_FAMILY.org}}],
    })
    assert r.status_code == 201, r.text
    for purpose, just in (("direct-care", None), ("safeguarding", JUSTIFICATION)):
        v = view(world, "s8_infant", purpose, justification=just)
        assert v.status == 200
        mother = v.people()["mother"][0]
        assert "s8-mother-gp" in {i["value"] for i in mother["identifier"]}  # the GP's record is joined in
        assert "address" not in mother and "telecom" not in mother and "generalPractitioner" not in mother
        for secret in ("Hidden Lane", "LS99 9ZZ", "07700 900999", "07700 900808"):
            assert secret not in v.r.text
        assert "contact" in v.suppressed_categories()


def test_very_restricted_label_on_the_fathers_maternity_record_withholds_him_unless_safeguarding(world):
    """Scenario 1: the V label is on the midwife's RelatedPerson of the father, not on his
    GP's Patient record that the view is built on. He is withheld for direct care, and shown
    for safeguarding (queued for IG review)."""
    maternity = world.source(MATERNITY.org, MATERNITY.service)
    system = MATERNITY.local_system
    found = maternity.get("/RelatedPerson", params={"identifier": f"{system}|s1-rp-father"}).json()
    rp = found["entry"][0]["resource"]
    rp.setdefault("meta", {})["security"] = [{"system": CONFIDENTIALITY, "code": "V"}]
    assert maternity.put(f"/RelatedPerson/{rp['id']}", json=rp, headers=FHIR_JSON).status_code == 200

    v = view(world, "s1_infant")
    assert v.status == 200
    assert "father" not in v.people()
    assert N["s1_father"] not in v.r.text and "07700 900101" not in v.r.text
    assert "identity" in v.suppressed_categories()
    withheld = [i for i in item_details(v.audit()) if i["disclosed"] == "false"]
    assert any(i["category"] == "identity" for i in withheld)

    s = view(world, "s1_infant", "safeguarding", justification=JUSTIFICATION)
    assert s.status == 200 and s.nhs_numbers("father") == {N["s1_father"]}


def test_the_infants_own_domestic_abuse_flag_is_disclosed_to_the_health_visitor(world):
    """Social care flags that the baby (scenario 3) lives with domestic abuse. The flag is the
    infant's own record: the health visitor sees it for direct care (DESIGN.md row 1) and for
    safeguarding, and so does the MASH breaking the glass; it is never "no rule"."""
    sc = world.source(SOCIAL_CARE.org, SOCIAL_CARE.service)
    r = sc.post("/Flag", headers=FHIR_JSON, json={
        "resourceType": "Flag", "identifier": [{"system": SOCIAL_CARE.local_system, "value": "s3-infant-da"}], "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "safety"}]}],
        "code": {"coding": [{"system": "https://familyview.example.nhs.uk/fhir/CodeSystem/local-safeguarding", "code": "DA-VICTIM"}],
                 "text": "Child living with domestic abuse"},
        "subject": {"identifier": {"system": NHS, "value": N["s3_infant"]}}, "period": {"start": "2026-11-01"},
    })
    assert r.status_code == 201, r.text

    def flags(v):
        return [c["code"] for f in v.records("Flag") for c in f["code"]["coding"]]

    v = view(world, "s3_infant")
    assert v.status == 200 and flags(v) == ["DA-VICTIM"]
    assert "domestic-abuse" not in v.suppressed_categories()
    da = next(i for i in item_details(v.audit()) if i["category"] == "domestic-abuse")
    assert da["disclosed"] == "true" and "9(2)(h)" in da["lawful-basis"]

    s = view(world, "s3_infant", "safeguarding", justification=JUSTIFICATION)
    assert s.status == 200 and flags(s) == ["DA-VICTIM"]
    da = next(i for i in item_details(s.audit()) if i["category"] == "domestic-abuse")
    assert da["disclosed"] == "true" and "Sch 1 para 18" in da["lawful-basis"]

    b = view(world, "s3_infant", "safeguarding", role="mash", org=MASH_ORG, justification=JUSTIFICATION)
    assert b.status == 200 and flags(b) == ["DA-VICTIM"]

