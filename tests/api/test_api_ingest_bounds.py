"""A Patient with a flood of identifiers is refused before anything is stored or linked (issue 18,
finding 2): a body of 100,000 identifiers, and one just over the per-resource cap in a transaction."""
from __future__ import annotations

import json

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import bundle, entry, patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def test_a_patient_with_100000_identifiers_is_refused_and_nothing_is_written(live):
    src = live.source(MATERNITY_ORG, "maternity")
    p = patient("Ulverston", "Piers", gender="male", birth="1972-05-06", local_id="bounds-0")
    p["identifier"] = [{"system": "https://test.example.nhs.uk/Id/patient", "value": f"b{k}"} for k in range(100_000)]
    r = src.post("/Patient", content=json.dumps(p), headers=FHIR_JSON)
    assert r.status_code in (400, 413), r.text[:300]
    assert r.json()["resourceType"] == "OperationOutcome"
    assert src.get("/Patient", params={"family": "Ulverston", "_count": 0}).json()["total"] == 0


def test_one_identifier_over_the_cap_fails_the_whole_transaction(live):
    src = live.source(MATERNITY_ORG, "maternity")
    cap = live.settings.resource_max_identifiers
    ok = patient("Ulverston", "Quentin", gender="male", birth="1971-02-03", local_id="bounds-1")
    over = patient("Ulverston", "Rupert", gender="male", birth="1970-01-02", local_id="bounds-2")
    over["identifier"] = [{"system": "https://test.example.nhs.uk/Id/patient", "value": f"c{k}"} for k in range(cap + 1)]
    r = src.post("", content=json.dumps(bundle([entry(ok), entry(over)])), headers=FHIR_JSON)
    assert r.status_code == 400, r.text[:300]
    assert any("Bundle.entry[1]" in e for e in r.json()["issue"][0].get("expression", []))
    assert src.get("/Patient", params={"family": "Ulverston", "_count": 0}).json()["total"] == 0
