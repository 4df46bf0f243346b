"""The family view's plan, without a database or a server: a family built from plain records
taken through the policy table's rows (who is shown, what is withheld and why, what must be
reviewed and whom to tell), then rendered as the wire contract's Bundle."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from consent import LegitimateRelationship, Purpose, Requester, load_policy
from app.family import render
from app.family.members import FamilyGraph, FamilyMember, Rec
from app.family.plan import Asker, ViewPlan, plan_view

TODAY = date(2026, 6, 1)
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SCT = "http://snomed.info/sct"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
MATERNITY, HV, GP_FAMILY, GP_FATHER, MASH = "RMT01", "RHV01", "A99001", "A99002", "LAM01"
POLICY = load_policy()
CARE = LegitimateRelationship(True, "episode-of-care")
NONE = LegitimateRelationship(False)
JUSTIFICATION = "Bruise on a non-mobile baby"


def person(rid: str, org: str, nhs: str, given: str, gender: str, born: str, *, gp: str | None = None, phone: str | None = None,
           security: list[str] | None = None) -> Rec:
    body = {"resourceType": "Patient", "id": rid, "identifier": [{"system": NHS, "value": nhs}], "name": [{"family": "Lake", "given": [given]}],
            "gender": gender, "birthDate": born, "address": [{"line": ["1 Mill Lane"], "postalCode": "LS1 4AB"}]}
    if gp:
        body["generalPractitioner"] = [{"identifier": {"system": ODS, "value": gp}}]
    if phone:
        body["telecom"] = [{"system": "phone", "value": phone}]
    if security:
        body["meta"] = {"security": [{"system": CONF, "code": c} for c in security]}
    return Rec("Patient", rid, body, org)


def condition(rid: str, org: str, subject: str, code: str, display: str) -> Rec:
    return Rec("Condition", rid, {"resourceType": "Condition", "id": rid, "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                                  "subject": {"reference": subject}, "recordedDate": "2026-01-10"}, org)


def consent(rid: str, org: str, provision: dict, recorded: str = "2026-01-01", rule: str = "OPTIN") -> Rec:
    return Rec("Consent", rid, {"resourceType": "Consent", "id": rid, "status": "active",
                                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                                "dateTime": recorded, "organization": [{"identifier": {"system": ODS, "value": org}}],
                                "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": rule}]},
                                "provision": provision}, org)


HV_DIRECT_CARE = {"type": "permit", "actor": [{"reference": {"identifier": {"system": ODS, "value": HV}}}],
                  "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}


def family(*, father_records=(), father_consents=(), mother_security=None, father_security=None, father_born="1990-02-02",
           mother_phone=None, father_phone=None) -> FamilyGraph:
    infant = person("i1", MATERNITY, "9990001103", "Ivy", "female", str(TODAY - timedelta(days=60)), gp=GP_FAMILY)
    mother = person("m1", MATERNITY, "9990001200", "Amy", "female", "1994-03-11", gp=GP_FAMILY, security=mother_security, phone=mother_phone)
    father = person("f1", GP_FATHER, "9990001308", "Ben", "male", father_born, gp=GP_FATHER, security=father_security, phone=father_phone)
    return FamilyGraph(subject=infant, mode="infant", care=[], birth_or_due=TODAY - timedelta(days=60), members=[
        FamilyMember("infant", [infant]),
        FamilyMember("mother", [mother]),
        FamilyMember("father", [father], clinical=list(father_records), consents=list(father_consents)),
    ])


def plan(graph: FamilyGraph, purpose=Purpose.DIRECT_CARE, *, role="health-visitor", org=HV, relationship=CARE) -> ViewPlan:
    justification = JUSTIFICATION if purpose is Purpose.SAFEGUARDING else None
    return plan_view(graph, Asker(Requester(role, org), purpose, justification, relationship, POLICY), TODAY, {GP_FATHER: "Hill Street Practice"})


def shown(p: ViewPlan) -> set[str]:
    return {ref for ref, _ in p.records}


def people(p: ViewPlan) -> dict[str, dict]:
    return dict(p.people)


OPIOID = condition("c1", GP_FATHER, "Patient/f1", "75544000", "Opioid dependence")
ASTHMA = condition("c2", GP_FATHER, "Patient/f1", "195967001", "Asthma")


def test_row_1_to_3_the_family_is_shown_for_direct_care_and_nothing_is_withheld():
    p = plan(family())
    assert p.refusal is None and p.purpose_of_use == "TREAT"
    assert set(people(p)) == {"Patient/i1", "Patient/m1", "Patient/f1"}
    assert p.withheld == [] and not p.review_required and p.notifications == {}
    assert all(i.disclosed for i in p.items)
    assert {i.decision.rule for i in p.items} >= {"infant-direct-care", "mother-identity-direct-care", "father-carer-identity-direct-care"}


@pytest.mark.parametrize("record, category", [(OPIOID, "substance-misuse"), (ASTHMA, "unclassified")])
def test_row_4_his_gp_record_is_withheld_from_direct_care_said_only_to_exist(record, category):
    p = plan(family(father_records=[record]))
    assert record.ref not in shown(p)
    (withheld,) = p.withheld
    assert (withheld.kind, withheld.holder, withheld.holder_name, withheld.role) == ("record", GP_FATHER, "Hill Street Practice", "father")
    (item,) = [i for i in p.items if i.reference == record.ref]
    assert item.category == category and not item.disclosed and item.decision.reason_code == "consent-required"
    issue = render.issue(withheld)
    assert "Hill Street Practice (ODS A99002)" in issue["details"]["text"]
    assert not any(c["system"].endswith("data-category") for c in issue["details"]["coding"])
    assert category not in str(issue) and record.body["code"]["coding"][0]["display"] not in str(issue)


@pytest.mark.parametrize("record", [OPIOID, ASTHMA])
@pytest.mark.parametrize("role, org, relationship, pou", [("health-visitor", HV, CARE, "THREAT"), ("mash", MASH, NONE, "BTG")])
def test_row_5_safeguarding_reaches_it_with_review_and_the_holder_told(record, role, org, relationship, pou):
    p = plan(family(father_records=[record]), Purpose.SAFEGUARDING, role=role, org=org, relationship=relationship)
    assert record.ref in shown(p) and p.withheld == []
    assert p.review_required and p.notifications == {GP_FATHER: [record.ref]} and p.purpose_of_use == pou


def test_his_consent_for_health_visiting_shows_every_category_to_health_visiting_only():
    graph = family(father_records=[OPIOID, ASTHMA], father_consents=[consent("k1", GP_FATHER, HV_DIRECT_CARE)])
    assert shown(plan(graph)) == {OPIOID.ref, ASTHMA.ref}
    gp = plan(graph, role="gp", org=GP_FAMILY)
    assert shown(gp) == set() and len(gp.withheld) == 2


def test_a_consent_recorded_elsewhere_does_not_open_his_gp_record_and_a_conflict_is_reviewed():
    graph = family(father_records=[OPIOID], father_phone="07700 900101", father_consents=[
        consent("k1", GP_FATHER, {"type": "deny"}, recorded="2026-01-01", rule="OPTOUT"),
        consent("k2", MATERNITY, HV_DIRECT_CARE, recorded="2026-05-01"),
    ])
    graph.members[2].records.append(Rec("RelatedPerson", "rp1", {"resourceType": "RelatedPerson", "id": "rp1"}, MATERNITY, "level3"))
    p = plan(graph)
    assert OPIOID.ref not in shown(p)
    father = people(p)["Patient/f1"]
    assert "telecom" not in father and "address" not in father  # his GP-recorded refusal of contact holds
    assert p.review_required  # the maternity permit and the GP refusal disagree
    contact = next(i for i in p.items if i.reference == "Patient/f1#contact")
    assert contact.decision.consent_conflict and contact.decision.reason_code == "consent-refused"


def test_row_6_a_restricted_mother_her_contact_is_not_shown_on_her_baby_or_her_partner():
    graph = family(mother_security=["R"], mother_phone="07700 900808", father_phone="+44 7700 900808")
    p = plan(graph)
    entries = people(p)
    assert not {"address", "telecom", "generalPractitioner"} & set(entries["Patient/m1"])
    assert not {"address", "generalPractitioner"} & set(entries["Patient/i1"])  # carried from her
    assert "telecom" not in entries["Patient/f1"] and "address" not in entries["Patient/f1"]  # her number and home
    kinds = {(w.role, w.category) for w in p.withheld}
    assert {("mother", "contact"), ("infant", "contact"), ("father", "contact")} <= kinds


def test_row_6_very_restricted_father_only_for_safeguarding_and_then_without_address_phone_or_gp():
    graph = family(father_security=["V"], father_phone="07700 900101")
    care = plan(graph)
    assert "Patient/f1" not in people(care)
    assert [(w.kind, w.category, w.entry) for w in care.withheld] == [("person", "identity", None)]
    guard = plan(graph, Purpose.SAFEGUARDING)
    assert not {"address", "telecom", "generalPractitioner"} & set(people(guard)["Patient/f1"])
    assert guard.review_required


def test_row_7_no_relationship_is_a_refusal_and_nothing_else_is_decided():
    p = plan(family(father_records=[OPIOID]), role="health-visitor", org="RZZ99", relationship=NONE)
    assert p.refusal is not None and p.refusal.reason_code == "no-relationship"
    assert len(p.items) == 1 and not p.items[0].disclosed and p.people == [] and p.records == []


def test_a_young_father_indicator_is_derived_and_disclosed_only_with_consent_or_for_safeguarding():
    graph = family(father_born=str(TODAY.replace(year=TODAY.year - 19) - timedelta(days=100)))
    care = plan(graph)
    (withheld,) = care.withheld
    assert withheld.kind == "record" and withheld.holder is None
    assert "familyview (derived" in render.issue(withheld)["details"]["text"]
    guard = plan(graph, Purpose.SAFEGUARDING)
    assert any(ref.startswith("Flag/young-parent-") for ref in shown(guard))
    assert guard.notifications == {}  # derived by the gateway: nobody holds it to be told


def test_render_the_plan_as_the_wire_contracts_bundle():
    p = plan(family(father_records=[OPIOID]))
    bundle = render.bundle(p, "view-1", "infant")
    assert bundle["type"] == "collection" and bundle["id"] == "view-1"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Patient", "Patient", "Patient", "OperationOutcome"]
    (issue,) = bundle["entry"][-1]["resource"]["issue"]
    assert issue["code"] == "suppressed" and issue["expression"] == ["Bundle.entry[2].resource"]
    assert "75544000" not in str(bundle) and "Opioid" not in str(bundle)
    nothing = render.bundle(plan(family()), "view-2", "infant")
    assert nothing["entry"][-1]["resource"]["issue"][0]["code"] == "informational"


# ---------------------------------------------------------------- issue 16: what a practitioner needs to act

from app.family import contract  # noqa: E402
from app.family.members import Relationship  # noqa: E402


def _rp_father(rid: str = "rp1", given: str = "Benny", family_name: str = "Lake") -> Rec:
    return Rec("RelatedPerson", rid, {"resourceType": "RelatedPerson", "id": rid, "patient": {"reference": "Patient/i1"},
                                      "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]}],
                                      "name": [{"family": family_name, "given": [given]}], "gender": "male",
                                      "period": {"start": "2026-04-01"}}, MATERNITY, "level2")


def _with_maternity_record_of_father(graph: FamilyGraph, rp: Rec) -> FamilyGraph:
    father = graph.members[2]
    father.records.append(rp)
    father.relationships.append(Relationship("FTH", "infant", rp))
    return graph


NAMES = {GP_FATHER: "Hill Street Practice", MATERNITY: "Riverside Maternity Unit", GP_FAMILY: "Meadow Lane Surgery"}


def _plan_named(graph: FamilyGraph, purpose=Purpose.DIRECT_CARE, **kw) -> ViewPlan:
    role, org, relationship = kw.get("role", "health-visitor"), kw.get("org", HV), kw.get("relationship", CARE)
    justification = JUSTIFICATION if purpose is Purpose.SAFEGUARDING else None
    return plan_view(graph, Asker(Requester(role, org), purpose, justification, relationship, POLICY), TODAY, NAMES)


def test_other_names_follow_the_entrys_own_each_with_its_source_once():
    g = _with_maternity_record_of_father(family(), _rp_father())
    g.members[2].records.append(_rp_father("rp2", "ben", "LAKE"))  # the same name as his GP's, another case: once
    father = people(_plan_named(g))["Patient/f1"]
    got = [(n["given"][0], [e for e in n["extension"] if e["url"] == contract.EXT_NAME_SOURCE][0]) for n in father["name"]]
    assert [g for g, _ in got] == ["Ben", "Benny"]
    sources = [{x["url"]: x for x in e["extension"]} for _, e in got]
    assert [s["linked"]["valueBoolean"] for s in sources] == [False, True]
    assert [s["organization"]["valueReference"]["display"] for s in sources] == ["Hill Street Practice", "Riverside Maternity Unit"]
    assert sources[1]["record"]["valueReference"] == {"reference": "RelatedPerson/rp1"}


def test_gp_practice_named_and_gone_with_the_restriction():
    p = _plan_named(family(mother_security=["R"]))
    assert people(p)["Patient/f1"]["generalPractitioner"][0]["display"] == "Hill Street Practice"
    assert "generalPractitioner" not in people(p)["Patient/m1"] and "generalPractitioner" not in people(p)["Patient/i1"]
    assert "Meadow Lane Surgery" not in str(people(p)["Patient/m1"])


def test_relationship_provenance_is_decided_and_audited():
    g = _with_maternity_record_of_father(family(), _rp_father())
    p = _plan_named(g)
    (prov,) = [e for e in people(p)["Patient/f1"]["extension"] if e["url"] == contract.EXT_RELATIONSHIP_PROVENANCE]
    parts = {x["url"]: x for x in prov["extension"]}
    assert parts["relationship"]["valueCoding"]["code"] == "FTH" and parts["recordedOn"]["valueCode"] == "infant"
    assert parts["source"]["valueReference"]["display"] == "Riverside Maternity Unit" and parts["recorded"]["valueDateTime"] == "2026-04-01"
    (item,) = [i for i in p.items if i.reference == "Patient/f1#relationship"]
    assert item.category == "relationship" and item.disclosed


def test_a_withheld_father_has_no_names_provenance_or_prompt():
    g = _with_maternity_record_of_father(family(father_security=["V"]), _rp_father())
    p = _plan_named(g)
    assert "Patient/f1" not in people(p) and "Benny" not in str(p.people) and "Hill Street" not in str(p.people)
    assert not p.no_father_known  # he is known; not shown is not unknown
    rendered = render.bundle(p, "b1", "infant")
    assert contract.NOTICE_NO_FATHER_KNOWN not in str(rendered)


def test_no_father_or_male_carer_known_is_a_prompt():
    g = family()
    g.members = g.members[:2]
    p = _plan_named(g)
    assert p.no_father_known
    oo = render.bundle(p, "b1", "infant")["entry"][-1]["resource"]
    (issue,) = [i for i in oo["issue"] if any(c["code"] == contract.NOTICE_NO_FATHER_KNOWN for c in i.get("details", {}).get("coding", []))]
    assert issue["severity"] == "information" and "record him" in issue["diagnostics"]


@pytest.mark.parametrize("role, org, relationship, extra", [
    ("health-visitor", HV, CARE, set()),
    ("mash", MASH, NONE, {contract.NOTICE_BREAK_GLASS}),
])
def test_safeguarding_override_statement(role, org, relationship, extra):
    refusal = consent("k1", GP_FATHER, {"type": "deny"}, rule="OPTOUT")
    g = family(father_records=[OPIOID], father_consents=[refusal])
    p = _plan_named(g, Purpose.SAFEGUARDING, role=role, org=org, relationship=relationship)
    assert p.override is not None
    issue = render.override_issue(p.override)
    codes = {c["code"] for c in issue["details"]["coding"]}
    assert codes == {contract.NOTICE_SAFEGUARDING_OVERRIDE, contract.NOTICE_REFUSAL_OVERRIDDEN, contract.NOTICE_IG_REVIEW_QUEUED,
                     contract.NOTICE_HOLDER_NOTIFIED} | extra
    assert "Hill Street Practice (ODS A99002)" in issue["details"]["text"]
    assert "Opioid" not in str(issue) and "substance" not in str(issue)
    # the same family for direct care states nothing of the kind
    assert _plan_named(g).override is None


def test_care_team_members_who_are_family_are_dropped_and_organisations_named():
    team = Rec("CareTeam", "ct1", {"resourceType": "CareTeam", "id": "ct1", "status": "active", "subject": {"reference": "Patient/i1"},
                                   "participant": [{"member": {"reference": "Practitioner/p1"}, "onBehalfOf": {"identifier": {"system": ODS, "value": GP_FAMILY}}},
                                                   {"member": {"reference": "RelatedPerson/rp9", "display": "Amy Lake"}}]}, HV)
    old = Rec("CareTeam", "ct2", {"resourceType": "CareTeam", "id": "ct2", "status": "inactive", "subject": {"reference": "Patient/i1"}}, HV)
    doc = Rec("Practitioner", "p1", {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "Okafor"}]}, HV)
    stray = Rec("Practitioner", "p2", {"resourceType": "Practitioner", "id": "p2", "name": [{"family": "Nobody"}]}, HV)
    g = family()
    g.care, g.professionals = [team, old], [doc, stray]
    p = _plan_named(g)
    care = dict(p.care)
    assert set(care) == {"CareTeam/ct1", "Practitioner/p1"}  # the inactive team and the unnamed practitioner are not shown
    assert care["CareTeam/ct1"]["participant"] == [{"member": {"reference": "Practitioner/p1"},
                                                     "onBehalfOf": {"identifier": {"system": ODS, "value": GP_FAMILY}, "display": "Meadow Lane Surgery"}}]
    assert {i.category for i in p.items if i.reference in care} == {"care-team"}
