"""Finding 13 (session s6/view): `$family-view` parameter handling. Each parameter at most once
(the OperationDefinition says max=1), FHIR token semantics for the identifier (`|value` means
"no system"), an NHS number that fails Modulus 11 is the wire contract's 422 (never echoed),
and POST with a Parameters body behaves as GET does. Every refusal is audited.

The demo families are shared by every test in this module (one server per backend); these
tests only read."""
from __future__ import annotations

from app.demo.scenarios import HEALTH_VISITING, IG_ORG, N
from tests.family.test_family_scenarios import JUSTIFICATION, NHS, View

FHIR_JSON = {"Content-Type": "application/fhir+json"}
BAD_NHS = "9990000000"  # ten digits, fails the Modulus 11 check


def _hv(world):
    return world.client("health-visitor", HEALTH_VISITING.org)


def _audited_refusal(world, r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    header = r.headers["x-audit-event"]
    event = world.client("ig-officer", IG_ORG).get("/" + header).json()
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith(str(status))
    return body


def test_a_repeated_parameter_is_refused_not_last_value_wins(world):
    nhs1, nhs2 = f"{NHS}|{N['s1_infant']}", f"{NHS}|{N['s2_infant']}"
    cases = {
        "identifier": [("identifier", nhs1), ("identifier", nhs2), ("purpose", "direct-care")],
        "purpose": [("identifier", nhs1), ("purpose", "direct-care"), ("purpose", "safeguarding"), ("justification", JUSTIFICATION)],
        "justification": [("identifier", nhs1), ("purpose", "safeguarding"), ("justification", "a"), ("justification", "b")],
    }
    for name, params in cases.items():
        body = _audited_refusal(world, _hv(world).get("/Patient/$family-view", params=params), 400)
        assert body["issue"][0]["expression"] == [name]
        assert "once" in body["issue"][0]["diagnostics"]
    # at instance level too, and an identifier there is not silently ignored
    pid = View(_hv(world).get("/Patient/$family-view", params={"identifier": nhs1, "purpose": "direct-care"}), world).people()["infant"][0]["id"]
    _audited_refusal(world, _hv(world).get(f"/Patient/{pid}/$family-view", params=[("purpose", "direct-care"), ("purpose", "direct-care")]), 400)
    _audited_refusal(world, _hv(world).get(f"/Patient/{pid}/$family-view", params={"purpose": "direct-care", "identifier": nhs2}), 400)


def test_an_identifier_with_an_explicit_empty_system_does_not_match_an_nhs_number(world):
    r = _hv(world).get("/Patient/$family-view", params={"identifier": f"|{N['s1_infant']}", "purpose": "direct-care"})
    _audited_refusal(world, r, 403)  # no such record: answered as one without a route (not found or not yours)
    # a bare value still means "any system", and system|value that system
    assert _hv(world).get("/Patient/$family-view", params={"identifier": N["s1_infant"], "purpose": "direct-care"}).status_code == 200
    assert _hv(world).get("/Patient/$family-view", params={"identifier": f"{NHS}|{N['s1_infant']}", "purpose": "direct-care"}).status_code == 200


def test_an_nhs_number_failing_modulus_11_is_a_422_that_never_echoes_it(world):
    r = _hv(world).get("/Patient/$family-view", params={"identifier": f"{NHS}|{BAD_NHS}", "purpose": "direct-care"})
    body = _audited_refusal(world, r, 422)
    issue = body["issue"][0]
    assert issue["code"] == "business-rule" and issue["expression"] == ["identifier"]
    assert "Modulus 11" in issue["diagnostics"]
    assert BAD_NHS not in r.text
    event = world.client("ig-officer", IG_ORG).get("/" + r.headers["x-audit-event"]).json()
    assert BAD_NHS not in event["outcomeDesc"]


def test_post_with_a_parameters_body_gives_the_same_view_as_get(world):
    hv = _hv(world)
    ident = f"{NHS}|{N['s2_infant']}"
    got = View(hv.get("/Patient/$family-view", params={"identifier": ident, "purpose": "safeguarding", "justification": JUSTIFICATION}), world)
    assert got.status == 200
    posted = View(hv.post("/Patient/$family-view", headers=FHIR_JSON, json={"resourceType": "Parameters", "parameter": [
        {"name": "identifier", "valueString": ident}, {"name": "purpose", "valueCode": "safeguarding"},
        {"name": "justification", "valueString": JUSTIFICATION}]}), world)
    assert posted.status == 200, posted.body
    assert posted.r.headers["x-audit-event"] != got.r.headers["x-audit-event"]
    assert {k: sorted(p["id"] for p in v) for k, v in posted.people().items()} == {k: sorted(p["id"] for p in v) for k, v in got.people().items()}
    assert posted.codes() == got.codes() and posted.suppressed_categories() == got.suppressed_categories()
    event = posted.audit()
    assert event["outcome"] == "0" and event["purposeOfEvent"][0]["coding"][0]["code"] == "THREAT"

    # an Identifier value, and the instance level
    by_ident = hv.post("/Patient/$family-view", headers=FHIR_JSON, json={"resourceType": "Parameters", "parameter": [
        {"name": "identifier", "valueIdentifier": {"system": NHS, "value": N["s2_infant"]}}, {"name": "purpose", "valueCode": "direct-care"}]})
    assert by_ident.status_code == 200
    pid = got.people()["infant"][0]["id"]
    by_id = View(hv.post(f"/Patient/{pid}/$family-view", headers=FHIR_JSON, json={"resourceType": "Parameters", "parameter": [
        {"name": "purpose", "valueCode": "direct-care"}]}), world)
    assert by_id.status == 200 and by_id.people()["infant"][0]["id"] == pid

    # the same rules as GET, each refusal audited
    safeguarding_without = {"resourceType": "Parameters", "parameter": [{"name": "identifier", "valueString": ident}, {"name": "purpose", "valueCode": "safeguarding"}]}
    assert _audited_refusal(world, hv.post("/Patient/$family-view", headers=FHIR_JSON, json=safeguarding_without), 400)["issue"][0]["expression"] == ["justification"]
    twice = {"resourceType": "Parameters", "parameter": [{"name": "identifier", "valueString": ident}, {"name": "purpose", "valueCode": "direct-care"},
                                                         {"name": "purpose", "valueCode": "safeguarding"}]}
    _audited_refusal(world, hv.post("/Patient/$family-view", headers=FHIR_JSON, json=twice), 400)
    in_url_and_body = hv.post("/Patient/$family-view", params={"purpose": "safeguarding"}, headers=FHIR_JSON,
                              json={"resourceType": "Parameters", "parameter": [{"name": "identifier", "valueString": ident}, {"name": "purpose", "valueCode": "direct-care"}]})
    _audited_refusal(world, in_url_and_body, 400)
    bad_nhs = {"resourceType": "Parameters", "parameter": [{"name": "identifier", "valueString": f"{NHS}|{BAD_NHS}"}, {"name": "purpose", "valueCode": "direct-care"}]}
    r = hv.post("/Patient/$family-view", headers=FHIR_JSON, json=bad_nhs)
    _audited_refusal(world, r, 422)
    assert BAD_NHS not in r.text
    for body in ({"resourceType": "Patient"}, {"resourceType": "Parameters", "parameter": [{"name": "colour", "valueString": "red"}]},
                 {"resourceType": "Parameters", "parameter": [{"name": "purpose", "valueInteger": 1}]}):
        _audited_refusal(world, hv.post("/Patient/$family-view", headers=FHIR_JSON, json=body), 400)
    _audited_refusal(world, hv.post("/Patient/$family-view", headers=FHIR_JSON, content=b"{not json"), 400)
    _audited_refusal(world, hv.post("/Patient/$family-view", headers={"Content-Type": "text/plain"}, content=b"purpose=direct-care"), 415)
    # no token: 401, as for GET
    assert world.client().post("/Patient/$family-view", headers=FHIR_JSON, json=safeguarding_without).status_code == 401
