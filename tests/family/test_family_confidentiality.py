"""Findings from exploratory testing of the family view (session s6/view): confidentiality
labels that belong to the person, the infant's own sensitive records, a uniform refusal
for requesters with no route, and the restricted mother's details carried to the infant.

The demo families are shared by every test in this module (one server per backend), so
each test changes only the scenario it is about."""
from __future__ import annotations

from app.demo.scenarios import GP_FAMILY, GP_FATHERS, HEALTH_VISITING, MASH_ORG, MATERNITY, N, SOCIAL_CARE
from tests.family.test_family_scenarios import FV, JUSTIFICATION, NHS, item_details, view

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


def test_no_route_is_one_uniform_403_whatever_the_subject(world):
    """A requester with no legitimate relationship and no lawful route gets the same 403 (same
    OperationOutcome, audited) for an infant, a pregnant woman, a woman who is not pregnant and
    a man: the status must not tell them whether she is pregnant (special category data) or
    whether someone is an infant. The route is judged before the 422 ("neither an infant nor a
    current pregnancy"), which only a requester with a relationship to the person or to the
    family of an infant they are recorded as parent or carer of can receive.

    An identifier the gateway does not know gives a requester with no route the same 403 (issue
    18: a 404 there told an unrelated practitioner who is held); one with a lawful route (the
    MASH breaking the glass) is told 404. Every answer is audited, so probing is visible to IG
    (tests/api/test_api_limits.py)."""
    outcomes = {}
    for key in ("s1_infant", "s7_mother", "s1_mother", "s1_father"):
        v = view(world, key, org="RZZ99")
        assert v.status == 403, (key, v.body)
        assert v.r.headers["x-audit-event"].startswith("AuditEvent/")
        event = v.audit()
        assert event["outcome"] == "4" and all(i["disclosed"] == "false" for i in item_details(event))
        outcomes[key] = v.body["issue"]
    assert len({repr(issues) for issues in outcomes.values()}) == 1, outcomes
    # the same for safeguarding without a break-glass role
    for key in ("s7_mother", "s1_mother"):
        assert view(world, key, "safeguarding", org="RZZ99", justification=JUSTIFICATION).status == 403
    # a requester with a relationship to the man's family is told why there is no view of him
    # (the mother's number opens her baby's view: issue 16)
    assert view(world, "s1_father").status == 422
    assert view(world, "s1_mother").status == 200
    # and his GP practice, registered for him, likewise
    assert view(world, "s1_father", role="gp", org=GP_FATHERS.org).status == 422
    # the MASH may break the glass for safeguarding: it has a lawful route, so it is told too
    assert view(world, "s1_father", "safeguarding", role="mash", org=MASH_ORG, justification=JUSTIFICATION).status == 422
    assert view(world, "s1_father", role="mash", org=MASH_ORG).status == 403


def test_restricted_mothers_address_and_gp_are_not_shown_as_the_infants(world):
    """Scenario 8: the baby lives with its mother, and maternity sends the same address and GP
    practice on both records. What is removed from her entry because her record is restricted is
    removed from the infant's entry too, and a suppressed issue on the infant says why (without
    the values). The audit records the infant's contact details as withheld."""
    for purpose, just in (("direct-care", None), ("safeguarding", JUSTIFICATION)):
        v = view(world, "s8_infant", purpose, justification=just)
        assert v.status == 200
        infant = v.people()["infant"][0]
        assert "address" not in infant and "telecom" not in infant and "generalPractitioner" not in infant
        assert "LS8 5CC" not in v.r.text  # the postcode both records give (the father, recorded apart, has his own)
        on_infant = [i for i in v.suppressed() if i.get("expression") == ["Bundle.entry[0].resource"]]
        assert len(on_infant) == 1 and "restricted" in on_infant[0]["diagnostics"]
        assert {c["code"] for c in on_infant[0]["details"]["coding"]} >= {"contact", "ACCESS_DENIED"}
        contact = {i["subject"]: i for i in item_details(v.audit()) if i["category"] == "contact"}
        for person in (infant, v.people()["mother"][0]):
            assert contact[f"Patient/{person['id']}"]["disclosed"] == "false"
            assert contact[f"Patient/{person['id']}"]["reason"] == "restricted"
    # an unrestricted family keeps the infant's address
    assert "address" in view(world, "s1_infant").people()["infant"][0]


def test_the_computed_young_parent_indicator_sends_no_notification_and_names_no_controller(world):
    """Scenario 10, safeguarding: the young-parent indicator is computed by the gateway from the
    father's birth date; no source holds it. It is disclosed and reviewed, but no organisation is
    told "records you hold were disclosed" about it, and the audit names no data controller for
    it. The care-leaver Flag social care holds still notifies social care."""
    from app.demo.scenarios import GP_FATHERS

    s = view(world, "s10_infant", "safeguarding", justification=JUSTIFICATION)
    assert s.status == 200 and {"CARE-LEAVER", "YOUNG-PARENT"} <= s.codes()
    event = s.audit()
    obligations = {}
    for e in event["entity"]:
        d = e.get("detail", [])
        category = next((x["valueString"] for x in d if x["type"] == "category"), None)
        if category:
            obligations[category] = [x["valueString"] for x in d if x["type"] == "obligation"]
    assert obligations["young-parent"] == ["queue-ig-review ig-review-queue"]
    assert f"notify-data-controller {SOCIAL_CARE.org}" in obligations["care-leaver"]
    for org, service in ((GP_FATHERS.org, GP_FATHERS.service), (SOCIAL_CARE.org, SOCIAL_CARE.service), (MATERNITY.org, MATERNITY.service)):
        comms = world.source(org, service).get("/Communication", params={"_count": 100}).json()
        mine = [e["resource"] for e in comms.get("entry", [])
                if any(a["reference"] == f"AuditEvent/{event['id']}" for a in e["resource"]["about"])]
        assert not any(a["reference"].startswith("Flag/young-parent") for c in mine for a in c["about"]), org
        assert len(mine) == (1 if org == SOCIAL_CARE.org else 0), org


def test_a_withheld_member_is_not_reported_as_something_about_the_infant(world):
    """Scenario 4's mother refuses all sharing (an active deny Consent her GP holds): for direct
    care she is withheld whole. The suppressed issue for her used to carry the infant's
    expression (Bundle.entry[0].resource), so a client read it as something withheld about the
    baby. A withheld member has no entry in the Bundle to point at, and pointing at one by family
    role could hit another member with that role, so the issue carries no expression and names
    the member by family-role code in details instead (the text already says "the mother")."""
    gp = world.source(GP_FAMILY.org, GP_FAMILY.service)
    r = gp.post("/Consent", headers=FHIR_JSON, json={
        "resourceType": "Consent", "identifier": [{"system": GP_FAMILY.local_system, "value": "s4-mother-refusal"}],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": NHS, "value": N["s4_mother"]}}, "dateTime": "2026-01-01",
        "organization": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": GP_FAMILY.org}}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny", "period": {"start": "2026-01-01"}},
    })
    assert r.status_code == 201, r.text
    v = view(world, "s4_infant")
    assert v.status == 200 and "mother" not in v.people()
    withheld = [i for i in v.suppressed() if "identity" in {c["code"] for c in i["details"]["coding"]}]
    assert len(withheld) == 1
    assert "expression" not in withheld[0]
    assert {"system": f"{FV}/CodeSystem/family-role", "code": "mother"} in withheld[0]["details"]["coding"]
    # issues about members who are shown still point at their entry, with their role
    for issue in v.suppressed():
        if issue is not withheld[0]:
            role = next(c["code"] for c in issue["details"]["coding"] if c["system"] == f"{FV}/CodeSystem/family-role")
            (index,) = [n for n, e in enumerate(v.body["entry"]) if e["resource"] in v.people().get(role, [])]
            assert issue["expression"] == [f"Bundle.entry[{index}].resource"]


def test_the_man_a_restricted_mother_lives_with_does_not_show_her_home_or_phone(world):
    """Scenario 8 with scenario 4's shape: the health visitor records the mother's partner as
    living with her, at her address and with her mobile written another way (+44, as sms).
    Her record is restricted, so her home and number are not shown on his entry either."""
    hv = world.source(HEALTH_VISITING.org, HEALTH_VISITING.service)
    r = hv.post("/RelatedPerson", headers=FHIR_JSON, json={
        "resourceType": "RelatedPerson",
        "identifier": [{"system": "https://riverside-hv.example.nhs.uk/Id/record", "value": "s8-partner-home"}],
        "patient": {"identifier": {"system": NHS, "value": N["s8_mother"]}},
        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "DOMPART"}]}],
        "name": [{"family": "Lodge", "given": ["Rowan"]}], "gender": "male",
        "address": [{"use": "home", "line": ["1 River Row"], "city": "Riverside", "postalCode": "ls85cc"}],
        "telecom": [{"system": "sms", "value": "+44 7700 900808"}],
    })
    assert r.status_code == 201, r.text
    v = view(world, "s8_infant")
    assert v.status == 200
    [carer] = [p for p in v.people().get("male-carer", []) if p.get("name", [{}])[0].get("family") == "Lodge"]
    assert "address" not in carer and "telecom" not in carer
    for secret in ("LS8 5CC", "ls85cc", "900808"):  # her postcode (the father, recorded apart, has his own) and mobile
        assert secret not in v.r.text, secret
    assert "contact" in v.suppressed_categories()
