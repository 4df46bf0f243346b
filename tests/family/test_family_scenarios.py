"""The ten scenarios of DESIGN.md over HTTP: who appears, what is disclosed, what is
suppressed (and why), the status code, and the AuditEvent written for each request."""
from __future__ import annotations

import pytest

from app.demo.scenarios import GP_FAMILY, GP_FATHERS, HEALTH_VISITING, IG_ORG, MASH_ORG, MATERNITY, N, UNRELATED_ORG

NHS = "https://fhir.nhs.uk/Id/nhs-number"
FV = "https://familyview.example.nhs.uk/fhir"
ROLE_EXT = f"{FV}/StructureDefinition/family-role"
JUSTIFICATION = "Unexplained bruising seen at the new-birth visit"


class View:
    """A family-view response, read the way a client would."""

    def __init__(self, response, world):
        self.r = response
        self.world = world
        self.status = response.status_code
        self.body = response.json()

    @property
    def entries(self):
        return [e["resource"] for e in self.body.get("entry", [])]

    def people(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for res in self.entries:
            if res["resourceType"] in ("Patient", "RelatedPerson"):
                role = next(e["valueCode"] for e in res["extension"] if e["url"] == ROLE_EXT)
                out.setdefault(role, []).append(res)
        return out

    def nhs_numbers(self, role: str) -> set[str]:
        return {i["value"] for p in self.people().get(role, []) for i in p.get("identifier", []) if i["system"] == NHS}

    def records(self, res_type: str | None = None) -> list[dict]:
        return [r for r in self.entries if r["resourceType"] in ("Flag", "Condition", "Observation") and (res_type is None or r["resourceType"] == res_type)]

    def codes(self) -> set[str]:
        return {c["code"] for r in self.records() for c in r.get("code", {}).get("coding", [])}

    def suppressed(self) -> list[dict]:
        oo = [r for r in self.entries if r["resourceType"] == "OperationOutcome"]
        assert len(oo) == 1, "exactly one OperationOutcome in every view"
        return [i for i in oo[0]["issue"] if i["code"] == "suppressed"]

    def suppressed_categories(self) -> set[str]:
        return {c["code"] for i in self.suppressed() for c in i["details"]["coding"] if c["system"].endswith("data-category")}

    def withheld_records(self) -> list[dict]:
        """Suppressed issues for withheld records: they name whose record, its holder and how to
        ask, and carry no data category (a withheld record is never described by kind)."""
        return [i for i in self.suppressed() if i["details"]["text"].startswith("A confidential record")]

    def holders_named(self) -> list[str]:
        return [i["details"]["text"].split(", held by ", 1)[1] for i in self.withheld_records()]

    def audit(self) -> dict:
        header = self.r.headers["x-audit-event"]
        assert header.startswith("AuditEvent/")
        ig = self.world.client("ig-officer", IG_ORG)
        r = ig.get("/" + header)
        assert r.status_code == 200, r.text
        return r.json()


def view(world, key: str, purpose: str = "direct-care", *, role: str = "health-visitor", org: str = HEALTH_VISITING.org,
         justification: str | None = None, by_id: bool = False) -> View:
    client = world.client(role, org)
    params = {"purpose": purpose}
    if justification:
        params["justification"] = justification
    if by_id:
        src = world.source(MATERNITY.org, MATERNITY.service)
        pid = src.get("/Patient", params={"identifier": f"{NHS}|{N[key]}"}).json()["entry"][0]["resource"]["id"]
        return View(client.get(f"/Patient/{pid}/$family-view", params=params), world)
    params["identifier"] = f"{NHS}|{N[key]}"
    return View(client.get("/Patient/$family-view", params=params), world)


def purpose_of_use(event: dict) -> str:
    return event["agent"][0]["purposeOfUse"][0]["coding"][0]["code"]


def item_details(event: dict) -> list[dict[str, str]]:
    out = []
    for e in event["entity"]:
        d = {x["type"]: x["valueString"] for x in e.get("detail", [])}
        if "decision" in d:
            out.append({"what": e["what"]["reference"], **d})
    return out


def ext(event: dict, name: str):
    return next((e.get("valueString", e.get("valueBoolean")) for e in event.get("extension", []) if e["url"].endswith(name)), None)


def test_scenario_1_parents_together_nothing_withheld(world):
    v = view(world, "s1_infant", by_id=True)
    assert v.status == 200 and v.body["type"] == "collection"
    assert v.nhs_numbers("infant") == {N["s1_infant"]}
    assert v.nhs_numbers("mother") == {N["s1_mother"]}
    assert v.nhs_numbers("father") == {N["s1_father"]}
    assert set(v.people()) == {"infant", "mother", "father"}
    assert v.suppressed() == []
    father = v.people()["father"][0]
    # every known identifier: the GP's record and the midwife's, joined by NHS number
    assert {"s1-father", "s1-rp-father"} <= {i["value"] for i in father["identifier"]}
    event = v.audit()
    assert event["outcome"] == "0" and purpose_of_use(event) == "TREAT"
    subjects = {d["valueString"] for e in event["entity"] for d in e.get("detail", []) if d["type"] == "nhs-number"}
    assert {N["s1_infant"], N["s1_mother"], N["s1_father"]} <= subjects
    assert all(i["disclosed"] == "true" for i in item_details(event))
    assert ext(event, "audit-policy-version")


def test_scenario_2_father_linked_by_demographics_gp_record_withheld_then_disclosed(world):
    v = view(world, "s2_infant")
    assert v.status == 200
    father = v.people()["father"][0]
    assert v.nhs_numbers("father") == {N["s2_father"]}  # found through linkage: the midwife had no NHS number
    assert {"s2-rp-father", "s2-father"} <= {i["value"] for i in father["identifier"]}
    assurance = [e for e in father["extension"] if e["url"].endswith("linkage-assurance")]
    assert assurance and assurance[0]["valueCode"] == "level2"  # inferred, and marked so
    assert "66214007" not in v.codes()
    assert v.suppressed_categories() == set()  # nothing says what kind of record was withheld
    assert v.holders_named() == [f"{GP_FATHERS.name} (ODS {GP_FATHERS.org}), was withheld"]
    assert "safeguarding request" in v.withheld_records()[0]["diagnostics"]
    assert "Substance" not in v.r.text and "substance" not in v.r.text  # the withheld content never appears
    event = v.audit()
    withheld = [i for i in item_details(event) if i["disclosed"] == "false"]
    assert [w["category"] for w in withheld] == ["substance-misuse"] and withheld[0]["decision"] == "deny"
    assert ext(event, "audit-ig-review-required") is False

    s = view(world, "s2_infant", "safeguarding", justification=JUSTIFICATION)
    assert s.status == 200
    assert "66214007" in s.codes() and s.suppressed() == []
    event = s.audit()
    assert purpose_of_use(event) == "THREAT"
    assert ext(event, "audit-justification") == JUSTIFICATION
    assert ext(event, "audit-ig-review-required") is True
    sud = next(i for i in item_details(event) if i["category"] == "substance-misuse")
    assert sud["disclosed"] == "true" and "Sch 1 para 18" in sud["lawful-basis"] and "9(2)(g)" in sud["lawful-basis"]
    # the GP practice (data controller) is notified, as a Communication stored for it
    gp = world.source(GP_FATHERS.org, GP_FATHERS.service)
    comms = gp.get("/Communication", params={"_count": 50}).json()
    mine = [e["resource"] for e in comms.get("entry", []) if any(a["reference"] == f"AuditEvent/{event['id']}" for a in e["resource"]["about"])]
    assert len(mine) == 1
    assert mine[0]["recipient"][0]["identifier"]["value"] == GP_FATHERS.org
    assert "Substance" not in str(mine[0]["payload"])


def test_scenario_3_consent_permits_mental_health_not_substance_misuse(world):
    v = view(world, "s3_infant")
    assert v.status == 200
    assert "35489007" in v.codes()  # depression: covered by his Consent (PSY, health visiting, TREAT)
    assert "15167005" not in v.codes()  # alcohol abuse: not covered
    assert len(v.withheld_records()) == 1 and v.suppressed_categories() == set()
    event = v.audit()
    mh = next(i for i in item_details(event) if i["category"] == "mental-health")
    assert mh["disclosed"] == "true" and "consent-relied-on" in mh
    # the infant's GP practice is not named in his Consent: the same record is withheld from it
    m = view(world, "s3_infant", role="gp", org=GP_FAMILY.org)
    assert m.status == 200 and "35489007" not in m.codes()
    assert len(m.withheld_records()) == 2 and m.suppressed_categories() == set()


def test_scenario_4_mothers_partner_is_a_male_carer_flag_withheld_then_disclosed(world):
    v = view(world, "s4_infant")
    assert v.status == 200
    assert v.nhs_numbers("male-carer") == {N["s4_partner"]}
    assert v.nhs_numbers("father") == {N["s4_father"]}
    assert v.records("Flag") == [] and len(v.withheld_records()) == 1 and v.suppressed_categories() == set()
    assert "Domestic" not in v.r.text and "DA-PERPETRATOR" not in v.r.text
    s = view(world, "s4_infant", "safeguarding", justification=JUSTIFICATION)
    assert [c["code"] for f in s.records("Flag") for c in f["code"]["coding"]] == ["DA-PERPETRATOR"]
    assert s.suppressed() == []


def test_scenario_5_refusal_withholds_for_care_safeguarding_overrides_and_records_it(world):
    v = view(world, "s5_infant")
    assert v.status == 200 and v.nhs_numbers("father") == {N["s5_father"]}
    father = v.people()["father"][0]
    assert "telecom" not in father and "address" not in father  # his Consent refuses contact
    assert v.suppressed_categories() == {"contact"} and len(v.withheld_records()) == 1
    assert "197480006" not in v.codes()
    s = view(world, "s5_infant", "safeguarding", justification=JUSTIFICATION)
    assert "197480006" in s.codes()
    event = s.audit()
    mh = next(i for i in item_details(event) if i["category"] == "mental-health")
    assert "consent-overridden" in mh and "(deny)" in mh["consent-overridden"]
    assert "Sch 1 para 18" in mh["lawful-basis"]
    assert ext(event, "audit-ig-review-required") is True


def test_scenario_6_no_relationship_is_403_and_audited(world):
    v = view(world, "s1_infant", org=UNRELATED_ORG)
    assert v.status == 403
    assert v.body["resourceType"] == "OperationOutcome" and v.body["issue"][0]["code"] == "forbidden"
    assert N["s1_father"] not in v.r.text and "Taylor" not in v.r.text
    event = v.audit()
    assert event["outcome"] == "4" and event["agent"][1]["who"]["identifier"]["value"] == UNRELATED_ORG
    assert all(i["disclosed"] == "false" for i in item_details(event))
    # safeguarding does not open a route for someone with no relationship...
    s = view(world, "s1_infant", "safeguarding", org=UNRELATED_ORG, justification=JUSTIFICATION)
    assert s.status == 403
    # ...but the MASH may break the glass, and it is recorded as BTG
    b = view(world, "s1_infant", "safeguarding", role="mash", org=MASH_ORG, justification=JUSTIFICATION)
    assert b.status == 200 and purpose_of_use(b.audit()) == "BTG"
    d = view(world, "s1_infant", role="mash", org=MASH_ORG)
    assert d.status == 403


def test_scenario_7_pre_birth_view(world):
    v = view(world, "s7_mother", role="midwife", org=MATERNITY.org)
    assert v.status == 200
    unborn = v.people()["infant"][0]
    assert unborn["name"][0]["text"].startswith("Unborn baby")
    assert any(e["url"].endswith("expected-delivery-date") for e in unborn["extension"])
    assert v.nhs_numbers("mother") == {N["s7_mother"]}
    assert v.nhs_numbers("father") == {N["s7_partner"]}
    assert any(t["code"] == "pre-birth" for t in v.body["meta"]["tag"])
    # the health visitor with an antenatal contact (issue 16) has a relationship before the birth
    hv = view(world, "s7_mother")
    assert hv.status == 200 and hv.nhs_numbers("father") == {N["s7_partner"]}
    # a health visiting service that has had no contact with her has none
    assert view(world, "s7_mother", org="RHV02").status == 403


def test_scenario_8_restricted_mother_never_shows_address_or_telecom(world):
    for purpose, just in (("direct-care", None), ("safeguarding", JUSTIFICATION)):
        v = view(world, "s8_infant", purpose, justification=just)
        assert v.status == 200
        mother = v.people()["mother"][0]
        assert "address" not in mother and "telecom" not in mother and "generalPractitioner" not in mother
        assert "07700 900808" not in v.r.text
        assert "contact" in v.suppressed_categories()


def test_scenario_9_ig_officer_gets_no_view_but_searches_the_audit(world):
    v = view(world, "s1_infant", role="ig-officer", org=IG_ORG)
    assert v.status == 403
    ig = world.client("ig-officer", IG_ORG)
    r = ig.get("/AuditEvent", params={"patient": N["s1_infant"]})
    assert r.status_code == 200 and r.json()["total"] >= 1
    r = ig.get("/AuditEvent", params={"agent": IG_ORG, "outcome": "4"})
    assert any(e["resource"]["id"] == v.r.headers["x-audit-event"].split("/")[1] for e in r.json()["entry"])
    # and a health visitor cannot read the audit
    assert world.client("health-visitor", HEALTH_VISITING.org).get("/AuditEvent").status_code == 403


def test_scenario_10_young_care_leaver_father_indicators_where_lawful(world):
    v = view(world, "s10_infant")
    assert v.status == 200
    codes = v.codes()
    assert {"CARE-LEAVER", "YOUNG-PARENT"} <= codes  # his Consent covers both for health visiting
    young = next(f for f in v.records("Flag") if f["code"]["coding"][0]["code"] == "YOUNG-PARENT")
    assert any(t["code"] == "derived" for t in young["meta"]["tag"])
    # a GP practice (not named in his Consent) sees neither for direct care
    g = view(world, "s10_infant", role="gp", org=GP_FAMILY.org)
    assert g.status == 200 and not ({"CARE-LEAVER", "YOUNG-PARENT"} & g.codes())
    assert len(g.withheld_records()) == 2 and g.suppressed_categories() == set()
    assert "Care leaver" not in g.r.text and "Young" not in g.r.text


@pytest.mark.parametrize("params, status, expression", [
    ({"identifier": f"{NHS}|{N['s1_infant']}"}, 400, "purpose"),
    ({"identifier": f"{NHS}|{N['s1_infant']}", "purpose": "curiosity"}, 400, "purpose"),
    ({"identifier": f"{NHS}|{N['s1_infant']}", "purpose": "safeguarding"}, 400, "justification"),
    ({"identifier": f"{NHS}|{N['s1_infant']}", "purpose": "safeguarding", "justification": "   "}, 400, "justification"),
    ({"purpose": "direct-care"}, 400, "identifier"),
    # a valid NHS number nobody sent: the same 403 as a family the requester has no route to
    # (not found or not yours, one answer), audited like it
    ({"identifier": f"{NHS}|9990009996", "purpose": "direct-care"}, 403, None),
    ({"identifier": f"{NHS}|9990009999", "purpose": "direct-care"}, 422, "identifier"),  # fails Modulus 11
    # neither an infant, nor the mother of one, nor pregnant (a mother's number opens her baby's view)
    ({"identifier": f"{NHS}|{N['s1_father']}", "purpose": "direct-care"}, 422, "Patient"),
])
def test_bad_family_view_requests(world, params, status, expression):
    r = world.client("health-visitor", HEALTH_VISITING.org).get("/Patient/$family-view", params=params)
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    if expression:
        assert issue["expression"] == [expression]
    if status != 404:
        assert r.headers["x-audit-event"].startswith("AuditEvent/")


def test_family_view_needs_a_token(world):
    import httpx

    r = httpx.get(world.fhir + "/Patient/$family-view", params={"identifier": f"{NHS}|{N['s1_infant']}", "purpose": "direct-care"})
    assert r.status_code == 401


def test_patient_link_joins_a_persons_records_as_recorded(world):
    """A GP system that records Patient.link (seealso) to its other record of the same man
    joins them in the view, even with no NHS number to match on."""
    gp = world.source(GP_FATHERS.org, GP_FATHERS.service)
    old = gp.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": "https://hill-street.example.nhs.uk/Id/record", "value": "s1-father-old"}],
                                    "name": [{"family": "Taylor", "given": ["Benjamin"]}], "gender": "male", "birthDate": "1992-05-15"},
                  headers={"Content-Type": "application/fhir+json"}).json()
    current = gp.get("/Patient", params={"identifier": f"{NHS}|{N['s1_father']}"}).json()["entry"][0]["resource"]
    current["link"] = [{"other": {"reference": f"Patient/{old['id']}"}, "type": "seealso"}]
    assert gp.put(f"/Patient/{current['id']}", json=current, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    v = view(world, "s1_infant")
    father = v.people()["father"][0]
    assert "s1-father-old" in {i["value"] for i in father["identifier"]}
