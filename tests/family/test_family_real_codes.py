"""Families coded the way GP systems code them (issue 14), not with the scenarios' hand-picked
codes: SNOMED CT from the NHS and OpenCodelists lists, dm+d medicines, local codes with free
text. Each family is asked for by a health visitor for direct care, for safeguarding with a
justification, and by the MASH breaking the glass; no response ever carries a withheld code,
display, text or category word."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.demo.scenarios import (
    ACT_REASON, GP_FAMILY, GP_FATHERS, HEALTH_VISITING, IG_ORG, MASH_ORG, MATERNITY, PARTICIPATION, SCT,
    _bundle, _condition, _consent, _entry, _episode, _nhs_ref, _org_ref, _patient, _related,  # the demo's own builders
)
from tests.family.test_family_scenarios import item_details as items
from tests.fhirdata import nhs_numbers

_NHS = nhs_numbers(700_000)  # a block of its own: the demo's scenarios use 9990001103 and up


def next_nhs() -> str:
    return next(_NHS)

NHS = "https://fhir.nhs.uk/Id/nhs-number"
DMD = "https://dmd.nhs.uk"
FV = "https://familyview.example.nhs.uk/fhir"
ROLE_EXT = f"{FV}/StructureDefinition/family-role"
JUSTIFICATION = "Baby has an unexplained bruise; father's drug use reported by a neighbour"
TODAY = date.today()
RECORD_TYPES = ("Flag", "Condition", "Observation", "MedicationStatement", "MedicationRequest")
# words that would tell a requester what kind of record was withheld
CATEGORY_WORDS = ("substance", "misuse", "mental", "psych", "opioid", "methadone", "drug", "alcohol", "depress",
                  "sertraline", "schizo", "unclassified", "sensitive", '"ETH"', '"SUD"', '"PSY"')

# codes copied from ../shared/codelists (each is in the list named)
OPIOID_DEPENDENCE = ("75544000", "Opioid dependence")  # substance-misuse.csv
METHADONE = ("36120711000001104", "Methadone 1mg/ml oral solution")  # medicines/opioid-substitution.csv (dm+d)
PSYCHOSIS = ("5464005", "Brief reactive psychosis")  # mental-health.csv, NHS MH_COD
DEPRESSION = ("35489007", "Depressive disorder")  # mental-health.csv, NHS DEPR_COD
SERTRALINE = ("321959007", "Sertraline 50mg tablets")  # medicines/antidepressants.csv (dm+d)
LOCAL_DRUG_SERVICE = "Known to community drug and alcohol team"


def _medication(src, key: str, subject: dict, system: str, code: str, display: str, kind: str = "MedicationStatement") -> dict:
    resource = {
        "resourceType": kind,
        "identifier": [{"system": src.local_system, "value": key}],
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": subject,
    }
    if kind == "MedicationStatement":
        resource["effectiveDateTime"] = str(TODAY - timedelta(days=40))
    else:
        resource["intent"] = "order"
        resource["authoredOn"] = str(TODAY - timedelta(days=40))
    return resource


def _text_only(src, key: str, subject: dict, text: str) -> dict:
    """A GP's free-text record: a practice-local code and the words the GP typed."""
    return {
        "resourceType": "Condition",
        "identifier": [{"system": src.local_system, "value": key}],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "https://hill-street.example.nhs.uk/codes", "code": "LOC123"}], "text": text},
        "subject": subject,
        "recordedDate": str(TODAY - timedelta(days=90)),
    }


def _hv_permit(nested_deny: str | None = None) -> dict:
    """His Consent, recorded by his GP: health visiting may see his records for direct care. No
    data named: in R4 that covers every category; a nested deny carves out what it names."""
    provision = {
        "type": "permit",
        "period": {"start": str(TODAY - timedelta(days=30))},
        "actor": [{"role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]}, "reference": _org_ref(HEALTH_VISITING.org)}],
        "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
    }
    if nested_deny:
        provision["provision"] = [{"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": nested_deny}]}]
    return provision


class Family:
    """One synthetic family posted as its sources would: maternity (infant, mother, the man),
    health visiting (episode of care: the health visitor's legitimate relationship), GPs."""

    def __init__(self, key: str, man_role: str = "FTH"):
        # every family its own people: names, birth dates, homes and record keys (families that
        # share them all would be taken by linkage for one family keyed twice)
        n = len(key) * 7 + sum(map(ord, key))
        surname, mother, man = key.capitalize(), f"Hannah{key[:2]}", f"Marcus{key[:2]}"
        postcode, line = f"LS{n % 20 + 1} {n % 9 + 1}QQ", f"{n % 90 + 1} {key.capitalize()} Lane"
        man_birth, mother_birth = f"19{80 + n % 15}-0{n % 9 + 1}-1{n % 9}", f"19{90 + n % 8}-1{n % 3}-2{n % 8}"
        self.key = key
        self.infant, self.mother, self.man = next_nhs(), next_nhs(), next_nhs()
        self.man_role = man_role
        self.bundles: list = []
        home = {"postcode": postcode, "line": line}
        inf = _entry(_patient(MATERNITY, f"{key}-infant", surname, "Ivy", "female", TODAY - timedelta(days=40 + n % 200), nhs=self.infant, gp=GP_FAMILY.org, **home))
        mum = _entry(_patient(MATERNITY, f"{key}-mother", surname, mother, "female", mother_birth, nhs=self.mother, gp=GP_FAMILY.org, **home))
        mth = _entry(_related(MATERNITY, f"{key}-rp-mother", {"reference": inf["fullUrl"]}, "MTH", surname, mother, "female", mother_birth, nhs=self.mother, **home))
        entries = [inf, mum, mth]
        if man_role == "FTH":  # the midwife records the father on the baby
            entries.append(_entry(_related(MATERNITY, f"{key}-rp-man", {"reference": inf["fullUrl"]}, "FTH", surname, man, "male", man_birth, nhs=self.man, **home)))
        self.bundles.append((MATERNITY, _bundle(*entries)))
        hv = [_entry(_episode(HEALTH_VISITING, f"{key}-hv-episode", _nhs_ref(self.infant), TODAY - timedelta(days=30), "Health visiting"))]
        if man_role == "DOMPART":  # the health visitor records the mother's partner living with them
            hv.append(_entry(_related(HEALTH_VISITING, f"{key}-rp-man", _nhs_ref(self.mother), "DOMPART", "Stone", man, "male", man_birth, nhs=self.man, **home)))
        self.bundles.append((HEALTH_VISITING, _bundle(*hv)))
        family = surname if man_role == "FTH" else "Stone"
        self.man_patient = _entry(_patient(GP_FATHERS, f"{key}-man", family, man, "male", man_birth, nhs=self.man, gp=GP_FATHERS.org, **home))
        self.man_ref = {"reference": self.man_patient["fullUrl"]}
        self.gp_entries = [self.man_patient]
        self.late: list = []  # bundles sent after the GP's

    def gp(self, resource: dict) -> "Family":
        self.gp_entries.append(_entry(resource))
        return self

    def load(self, world) -> "Family":
        for src, bundle in self.bundles + [(GP_FATHERS, _bundle(*self.gp_entries))] + self.late:
            r = world.source(src.org, src.service).post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, r.text
        return self


class Answer:
    def __init__(self, response):
        self.r = response
        self.status = response.status_code
        self.body = response.json()
        self.entries = [e["resource"] for e in self.body.get("entry", [])]

    def role(self, resource: dict) -> str | None:
        return next((e["valueCode"] for e in resource.get("extension", []) if e["url"] == ROLE_EXT), None)

    def codes(self) -> set[str]:
        out = set()
        for r in self.entries:
            if r["resourceType"] in RECORD_TYPES:
                concept = r.get("code") or r.get("medicationCodeableConcept") or {}
                out |= {c["code"] for c in concept.get("coding", [])}
        return out

    def texts(self) -> set[str]:
        return {(r.get("code") or {}).get("text") for r in self.entries if r["resourceType"] in RECORD_TYPES} - {None}

    def withheld(self) -> list[dict]:
        (oo,) = [r for r in self.entries if r["resourceType"] == "OperationOutcome"]
        return [i for i in oo["issue"] if i["code"] == "suppressed" and i["details"]["text"].startswith("A confidential record")]

    def audit(self, world) -> dict:
        r = world.client("ig-officer", IG_ORG).get("/" + self.r.headers["x-audit-event"])
        assert r.status_code == 200
        return r.json()


def ask(world, family: Family, purpose: str = "direct-care", *, role: str = "health-visitor", org: str = HEALTH_VISITING.org) -> Answer:
    params = {"identifier": f"{NHS}|{family.infant}", "purpose": purpose}
    if purpose == "safeguarding":
        params["justification"] = JUSTIFICATION
    return Answer(world.client(role, org).get("/Patient/$family-view", params=params))


def review_required(event: dict) -> bool:
    return next(e["valueBoolean"] for e in event["extension"] if e["url"].endswith("audit-ig-review-required"))


def says_nothing_of(answer: Answer, *withheld: tuple[str, str] | str, words: tuple[str, ...] = CATEGORY_WORDS) -> None:
    """No withheld code, display or text, and no category word, anywhere in the response (where
    records of some category are disclosed, ``words`` are those of the withheld ones)."""
    text = answer.r.text
    for thing in withheld:
        for part in (thing if isinstance(thing, tuple) else (thing,)):
            assert part not in text, (part, _around(text, part))
    for issue in answer.withheld():  # a withheld record's issue names no data category at all
        assert not any(c["system"].endswith("data-category") for c in issue["details"]["coding"])
    lowered = text.lower()
    for word in words:
        assert word.lower() not in lowered, (word, _around(lowered, word.lower()))


def _around(text: str, part: str) -> str:
    at = text.find(part)
    return text[max(0, at - 200):at + 60]


def notified(world, event_id: str) -> list[dict]:
    gp = world.source(GP_FATHERS.org, GP_FATHERS.service)
    comms = gp.get("/Communication", params={"_count": 200}).json()
    return [e["resource"] for e in comms.get("entry", []) if any(a["reference"] == f"AuditEvent/{event_id}" for a in e["resource"]["about"])]


@pytest.fixture(scope="module")
def families(world):
    opioid = Family("kestrel")
    opioid.gp(_condition(GP_FATHERS, "kestrel-dx", opioid.man_ref, SCT, *OPIOID_DEPENDENCE, TODAY - timedelta(days=300)))
    opioid.gp(_medication(GP_FATHERS, "kestrel-methadone", opioid.man_ref, DMD, *METHADONE))
    psychosis = Family("otterburn", man_role="DOMPART")
    psychosis.gp(_condition(GP_FATHERS, "otterburn-dx", psychosis.man_ref, SCT, *PSYCHOSIS, TODAY - timedelta(days=200)))
    local = Family("heronsgate")
    local.gp(_text_only(GP_FATHERS, "heronsgate-drugs", local.man_ref, LOCAL_DRUG_SERVICE))
    blanket = Family("badgerfield")
    blanket.gp(_condition(GP_FATHERS, "badgerfield-dep", blanket.man_ref, SCT, *DEPRESSION, TODAY - timedelta(days=100)))
    blanket.gp(_condition(GP_FATHERS, "badgerfield-opioid", blanket.man_ref, SCT, *OPIOID_DEPENDENCE, TODAY - timedelta(days=100)))
    blanket.gp(_medication(GP_FATHERS, "badgerfield-ssri", blanket.man_ref, SCT, *SERTRALINE, kind="MedicationRequest"))
    blanket.gp(_consent(GP_FATHERS, "badgerfield-consent", blanket.man_ref, _hv_permit(), TODAY - timedelta(days=30)))
    nested = Family("martindale")
    nested.gp(_condition(GP_FATHERS, "martindale-dep", nested.man_ref, SCT, *DEPRESSION, TODAY - timedelta(days=100)))
    nested.gp(_condition(GP_FATHERS, "martindale-opioid", nested.man_ref, SCT, *OPIOID_DEPENDENCE, TODAY - timedelta(days=100)))
    nested.gp(_medication(GP_FATHERS, "martindale-methadone", nested.man_ref, DMD, *METHADONE))
    nested.gp(_consent(GP_FATHERS, "martindale-consent", nested.man_ref, _hv_permit(nested_deny="ETH"), TODAY - timedelta(days=30)))
    refused = Family("ploverton")
    refused.gp(_condition(GP_FATHERS, "ploverton-dep", refused.man_ref, SCT, *DEPRESSION, TODAY - timedelta(days=100)))
    refused.gp(_consent(GP_FATHERS, "ploverton-refusal", refused.man_ref,
                        {"type": "deny", "period": {"start": str(TODAY - timedelta(days=60))}}, TODAY - timedelta(days=60), policy_rule="OPTOUT"))
    # the maternity system later records a permit for him: it holds his RelatedPerson, not his GP record
    refused.late.append((MATERNITY, _bundle(_entry(_consent(
        MATERNITY, "ploverton-maternity-permit", {"identifier": {"system": NHS, "value": refused.man}}, _hv_permit(), TODAY - timedelta(days=5))))))
    for f in (opioid, psychosis, local, blanket, nested, refused):
        f.load(world)
    return {"opioid": opioid, "psychosis": psychosis, "local": local, "blanket": blanket, "nested": nested, "refused": refused}


@pytest.mark.parametrize("key, withheld", [
    ("opioid", [OPIOID_DEPENDENCE, METHADONE]),
    ("psychosis", [PSYCHOSIS]),
    ("local", [("LOC123", LOCAL_DRUG_SERVICE)]),
])
def test_without_consent_direct_care_withholds_and_safeguarding_discloses(world, families, key, withheld):
    family = families[key]
    care = ask(world, family)
    assert care.status == 200
    man_role = "father" if family.man_role == "FTH" else "male-carer"
    assert any(care.role(r) == man_role and r["resourceType"] == "Patient" for r in care.entries)
    assert not ({code for code, _ in withheld} & care.codes())
    assert len(care.withheld()) == len(withheld)
    for issue in care.withheld():
        assert issue["details"]["text"] == f"A confidential record about the {man_role.replace('-', ' ')}, held by {GP_FATHERS.name} (ODS {GP_FATHERS.org}), was withheld"
        assert "safeguarding request" in issue["diagnostics"]
    says_nothing_of(care, *withheld)
    event = care.audit(world)
    decided = [i for i in items(event) if i["what"].split("/")[0] in RECORD_TYPES]
    assert len(decided) == len(withheld) and all(i["disclosed"] == "false" for i in decided)
    assert {i["category"] for i in decided} <= {"substance-misuse", "mental-health", "unclassified"}

    for answer in (ask(world, family, "safeguarding"),
                   ask(world, family, "safeguarding", role="mash", org=MASH_ORG)):
        assert answer.status == 200 and answer.withheld() == []
        assert {code for code, _ in withheld} <= answer.codes()
        event = answer.audit(world)
        assert review_required(event)
        disclosed = [i for i in items(event) if i["what"].split("/")[0] in RECORD_TYPES]
        assert disclosed and all(i["disclosed"] == "true" and "Sch 1 para 18" in i["lawful-basis"] for i in disclosed)
        (notice,) = notified(world, event["id"])
        assert notice["recipient"][0]["identifier"]["value"] == GP_FATHERS.org
        for code, display in withheld:
            assert display not in str(notice["payload"])


def test_the_real_codes_are_classified_as_the_lists_say(world, families):
    """Opioid dependence and methadone are substance misuse; the MH_COD psychosis code is mental
    health; the free-text drug-service record is placed by the term list (or, had it not been,
    would be unclassified: withheld all the same)."""
    by_key = {}
    for key in ("opioid", "psychosis", "local"):
        event = ask(world, families[key]).audit(world)
        by_key[key] = sorted(i["category"] for i in items(event) if i["what"].split("/")[0] in RECORD_TYPES)
    assert by_key["opioid"] == ["substance-misuse", "substance-misuse"]
    assert by_key["psychosis"] == ["mental-health"]
    assert by_key["local"] in (["substance-misuse"], ["unclassified"])


def test_a_blanket_consent_shows_every_category_for_direct_care(world, families):
    care = ask(world, families["blanket"])
    assert care.status == 200
    assert {DEPRESSION[0], OPIOID_DEPENDENCE[0], SERTRALINE[0]} <= care.codes()
    assert care.withheld() == []
    relied = [i for i in items(care.audit(world)) if i["what"].split("/")[0] in RECORD_TYPES]
    assert relied and all("consent-relied-on" in i for i in relied)
    # his Consent names health visiting: the infant's GP practice still sees none of it
    gp = ask(world, families["blanket"], role="gp", org=GP_FAMILY.org)
    assert not ({DEPRESSION[0], OPIOID_DEPENDENCE[0], SERTRALINE[0]} & gp.codes()) and len(gp.withheld()) == 3
    says_nothing_of(gp, DEPRESSION, OPIOID_DEPENDENCE, SERTRALINE)
    for answer in (ask(world, families["blanket"], "safeguarding", role="gp", org=GP_FAMILY.org),
                   ask(world, families["blanket"], "safeguarding", role="mash", org=MASH_ORG)):
        assert {DEPRESSION[0], OPIOID_DEPENDENCE[0], SERTRALINE[0]} <= answer.codes() and answer.withheld() == []
        assert review_required(answer.audit(world))


def test_a_nested_deny_withholds_only_what_it_names(world, families):
    care = ask(world, families["nested"])
    assert DEPRESSION[0] in care.codes()
    assert not ({OPIOID_DEPENDENCE[0], METHADONE[0]} & care.codes()) and len(care.withheld()) == 2
    says_nothing_of(care, OPIOID_DEPENDENCE, METHADONE, words=("substance", "misuse", "opioid", "methadone", "drug", '"ETH"', '"SUD"'))
    withheld = [i for i in items(care.audit(world)) if i["disclosed"] == "false" and i["what"].split("/")[0] in RECORD_TYPES]
    assert {i["reason"] for i in withheld} == {"consent-refused"}
    for s in (ask(world, families["nested"], "safeguarding"), ask(world, families["nested"], "safeguarding", role="mash", org=MASH_ORG)):
        assert {DEPRESSION[0], OPIOID_DEPENDENCE[0], METHADONE[0]} <= s.codes() and s.withheld() == []


def test_a_permit_from_another_organisation_does_not_override_the_gp_recorded_refusal(world, families):
    family = families["refused"]
    care = ask(world, family)
    assert care.status == 200
    father = next(r for r in care.entries if care.role(r) == "father")
    assert "telecom" not in father and "address" not in father  # his refusal, recorded by his GP, holds
    assert DEPRESSION[0] not in care.codes() and len(care.withheld()) == 1
    says_nothing_of(care, DEPRESSION)
    event = care.audit(world)
    assert review_required(event)  # the two organisations' Consents disagree: an IG officer looks
    contact = next(i for i in items(event) if i["what"].endswith("#contact") and i["category"] == "contact" and i["subject"] == f"Patient/{father['id']}")
    assert contact["disclosed"] == "false" and contact["reason"] == "consent-refused"
    for s in (ask(world, family, "safeguarding"), ask(world, family, "safeguarding", role="mash", org=MASH_ORG)):
        assert DEPRESSION[0] in s.codes()
        dep = next(i for i in items(s.audit(world)) if i["what"].startswith("Condition/"))
        assert "consent-overridden" in dep and "(deny)" in dep["consent-overridden"]


def test_a_record_stored_before_its_code_was_listed_is_decided_as_the_lists_now_read_it(world, families):
    """A Condition stamped at ingest with no labels (as under an older list, which lacked its
    code): the view reads it with the lists in force, so it is withheld as substance misuse,
    not shown as an ordinary record."""
    import json

    from sqlalchemy import create_engine, text

    family = Family("sandpiper")
    family.gp(_condition(GP_FATHERS, "sandpiper-dx", family.man_ref, SCT, *OPIOID_DEPENDENCE, TODAY - timedelta(days=30)))
    family.load(world)
    gp = world.source(GP_FATHERS.org, GP_FATHERS.service)
    stored = gp.get("/Condition", params={"identifier": f"{GP_FATHERS.local_system}|sandpiper-dx"}).json()["entry"][0]["resource"]
    assert any(c["code"] == "substance-misuse" for c in stored["meta"]["security"])
    engine = create_engine(world.settings.database_url)
    try:
        with engine.begin() as c:  # as it would have been stored before the list had the code
            body = json.loads(c.execute(text("SELECT body FROM resource WHERE res_type = 'Condition' AND res_id = :i"), {"i": stored["id"]}).scalar())
            body["meta"].pop("security")
            c.execute(text("UPDATE resource SET body = :b WHERE res_type = 'Condition' AND res_id = :i"), {"b": json.dumps(body), "i": stored["id"]})
    finally:
        engine.dispose()
    care = ask(world, family, role="gp", org=GP_FAMILY.org)  # a GP with a relationship, who holds no record of his
    assert care.status == 200 and OPIOID_DEPENDENCE[0] not in care.codes() and len(care.withheld()) == 1
    decided = next(i for i in items(care.audit(world)) if i["what"] == f"Condition/{stored['id']}")
    assert decided["category"] == "substance-misuse" and decided["disclosed"] == "false"
