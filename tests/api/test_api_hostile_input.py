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
