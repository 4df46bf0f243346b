"""Search as a HAPI FHIR user expects: the parameters of the CapabilityStatement, paging links."""
from __future__ import annotations

import time

import httpx

from tests.conftest import MATERNITY_ORG, OTHER_ORG
from tests.fhirdata import bundle, entry, next_nhs, patient

CT = {"Content-Type": "application/fhir+json"}


def _ids(r) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_search_parameters(live):
    src = live.source(MATERNITY_ORG, "maternity")
    people = [
        patient("Smith", "Jonathan", nhs=next_nhs(), gender="male", birth="1998-04-03"),
        patient("Smyth", "Jon", gender="male", birth="1998-04-03"),
        patient("Ærø-Jones", "Zoë", nhs=next_nhs(), gender="female", birth="2001-12-31"),
    ]
    ids = []
    for p in people:
        r = src.post("/Patient", json=p, headers=CT)
        ids.append(r.json()["id"])
    smith, smyth, zoe = ids
    assert _ids(src.get("/Patient", params={"family": "sm"})) == {smith, smyth}
    assert _ids(src.get("/Patient", params={"family:exact": "smith"})) == {smith}
    assert _ids(src.get("/Patient", params={"name": "aero"})) == {zoe}  # accent-insensitive
    assert _ids(src.get("/Patient", params={"given": "zoe"})) == {zoe}
    assert _ids(src.get("/Patient", params={"name:contains": "jon"})) == {smith, smyth, zoe}
    assert _ids(src.get("/Patient", params={"birthdate": "1998-04-03"})) == {smith, smyth}
    assert _ids(src.get("/Patient", params={"birthdate": "1998"})) == {smith, smyth}
    assert _ids(src.get("/Patient", params={"birthdate": "gt2000-01-01"})) == {zoe}
    assert _ids(src.get("/Patient", params=[("birthdate", "ge1998-04-03"), ("birthdate", "lt2000")])) == {smith, smyth}
    assert _ids(src.get("/Patient", params={"gender": "female"})) == {zoe}
    nhs = people[0]["identifier"][0]["value"]
    assert _ids(src.get("/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"})) == {smith}
    assert _ids(src.get("/Patient", params={"identifier": nhs})) == {smith}
    assert _ids(src.get("/Patient", params={"identifier": f"https://other|{nhs}"})) == set()
    assert _ids(src.get("/Patient", params={"_id": f"{smith},{zoe}"})) == {smith, zoe}
    assert _ids(src.get("/Patient", params={"family": "smith,smyth", "gender": "male"})) == {smith, smyth}
    # POST _search with a form body
    r = src.post("/Patient/_search", data={"family": "smyth"})
    assert _ids(r) == {smyth}


def test_last_updated_and_sort(live):
    src = live.source(MATERNITY_ORG, "maternity")
    first = src.post("/Patient", json=patient("Early", "Ann"), headers=CT).json()
    time.sleep(0.05)
    second = src.post("/Patient", json=patient("Late", "Bea"), headers=CT).json()
    since = first["meta"]["lastUpdated"]
    assert _ids(src.get("/Patient", params={"_lastUpdated": f"gt{since}"})) == {second["id"]}
    assert _ids(src.get("/Patient", params={"_lastUpdated": f"ge{since}"})) == {first["id"], second["id"]}
    r = src.get("/Patient", params={"_sort": "-_lastUpdated"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [second["id"], first["id"]]


def test_last_updated_to_the_second_covers_that_second(live):
    """A client quotes lastUpdated to the second (12:58:55Z for 12:58:55.976Z): FHIR search
    takes a value's precision as its range, so the record is found, and gt that second is not."""
    src = live.source(MATERNITY_ORG, "maternity")
    p = src.post("/Patient", json=patient("Second", "Sid"), headers=CT).json()
    stamp = p["meta"]["lastUpdated"]  # e.g. 2026-11-26T12:58:55.976Z
    second = stamp.split(".")[0].rstrip("Z") + "Z"
    assert _ids(src.get("/Patient", params={"_lastUpdated": second, "family": "second"})) == {p["id"]}
    assert _ids(src.get("/Patient", params={"_lastUpdated": f"le{second}", "family": "second"})) == {p["id"]}
    assert _ids(src.get("/Patient", params={"_lastUpdated": f"gt{second}", "family": "second"})) == set()
    assert _ids(src.get("/Patient", params={"_lastUpdated": stamp, "family": "second"})) == {p["id"]}  # the instant itself


def test_paging_links_walk_every_result_once(live):
    src = live.source(MATERNITY_ORG, "maternity")
    entries = [entry(patient("Page", f"P{i:02d}")) for i in range(23)]
    assert src.post("", json=bundle(entries), headers=CT).status_code == 200
    seen, url, pages = [], "/Patient?family=page&_count=10", 0
    while url:
        r = src.get(url) if url.startswith("/") else httpx.get(url, headers=src.headers)
        body = r.json()
        assert body["type"] == "searchset" and body["total"] == 23
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        nxt = [l["url"] for l in body["link"] if l["relation"] == "next"]
        url = nxt[0] if nxt else None
        pages += 1
    assert pages == 3 and len(seen) == 23 and len(set(seen)) == 23
    assert src.get("/Patient", params={"family": "page", "_count": 0}).json().get("entry") is None


def test_search_only_shows_the_requesters_own_records(live):
    mine = live.source(MATERNITY_ORG, "maternity")
    theirs = live.source(OTHER_ORG, "maternity")
    mine.post("/Patient", json=patient("Private", "Pat", nhs=next_nhs()), headers=CT)
    assert theirs.get("/Patient", params={"family": "private"}).json()["total"] == 0
    assert mine.get("/Patient", params={"family": "private"}).json()["total"] == 1


def test_reference_search_by_patient_and_subject(live):
    src = live.source(MATERNITY_ORG, "maternity")
    p = entry(patient("Ref", "Rae", nhs=next_nhs()))
    flag = {"resourceType": "Flag", "status": "active", "code": {"text": "Safeguarding concern"}, "subject": {"reference": p["fullUrl"]}}
    cond = {"resourceType": "Condition", "subject": {"reference": p["fullUrl"]}, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}}
    out = src.post("", json=bundle([p, entry(flag), entry(cond)]), headers=CT).json()
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    assert src.get("/Flag", params={"patient": pid}).json()["total"] == 1
    assert src.get("/Flag", params={"subject": f"Patient/{pid}"}).json()["total"] == 1
    assert src.get("/Condition", params={"patient": f"Patient/{pid}", "code": "http://snomed.info/sct|35489007"}).json()["total"] == 1
    assert src.get("/Condition", params={"patient": "Patient/unknown"}).json()["total"] == 0
