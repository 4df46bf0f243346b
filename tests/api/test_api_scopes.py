"""Finding 3 of issue 18: roles that never see clinical data hold whatever a token's scope
says, and `$family-view` needs SMART scopes that cover everything it can disclose."""
from __future__ import annotations

from datetime import date, timedelta

import httpx
import pytest

from app.auth import access
from app.family.graph import RECORD_TYPES
from tests.conftest import GP_ORG, MATERNITY_ORG
from tests.fhirdata import nhs_numbers, patient

CT = {"Content-Type": "application/fhir+json"}
_NHS = nhs_numbers(750_000)


def _infant_with_a_condition(live) -> tuple[str, str, str]:
    """An infant posted by maternity (registered with GP_ORG), and a Condition about her posted by her GP."""
    nhs = next(_NHS)
    birth = (date.today() - timedelta(days=40)).isoformat()
    r = live.source(MATERNITY_ORG, "maternity").post("/Patient", json=patient("Scopewell", "Iris", nhs=nhs, birth=birth,
                                                                  generalPractitioner=[{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": GP_ORG}}]), headers=CT)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    gp = live.source(GP_ORG, "general-practice")
    cond = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "66590003"}]}}
    r = gp.post("/Condition", json=cond, headers=CT)
    assert r.status_code == 201, r.text
    return pid, nhs, r.json()["id"]


@pytest.mark.parametrize("role", ["ig-officer", "admin"])
def test_never_roles_are_refused_clinical_records_whatever_the_scope(live, role):
    pid, nhs, cid = _infant_with_a_condition(live)
    for scope in ("user/*.rs", "system/*.cruds", "user/Condition.rs user/Flag.rs"):
        c = live.client(role, "X26", scope=scope)
        for resp in (c.get(f"/Condition/{cid}"), c.get("/Condition"), c.get("/Flag"),
                     c.get(f"/Condition/{cid}/_history"), c.get(f"/Condition/{cid}/_history/1"),
                     c.post("/Condition/_search", content="", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                     c.get("/Patient/$family-view", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "direct-care"})):
            assert resp.status_code == 403, (scope, resp.request.url, resp.text)
            assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "ACCESS_DENIED"
            assert "66590003" not in resp.text
        r = c.post("", json={"resourceType": "Bundle", "type": "batch",
                             "entry": [{"request": {"method": "GET", "url": f"Condition/{cid}"}},
                                       {"request": {"method": "GET", "url": f"Condition?subject=Patient/{pid}"}}]}, headers=CT)
        assert r.status_code == 200 and all(e["response"]["status"].startswith("403") for e in r.json()["entry"]), r.text
        assert "66590003" not in r.text


@pytest.mark.parametrize("scope", ["openid", "user/Flag.r", "user/Patient.rs user/RelatedPerson.rs", "patient/*.rs", "openid fhirUser"])
def test_family_view_needs_scopes_that_cover_it(live, scope):
    pid, nhs, _ = _infant_with_a_condition(live)
    params = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "direct-care"}
    narrow = live.client("gp", GP_ORG, scope=scope)
    r = narrow.get("/Patient/$family-view", params=params)
    assert r.status_code == 403, r.text
    issue = r.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "ACCESS_DENIED" and "scopes do not cover" in issue["diagnostics"]
    assert "Scopewell" not in r.text
    # the refusal is audited like any other
    event = r.headers["x-audit-event"].split("/")[1]
    ig = live.client("ig-officer", "X26")
    audit = ig.get(f"/AuditEvent/{event}")
    assert audit.status_code == 200 and audit.json()["outcome"] != "0", audit.text
    # by id too
    assert narrow.get(f"/Patient/{pid}/$family-view", params={"purpose": "direct-care"}).status_code == 403
    # and the same requester with the scopes that cover the view receives it
    for wide in ("user/*.rs", "user/*.r", "user/Patient.r user/RelatedPerson.r " + " ".join(f"user/{t}.r" for t in RECORD_TYPES)):
        ok = live.client("gp", GP_ORG, scope=wide).get("/Patient/$family-view", params=params)
        assert ok.status_code == 200, (wide, ok.text)
        assert "Scopewell" in ok.text


def test_the_family_view_scopes_name_every_type_it_discloses():
    assert set(access.FAMILY_VIEW_TYPES) == {"Patient", "RelatedPerson", *RECORD_TYPES}


def test_scopes_are_documented_in_the_capability_statement_and_smart_configuration(live):
    cs = httpx.get(live.fhir + "/metadata").json()
    security = cs["rest"][0]["security"]
    assert {c["coding"][0]["code"] for c in security["service"]} == {"OAuth", "SMART-on-FHIR"}
    assert "user/Flag.r" in security["description"] and "family-view" in security["description"]
    assert "ig-officer" in security["description"]  # the never roles, named
    r = httpx.get(live.fhir + "/.well-known/smart-configuration")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    smart = r.json()
    assert smart["issuer"] == live.settings.auth_issuer
    assert {"user/*.rs", "system/*.cruds", "user/AuditEvent.rs"} <= set(smart["scopes_supported"])
    assert "permission-v2" in smart["capabilities"]
    assert any("family-view" in line and "user/Condition.r" in line for line in smart["scope_requirements"])


@pytest.mark.parametrize("scope", ["openid", "user/Patient.rs", "user/AuditEvent.s"])
def test_the_audit_needs_an_audit_scope(live, scope):
    ig = live.client("ig-officer", "X26", scope=scope)
    r = ig.get("/AuditEvent")
    assert r.status_code == 403 and "user/AuditEvent.rs" in r.json()["issue"][0]["diagnostics"], r.text
    assert live.client("ig-officer", "X26", scope="user/AuditEvent.rs").get("/AuditEvent").status_code == 200
