"""Issue 17 items 2 and 3 after DESIGN.md scenarios 2, 4 and 5: the review queue of
safeguarding overrides and break-glass views (oldest first, overdue, the review lifecycle,
each review audited and shown on the event it reviews), and the subject access report of
every disclosure of a person, reached through another record of the same person (the
midwife's or health visitor's RelatedPerson of a father whose views named his GP record),
as a FHIR Bundle and as CSV. The IG role stays refused clinical records and the view.

The module shares one world (demo families loaded) and runs in order: views, then the
queue, then reviews, then the reports."""
from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from app.demo.scenarios import GP_FATHERS, HEALTH_VISITING, IG_ORG, MASH_ORG, MATERNITY, N
from app.ig.disclosure import CSV_COLUMNS
from tests.family.test_family_scenarios import JUSTIFICATION, view

NHS = "https://fhir.nhs.uk/Id/nhs-number"
CATEGORY = {"s2": "substance-misuse", "s4": "domestic-abuse", "s5": "mental-health"}
RELATED = {"s2": "s2-rp-father", "s4": "s4-rp-partner", "s5": "s5-rp-father"}
RELATED_SOURCE = {"s2": MATERNITY, "s4": HEALTH_VISITING, "s5": MATERNITY}
JSON = {"Content-Type": "application/json"}


def root(world, role: str = "ig-officer", org: str = IG_ORG, service: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=world.base_url, headers={"Authorization": f"Bearer {world.token(role, org, service)}"}, timeout=30)


def _event_id(v) -> str:
    return v.r.headers["x-audit-event"].split("/", 1)[1]


@pytest.fixture(scope="module")
def views(world):
    """Direct-care then safeguarding views of scenarios 2, 4 and 5 by the health visitor, and a
    break-glass view of scenario 2 by the MASH; the queue is read before any of them."""
    assert root(world).get("/ig/reviews").json()["total"] == 0
    out = {}
    for s in ("s2", "s4", "s5"):
        direct = view(world, f"{s}_infant")
        guard = view(world, f"{s}_infant", "safeguarding", justification=JUSTIFICATION)
        assert direct.status == 200 and guard.status == 200
        out[s] = (_event_id(direct), _event_id(guard))
    btg = view(world, "s2_infant", "safeguarding", role="mash", org=MASH_ORG, justification=JUSTIFICATION)
    assert btg.status == 200
    out["btg"] = _event_id(btg)
    return out


def _related_id(world, s: str) -> str:
    src = RELATED_SOURCE[s]
    found = world.source(src.org, src.service).get("/RelatedPerson", params={"identifier": f"{src.local_system}|{RELATED[s]}"}).json()
    return found["entry"][0]["resource"]["id"]


def test_the_queue_lists_overrides_and_break_glass_oldest_first(world, views):
    r = root(world).get("/ig/reviews")
    assert r.status_code == 200, r.text
    body = r.json()
    queued = [i["event"].split("/", 1)[1] for i in body["items"]]
    expected = [views[s][1] for s in ("s2", "s4", "s5")] + [views["btg"]]
    assert queued == expected and body["total"] == 4 and body["overdueAfterDays"] == 7
    assert [i["reason"] for i in body["items"]] == ["safeguarding-override"] * 3 + ["break-glass"]
    assert body["items"][3]["purposeOfUse"] == "BTG" and body["items"][0]["agentOrganization"] == HEALTH_VISITING.org
    assert not any(i["overdue"] for i in body["items"])
    assert root(world).get("/ig/reviews", params={"overdue": "true"}).json()["total"] == 0
    world.app.state.settings.ig_review_overdue_days = 0  # configurable: after 0 days everything is overdue
    try:
        late = root(world).get("/ig/reviews", params={"overdue": "true"}).json()
        assert late["total"] == 4 and all(i["overdue"] for i in late["items"])
    finally:
        world.app.state.settings.ig_review_overdue_days = 7
    assert root(world).get("/ig/reviews", params={"overdue": "soon"}).status_code == 400
    assert root(world).get("/ig/reviews", params={"colour": "red"}).status_code == 400


@pytest.mark.parametrize("body,status", [
    ({"outcome": "fine", "note": "x"}, 400),
    ({"outcome": "appropriate"}, 400),
    ({"outcome": "appropriate", "note": "   "}, 400),
    ({"outcome": 3, "note": "x"}, 400),
    ("not an object", 400),
])
def test_a_bad_review_is_refused_and_writes_nothing(world, views, body, status):
    ig = root(world)
    r = ig.post(f"/ig/reviews/{views['s4'][1]}", content=json.dumps(body), headers=JSON)
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"
    assert ig.get(f"/fhir/AuditEvent?subtype=ig-review&entity=AuditEvent/{views['s4'][1]}").json()["total"] == 0


def test_reviewing_what_is_not_queued_is_refused(world, views):
    ig = root(world)
    good = json.dumps({"outcome": "appropriate", "note": "checked"})
    assert ig.post("/ig/reviews/no-such-event", content=good, headers=JSON).status_code == 404
    assert ig.post(f"/ig/reviews/{views['s2'][0]}", content=good, headers=JSON).status_code == 409  # a direct-care view
    assert ig.post(f"/ig/reviews/{views['s2'][1]}", content=good, headers={"Content-Type": "text/plain"}).status_code == 415


def test_the_review_lifecycle_is_audited_and_shown_on_the_event(world, views):
    ig = root(world)
    event = views["s2"][1]
    r = ig.post(f"/ig/reviews/{event}", content=json.dumps({"outcome": "needs-follow-up", "note": "asked the HV for the visit notes"}), headers=JSON)
    assert r.status_code == 201, r.text
    queue = ig.get("/ig/reviews").json()
    still = next(i for i in queue["items"] if i["event"] == f"AuditEvent/{event}")
    assert still["lastReview"]["outcome"] == "needs-follow-up"
    r = ig.post(f"/ig/reviews/{event}", content=json.dumps({"outcome": "appropriate", "note": "bruising documented; referral made"}), headers=JSON)
    assert r.status_code == 201
    review_event = r.json()["reviewEvent"]
    assert f"AuditEvent/{event}" not in {i["event"] for i in ig.get("/ig/reviews").json()["items"]}
    again = ig.post(f"/ig/reviews/{event}", content=json.dumps({"outcome": "inappropriate", "note": "x"}), headers=JSON)
    assert again.status_code == 409
    # shown on the event it reviews
    shown = ig.get(f"/fhir/AuditEvent/{event}").json()
    ext = next(e for e in shown["extension"] if e["url"].endswith("audit-ig-review"))
    parts = {x["url"]: x for x in ext["extension"]}
    assert parts["outcome"]["valueCode"] == "appropriate" and parts["reviewer"]["valueString"] == f"ig-officer@{IG_ORG}"
    assert parts["reviewEvent"]["valueReference"]["reference"] == review_event
    # each review is itself an AuditEvent on the chain, found by the event it reviews
    reviews = ig.get("/fhir/AuditEvent", params={"subtype": "ig-review", "entity": f"AuditEvent/{event}"}).json()
    assert reviews["total"] == 2
    assert f"AuditEvent/{reviews['entry'][0]['resource']['id']}" == review_event


def _report(world, s: str, **params) -> httpx.Response:
    return root(world).get(f"/fhir/RelatedPerson/{_related_id(world, s)}/$disclosure-report", params=params)


def _summary(event: dict) -> dict:
    ext = next(e for e in event["extension"] if e["url"].endswith("disclosure-summary"))
    return {x["url"]: next(v for k, v in x.items() if k.startswith("value")) for x in ext["extension"]}


def _details(event: dict, kind: str) -> set[str]:
    return {d["valueString"] for e in event["entity"] for d in e.get("detail", []) if d["type"] == kind}


@pytest.mark.parametrize("s", ["s2", "s4", "s5"])
def test_the_disclosure_report_through_another_record_of_the_person(world, views, s):
    r = _report(world, s)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    direct, guard = by_id[views[s][0]], by_id[views[s][1]]
    category = CATEGORY[s]
    # direct care: the record was withheld; no override
    assert category in _details(direct, "category-withheld") and category not in _details(direct, "category-disclosed")
    assert _summary(direct)["override"] is False and _summary(direct)["review-status"] == "not-required"
    org = direct["agent"][1]["who"]
    assert org["identifier"]["value"] == HEALTH_VISITING.org and org["display"] == HEALTH_VISITING.name
    assert direct["agent"][0]["who"]["identifier"]["value"] == f"health-visitor@{HEALTH_VISITING.org}"
    assert direct["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    # safeguarding: disclosed, on the safeguarding basis, an override awaiting (or past) review
    assert category in _details(guard, "category-disclosed")
    assert any("Sch 1 para 18" in b for b in _details(guard, "lawful-basis"))
    assert guard["purposeOfEvent"][0]["coding"][0]["code"] == "THREAT" and _summary(guard)["override"] is True
    assert _summary(guard)["review-status"] == ("appropriate" if s == "s2" else "awaiting-review")
    if s == "s5":  # he refused: the report says his refusal was overridden
        assert _summary(guard)["consent-overridden"] is True
    if s == "s2":  # and the MASH's break-glass view
        assert by_id[views["btg"]]["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    # only this person's: no other family member's record, no justification text
    assert JUSTIFICATION not in r.text
    assert N[f"{s}_mother"] not in r.text and N[f"{s}_infant"] not in r.text


def test_the_report_by_nhs_number_and_as_csv(world, views):
    ig = root(world)
    by_nhs = ig.get("/fhir/Patient/$disclosure-report", params={"identifier": f"{NHS}|{N['s5_father']}"})
    assert by_nhs.status_code == 200
    ids = {e["resource"]["id"] for e in by_nhs.json()["entry"]}
    assert set(views["s5"]) <= ids
    rp = _related_id(world, "s5")  # (the midwife's system searching its own record is on the report too)
    ids = {e["resource"]["id"] for e in ig.get(f"/fhir/RelatedPerson/{rp}/$disclosure-report").json()["entry"]}
    for how in ({"params": {"_format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        r = ig.get(f"/fhir/RelatedPerson/{rp}/$disclosure-report", **how)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert tuple(rows[0].keys()) == CSV_COLUMNS and {row["audit_event"].split("/", 1)[1] for row in rows} == ids
        guard = next(row for row in rows if row["audit_event"] == f"AuditEvent/{views['s5'][1]}")
        assert guard["recipient_organisation"] == HEALTH_VISITING.name and guard["consent_overridden"] == "yes"
        assert "mental-health" in guard["categories_disclosed"] and guard["review_status"] == "awaiting review"
    # the report itself is audited, as an access to the person's audit
    assert ig.get("/fhir/AuditEvent", params={"subtype": "disclosure-report", "patient": f"{NHS}|{N['s5_father']}"}).json()["total"] >= 3
    for bad, status in ((f"{NHS}|1234567890", 422), ("https://example.org/id|x", 400)):
        r = ig.get("/fhir/Patient/$disclosure-report", params={"identifier": bad})
        assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"
    assert ig.get("/fhir/Patient/$disclosure-report").status_code == 400
    assert ig.get("/fhir/Patient/no-such-patient/$disclosure-report").status_code == 404
    assert ig.get("/fhir/Condition/x/$disclosure-report").status_code == 404


def test_the_ig_role_is_refused_clinical_data_and_others_are_refused_ig_work(world, views):
    ig = root(world)
    for path in ("/fhir/Condition", "/fhir/Flag", f"/fhir/Patient?identifier={NHS}|{N['s2_father']}",
                 f"/fhir/Patient/$family-view?identifier={NHS}|{N['s2_infant']}&purpose=direct-care"):
        r = ig.get(path)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden", path
    hv = root(world, "health-visitor", HEALTH_VISITING.org)
    gp = root(world, "source-system", GP_FATHERS.org, GP_FATHERS.service)
    for client in (hv, gp):
        assert client.get("/ig/reviews").status_code == 403
        assert client.post(f"/ig/reviews/{views['s4'][1]}", content=json.dumps({"outcome": "appropriate", "note": "x"}), headers=JSON).status_code == 403
        assert client.get(f"/fhir/Patient/$disclosure-report?identifier={NHS}|{N['s5_father']}").status_code == 403
