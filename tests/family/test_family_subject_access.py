"""Finding 12 (session s6/view): the audit of a disclosure names every record of a member that
the entry drew on, so that subject access by any of a person's records (UK GDPR Art 15(1)(c))
finds it: the maternity RelatedPerson "Jon Smyth" whose identifier was merged into the
scenario 2 father's entry, found by `patient=` and by `entity=`, with the decision made.

The demo families are shared by every test in this module (one server per backend); these
tests only read."""
from __future__ import annotations

from app.demo.scenarios import IG_ORG, MATERNITY
from tests.family.test_family_scenarios import JUSTIFICATION, view


def _rp_id(world, key: str) -> str:
    found = world.source(MATERNITY.org, MATERNITY.service).get("/RelatedPerson", params={"identifier": f"{MATERNITY.local_system}|{key}"}).json()
    return found["entry"][0]["resource"]["id"]


def _found_by(world, param: str, value: str) -> set[str]:
    r = world.client("ig-officer", IG_ORG).get("/AuditEvent", params={param: value, "_count": 100})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def _entities(event: dict, reference: str) -> list[dict[str, str]]:
    return [{d["type"]: d["valueString"] for d in e.get("detail", [])} for e in event["entity"]
            if (e.get("what") or {}).get("reference") == reference]


def test_subject_access_by_the_maternity_record_finds_the_disclosure_of_the_linked_father(world):
    rp = f"RelatedPerson/{_rp_id(world, 's2-rp-father')}"
    v = view(world, "s2_infant")
    assert v.status == 200
    father = v.people()["father"][0]
    assert father["resourceType"] == "Patient" and "s2-rp-father" in {i["value"] for i in father["identifier"]}
    event_id = v.r.headers["x-audit-event"].split("/", 1)[1]
    assert event_id in _found_by(world, "patient", rp)
    assert event_id in _found_by(world, "entity", rp)
    event = v.audit()
    named = _entities(event, rp)
    person = [d for d in named if d.get("family-role")]
    assert person and person[0]["family-role"] == "father"
    identity = [d for d in named if d.get("category") == "identity"]
    assert len(identity) == 1 and identity[0]["disclosed"] == "true" and identity[0]["subject"] == f"Patient/{father['id']}"


def test_the_midwifes_record_of_a_mobile_is_named_as_shown_or_withheld(world):
    """Scenario 1: the father's mobile came from the midwife's record and is shown: the audit
    names that record's contact as disclosed. Scenario 5 (refused): it names it as withheld,
    and subject access by the midwife's record finds the refusal too."""
    rp1 = f"RelatedPerson/{_rp_id(world, 's1-rp-father')}"
    v = view(world, "s1_infant")
    contact = [d for d in _entities(v.audit(), rp1 + "#contact") if d.get("category") == "contact"]
    assert len(contact) == 1 and contact[0]["disclosed"] == "true"

    rp5 = f"RelatedPerson/{_rp_id(world, 's5-rp-father')}"
    w = view(world, "s5_infant")
    assert w.status == 200 and "07700 900505" not in w.r.text
    contact = [d for d in _entities(w.audit(), rp5 + "#contact") if d.get("category") == "contact"]
    assert len(contact) == 1 and contact[0]["disclosed"] == "false"
    assert w.r.headers["x-audit-event"].split("/", 1)[1] in _found_by(world, "entity", rp5)

    s = view(world, "s5_infant", "safeguarding", justification=JUSTIFICATION)
    contact = [d for d in _entities(s.audit(), rp5 + "#contact") if d.get("category") == "contact"]
    assert len(contact) == 1 and contact[0]["disclosed"] == "true"
