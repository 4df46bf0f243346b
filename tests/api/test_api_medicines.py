"""Medicines from GP systems (GP Connect): MedicationStatement and MedicationRequest over real
HTTP, on SQLite and PostgreSQL. Stored, references resolved (urn:uuid, conditional, logical by
NHS number), searched, versioned, labelled at ingest from their codes (a methadone prescription
is often the only sign of opioid dependence in a GP record), refused with the element named when
they are bad, and never read by an administrator or an IG officer."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import GP_ORG, MATERNITY_ORG
from tests.fhirdata import bundle, entry, next_nhs, patient

CT = {"Content-Type": "application/fhir+json"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"
DMD = "https://dmd.nhs.uk"
SCT = "http://snomed.info/sct"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# dm+d ids from ../shared/codelists/medicines/opioid-substitution.csv
METHADONE = "36120711000001104"  # Methadone 1mg/ml oral solution
BUPRENORPHINE = "322496005"  # Buprenorphine 2mg sublingual tablets sugar free
# SNOMED CT, in consent/valuesets/substance-misuse.yaml
OPIOID_ABUSE = "5602001"  # Opioid abuse (disorder)
MEDICINE_TYPES = ("MedicationStatement", "MedicationRequest")


def _methadone(text: str = "Methadone 1mg/ml oral solution") -> dict:
    return {"coding": [{"system": DMD, "code": METHADONE, "display": "Methadone 1mg/ml oral solution"}], "text": text}


def _statement(subject: dict, *, ident: str, **extra) -> dict:
    body = {
        "resourceType": "MedicationStatement",
        "identifier": [{"system": "https://gp.example.nhs.uk/Id/medication-statement", "value": ident}],
        "status": "active",
        "medicationCodeableConcept": _methadone(),
        "subject": subject,
        "effectiveDateTime": "2026-03-02",
        "dosage": [{"text": "60 ml once a day, supervised", "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
    }
    return {**body, **extra}


def _request(subject: dict, *, ident: str, **extra) -> dict:
    body = {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": "https://gp.example.nhs.uk/Id/medication-request", "value": ident}],
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": _methadone(),
        "subject": subject,
        "authoredOn": "2026-03-01",
        "reasonCode": [{"coding": [{"system": SCT, "code": OPIOID_ABUSE, "display": "Opioid abuse (disorder)"}]}],
    }
    return {**body, **extra}


def _total(client: httpx.Client, res_type: str, **params) -> int:
    r = client.get(f"/{res_type}", params={**params, "_count": 0})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _ids(client: httpx.Client, res_type: str, **params) -> set[str]:
    r = client.get(f"/{res_type}", params={**params, "_count": 50})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def _labels(resource: dict) -> set[str]:
    return {c["code"] for c in (resource.get("meta") or {}).get("security", []) if c.get("system") == V3_ACT}


def _post(client: httpx.Client, body: dict, path: str = "") -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers=CT)


def _gp_transaction(nhs: str) -> dict:
    """A GP system's transaction: the patient, a methadone MedicationStatement whose subject is
    the patient's urn:uuid, a MedicationRequest whose subject is a conditional reference by NHS
    number, and a past buprenorphine statement whose medicine is a contained Medication."""
    p = entry(patient("Smyth", "Jon", nhs=nhs, gender="male", birth="1998-04-03", local_id="gp-" + nhs))
    ms = _statement({"reference": p["fullUrl"]}, ident="ms-" + nhs)
    mr = _request({"reference": f"Patient?identifier={NHS}|{nhs}"}, ident="mr-" + nhs)
    contained = _statement(
        {"reference": p["fullUrl"]}, ident="ms-old-" + nhs, status="completed",
        contained=[{"resourceType": "Medication", "id": "med", "status": "active",
                    "code": {"coding": [{"system": DMD, "code": BUPRENORPHINE, "display": "Buprenorphine 2mg sublingual tablets sugar free"}]}}],
        medicationReference={"reference": "#med", "display": "Buprenorphine 2mg sublingual tablets"},
        effectivePeriod={"start": "2025-01-10", "end": "2025-06-30"},
    )
    del contained["medicationCodeableConcept"], contained["effectiveDateTime"]
    return bundle([p, entry(ms), entry(mr), entry(contained)])


def test_a_gp_transaction_of_medicines_is_stored_resolved_searchable_and_versioned(live):
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    r = _post(gp, _gp_transaction(nhs))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 4
    locs = [e["response"]["location"].split("/_history")[0] for e in out["entry"]]
    assert [loc.split("/")[0] for loc in locs] == ["Patient", "MedicationStatement", "MedicationRequest", "MedicationStatement"]
    pid = locs[0].split("/")[1]
    ms_id, mr_id, old_id = (loc.split("/")[1] for loc in locs[1:])

    # the urn:uuid and the conditional reference are both rewritten to the stored patient
    ms = gp.get(f"/MedicationStatement/{ms_id}")
    assert ms.status_code == 200, ms.text
    assert ms.headers["etag"] == 'W/"1"'
    assert ms.json()["subject"] == {"reference": f"Patient/{pid}"}
    assert ms.json()["medicationCodeableConcept"]["coding"][0] == {"system": DMD, "code": METHADONE, "display": "Methadone 1mg/ml oral solution"}
    mr = gp.get(f"/MedicationRequest/{mr_id}").json()
    assert mr["subject"] == {"reference": f"Patient/{pid}"}
    assert gp.get(f"/MedicationStatement/{old_id}").json()["contained"][0]["code"]["coding"][0]["code"] == BUPRENORPHINE

    # search: patient, subject, code (system|code, and the contained Medication's code), status, dates
    assert _ids(gp, "MedicationStatement", patient=f"Patient/{pid}") == {ms_id, old_id}
    assert _ids(gp, "MedicationStatement", patient=pid) == {ms_id, old_id}
    assert _ids(gp, "MedicationStatement", subject=f"Patient/{pid}") == {ms_id, old_id}
    assert _ids(gp, "MedicationStatement", code=f"{DMD}|{METHADONE}") == {ms_id}
    assert _ids(gp, "MedicationStatement", code=METHADONE) == {ms_id}
    assert _ids(gp, "MedicationStatement", code=f"{DMD}|{BUPRENORPHINE}") == {old_id}  # through medicationReference "#med"
    assert _total(gp, "MedicationStatement", code=f"{SCT}|{METHADONE}") == 0  # the system is part of the token
    assert _ids(gp, "MedicationStatement", status="active") == {ms_id}
    assert _ids(gp, "MedicationStatement", status="completed") == {old_id}
    assert _ids(gp, "MedicationStatement", effective="2026-03-02") == {ms_id}
    assert _ids(gp, "MedicationStatement", effective="ge2026-01-01") == {ms_id}
    assert _ids(gp, "MedicationStatement", effective="2025-03") == set()  # the period is wider than March
    assert _ids(gp, "MedicationStatement", effective="lt2025-12-31") == {old_id}
    assert _ids(gp, "MedicationStatement", identifier=f"https://gp.example.nhs.uk/Id/medication-statement|ms-{nhs}") == {ms_id}
    assert _ids(gp, "MedicationStatement", **{"status:not": "completed"}) == {ms_id}
    assert _ids(gp, "MedicationRequest", patient=f"Patient/{pid}") == {mr_id}
    assert _ids(gp, "MedicationRequest", code=f"{DMD}|{METHADONE}") == {mr_id}
    assert _ids(gp, "MedicationRequest", status="active", intent="order") == {mr_id}
    assert _total(gp, "MedicationRequest", intent="plan") == 0
    assert _ids(gp, "MedicationRequest", authoredon="2026-03-01") == {mr_id}
    assert _total(gp, "MedicationRequest", authoredon="2026-03-02") == 0
    r = gp.get("/MedicationStatement", params={"effective": "not-a-date"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = gp.get("/MedicationRequest", params={"effective": "2026"})  # effective is MedicationStatement's
    assert r.status_code == 400 and "authoredon" in r.json()["issue"][0]["diagnostics"]

    # the same transaction re-sent (fresh urn:uuids, as a GP system does) changes nothing
    r = _post(gp, _gp_transaction(nhs))
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK"] * 4
    assert [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]] == locs

    # a change makes a new version; history and vread
    stopped = {**gp.get(f"/MedicationStatement/{ms_id}").json(), "status": "stopped"}
    r = gp.put(f"/MedicationStatement/{ms_id}", content=json.dumps(stopped), headers=CT)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    h = gp.get(f"/MedicationStatement/{ms_id}/_history").json()
    assert h["type"] == "history" and h["total"] == 2
    assert [e["resource"]["status"] for e in h["entry"]] == ["stopped", "active"]
    v1 = gp.get(f"/MedicationStatement/{ms_id}/_history/1")
    assert v1.status_code == 200 and v1.json()["status"] == "active" and v1.headers["etag"] == 'W/"1"'
    assert _ids(gp, "MedicationStatement", status="stopped") == {ms_id}
    assert _total(gp, "MedicationStatement", status="active") == 0

    # another organisation does not read the GP's medicines through the plain REST API
    other = live.source(MATERNITY_ORG, "maternity")
    assert other.get(f"/MedicationStatement/{ms_id}").status_code == 404  # not found or not yours: one answer
    assert _total(other, "MedicationStatement") == 0


def test_medicines_are_labelled_at_ingest_from_their_codes(live):
    """A prescription for opioid abuse (SNOMED CT reasonCode) is labelled ETH and SUD, as a
    Condition with the same code is; a contained Medication's code is walked like any other."""
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    r = _post(gp, _gp_transaction(nhs))
    assert r.status_code == 200, r.text
    mr_id = r.json()["entry"][2]["response"]["location"].split("/")[1]
    mr = gp.get(f"/MedicationRequest/{mr_id}").json()
    assert {"ETH", "SUD"} <= _labels(mr)
    assert {"system": "https://familyview.example.nhs.uk/fhir/CodeSystem/data-category", "code": "substance-misuse"} in mr["meta"]["security"]
    # a SNOMED CT code of the substance-misuse value set as the medicine itself (contained) labels too
    pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    contained = _statement({"reference": f"Patient/{pid}"}, ident="ms-sct-" + nhs,
                           contained=[{"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": SCT, "code": OPIOID_ABUSE}]}}],
                           medicationReference={"reference": "#m1"})
    del contained["medicationCodeableConcept"]
    r = _post(gp, contained, "/MedicationStatement")
    assert r.status_code == 201, r.text
    assert {"ETH", "SUD"} <= _labels(r.json())
    assert _ids(gp, "MedicationStatement", code=f"{SCT}|{OPIOID_ABUSE}") == {r.json()["id"]}


def test_methadone_by_its_dm_d_code_alone_is_labelled_substance_misuse(live):
    """The dm+d code lists (../shared/codelists/medicines, opioid substitution) label methadone
    and buprenorphine by their dm+d ids, in medicationCodeableConcept or a contained Medication."""
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    r = _post(gp, _gp_transaction(nhs))
    assert r.status_code == 200, r.text
    ms_id = r.json()["entry"][1]["response"]["location"].split("/")[1]
    old_id = r.json()["entry"][3]["response"]["location"].split("/")[1]
    assert {"ETH", "SUD"} <= _labels(gp.get(f"/MedicationStatement/{ms_id}").json())  # medicationCodeableConcept, dm+d
    assert {"ETH", "SUD"} <= _labels(gp.get(f"/MedicationStatement/{old_id}").json())  # contained Medication, dm+d


def test_a_reference_to_a_medication_held_elsewhere_is_kept_but_its_code_is_not_seen(live):
    """The gateway stores no Medication of its own: a medicationReference to one elsewhere is
    stored as sent (R4 allows it), but neither code search nor labelling can see its code."""
    gp = live.source(GP_ORG, "general-practice")
    r = _post(gp, patient("Ref", "Rob", nhs=next_nhs(), gender="male"), "/Patient")
    pid = r.json()["id"]
    body = _statement({"reference": f"Patient/{pid}"}, ident="ms-ext", medicationReference={"reference": "Medication/upstream-42"})
    del body["medicationCodeableConcept"]
    r = _post(gp, body, "/MedicationStatement")
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["medicationReference"] == {"reference": "Medication/upstream-42"}
    assert not _labels(stored)  # nothing in the record says what the medicine is
    assert _total(gp, "MedicationStatement", patient=f"Patient/{pid}") == 1
    assert _total(gp, "MedicationStatement", code=METHADONE) == 0
    # a Medication cannot be sent on its own
    r = _post(gp, {"resourceType": "Medication", "code": _methadone()}, "/Medication")
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "not-supported"


def test_a_logical_reference_to_someone_not_yet_known_is_kept_and_resolves_when_they_arrive(live):
    """The GP sends the father's medicines before any record of him exists here: by NHS number
    (Reference.identifier) and by conditional reference. Both are kept as logical references and
    found by patient= once his Patient arrives, from any source; later conditional references
    resolve to the literal id."""
    gp = live.source(GP_ORG, "general-practice")
    nhs = next_nhs()
    logical = {"type": "Patient", "identifier": {"system": NHS, "value": nhs}}
    ms = _statement(logical, ident="ms-early-" + nhs)
    mr = _request({"reference": f"Patient?identifier={NHS}|{nhs}"}, ident="mr-early-" + nhs)
    r = _post(gp, bundle([entry(ms), entry(mr)]))
    assert r.status_code == 200, r.text
    ms_id, mr_id = (e["response"]["location"].split("/")[1] for e in r.json()["entry"])
    assert gp.get(f"/MedicationStatement/{ms_id}").json()["subject"] == logical
    assert gp.get(f"/MedicationRequest/{mr_id}").json()["subject"] == logical  # kept as a logical reference
    assert _ids(gp, "MedicationRequest", **{"subject:identifier": f"{NHS}|{nhs}"}) == {mr_id}

    maternity = live.source(MATERNITY_ORG, "maternity")
    r = _post(maternity, patient("Smyth", "Jon", nhs=nhs, gender="male"), "/Patient")
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert _ids(gp, "MedicationStatement", patient=f"Patient/{pid}") == {ms_id}
    assert _ids(gp, "MedicationRequest", patient=f"Patient/{pid}") == {mr_id}

    # now that he is known, a new conditional reference resolves to the literal id
    mr2 = _request({"reference": f"Patient?identifier={NHS}|{nhs}"}, ident="mr-late-" + nhs)
    r = _post(gp, bundle([entry(mr2)]))
    assert r.status_code == 200, r.text
    mr2_id = r.json()["entry"][0]["response"]["location"].split("/")[1]
    assert gp.get(f"/MedicationRequest/{mr2_id}").json()["subject"] == {"reference": f"Patient/{pid}"}
    assert _ids(gp, "MedicationRequest", patient=f"Patient/{pid}") == {mr_id, mr2_id}


def _bad(case: str, subject: dict) -> tuple[dict, int, str, str]:
    """(resource, status, issue code, expression relative to the resource) for one kind of bad input."""
    if case == "unknown-status":
        return _statement(subject, ident="b1", status="taking"), 400, "code-invalid", "MedicationStatement.status"
    if case == "request-unknown-status":
        return _request(subject, ident="b2", status="dispensed"), 400, "code-invalid", "MedicationRequest.status"
    if case == "request-missing-intent":
        body = _request(subject, ident="b3")
        del body["intent"]
        return body, 400, "structure", "MedicationRequest.intent"
    if case == "request-unknown-intent":
        return _request(subject, ident="b4", intent="prescription"), 400, "code-invalid", "MedicationRequest.intent"
    if case == "missing-medication":
        body = _statement(subject, ident="b5")
        del body["medicationCodeableConcept"]
        return body, 400, "structure", "MedicationStatement.medication[x]"
    if case == "two-medications":
        body = _statement(subject, ident="b6", medicationReference={"reference": "Medication/x"})
        return body, 400, "structure", "MedicationStatement.medication[x]"
    if case == "effective-as-a-number":
        return _statement(subject, ident="b7", effectiveDateTime=20260302), 400, "structure", "MedicationStatement.effectiveDateTime"
    if case == "effective-not-a-date":
        return _statement(subject, ident="b8", effectiveDateTime="02/03/2026"), 400, "structure", "MedicationStatement.effectiveDateTime"
    if case == "contained-medication-missing":
        body = _statement(subject, ident="b9", medicationReference={"reference": "#nope"})
        del body["medicationCodeableConcept"]
        return body, 400, "invalid", "MedicationStatement.medicationReference.reference"
    if case == "contained-medication-bad-status":
        body = _statement(subject, ident="b10", medicationReference={"reference": "#m"},
                          contained=[{"resourceType": "Medication", "id": "m", "status": "withdrawn", "code": _methadone()}])
        del body["medicationCodeableConcept"]
        return body, 400, "code-invalid", "MedicationStatement.contained[0].status"
    if case == "dosage-bad-period-unit":
        return _statement(subject, ident="b11", dosage=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "day"}}}]), 400, "code-invalid", "MedicationStatement.dosage[0].timing.repeat.periodUnit"
    raise AssertionError(case)


BAD_CASES = [
    "unknown-status", "request-unknown-status", "request-missing-intent", "request-unknown-intent", "missing-medication",
    "two-medications", "effective-as-a-number", "effective-not-a-date", "contained-medication-missing",
    "contained-medication-bad-status", "dosage-bad-period-unit",
]


def _nothing_written(gp: httpx.Client, patients_before: int) -> None:
    for t in MEDICINE_TYPES:
        assert _total(gp, t) == 0, t
    assert _total(gp, "Patient") == patients_before


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_medicines_are_refused_naming_the_element_and_write_nothing(live, case):
    gp = live.source(GP_ORG, "general-practice")
    r = _post(gp, patient("Known", "Kai", nhs=next_nhs(), gender="male"), "/Patient")
    pid = r.json()["id"]
    body, status, code, expression = _bad(case, {"reference": f"Patient/{pid}"})
    r = _post(gp, body, f"/{body['resourceType']}")
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome"
    assert (issue["code"], issue["expression"]) == (code, [expression]), issue
    assert issue["details"]["coding"][0]["system"] == "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"
    _nothing_written(gp, 1)


@pytest.mark.parametrize("case", BAD_CASES + ["subject-unknown-literal-id"])
def test_a_transaction_with_a_good_patient_and_a_bad_medicine_writes_nothing(live, case):
    gp = live.source(GP_ORG, "general-practice")
    p = entry(patient("Batch", "Ben", nhs=next_nhs(), gender="male"))
    if case == "subject-unknown-literal-id":
        body, status, code, expression = _statement({"reference": "Patient/does-not-exist"}, ident="b0"), 422, "not-found", "MedicationStatement.subject.reference"
    else:
        body, status, code, expression = _bad(case, {"reference": p["fullUrl"]})
    r = _post(gp, bundle([p, entry(body)]))
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == code
    assert issue["expression"] == ["Bundle.entry[1].resource." + expression.split(".", 1)[1]], issue
    _nothing_written(gp, 0)


def test_a_batch_takes_the_good_medicine_and_refuses_the_bad(live):
    gp = live.source(GP_ORG, "general-practice")
    pid = _post(gp, patient("Batch", "Bea", nhs=next_nhs()), "/Patient").json()["id"]
    good = _statement({"reference": f"Patient/{pid}"}, ident="good")
    bad = _request({"reference": f"Patient/{pid}"}, ident="bad", intent="wish")
    r = _post(gp, bundle([entry(good), entry(bad)], kind="batch"))
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "400", statuses
    assert r.json()["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.intent"]
    assert _total(gp, "MedicationStatement") == 1 and _total(gp, "MedicationRequest") == 0


def test_administrators_and_ig_officers_never_read_medicines(live):
    """A methadone prescription is clinical data: the administrator, who manages people and
    linkage, and the IG officer, who sees audit data only, are refused in read, search, POST
    _search, history, vread and a batch's GET, and the refusal never carries the code."""
    gp = live.source(GP_ORG, "general-practice")
    r = _post(gp, _gp_transaction(next_nhs()))
    assert r.status_code == 200, r.text
    refs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"][1:3]]
    for who in (live.client("admin", "X26"), live.client("ig-officer", "X26")):
        for ref in refs:
            res_type = ref.split("/")[0]
            for resp in (who.get(f"/{ref}"), who.get(f"/{res_type}"), who.get(f"/{ref}/_history"), who.get(f"/{ref}/_history/1"),
                         who.get(f"/{res_type}", params={"code": f"{DMD}|{METHADONE}"}),
                         who.post(f"/{res_type}/_search", content="", headers={"Content-Type": "application/x-www-form-urlencoded"})):
                assert resp.status_code == 403 and resp.json()["resourceType"] == "OperationOutcome", resp.text
                assert METHADONE not in resp.text
        r = who.post("", content=json.dumps({"resourceType": "Bundle", "type": "batch",
                                            "entry": [{"request": {"method": "GET", "url": ref}} for ref in refs]}), headers=CT)
        if r.status_code == 200:
            assert all(e["response"]["status"].startswith("403") for e in r.json()["entry"]), r.text
        else:
            assert r.status_code == 403, r.text
        assert METHADONE not in r.text
    assert gp.get(f"/{refs[0]}").status_code == 200  # the GP still reads its own


def test_capability_statement_lists_medicines_with_their_search_parameters(live):
    cs = httpx.get(live.fhir + "/metadata").json()
    types = {res["type"]: res for res in cs["rest"][0]["resource"]}
    expected = {
        "MedicationStatement": {"_id", "_lastUpdated", "identifier", "patient", "subject", "code", "status", "category", "effective"},
        "MedicationRequest": {"_id", "_lastUpdated", "identifier", "patient", "subject", "code", "status", "intent", "category", "authoredon"},
    }
    for res_type, params in expected.items():
        res = types[res_type]
        assert {p["name"] for p in res["searchParam"]} == params
        kinds = {p["name"]: p["type"] for p in res["searchParam"]}
        assert kinds["patient"] == "reference" and kinds["code"] == "token"
        assert kinds["effective" if res_type == "MedicationStatement" else "authoredon"] == "date"
        assert {i["code"] for i in res["interaction"]} >= {"read", "vread", "history-instance", "search-type", "create", "update"}
        assert res["conditionalCreate"] and res["conditionalUpdate"] and "local" in res["referencePolicy"]
        assert "contained" in res["documentation"] and "https://dmd.nhs.uk" in res["documentation"]
    assert "Medication" not in types  # not stored on its own: the CapabilityStatement does not claim it
