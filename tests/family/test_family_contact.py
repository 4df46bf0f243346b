"""Finding 9 (session s6/view): a member's contact details recorded by another source (the
father's mobile in the midwife's RelatedPerson, while his entry is built on his GP's Patient)
appear in his entry when contact is disclosed: the telecom of every record joined to him at
level2 or surer, de-duplicated, under the same decision and R/V removal as the primary
record's. Withheld contact stays withheld whichever record it came from.

The demo families are shared by every test in this module (one server per backend), so
each test changes only the scenario it is about."""
from __future__ import annotations

from app.demo.scenarios import GP_FATHERS, MATERNITY, N
from app.family.members import FamilyMember, Rec
from app.family.plan import merged_telecom
from tests.family.test_family_scenarios import JUSTIFICATION, NHS, item_details, view

FHIR_JSON = {"Content-Type": "application/fhir+json"}
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def _phones(person: dict) -> list[str]:
    return [t["value"] for t in person.get("telecom", [])]


def test_merged_telecom_is_deduplicated_and_never_from_a_level1_possible_match():
    gp = Rec("Patient", "gp", {"telecom": [{"system": "phone", "value": "07700 900101", "use": "mobile"}]}, "A99002", "level4")
    midwife = Rec("RelatedPerson", "mw", {"telecom": [{"system": "phone", "value": "07700-900101"}, {"system": "email", "value": "ben@example.org"}]}, "RMT01", "level2")
    maybe = Rec("RelatedPerson", "maybe", {"telecom": [{"system": "phone", "value": "07700 900999"}]}, "RHV01", "level1")
    member = FamilyMember(role="father", records=[midwife, maybe, gp])
    assert [t["value"] for t in merged_telecom(member)] == ["07700 900101", "ben@example.org"]


def test_the_fathers_mobile_recorded_by_the_midwife_is_in_his_entry(world):
    """Scenario 1: the entry is his GP's Patient, which has no phone; maternity has his mobile."""
    v = view(world, "s1_infant")
    assert v.status == 200
    father = v.people()["father"][0]
    assert father["resourceType"] == "Patient" and _phones(father) == ["07700 900101"]
    assert v.suppressed() == []
    contact = next(i for i in item_details(v.audit()) if i["category"] == "contact" and i["subject"] == f"Patient/{father['id']}")
    assert contact["disclosed"] == "true"

    # the same number from his GP, written another way, is shown once; a second number is added
    gp = world.source(GP_FATHERS.org, GP_FATHERS.service)
    found = gp.get("/Patient", params={"identifier": f"{NHS}|{N['s1_father']}"}).json()["entry"][0]["resource"]
    found["telecom"] = [{"system": "phone", "value": "07700900101", "use": "mobile"}, {"system": "phone", "value": "0113 496 0001", "use": "work"}]
    assert gp.put(f"/Patient/{found['id']}", json=found, headers=FHIR_JSON).status_code == 200
    father = view(world, "s1_infant").people()["father"][0]
    assert _phones(father) == ["07700900101", "0113 496 0001"]


def test_a_refused_fathers_mobile_from_the_midwife_stays_withheld_for_direct_care(world):
    """Scenario 5: the father refused sharing. For direct care his contact is withheld, even the
    number only maternity holds; safeguarding discloses it."""
    v = view(world, "s5_infant")
    assert v.status == 200
    assert "07700 900505" not in v.r.text
    assert "contact" in v.suppressed_categories() or "father" not in v.people()
    s = view(world, "s5_infant", "safeguarding", justification=JUSTIFICATION)
    assert s.status == 200 and _phones(s.people()["father"][0]) == ["07700 900505"]


def test_a_restricted_label_on_the_midwifes_record_removes_the_merged_mobile(world):
    """Scenario 1 again: maternity labels its record of the father R. His GP record carries no
    label, but the label is the person's: no telecom from any record, and a suppressed issue."""
    maternity = world.source(MATERNITY.org, MATERNITY.service)
    rp = maternity.get("/RelatedPerson", params={"identifier": f"{MATERNITY.local_system}|s1-rp-father"}).json()["entry"][0]["resource"]
    rp.setdefault("meta", {})["security"] = [{"system": CONFIDENTIALITY, "code": "R"}]
    assert maternity.put(f"/RelatedPerson/{rp['id']}", json=rp, headers=FHIR_JSON).status_code == 200
    for purpose, just in (("direct-care", None), ("safeguarding", JUSTIFICATION)):
        v = view(world, "s1_infant", purpose, justification=just)
        assert v.status == 200
        father = v.people()["father"][0]
        assert "telecom" not in father
        assert "900101" not in v.r.text and "0113 496 0001" not in v.r.text
        assert "contact" in v.suppressed_categories()


def test_a_number_the_father_shares_with_the_restricted_mother_is_not_shown_on_his_entry(world):
    """Scenario 8: the mother's record is restricted; the midwife recorded the household phone,
    which is hers, on the father's record too. It is not shown on his entry either."""
    maternity = world.source(MATERNITY.org, MATERNITY.service)
    rp = maternity.get("/RelatedPerson", params={"identifier": f"{MATERNITY.local_system}|s8-rp-father"}).json()["entry"][0]["resource"]
    rp["telecom"] = [{"system": "phone", "value": "07700 900808", "use": "home"}, {"system": "phone", "value": "07700 900888", "use": "mobile"}]
    assert maternity.put(f"/RelatedPerson/{rp['id']}", json=rp, headers=FHIR_JSON).status_code == 200
    v = view(world, "s8_infant")
    assert v.status == 200
    assert "900808" not in v.r.text
    assert _phones(v.people()["father"][0]) == ["07700 900888"]
    father_index = next(n for n, e in enumerate(v.body["entry"]) if e["resource"] is not None and e["resource"] in v.people()["father"])
    on_father = [i for i in v.suppressed() if i.get("expression") == [f"Bundle.entry[{father_index}].resource"]]
    assert len(on_father) == 1 and "restricted" in on_father[0]["diagnostics"]
