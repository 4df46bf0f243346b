"""A write that reaches a stored person through an identifier (NHS number or the source's local
id) but describes someone else is refused with 409 and writes nothing (issue 18, finding 5);
a typing slip, a married name kept beside the old one, and a correction by id go through."""
from __future__ import annotations

import json

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import bundle, entry, nhs_numbers, patient

NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
_numbers = nhs_numbers(760_000)


def _post(src, resource):
    return src.post(f"/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR_JSON)


def _alice(nhs: str, local_id: str) -> dict:
    return patient("Quennell", "Alice", nhs=nhs, gender="female", birth="1990-04-12", local_id=local_id)


def test_post_with_a_known_nhs_number_but_another_persons_demographics_is_refused(live):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next(_numbers)
    first = _post(src, _alice(nhs, "ig-alice-1"))
    assert first.status_code == 201, first.text
    alice_id = first.json()["id"]
    bob = patient("Ormerod", "Bob", nhs=nhs, gender="male", birth="1970-09-30", local_id="ig-bob-1")
    r = _post(src, bob)
    assert r.status_code == 409, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = json.dumps(outcome)
    assert f"Patient/{alice_id}" in text and "PUT Patient/" in text  # the record and the correction path
    for element in ("Patient.gender", "Patient.birthDate", "Patient.name.family"):
        assert element in outcome["issue"][0]["expression"]
    for stored_value in ("Quennell", "Alice", "1990", "female"):  # nothing of the stored person is disclosed
        assert stored_value not in text
    stored = src.get(f"/Patient/{alice_id}").json()
    assert stored["name"][0]["family"] == "Quennell" and stored["meta"]["versionId"] == "1"
    assert src.get("/Patient", params={"family": "Ormerod", "_count": 0}).json()["total"] == 0


def test_local_id_reaching_another_person_is_refused_in_a_transaction_and_nothing_is_written(live):
    src = live.source(MATERNITY_ORG, "maternity")
    first = _post(src, _alice(next(_numbers), "ig-alice-2"))
    assert first.status_code == 201, first.text
    # the same local id, no NHS number, a man born 1968: another person keyed under Alice's id
    other = patient("Pennywhistle", "Carl", gender="male", birth="1968-01-05", local_id="ig-alice-2")
    flag = {"resourceType": "Flag", "status": "active", "code": {"text": "Hearing screen follow-up"},
            "subject": {"reference": "urn:uuid:1b0c2a5e-0a51-4e0e-9f35-1d0c9b1c0001"}}
    b = bundle([entry(other, full_url="urn:uuid:1b0c2a5e-0a51-4e0e-9f35-1d0c9b1c0001"), entry(flag)])
    r = src.post("", content=json.dumps(b), headers=FHIR_JSON)
    assert r.status_code == 409, r.text
    assert "Bundle.entry[0].resource.gender" in r.json()["issue"][0]["expression"]
    assert src.get("/Flag", params={"_count": 0}).json()["total"] == 0
    assert src.get("/Patient", params={"family": "Pennywhistle", "_count": 0}).json()["total"] == 0


def test_conditional_update_by_nhs_number_to_another_person_is_refused_in_a_batch_entry(live):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next(_numbers)
    assert _post(src, _alice(nhs, "ig-alice-3")).status_code == 201
    bob = patient("Ormerod", "Bob", nhs=nhs, gender="male", birth="1970-09-30", local_id="ig-alice-3")
    b = bundle([entry(bob, method="PUT", url=f"Patient?identifier={NHS}|{nhs}")], kind="batch")
    r = src.post("", content=json.dumps(b), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    resp = r.json()["entry"][0]["response"]
    assert resp["status"].startswith("409")
    assert resp["outcome"]["issue"][0]["code"] == "conflict"


def test_typing_slips_and_a_kept_old_name_update_the_record(live):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next(_numbers)
    first = _post(src, _alice(nhs, "ig-alice-4"))
    alice_id = first.json()["id"]
    slip = patient("Quenell", "Alice", nhs=nhs, gender="female", birth="1990-04-21", local_id="ig-alice-4")  # one letter, two digits swapped
    r = _post(src, slip)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == alice_id and r.json()["meta"]["versionId"] == "2"
    married = patient("Featherstonehaugh", "Alice", nhs=nhs, gender="female", birth="1990-04-21", local_id="ig-alice-4")
    married["name"].append({"use": "maiden", "family": "Quenell", "given": ["Alice"]})
    r = _post(src, married)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "3"


def test_the_source_corrects_its_own_record_by_id(live):
    """A GP system that registered the wrong sex and birth date corrects the record it holds by id."""
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next(_numbers)
    alice_id = _post(src, _alice(nhs, "ig-alice-5")).json()["id"]
    corrected = patient("Quennell", "Alex", nhs=nhs, gender="male", birth="1991-11-02", local_id="ig-alice-5")
    corrected["id"] = alice_id
    r = src.put(f"/Patient/{alice_id}", content=json.dumps(corrected), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male" and r.json()["meta"]["versionId"] == "2"
