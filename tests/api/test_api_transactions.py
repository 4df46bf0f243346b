"""Transactions and batches over real HTTP: atomicity, urn:uuid resolution, idempotent re-sends,
conditional create/update, and bad entries that write nothing."""
from __future__ import annotations

import json

import pytest

from tests.conftest import GP_ORG, HV_ORG, MATERNITY_ORG
from tests.fhirdata import bundle, entry, family_bundle, next_nhs, patient

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _count(client, res_type: str, **params) -> int:
    r = client.get(f"/{res_type}", params={**params, "_count": 0})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _all_counts(client) -> dict[str, int]:
    return {t: _count(client, t) for t in ("Patient", "RelatedPerson", "Consent", "Flag")}


def test_transaction_resolves_urn_uuid_and_resend_is_idempotent(live):
    src = live.source(MATERNITY_ORG, "maternity")
    b = family_bundle()
    r = src.post("", content=json.dumps(b), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    patient_loc = out["entry"][0]["response"]["location"]
    assert patient_loc.startswith("Patient/") and patient_loc.endswith("/_history/1")
    assert out["entry"][0]["response"]["etag"] == 'W/"1"'
    patient_ref = "/".join(patient_loc.split("/")[:2])

    rp_loc = out["entry"][1]["response"]["location"].rsplit("/_history", 1)[0]
    rp = src.get(f"/{rp_loc}").json()
    assert rp["patient"]["reference"] == patient_ref
    consent = src.get("/Consent", params={"patient": patient_ref}).json()
    assert consent["total"] == 1
    assert consent["entry"][0]["resource"]["patient"]["reference"] == patient_ref

    before = _all_counts(src)
    r2 = src.post("", content=json.dumps(family_bundle_same(b)), headers={"Content-Type": "application/fhir+json"})
    assert r2.status_code == 200, r2.text
    assert [e["response"]["status"] for e in r2.json()["entry"]] == ["200 OK"] * 3
    assert [e["response"]["location"] for e in r2.json()["entry"]] == [e["response"]["location"] for e in out["entry"]]
    assert _all_counts(src) == before


def family_bundle_same(b):
    """The same records re-sent with fresh urn:uuids, as a source system does."""
    text = json.dumps(b)
    for e in b["entry"]:
        text = text.replace(e["fullUrl"], e["fullUrl"].replace("urn:uuid:", "urn:uuid:0"))
    return json.loads(text)


def test_changed_record_makes_a_new_version_and_history(live):
    src = live.source(MATERNITY_ORG, "maternity")
    p = patient("Evans", "Cara", nhs=next_nhs())
    r = src.post("/Patient", json=p, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201
    pid = r.json()["id"]
    p2 = {**p, "birthDate": "1996-02-03"}
    r = src.post("/Patient", json=p2, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    h = src.get(f"/Patient/{pid}/_history").json()
    assert h["type"] == "history" and h["total"] == 2
    v1 = src.get(f"/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json()["birthDate"] == "1995-02-03" and v1.headers["etag"] == 'W/"1"'
    assert src.get(f"/Patient/{pid}/_history/9").status_code == 404


@pytest.mark.parametrize(
    "breakage, status, expression_part",
    [
        ("invalid-nhs", 422, "identifier[0].value"),
        ("unknown-type", 400, "resourceType"),
        ("invalid-code", 400, "gender"),
        ("broken-reference", 422, "patient.reference"),
        ("dangling-urn", 422, "patient.reference"),
    ],
)
def test_transaction_with_one_bad_entry_writes_nothing(live, breakage, status, expression_part):
    src = live.source(MATERNITY_ORG, "maternity")
    b = family_bundle()
    bad_index = 1
    rp = b["entry"][1]["resource"]
    if breakage == "invalid-nhs":
        bad_index = 0
        b["entry"][0]["resource"]["identifier"][0]["value"] = "9990000011"
    elif breakage == "unknown-type":
        b["entry"][1]["resource"] = {"resourceType": "Spaceship", "id": "x"}
        b["entry"][1]["request"]["url"] = "Patient"
    elif breakage == "invalid-code":
        rp["gender"] = "xx"
    elif breakage == "broken-reference":
        rp["patient"] = {"reference": "Patient/does-not-exist"}
    elif breakage == "dangling-urn":
        rp["patient"] = {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}
    before = _all_counts(src)
    r = src.post("", content=json.dumps(b), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == status, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    issue = oo["issue"][0]
    assert issue["severity"] == "error"
    assert issue["details"]["coding"][0]["system"] == "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"
    expr = issue["expression"][0]
    assert expr.startswith(f"Bundle.entry[{bad_index}]"), expr
    assert expression_part in expr
    assert "9990000011" not in r.text  # never echo an NHS number in an error
    assert _all_counts(src) == before


def test_references_to_stored_records_are_checked_together_and_the_first_missing_is_named(live):
    """References from a Bundle to records already stored resolve in one look-up; when some do
    not, the error names the first of them in entry order, and nothing is written."""
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", content=json.dumps(patient("Stored", "Sue", nhs=next_nhs())), headers={"Content-Type": "application/fhir+json"})
    mum = f"Patient/{r.json()['id']}"

    def flag(ref: str) -> dict:
        return entry({"resourceType": "Flag", "status": "active", "code": {"text": "Lives with a dog"}, "subject": {"reference": ref}})

    before = _all_counts(src)
    bad = bundle([flag(mum), flag("Patient/missing-b"), flag(mum), flag("Patient/missing-a"), flag("Patient/missing-b")])
    r = src.post("", content=json.dumps(bad), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.subject.reference"] and "Patient/missing-b" in issue["diagnostics"]
    assert _all_counts(src) == before
    r = src.post("", content=json.dumps(bundle([flag(mum), flag(mum)])), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200 and [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 2


def test_batch_processes_entries_independently(live):
    src = live.source(MATERNITY_ORG, "maternity")
    good = patient("Green", "Dee", nhs=next_nhs())
    bad = patient("Brown", "Eve", nhs="9990000011")
    r = src.post("", content=json.dumps(bundle([entry(good), entry(bad)], kind="batch")), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    assert out["entry"][0]["response"]["status"] == "201 Created"
    assert out["entry"][1]["response"]["status"] == "422"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert _count(src, "Patient", family="green") == 1
    assert _count(src, "Patient", family="brown") == 0


def test_conditional_create_and_update(live):
    src = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    p = patient("Khan", "Faisal", nhs=nhs, gender="male", birth="1990-01-01")
    ident = f"{NHS}|{nhs}"
    b = bundle([entry(p, ifNoneExist=f"identifier={ident}")])
    r1 = src.post("", json=b, headers={"Content-Type": "application/fhir+json"})
    assert r1.json()["entry"][0]["response"]["status"] == "201 Created"
    r2 = src.post("", json=b, headers={"Content-Type": "application/fhir+json"})
    assert r2.json()["entry"][0]["response"]["status"] == "200 OK"
    assert _count(src, "Patient", identifier=ident) == 1
    # conditional update by identifier
    upd = {**p, "birthDate": "1990-01-02"}
    r3 = src.put(f"/Patient?identifier={ident}", json=upd, headers={"Content-Type": "application/fhir+json"})
    assert r3.status_code == 200, r3.text
    assert r3.json()["birthDate"] == "1990-01-02" and r3.json()["meta"]["versionId"] == "2"
    # conditional update of an unknown identifier creates
    nhs2 = next_nhs()
    r4 = src.put(f"/Patient?identifier={NHS}|{nhs2}", json=patient("Khan", "Zara", nhs=nhs2), headers={"Content-Type": "application/fhir+json"})
    assert r4.status_code == 201
    # conditional update in a transaction
    b2 = bundle([entry({**upd, "gender": "male", "birthDate": "1990-01-03"}, method="PUT", url=f"Patient?identifier={ident}")])
    r5 = src.post("", json=b2, headers={"Content-Type": "application/fhir+json"})
    assert r5.json()["entry"][0]["response"]["status"] == "200 OK"
    assert r5.json()["entry"][0]["response"]["etag"] == 'W/"3"'


def test_conditional_and_logical_references_resolve_across_sources(live):
    """A health visitor's RelatedPerson refers to the mother by NHS number before the GP's
    record of her arrives; it resolves when she does."""
    hv = live.source(HV_ORG, "health-visiting")
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    rp = {
        "resourceType": "RelatedPerson",
        "identifier": [{"system": "https://hv.example.nhs.uk/Id/rp", "value": "rp-" + nhs}],
        "patient": {"reference": f"Patient?identifier={NHS}|{nhs}"},
        "name": [{"family": "Okafor", "given": ["Ben"]}],
        "gender": "male",
    }
    r = hv.post("", json=bundle([entry(rp)]), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    stored = hv.get("/RelatedPerson", params={"family": "okafor"}).json()["entry"][0]["resource"]
    assert stored["patient"] == {"type": "Patient", "identifier": {"system": NHS, "value": nhs}}
    r = gp.post("/Patient", json=patient("Okafor", "Ngozi", nhs=nhs), headers={"Content-Type": "application/fhir+json"})
    pid = r.json()["id"]
    admin = live.client("admin", "X26")
    found = admin.get("/RelatedPerson", params={"patient": f"Patient/{pid}"}).json()
    assert found["total"] == 1
    # now that the patient is known, a new conditional reference resolves to the literal id
    rp2 = {**rp, "identifier": [{"system": "https://hv.example.nhs.uk/Id/rp", "value": "rp2-" + nhs}]}
    hv.post("", json=bundle([entry(rp2)]), headers={"Content-Type": "application/fhir+json"})
    refs = [e["resource"]["patient"] for e in hv.get("/RelatedPerson", params={"family": "okafor"}).json()["entry"]]
    assert {"reference": f"Patient/{pid}"} in refs


def test_transaction_entry_limit_is_413(live, settings):
    src = live.source(MATERNITY_ORG, "maternity")
    entries = [entry(patient("Bulk", f"N{i}")) for i in range(settings.max_bundle_entries + 1)]
    r = src.post("", json=bundle(entries), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 413
    assert r.json()["issue"][0]["code"] == "too-costly"
    assert _count(src, "Patient", family="bulk") == 0


def test_not_a_transaction_or_batch(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("", json={"resourceType": "Bundle", "type": "collection"}, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.type"]
    r = src.post("", json=bundle([{"resource": patient("A", "B")}]), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and "request" in r.json()["issue"][0]["diagnostics"]


def test_concurrent_sends_of_the_same_record_make_one_record(live):
    """Two transactions racing to create the same record (same source and identifier): the
    loser's unique-key conflict is retried against the winner's row, and no duplicate is left."""
    import threading

    src_token = live.token("source-system", MATERNITY_ORG, "maternity")
    import httpx

    results = []
    for round_ in range(5):
        nhs = next_nhs()
        body = json.dumps(family_bundle(nhs, suffix=str(round_)))
        barrier = threading.Barrier(2)

        def send():
            with httpx.Client(timeout=30) as c:
                barrier.wait()
                results.append(c.post(live.fhir, content=body, headers={"Authorization": f"Bearer {src_token}", "Content-Type": "application/fhir+json"}))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        src = live.source(MATERNITY_ORG, "maternity")
        assert _count(src, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}") == 1
        assert _count(src, "Consent", identifier=f"https://test.example.nhs.uk/Id/consent|c-{nhs}") == 1
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]


@pytest.mark.parametrize("bad", [
    {"resourceType": "Patient", "gender": "bloke"},  # refused by the checks after the look-ups were sent
    {"resourceType": "Patient", "identifier": {"system": NHS, "value": "9990000018"}},  # not an array: nothing sent early
    {"resourceType": "Patient", "identifier": [{"system": NHS, "value": "999\u00000000018"}]},  # a NUL: nothing sent early
])
def test_a_bundle_refused_after_its_first_look_ups_were_sent_leaves_every_connection_usable(live, bad):
    """On PostgreSQL a Bundle's first look-ups go to the server while its entries are checked;
    a Bundle the checks refuse gives them up with its transaction. Many such Bundles in a row
    (more than the pool holds), then good ones: each is answered as alone, nothing is written,
    and every connection is left fit for the next request."""
    src = live.source(MATERNITY_ORG, "maternity")
    ct = {"Content-Type": "application/fhir+json"}
    before = _all_counts(src)
    good = family_bundle()
    refused = {"resourceType": "Bundle", "type": "transaction", "entry": good["entry"][:2] + [
        {"fullUrl": "urn:uuid:5b3e0a84-1d7c-4c55-9d0e-2d6a4f0b9c11", "resource": bad, "request": {"method": "POST", "url": "Patient"}}]}
    for _ in range(35):
        r = src.post("", content=json.dumps(refused), headers=ct)
        assert r.status_code == 400, r.text
        assert "entry[2]" in r.json()["issue"][0]["diagnostics"] or "Bundle.entry[2]" in json.dumps(r.json())
    assert _all_counts(src) == before
    for _ in range(12):  # the pooled connections serve writes and reads as before
        r = src.post("", content=json.dumps(family_bundle()), headers=ct)
        assert r.status_code == 200, r.text
    r = src.post("", content=json.dumps(good), headers=ct)
    assert r.status_code == 200 and [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 3
    r = src.post("", content=json.dumps(family_bundle_same(good)), headers=ct)  # its source keys found by the early look-ups
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK"] * 3
    assert _all_counts(src)["Patient"] == before["Patient"] + 13
