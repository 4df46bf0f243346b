"""Issue 16: what a practitioner needs to act, in the `$family-view` answer (the pages render it):
the view opened from the mother's NHS number, the health visitor's antenatal contact as a
relationship before the birth, GP practices by name, the care team and named professionals,
who recorded each relationship and when, the names other services recorded, the safeguarding
override stated, and a prompt when no father or male carer is known. Everything through the
same consent plan: what is withheld stays absent and undescribed."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.demo.scenarios import (
    GP_FAMILY, GP_FATHERS, HEALTH_VISITING, IG_ORG, MASH_ORG, MATERNITY, N, ROLE, UNRELATED_ORG,
    _bundle, _entry, _episode, _nhs_ref, _patient, _related,
)
from app.family import contract
from tests.fhirdata import nhs_numbers
from tests.family.test_family_scenarios import JUSTIFICATION, NHS, View, ext, item_details

NUMBERS = nhs_numbers(730_000)
TODAY = date.today()


def post(world, source, *entries):
    r = world.source(source.org, source.service).post("/", json=_bundle(*entries))
    assert r.status_code == 200, r.text
    return r.json()


def ask(world, identifier: str, purpose: str = "direct-care", *, role="health-visitor", org=HEALTH_VISITING.org,
        justification=None) -> View:
    params = {"identifier": f"{NHS}|{identifier}", "purpose": purpose}
    if justification:
        params["justification"] = justification
    return View(world.client(role, org).get("/Patient/$family-view", params=params), world)


def outcome(v: View) -> dict:
    return next(r for r in v.entries if r["resourceType"] == "OperationOutcome")


def notices(v: View) -> dict[str, dict]:
    """The OperationOutcome's notices, by each code of the notice system they carry."""
    out = {}
    for i in outcome(v)["issue"]:
        for c in i.get("details", {}).get("coding", []):
            if c["system"] == contract.NOTICE_SYSTEM:
                out[c["code"]] = i
    return out


def sub(ext: dict, name: str):
    e = next(x for x in ext["extension"] if x["url"] == name)
    return next(v for k, v in e.items() if k.startswith("value"))


def exts(resource: dict, url: str) -> list[dict]:
    return [e for e in resource.get("extension", []) if e["url"] == url]


# ---------------------------------------------------------------- families of this module (NHS 9990730xxx)


@pytest.fixture(scope="module")
def twins(world):
    """A mother of twins (distinct names: the twin guard), both babies with the health visitor."""
    mum_nhs, a_nhs, b_nhs = next(NUMBERS), next(NUMBERS), next(NUMBERS)
    born = TODAY - timedelta(days=40)
    a = _entry(_patient(MATERNITY, "fa-twin-a", "Quayle", "Ottilie", "female", born, nhs=a_nhs, gp=GP_FAMILY.org, postcode="LS2 7QQ"))
    b = _entry(_patient(MATERNITY, "fa-twin-b", "Quayle", "Barnaby", "male", born, nhs=b_nhs, gp=GP_FAMILY.org, postcode="LS2 7QQ"))
    mum = _entry(_patient(MATERNITY, "fa-twins-mother", "Quayle", "Rosalind", "female", "1991-02-03", nhs=mum_nhs, postcode="LS2 7QQ"))
    # one RelatedPerson per baby (FHIR: a RelatedPerson is of one patient), each joined to her by linkage
    rps = [_entry(_related(MATERNITY, f"fa-rp-mother-{k}", {"reference": baby["fullUrl"]}, "MTH", "Quayle", "Rosalind", "female",
                           "1991-02-03", postcode="LS2 7QQ")) for k, baby in (("a", a), ("b", b))]
    post(world, MATERNITY, a, b, mum, *rps)
    post(world, HEALTH_VISITING, *[_entry(_episode(HEALTH_VISITING, f"fa-ep-{k}", _nhs_ref(n), born, "Health visiting")) for k, n in (("a", a_nhs), ("b", b_nhs))])
    return {"mother": mum_nhs, "a": a_nhs, "b": b_nhs}


@pytest.fixture(scope="module")
def lone_mother(world):
    """A baby whose records name no father and no man in a caring role; the mother very restricted (V)."""
    mum_nhs, baby_nhs = next(NUMBERS), next(NUMBERS)
    baby = _entry(_patient(MATERNITY, "fa-lone-baby", "Ueberroth", "Wren", "female", TODAY - timedelta(days=70), nhs=baby_nhs,
                           gp=GP_FAMILY.org, postcode="LS3 1XY"))
    mum = _entry(_patient(MATERNITY, "fa-lone-mother", "Ueberroth", "Marisol", "female", "1990-10-10", nhs=mum_nhs, gp=GP_FAMILY.org,
                          postcode="LS3 1XY", phone="07700 900733", security=["V"]))
    mth = _entry(_related(MATERNITY, "fa-lone-rp-mother", {"reference": baby["fullUrl"]}, "MTH", "Ueberroth", "Marisol", "female",
                          "1990-10-10", nhs=mum_nhs, postcode="LS3 1XY"))
    post(world, MATERNITY, baby, mum, mth)
    # the health visitor's care team lists a professional by SDS id, a named nursery nurse in her
    # role, and, as some systems do, the mother herself
    nurse = _entry({"resourceType": "Practitioner", "identifier": [{"system": HEALTH_VISITING.local_system, "value": "fa-nurse"}],
                    "name": [{"family": "Adeyemi-Frost", "given": ["Ngozi"]}]})
    role = _entry({"resourceType": "PractitionerRole", "identifier": [{"system": HEALTH_VISITING.local_system, "value": "fa-nurse-role"}],
                   "active": True, "practitioner": {"reference": nurse["fullUrl"]}, "code": [{"text": "Community nursery nurse"}],
                   "organization": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": HEALTH_VISITING.org}}})
    team = {
        "resourceType": "CareTeam", "identifier": [{"system": HEALTH_VISITING.local_system, "value": "fa-lone-team"}], "status": "active",
        "subject": _nhs_ref(baby_nhs),
        "participant": [
            {"member": {"type": "Practitioner", "identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "555000100001"}}},
            {"member": {"type": "RelatedPerson", "identifier": {"system": NHS, "value": mum_nhs}, "display": "Marisol Ueberroth"}},
            {"member": {"reference": role["fullUrl"]}},
        ],
        "managingOrganization": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": HEALTH_VISITING.org}}],
    }
    post(world, HEALTH_VISITING, _entry(_episode(HEALTH_VISITING, "fa-lone-ep", _nhs_ref(baby_nhs), TODAY - timedelta(days=60), "Health visiting")),
         nurse, role, _entry(team))
    return {"mother": mum_nhs, "baby": baby_nhs}


@pytest.fixture(scope="module")
def pregnant(world):
    """A pregnant mother: referred to one health visiting service (RHV03), an old contact with another
    (RHV04, in her last pregnancy), a cancelled referral to a third (RHV05)."""
    mum_nhs = next(NUMBERS)
    mum = _entry(_patient(MATERNITY, "fa-preg-mother", "Vantongeren", "Odalys", "female", "1993-04-04", nhs=mum_nhs, postcode="LS4 2ZZ"))
    ref = {"reference": mum["fullUrl"]}
    edd = _entry({"resourceType": "Observation", "identifier": [{"system": MATERNITY.local_system, "value": "fa-preg-edd"}], "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "11778-8"}]}, "subject": ref,
                  "effectiveDateTime": str(TODAY - timedelta(days=100)), "valueDateTime": str(TODAY + timedelta(days=90))})

    def referral(key, org, status):
        return _entry({"resourceType": "ServiceRequest", "identifier": [{"system": MATERNITY.local_system, "value": key}], "status": status,
                       "intent": "order", "code": {"text": "Pregnancy notification to health visiting"}, "subject": ref,
                       "authoredOn": str(TODAY - timedelta(days=30)),
                       "performer": [{"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": org}}]})

    old_contact = _entry({"resourceType": "Encounter", "identifier": [{"system": MATERNITY.local_system, "value": "fa-preg-old"}], "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"}, "subject": ref,
                          "period": {"start": str(TODAY - timedelta(days=700))},
                          "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RHV04"}}})
    post(world, MATERNITY, mum, edd, referral("fa-preg-ref", "RHV03", "active"), referral("fa-preg-ref-x", "RHV05", "revoked"), old_contact)
    return {"mother": mum_nhs}


# ---------------------------------------------------------------- opened by the mother's NHS number


def test_the_mothers_nhs_number_opens_her_babys_view(world):
    by_baby = ask(world, N["s2_infant"])
    by_mother = ask(world, N["s2_mother"])
    assert by_mother.status == 200, by_mother.body
    assert by_mother.nhs_numbers("infant") == {N["s2_infant"]} and by_mother.nhs_numbers("mother") == {N["s2_mother"]}
    assert {k: len(v) for k, v in by_mother.people().items()} == {k: len(v) for k, v in by_baby.people().items()}
    assert by_mother.suppressed_categories() == by_baby.suppressed_categories()
    assert any(t["code"] == "infant" for t in by_mother.body["meta"]["tag"])
    # audited as a view of the baby's family, as asked (the mother's identifier in the query)
    event = by_mother.audit()
    assert N["s2_infant"] in str(event["entity"]) and N["s2_father"] in str(event["entity"])
    # instance level by the mother's own Patient id too
    mid = world.source(MATERNITY.org, MATERNITY.service).get("/Patient", params={"identifier": f"{NHS}|{N['s2_mother']}"}).json()["entry"][0]["resource"]["id"]
    inst = View(world.client("health-visitor", HEALTH_VISITING.org).get(f"/Patient/{mid}/$family-view", params={"purpose": "direct-care"}), world)
    assert inst.status == 200 and inst.nhs_numbers("infant") == {N["s2_infant"]}


def test_the_mothers_number_without_a_relationship_is_the_same_403(world):
    v = ask(world, N["s2_mother"], org=UNRELATED_ORG)
    assert v.status == 403
    assert N["s2_infant"] not in v.r.text and "baby" not in v.r.text.lower()


def test_a_mother_of_twins_is_asked_which_baby_without_any_detail_of_them(world, twins):
    v = ask(world, twins["mother"])
    assert v.status == 422
    issues = v.body["issue"]
    assert issues[0]["code"] == "multiple-matches"
    assert {c["code"] for c in issues[0]["details"]["coding"]} == {contract.SPINE_MULTIPLE_MATCHES}
    choices = [i for i in issues if any(c.get("code") == contract.NOTICE_CHOOSE_INFANT for c in i["details"]["coding"])]
    assert len(choices) == 2
    ids = [i["diagnostics"].removeprefix("Patient/").removesuffix("/$family-view") for i in choices]
    for name in ("Ottilie", "Barnaby", "Quayle", twins["a"], twins["b"], "female", str(TODAY - timedelta(days=40))):
        assert name not in v.r.text
    # each choice opens that baby's view
    client = world.client("health-visitor", HEALTH_VISITING.org)
    opened = {View(client.get(f"/Patient/{i}/$family-view", params={"purpose": "direct-care"}), world).nhs_numbers("infant").pop() for i in ids}
    assert opened == {twins["a"], twins["b"]}
    # someone with no relationship learns nothing about the twins
    assert ask(world, twins["mother"], org=UNRELATED_ORG).status == 403
    # the refusal to choose is audited, naming both babies for subject access
    event = View(v.r, world).audit()
    assert twins["a"] in str(event["entity"]) and twins["b"] in str(event["entity"])


# ---------------------------------------------------------------- pre-birth: antenatal contact, pregnancy referral


def test_an_antenatal_contact_gives_the_health_visitor_the_pre_birth_view(world):
    v = ask(world, N["s7_mother"])
    assert v.status == 200
    assert any(t["code"] == "pre-birth" for t in v.body["meta"]["tag"])
    assert v.nhs_numbers("father") == {N["s7_partner"]}


@pytest.mark.parametrize("org, status", [
    ("RHV03", 200),  # an active pregnancy referral to her service
    ("RHV04", 403),  # a contact in an earlier pregnancy does not count
    ("RHV05", 403),  # a revoked referral does not count
    ("RHV06", 403),  # nothing at all
])
def test_a_pregnancy_referral_in_this_pregnancy_is_a_relationship(world, pregnant, org, status):
    v = ask(world, pregnant["mother"], org=org)
    assert v.status == status, v.body
    if status == 403:
        assert "pregnan" not in v.r.text.lower()


def test_ingest_accepts_encounters_and_service_requests_and_checks_their_codes(world):
    src = world.source(HEALTH_VISITING.org, HEALTH_VISITING.service)
    ok = {"resourceType": "Encounter", "status": "planned", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
          "subject": _nhs_ref(N["s7_mother"])}
    r = src.post("/Encounter", json=ok, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    bad = dict(ok, status="booked")
    r = src.post("/Encounter", json=bad, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Encounter.status"]
    sr = {"resourceType": "ServiceRequest", "status": "active", "intent": "wish", "subject": _nhs_ref(N["s7_mother"])}
    r = src.post("/ServiceRequest", json=sr, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["ServiceRequest.intent"]
    found = src.get("/Encounter", params={"status": "planned"}).json()
    assert [e["resource"]["status"] for e in found.get("entry", [])] == ["planned"]


# ---------------------------------------------------------------- content


def test_gp_practices_are_named(world):
    v = ask(world, N["s1_infant"])
    infant, father = v.people()["infant"][0], v.people()["father"][0]
    assert infant["generalPractitioner"][0]["display"] == GP_FAMILY.name
    assert infant["generalPractitioner"][0]["identifier"]["value"] == GP_FAMILY.org
    assert father["generalPractitioner"][0]["display"] == GP_FATHERS.name


def test_care_team_and_named_professionals(world):
    v = ask(world, N["s1_infant"])
    teams = [r for r in v.entries if r["resourceType"] == "CareTeam"]
    assert teams and teams[0]["managingOrganization"][0]["display"] == HEALTH_VISITING.name
    named = [r for r in v.entries if r["resourceType"] == "Practitioner"]
    assert [n["name"][0]["family"] for n in named] == ["Okafor"]
    member = teams[0]["participant"][0]["member"]["reference"]
    assert member == f"Practitioner/{named[0]['id']}"
    assert any(r["resourceType"] == "EpisodeOfCare" for r in v.entries)
    # audited as the infant's care-team data
    cats = {d["what"].split("/")[0]: d for d in item_details(v.audit())}
    assert "CareTeam" in cats and "Practitioner" in cats


def test_a_care_team_never_lists_a_family_member_and_finds_professionals_by_identifier(world, lone_mother):
    v = ask(world, lone_mother["baby"])
    team = next(r for r in v.entries if r["resourceType"] == "CareTeam")
    assert [p["member"].get("type") or p["member"]["reference"].split("/")[0] for p in team["participant"]] == ["Practitioner", "PractitionerRole"]
    assert "Marisol" not in str(team)
    assert sorted(r["name"][0]["family"] for r in v.entries if r["resourceType"] == "Practitioner") == ["Adeyemi-Frost", "Okafor"]
    (role,) = [r for r in v.entries if r["resourceType"] == "PractitionerRole"]
    assert role["organization"]["display"] == HEALTH_VISITING.name and role["code"][0]["text"] == "Community nursery nurse"


def test_who_recorded_each_relationship_and_when(world):
    v = ask(world, N["s4_infant"])
    father, carer = v.people()["father"][0], v.people()["male-carer"][0]
    (f_prov,) = exts(father, contract.EXT_RELATIONSHIP_PROVENANCE)
    assert sub(f_prov, "relationship")["code"] == "FTH" and sub(f_prov, "recordedOn") == "infant"
    assert sub(f_prov, "source")["display"] == MATERNITY.name and sub(f_prov, "source")["identifier"]["value"] == MATERNITY.org
    assert sub(f_prov, "recorded")[:10] <= TODAY.isoformat() and sub(f_prov, "record")["reference"].startswith("RelatedPerson/")
    (c_prov,) = exts(carer, contract.EXT_RELATIONSHIP_PROVENANCE)
    assert sub(c_prov, "relationship")["code"] == "DOMPART" and sub(c_prov, "recordedOn") == "mother"
    assert sub(c_prov, "source")["display"] == HEALTH_VISITING.name
    assert not exts(v.people()["infant"][0], contract.EXT_RELATIONSHIP_PROVENANCE)


def test_names_other_services_recorded_are_kept_with_their_source(world):
    v = ask(world, N["s2_infant"])
    father = v.people()["father"][0]
    names = [(n.get("given", [""])[0], n.get("family"), sub(exts(n, contract.EXT_NAME_SOURCE)[0], "linked"),
              sub(exts(n, contract.EXT_NAME_SOURCE)[0], "organization")["display"]) for n in father["name"]]
    assert names == [("Jonathan", "Smith", False, GP_FATHERS.name), ("Jon", "Smyth", True, MATERNITY.name)]
    # a name both records share is given once
    s1_father = ask(world, N["s1_infant"]).people()["father"][0]
    assert [(n["given"][0], n["family"]) for n in s1_father["name"]] == [("Ben", "Taylor")]


def test_direct_care_states_no_override(world):
    v = ask(world, N["s5_infant"])
    assert not {contract.NOTICE_SAFEGUARDING_OVERRIDE, contract.NOTICE_BREAK_GLASS} & set(notices(v))


def test_a_safeguarding_view_that_overrode_a_refusal_says_so(world):
    v = ask(world, N["s5_infant"], "safeguarding", justification=JUSTIFICATION)
    assert v.status == 200
    found = notices(v)
    issue = found[contract.NOTICE_SAFEGUARDING_OVERRIDE]
    codes = {c["code"] for c in issue["details"]["coding"]}
    assert codes == {contract.NOTICE_SAFEGUARDING_OVERRIDE, contract.NOTICE_REFUSAL_OVERRIDDEN,
                     contract.NOTICE_IG_REVIEW_QUEUED, contract.NOTICE_HOLDER_NOTIFIED}
    assert issue["severity"] == "warning"
    text = issue["details"]["text"]
    assert "refusal" in text and "review" in text and f"{GP_FATHERS.name} (ODS {GP_FATHERS.org})" in text
    # and it is true: the audit queues the review
    assert ext(v.audit(), "audit-ig-review-required") is True


def test_a_safeguarding_view_without_a_refusal_states_the_basis_not_a_refusal(world):
    v = ask(world, N["s2_infant"], "safeguarding", justification=JUSTIFICATION)
    codes = {c["code"] for c in notices(v)[contract.NOTICE_SAFEGUARDING_OVERRIDE]["details"]["coding"]}
    assert contract.NOTICE_REFUSAL_OVERRIDDEN not in codes and contract.NOTICE_BREAK_GLASS not in codes
    assert contract.NOTICE_HOLDER_NOTIFIED in codes


def test_break_glass_is_stated(world):
    v = ask(world, N["s2_infant"], "safeguarding", role="mash", org=MASH_ORG, justification=JUSTIFICATION)
    assert v.status == 200
    issue = notices(v)[contract.NOTICE_BREAK_GLASS]
    assert "break-glass" in issue["details"]["text"]


def test_no_father_known_prompts_the_practitioner(world, lone_mother):
    v = ask(world, lone_mother["baby"])
    issue = notices(v)[contract.NOTICE_NO_FATHER_KNOWN]
    assert issue["severity"] == "information" and "record him" in issue["diagnostics"]
    assert contract.NOTICE_NO_FATHER_KNOWN not in notices(ask(world, N["s1_infant"]))


def test_a_withheld_father_is_not_said_to_be_unknown(world):
    """Scenario 8's father is known; a view with him shown carries no prompt, and neither would a
    view with him withheld (the prompt is about what sources know, not what is shown)."""
    assert contract.NOTICE_NO_FATHER_KNOWN not in notices(ask(world, N["s8_infant"]))


def test_very_restricted_mother_under_safeguarding_shows_no_gp_address_or_telecom(world, lone_mother):
    direct = ask(world, lone_mother["baby"])
    assert "mother" not in direct.people()  # V: withheld for direct care
    assert "Marisol" not in direct.r.text
    v = ask(world, lone_mother["baby"], "safeguarding", justification=JUSTIFICATION)
    mother = v.people()["mother"][0]
    assert not {"address", "telecom", "generalPractitioner"} & set(mother)
    assert GP_FAMILY.name not in str(mother)
    # her names are shown, each with its source
    assert all(exts(n, contract.EXT_NAME_SOURCE) for n in mother["name"])


def test_restricted_mother_has_no_gp_name(world):
    v = ask(world, N["s8_infant"])
    mother = v.people()["mother"][0]
    assert "generalPractitioner" not in mother and GP_FAMILY.name not in str(mother)
    assert "generalPractitioner" not in v.people()["infant"][0]


def test_ig_officer_still_gets_no_view(world):
    assert ask(world, N["s2_mother"], role="ig-officer", org=IG_ORG).status == 403


def test_the_view_validates_as_fhir(world):
    from fhir.resources.R4B.bundle import Bundle

    for v in (ask(world, N["s2_infant"], "safeguarding", justification=JUSTIFICATION), ask(world, N["s1_infant"]), ask(world, N["s7_mother"])):
        Bundle.model_validate(v.body)


def test_relationship_codes_are_as_recorded(world):
    v = ask(world, N["s2_infant"])
    (prov,) = exts(v.people()["father"][0], contract.EXT_RELATIONSHIP_PROVENANCE)
    assert sub(prov, "relationship")["system"] == ROLE
