"""Extreme but valid values, and malformed input, found by exploratory testing: never a 500,
valid FHIR stored and searchable, bad input answered with a 4xx OperationOutcome naming
the element or parameter, and a batch failing only the entry at fault."""
from __future__ import annotations

import pytest

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import bundle, entry, next_nhs, patient

CT = {"Content-Type": "application/fhir+json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _issue(r):
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", r.text
    return body["issue"][0]


def _obs(when: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": when}


# ---------------------------------------------------------------- D1, D2: extreme dates


def test_extreme_valid_dates_are_stored_and_searchable(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json=patient("Farfuture", "Ann", birth="9999-12-31"), headers=CT)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = src.post("/Patient", json=patient("Farpast", "Bea", birth="0001-01-01"), headers=CT)
    assert r.status_code == 201, r.text
    old_id = r.json()["id"]
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00Z"):
        r = src.post("/Observation", json=_obs(when), headers=CT)
        assert r.status_code == 201, (when, r.text)
    flag = {"resourceType": "Flag", "status": "active", "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "0001-01-01T00:00:00+14:00", "end": "9999-12-31T23:59:59-12:00"}}
    assert src.post("/Flag", json=flag, headers=CT).status_code == 201

    def ids(params):
        r = src.get("/Patient", params=params)
        assert r.status_code == 200, r.text
        return {e["resource"]["id"] for e in r.json().get("entry", [])}

    assert ids({"birthdate": "9999-12-31"}) == {pid}
    assert ids({"birthdate": "9999"}) == {pid}
    assert ids({"birthdate": "0001-01-01"}) == {old_id}
    assert ids({"birthdate": "lt1000"}) == {old_id}  # years before 1000 compare as dates, not as unpadded text
    assert ids({"birthdate": "ge9999-12"}) == {pid}
    assert src.get("/Observation", params={"date": "le0001-01-02"}).json()["total"] == 2
    assert src.get("/Observation", params={"date": "9999-12-31"}).json()["total"] == 1
    assert src.get("/Flag", params={"date": "ge0001-01-01T00:00:00+14:00"}).json()["total"] == 1
    for value in ("0001-01-01", "9999-12-31", "ge0001-01-01T00:00:00+14:00", "le9999-12-31T23:59:59-12:00", "0001"):
        r = src.get("/Patient", params={"_lastUpdated": value})
        assert r.status_code == 200, (value, r.text)
    assert src.get("/Patient", params={"_lastUpdated": "ge0001-01-01", "_count": 0}).json()["total"] == 2
    r = live.client("admin", "X26").post("/Patient/_search", content="birthdate=9999-12-31", headers=FORM)
    assert r.status_code == 200 and r.json()["total"] == 1, r.text


def test_a_batch_entry_with_an_extreme_date_is_written_and_its_neighbours_too(live):
    src = live.source(MATERNITY_ORG, "maternity")
    b = bundle([entry(patient("Good", "One")), entry(patient("Placeholder", "Two", birth="9999-12-31")),
                entry(_obs("0001-01-01T00:00:00+14:00")), entry(patient("Good", "Three"))], kind="batch")
    r = src.post("", json=b, headers=CT)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 4
    r = src.post("", json=bundle([entry(patient("Placeholder", "Four", birth="9999-12-31"))]), headers=CT)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("params", [
    {"_offset": "99999999999999999999999"},
    {"_offset": "9223372036854775808"},
    {"_offset": "2147483648"},
    {"_offset": "1_000"},
    {"_count": "1_000"},
    {"_lastUpdated": "2026-13-01"},
    {"birthdate": "9999-99-99"},
])
def test_out_of_range_paging_and_dates_are_400_naming_the_parameter(live, params):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.get("/Patient", params=params)
    assert r.status_code == 400, r.text
    name = next(iter(params))
    assert any(name in e for e in _issue(r)["expression"])


def test_huge_or_odd_version_ids_are_404(live):
    src = live.source(MATERNITY_ORG, "maternity")
    pid = src.post("/Patient", json=patient("Versions", "Vic"), headers=CT).json()["id"]
    assert src.get(f"/Patient/{pid}/_history/1").status_code == 200
    for vid in ("99999999999999999999999", "2147483648", "9223372036854775808", "0", "-1", "1e3", "\u0661"):
        r = src.get(f"/Patient/{pid}/_history/{vid}")
        assert r.status_code == 404, (vid, r.text)
        assert _issue(r)["code"] == "not-found"


def test_search_entries_with_extreme_dates_inside_a_transaction(live):
    src = live.source(MATERNITY_ORG, "maternity")
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(patient("Txn", "Date", birth="9999-12-31")),
        {"request": {"method": "GET", "url": "Patient?birthdate=9999-12-31"}},
        {"request": {"method": "GET", "url": "Patient?_lastUpdated=ge0001-01-01"}},
    ]}
    r = src.post("", json=b, headers=CT)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][1]["resource"]["total"] == 1
    b["entry"] = [{"request": {"method": "GET", "url": "Patient?_offset=99999999999999999999999"}}]
    r = src.post("", json=b, headers=CT)
    assert r.status_code == 400, r.text


# ---------------------------------------------------------------- D3: deep nesting


def _deep_patient(depth: int) -> dict:
    e = {"url": "http://x", "valueString": "leaf"}
    for i in range(depth):
        e = {"url": f"http://x{i}", "extension": [e]}
    return {"resourceType": "Patient", "extension": [e]}


def test_deeply_nested_extensions_are_400_not_a_recursion_500(live):
    src = live.source(MATERNITY_ORG, "maternity")
    assert src.post("/Patient", json=_deep_patient(50), headers=CT).status_code == 201
    for depth in (200, 400):
        r = src.post("/Patient", json=_deep_patient(depth), headers=CT)
        assert r.status_code == 400, r.text
        issue = _issue(r)
        assert issue["code"] == "structure" and "nested" in issue["diagnostics"]
        assert issue["expression"][0].startswith("Patient.extension[0].extension[0]")
    r = src.post("", json=bundle([entry(patient("Shallow", "Sam")), entry(_deep_patient(300))], kind="batch"), headers=CT)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "400"]


# ---------------------------------------------------------------- D4: control characters


@pytest.mark.parametrize("resource, expression", [
    ({"resourceType": "Patient", "name": [{"family": "Nul\u0000Byte"}]}, "Patient.name[0].family"),
    ({"resourceType": "Patient", "name": [{"given": ["Ann", "B\u0001"]}]}, "Patient.name[0].given[1]"),
    ({"resourceType": "Patient", "identifier": [{"system": "http://x", "value": "a\u0000b"}]}, "Patient.identifier[0].value"),
    ({"resourceType": "Patient", "name": [{"fam\u0000ily": "X"}]}, "Patient.name[0]"),
])
def test_control_characters_in_a_body_are_400_on_both_databases(live, resource, expression):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json=resource, headers=CT)
    assert r.status_code == 400, r.text
    assert _issue(r)["expression"] == [expression]
    assert src.get("/Patient", params={"_count": 0}).json()["total"] == 0
    r = src.post("", json=bundle([entry(patient("Kept", "Kim")), entry(resource)], kind="batch"), headers=CT)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"][:3] for e in r.json()["entry"]]
    assert statuses == ["201", "400"]
    assert r.json()["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == [expression.replace("Patient.", "Bundle.entry[1].resource.")]
    r = src.post("", json=bundle([entry(patient("Gone", "Gus")), entry(resource)]), headers=CT)
    assert r.status_code == 400, r.text
    assert src.get("/Patient", params={"family": "gone"}).json()["total"] == 0
    assert src.get("/Patient", params={"family": "ok\ttab"}).status_code == 200  # tab, CR and LF are allowed


def test_control_characters_in_searches_ids_and_bundle_urls_are_400(live, caplog):
    src = live.source(MATERNITY_ORG, "maternity")
    for params, expression in (({"family": "sec\u0000"}, "Patient?family"), ({"identifier": "a\u0000b"}, "Patient?identifier"),
                               ({"_id": "a\u0000b"}, "Patient?_id"), ({"birthdate": "2020\u0000"}, "Patient?birthdate")):
        r = src.get("/Patient", params=params)
        assert r.status_code == 400, r.text
        assert _issue(r)["expression"] == [expression]
    r = src.get("/Patient/a%00b")
    assert r.status_code == 400 and _issue(r)["expression"] == ["Patient.id"], r.text
    r = src.put("/Patient", params={"identifier": "http://x|a\u0000b"}, json={"resourceType": "Patient"}, headers=CT)
    assert r.status_code == 400, r.text
    r = src.post("/Patient", json={"resourceType": "Patient"}, headers={**CT, "If-None-Exist": "identifier=a%00b"})
    assert r.status_code == 400, r.text
    b = bundle([{"request": {"method": "GET", "url": "Patient?family=a\u0000b"}}])
    r = src.post("", json=b, headers=CT)
    assert r.status_code == 400 and _issue(r)["expression"] == ["Bundle.entry[0].request.url"], r.text
    b = bundle([entry(patient("Cond", "Carl"), ifNoneExist="identifier=x|\u0000")])
    r = src.post("", json=b, headers=CT)
    assert r.status_code == 400 and _issue(r)["expression"] == ["Bundle.entry[0].request.ifNoneExist"], r.text
    b = bundle([entry(patient("Cond", "Carl"), ifNoneExist={"identifier": "x"})])
    assert src.post("", json=b, headers=CT).status_code == 400
    assert src.get("/Patient", params={"_count": 0}).json()["total"] == 0
    assert "sec\\x00" not in caplog.text and "sec\x00" not in caplog.text


# ---------------------------------------------------------------- D5: one identity, two entries


def _two_entries(kind: str, nhs: str, how: str) -> dict:
    ident = f"{NHS}|{nhs}"
    first, second = patient("DupE", "Eve", nhs=nhs), patient("DupF", "Fay", nhs=nhs)
    if how == "conditional-put":
        entries = [entry(first, method="PUT", url=f"Patient?identifier={ident}"), entry(second, method="PUT", url=f"Patient?identifier={ident}")]
    elif how == "if-none-exist":
        entries = [entry(first, ifNoneExist=f"identifier={ident}"), entry(second, ifNoneExist=f"Patient?identifier={ident}")]
    elif how == "mixed":
        entries = [entry(first, ifNoneExist=f"identifier={ident}"), entry(second, method="PUT", url=f"Patient?identifier={ident}")]
    else:  # two plain POSTs of one NHS number
        entries = [entry(first), entry(second)]
    return bundle(entries, kind=kind)


@pytest.mark.parametrize("how", ["conditional-put", "if-none-exist", "mixed", "plain-post"])
def test_a_transaction_writing_one_identity_twice_fails_and_writes_nothing(live, how):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next_nhs()
    r = src.post("", json=_two_entries("transaction", nhs, how), headers=CT)
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["Bundle.entry[0]", "Bundle.entry[1]"]
    assert nhs not in r.text
    assert src.get("/Patient", params={"identifier": f"{NHS}|{nhs}"}).json()["total"] == 0
    # once stored, the same pair still fails: both entries resolve to the stored record
    assert src.post("/Patient", json=patient("DupE", "Eve", nhs=nhs), headers=CT).status_code == 201
    r = src.post("", json=_two_entries("transaction", nhs, how), headers=CT)
    assert r.status_code == 400, r.text
    assert src.get("/Patient", params={"identifier": f"{NHS}|{nhs}"}).json()["total"] == 1
    # and conditional writes of that person keep working
    r = src.put("/Patient", params={"identifier": f"{NHS}|{nhs}"}, json=patient("DupE", "Eva", nhs=nhs), headers=CT)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("how", ["conditional-put", "if-none-exist", "plain-post"])
def test_a_batch_writing_one_identity_twice_makes_one_record(live, how):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next_nhs()
    r = src.post("", json=_two_entries("batch", nhs, how), headers=CT)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"] == "200 OK"
    assert entries[0]["fullUrl"] == entries[1]["fullUrl"]  # the second entry resolved to the first's record
    assert src.get("/Patient", params={"identifier": f"{NHS}|{nhs}"}).json()["total"] == 1


def test_different_people_in_one_transaction_still_work(live):
    src = live.source(MATERNITY_ORG, "maternity")
    a, b = next_nhs(), next_nhs()
    t = bundle([entry(patient("Twin", "A", nhs=a), method="PUT", url=f"Patient?identifier={NHS}|{a}"),
                entry(patient("Twin", "B", nhs=b), method="PUT", url=f"Patient?identifier={NHS}|{b}")])
    r = src.post("", json=t, headers=CT)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "201 Created"]


# ---------------------------------------------------------------- D7: over-long identifiers

LOCAL = "https://example-gp.nhs.uk/Id/local"


def test_identifier_values_longer_than_the_index_are_422_naming_the_element(live):
    src = live.source(MATERNITY_ORG, "maternity")
    fits, too_long = "A" * 254 + "1", "A" * 300 + "1"
    r = src.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": LOCAL, "value": fits}]}, headers=CT)
    assert r.status_code == 201, r.text
    found = src.get("/Patient", params={"identifier": f"{LOCAL}|{fits}"}).json()
    assert found["total"] == 1
    resend = src.post("/Patient", json={"resourceType": "Patient", "identifier": [{"system": LOCAL, "value": fits}]}, headers=CT)
    assert resend.status_code == 200, resend.text

    body = {"resourceType": "Patient", "identifier": [{"system": LOCAL, "value": "x"}, {"system": LOCAL, "value": too_long}], "name": [{"family": "LongId"}]}
    for send in (lambda: src.post("/Patient", json=body, headers=CT),
                 lambda: src.put("/Patient", params={"identifier": f"{LOCAL}|x"}, json=body, headers=CT)):
        r = send()
        assert r.status_code == 422, r.text
        assert _issue(r)["expression"] == ["Patient.identifier[1].value"]
        assert "concurrent" not in r.text
    long_system = {"resourceType": "Patient", "identifier": [{"system": "https://x.example/" + "s" * 300, "value": "1"}]}
    r = src.post("/Patient", json=long_system, headers=CT)
    assert r.status_code == 422 and _issue(r)["expression"] == ["Patient.identifier[0].system"], r.text
    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "c" * 300}]},
           "subject": {"identifier": {"system": LOCAL, "value": too_long}}}
    r = src.post("/Observation", json=obs, headers=CT)
    assert r.status_code == 422 and _issue(r)["expression"] == ["Observation.code.coding[0].code"], r.text
    obs["code"] = {"text": "x"}
    r = src.post("/Observation", json=obs, headers=CT)
    assert r.status_code == 422 and _issue(r)["expression"] == ["Observation.subject.identifier.value"], r.text

    # a batch loses only the long entry
    r = src.post("", json=bundle([entry(patient("BatchGood", "Bo")), entry(body)], kind="batch"), headers=CT)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "422"]
    assert r.json()["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.identifier[1].value"]
    assert src.get("/Patient", params={"family": "batchgood"}).json()["total"] == 1
    assert src.get("/Patient", params={"family": "longid"}).json()["total"] == 0


@pytest.mark.parametrize("resource, params", [
    ("Patient", {"identifier": f"{LOCAL}|{'A' * 300}"}),
    ("Patient", {"identifier": "A" * 300}),
    ("Patient", {"identifier": f"{'s' * 300}|1"}),
    ("Observation", {"code": "c" * 256}),
    ("Observation", {"subject:identifier": f"{LOCAL}|{'A' * 300}"}),
])
def test_searching_for_values_longer_than_the_index_is_400(live, resource, params):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.get(f"/{resource}", params=params)
    assert r.status_code == 400, r.text
    name = next(iter(params)).split(":")[0]
    assert _issue(r)["expression"] == [f"{resource}?{name}"]


# ---------------------------------------------------------------- D6: search modifiers


def test_unsupported_modifiers_are_400_and_not_negates(live):
    src = live.source(MATERNITY_ORG, "maternity")
    male = src.post("/Patient", json=patient("Mod", "Max", gender="male", local_id="m1"), headers=CT).json()["id"]
    female = src.post("/Patient", json=patient("Mod", "Mia", gender="female", local_id="f1"), headers=CT).json()["id"]
    none = src.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Mod"}]}, headers=CT).json()["id"]

    def ids(params):
        r = src.get("/Patient", params=params)
        assert r.status_code == 200, r.text
        return {e["resource"]["id"] for e in r.json().get("entry", [])}

    assert ids({"gender": "male"}) == {male}
    assert ids({"gender:not": "male"}) == {female, none}
    assert ids({"identifier:not": "https://test.example.nhs.uk/Id/patient|m1"}) == {female, none}
    assert ids({"_id:not": male}) == {female, none}
    for key in ("gender:foo", "gender:missing", "birthdate:not", "_id:exact", "_lastUpdated:not", "identifier:text",
                "family:foo", "organization:foo"):
        r = src.get("/Patient", params={key: "x"})
        assert r.status_code == 400, (key, r.text)
        issue = _issue(r)
        assert issue["code"] == "not-supported" and issue["expression"] == [f"Patient?{key.split(':')[0]}"]


# ---------------------------------------------------------------- D9: JSON types of primitives


@pytest.mark.parametrize("resource, expression", [
    ({"resourceType": "Patient", "active": "yes"}, "Patient.active"),
    ({"resourceType": "Patient", "active": 1}, "Patient.active"),
    ({"resourceType": "Patient", "deceasedBoolean": "on"}, "Patient.deceasedBoolean"),
    ({"resourceType": "Patient", "multipleBirthInteger": "2"}, "Patient.multipleBirthInteger"),
    ({"resourceType": "Patient", "multipleBirthInteger": 2.0}, "Patient.multipleBirthInteger"),
    ({"resourceType": "Patient", "multipleBirthBoolean": "true"}, "Patient.multipleBirthBoolean"),
    ({"resourceType": "Patient", "extension": [{"url": "http://x", "valueBoolean": "false"}]}, "Patient.extension[0].valueBoolean"),
    ({"resourceType": "Patient", "communication": [{"language": {"text": "en"}, "preferred": "yes"}]}, "Patient.communication[0].preferred"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.5"}}, "Observation.valueQuantity.value"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": True}, "Observation.valueInteger"),
])
def test_primitives_of_the_wrong_json_type_are_400_naming_the_element(live, resource, expression):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post(f"/{resource['resourceType']}", json=resource, headers=CT)
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert issue["code"] == "structure" and issue["expression"] == [expression]
    assert src.get(f"/{resource['resourceType']}", params={"_count": 0}).json()["total"] == 0


def test_primitives_of_the_right_json_type_are_kept_as_sent(live):
    src = live.source(MATERNITY_ORG, "maternity")
    p = {"resourceType": "Patient", "active": False, "multipleBirthInteger": 2, "deceasedBoolean": False,
         "extension": [{"url": "http://x", "valueDecimal": 1.50}, {"url": "http://y", "valueDecimal": 3}, {"url": "http://z", "valueUnsignedInt": 0}]}
    r = src.post("/Patient", json=p, headers=CT)
    assert r.status_code == 201, r.text
    got = src.get(f"/Patient/{r.json()['id']}").json()
    assert got["active"] is False and got["multipleBirthInteger"] == 2 and got["extension"][1]["valueDecimal"] == 3


def test_ids_longer_than_fhir_allows_are_400_on_both_databases(live):
    src = live.source(MATERNITY_ORG, "maternity")
    long_id = "b" * 65
    r = src.put(f"/Patient/{long_id}", json={"resourceType": "Patient", "id": long_id}, headers=CT)
    assert r.status_code == 400 and _issue(r)["expression"] == ["Patient.id"], r.text
    assert src.get(f"/Patient/{long_id}").status_code == 404
    ok_id = "b" * 64
    assert src.put(f"/Patient/{ok_id}", json={"resourceType": "Patient", "id": ok_id}, headers=CT).status_code == 201


def test_database_errors_never_carry_sql_parameters_into_the_log(database):
    """Names and identifiers are bound parameters: an unexpected database error (logged with
    its traceback on the 500 path) must not print them."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    assert database.engine.hide_parameters
    with pytest.raises(DBAPIError) as caught:
        with database.session() as s:
            s.execute(text("SELECT * FROM no_such_table WHERE x = :v"), {"v": "Secretname"})
    assert "Secretname" not in str(caught.value)


@pytest.mark.parametrize("role,org,path", [
    ("health-visitor", "RHV01", "/Patient/$family-view?identifier=x|a%00b&purpose=direct-care"),
    ("health-visitor", "RHV01", "/Patient/a%00b/$family-view?purpose=direct-care"),
    ("health-visitor", "RHV01", "/Patient/$family-view?identifier=9990001103&purpose=direct-care&justification=a%01"),
    ("admin", "X26", "/Person?_id=a%00"),
    ("admin", "X26", "/Person?identifier=x|a%00"),
    ("admin", "X26", "/Person/a%00b"),
    ("ig-officer", "X26", "/AuditEvent?patient=a%00"),
    ("ig-officer", "X26", "/AuditEvent/a%00"),
    ("ig-officer", "X26", "/AuditEvent?agent%00=x"),
])
def test_a_control_character_anywhere_in_the_url_is_400_on_every_route(live, role, org, path):
    """PostgreSQL cannot hold U+0000: the family view answered 503 ("audit could not be
    written") and Person and AuditEvent 500. One check now answers 400 on every route."""
    r = live.client(role, org).get(path)
    assert r.status_code == 400, r.text
    assert "control character" in _issue(r)["diagnostics"]


# ---------------------------------------------------------------- every search endpoint, one search layer

# (who asks, the endpoint, a date parameter it takes): every search endpoint of the gateway
SEARCH_ENDPOINTS = {
    "Patient": ("source-system", MATERNITY_ORG, "maternity", "GET", "/fhir/Patient", "birthdate"),
    "Patient-_lastUpdated": ("source-system", MATERNITY_ORG, "maternity", "GET", "/fhir/Patient", "_lastUpdated"),
    "Patient-_search": ("source-system", MATERNITY_ORG, "maternity", "POST", "/fhir/Patient/_search", "birthdate"),
    "AuditEvent": ("ig-officer", "X26", None, "GET", "/fhir/AuditEvent", "date"),
    "Person": ("admin", "X26", None, "GET", "/fhir/Person", None),
    "linkage-candidates": ("admin", "X26", None, "GET", "/linkage/candidates", None),
    "linkage-events": ("admin", "X26", None, "GET", "/linkage/events", None),
}
HOSTILE_PAGING = [
    ("_count", "\u00b2"), ("_offset", "\u00b2"), ("_offset", "99999999999999999999999"), ("_count", "-1"),
    ("_offset", "-1"), ("_count", "1_000"), ("_offset", "1_000"), ("_count", "\u0665"), ("_offset", "\u0665"),
    ("_offset", "9223372036854775808"), ("_count", "1e3"), ("_count", ""), ("_offset", "9" * 5000), ("_count", "0x10"),
]
HOSTILE_DATES = ["\u00b2", "2026-13-01", "9999-99-99", "ge2024-01-01T25:00", "\u0662\u0660\u0662\u0664-01-01",
                 "2024-01-01T10:00+15:00", "yesterday", "ge", "2024-01-01\n"]
HOSTILE_PARAMS = [("colour", "red"), ("_id:sounds", "x"), ("date:missing", "true")]


def _search(live, endpoint: str, params: list[tuple[str, str]]):
    role, org, service, method, path, _ = SEARCH_ENDPOINTS[endpoint]
    import httpx

    headers = {"Authorization": f"Bearer {live.token(role, org, service)}", "Accept": "application/fhir+json"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=30) as c:
        if method == "POST":
            from urllib.parse import urlencode

            return c.post(path, content=urlencode(params), headers=FORM)
        return c.get(path, params=params)


def _refused(r, name: str):
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert any(name in e for e in issue.get("expression", [])), issue


@pytest.mark.parametrize("endpoint", SEARCH_ENDPOINTS)
def test_every_search_endpoint_refuses_hostile_paging_with_400(live, endpoint):
    """One search layer (app/fhir/search.py): `_count=²`, `_offset=²` and a huge offset were
    500 on /fhir/AuditEvent; now every search endpoint answers 400 naming the parameter."""
    assert _search(live, endpoint, []).status_code == 200
    for name, value in HOSTILE_PAGING:
        _refused(_search(live, endpoint, [(name, value)]), name)
    # valid paging still works, a large _count is clamped
    assert _search(live, endpoint, [("_count", "100000"), ("_offset", "0")]).status_code == 200


@pytest.mark.parametrize("endpoint", [e for e, spec in SEARCH_ENDPOINTS.items() if spec[5]])
def test_every_date_search_refuses_hostile_dates_with_400(live, endpoint):
    date_param = SEARCH_ENDPOINTS[endpoint][5]
    assert _search(live, endpoint, [(date_param, "ge2024-01-01")]).status_code == 200
    for value in HOSTILE_DATES:
        _refused(_search(live, endpoint, [(date_param, value)]), date_param)


@pytest.mark.parametrize("endpoint", SEARCH_ENDPOINTS)
def test_every_search_endpoint_refuses_unknown_parameters_and_modifiers_with_400(live, endpoint):
    for name, value in HOSTILE_PARAMS:
        r = _search(live, endpoint, [(name, value)])
        assert r.status_code == 400, (name, r.text)
        assert _issue(r)["code"] in ("not-supported", "invalid"), r.text


@pytest.mark.parametrize("endpoint", ["Patient", "AuditEvent", "Person"])
def test_every_searchset_has_the_same_paging_links(live, endpoint):
    r = _search(live, endpoint, [("_count", "1"), ("_offset", "1")])
    assert r.status_code == 200, r.text
    links = {link["relation"]: link["url"] for link in r.json()["link"]}
    assert "_count=1" in links["self"] and "_offset=1" in links["self"]
    assert "_offset=0" in links["previous"]


@pytest.mark.parametrize("params", [{"_count": "\u00b2"}, {"_offset": "\u00b2"}, {"_offset": "99999999999999999999999"}])
def test_the_audit_search_paging_that_was_a_500_is_400(live, params):
    r = live.client("ig-officer", "X26").get("/AuditEvent", params=params)
    assert r.status_code == 400, r.text
    assert _issue(r)["expression"] == [next(iter(params))]


# ---------------------------------------------------------------- null elements (found by schemathesis)


def test_a_null_element_is_refused_and_nothing_is_stored(live):
    """FHIR JSON has no null elements: {"link": [{"other": null, ...}]} was taken as "other
    absent" by the models and stored as sent, a Patient.link missing its required target that
    every later read returned. Refused with a 400 naming the element, on create, update and in
    a transaction, and nothing is written."""
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next_nhs()
    bad = {**patient("Nullish", "Nia", nhs=nhs), "link": [{"other": None, "type": "replaced-by"}]}
    r = src.post("/Patient", json=bad, headers=CT)
    assert r.status_code == 400, r.text
    assert _issue(r)["expression"] == ["Patient.link[0].other"]
    r = src.put("/Patient/nullish-1", json={**bad, "id": "nullish-1"}, headers=CT)
    assert r.status_code == 400, r.text
    r = src.post("", json=bundle([entry(patient("Nullish", "Noa", nhs=next_nhs())), entry({**bad, "gender": None})]), headers=CT)
    assert r.status_code == 400, r.text
    assert src.get("/Patient", params={"family": "Nullish"}).json()["total"] == 0
    # null stays allowed where FHIR JSON allows it: an array item beside its _element extension
    ok = {**patient("Nullish", "Nel", nhs=nhs), "name": [{"family": "Nullish", "given": ["Nel", None],
                                                         "_given": [None, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]}]}
    r = src.post("/Patient", json=ok, headers=CT)
    assert r.status_code == 201, r.text
