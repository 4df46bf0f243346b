"""`familyview sync` pulls medicines (MedicationStatement, MedicationRequest) from an upstream
FHIR server (a second familyview over HTTP) by default, with their subjects rewritten to the local
patients, labelled at ingest, and, where the upstream names a Medication of its own, that
Medication contained in the record so its code is searched and labelled."""
from __future__ import annotations

import json

import httpx

from app.sync.engine import DEFAULT_TYPES
from tests.conftest import GP_ORG
from tests.fhirdata import bundle, entry, next_nhs, patient
from tests.sync.sync_support import history_len, post_bundle, search_all, syncer_for

DMD = "https://dmd.nhs.uk"
SCT = "http://snomed.info/sct"
METHADONE = "36120711000001104"  # Methadone 1mg/ml oral solution (dm+d)
OPIOID_ABUSE = "5602001"  # Opioid abuse (disorder), in consent/valuesets/substance-misuse.yaml
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _labels(resource: dict) -> set[str]:
    return {c["code"] for c in (resource.get("meta") or {}).get("security", []) if c.get("system") == V3_ACT}


def _seed(upstream, nhs: str, *, medication_reference: str | None = None) -> None:
    """The GP system's records on the upstream: a man, his methadone statement and prescription."""
    gp = upstream.source(GP_ORG, "general-practice")
    p = entry(patient("Upstream", "Ugo", nhs=nhs, gender="male", birth="1997-05-06"))
    ms = {
        "resourceType": "MedicationStatement",
        "identifier": [{"system": "https://gp.example.nhs.uk/Id/medication-statement", "value": "ms-" + nhs}],
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": DMD, "code": METHADONE, "display": "Methadone 1mg/ml oral solution"}]},
        "subject": {"reference": p["fullUrl"]},
        "effectiveDateTime": "2026-02-01",
        "reasonCode": [{"coding": [{"system": SCT, "code": OPIOID_ABUSE}]}],
    }
    mr = {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": "https://gp.example.nhs.uk/Id/medication-request", "value": "mr-" + nhs}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": p["fullUrl"]},
        "authoredOn": "2026-02-01",
    }
    if medication_reference:
        mr["medicationReference"] = {"reference": medication_reference, "display": "Methadone 1mg/ml oral solution"}
    else:
        mr["medicationCodeableConcept"] = {"coding": [{"system": DMD, "code": METHADONE}]}
    post_bundle(gp, bundle([p, entry(ms), entry(mr)]))
    gp.close()


def test_sync_pulls_medicines_by_default_and_a_second_run_changes_nothing(live, upstream):
    assert DEFAULT_TYPES.index("MedicationStatement") > DEFAULT_TYPES.index("Observation")
    assert DEFAULT_TYPES.index("MedicationRequest") > DEFAULT_TYPES.index("Condition")
    nhs = next_nhs()
    _seed(upstream, nhs)
    token = upstream.token("source-system", GP_ORG, "general-practice")
    syncer = syncer_for(live, upstream.fhir, token, GP_ORG, "general-practice")
    try:
        first = syncer.run()  # the default types
    finally:
        syncer.client.close()
    assert first.ok, first.render()
    assert first.of("MedicationStatement").created == 1 and first.of("MedicationRequest").created == 1, first.render()

    local = live.source(GP_ORG, "general-practice")
    [p] = search_all(local, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}")
    [ms] = search_all(local, "MedicationStatement", patient=f"Patient/{p['id']}")
    [mr] = search_all(local, "MedicationRequest", patient=f"Patient/{p['id']}")
    assert ms["subject"] == {"reference": f"Patient/{p['id']}"} and mr["subject"] == {"reference": f"Patient/{p['id']}"}
    assert ms["meta"]["source"].startswith(upstream.fhir + "/MedicationStatement/")
    assert {"ETH", "SUD"} <= _labels(ms)  # labelled at ingest, from the SNOMED CT reason
    assert [r["id"] for r in search_all(local, "MedicationStatement", code=f"{DMD}|{METHADONE}")] == [ms["id"]]
    assert [r["id"] for r in search_all(local, "MedicationRequest", intent="order", authoredon="2026-02-01")] == [mr["id"]]

    syncer = syncer_for(live, upstream.fhir, token, GP_ORG, "general-practice")
    try:
        second = syncer.run()
    finally:
        syncer.client.close()
    assert second.ok, second.render()
    assert second.total("created") == 0 and second.total("updated") == 0, second.render()
    assert history_len(local, "MedicationStatement", ms["id"]) == 1


class _UpstreamWithMedication(httpx.BaseTransport):
    """The upstream as a server that also holds Medication resources (familyview stores none):
    GET .../Medication/<id> is answered here, everything else goes to the real upstream."""

    def __init__(self, medications: dict[str, dict]):
        self.medications = medications
        self.inner = httpx.HTTPTransport()
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.rstrip("/").split("/")
        if request.method == "GET" and len(parts) >= 2 and parts[-2] == "Medication":
            self.asked.append(parts[-1])
            med = self.medications.get(parts[-1])
            if med is None:
                return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
            return httpx.Response(200, content=json.dumps(med), headers={"Content-Type": "application/fhir+json"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _sync_medicines(live, upstream, transport):
    token = upstream.token("source-system", GP_ORG, "general-practice")
    syncer = syncer_for(live, upstream.fhir, token, GP_ORG, "general-practice", transport=transport)
    try:
        return syncer.run(types=("Patient", "MedicationStatement", "MedicationRequest"))
    finally:
        syncer.client.close()


def test_an_upstream_medication_is_contained_so_its_code_is_in_the_record(live, upstream):
    nhs = next_nhs()
    _seed(upstream, nhs, medication_reference="Medication/methadone-oral")
    methadone = {
        "resourceType": "Medication", "id": "methadone-oral",
        "meta": {"versionId": "4", "lastUpdated": "2026-01-01T09:00:00.000Z"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Methadone</div>"},
        "code": {"coding": [{"system": SCT, "code": OPIOID_ABUSE}, {"system": DMD, "code": METHADONE}]},
        "status": "active",
        "manufacturer": {"reference": "Organization/maker"},
    }
    transport = _UpstreamWithMedication({"methadone-oral": methadone})
    summary = _sync_medicines(live, upstream, transport)
    assert summary.ok, summary.render()
    assert summary.of("MedicationRequest").created == 1, summary.render()
    assert transport.asked == ["methadone-oral"]

    local = live.source(GP_ORG, "general-practice")
    [mr] = search_all(local, "MedicationRequest")
    assert mr["medicationReference"] == {"reference": "#med", "display": "Methadone 1mg/ml oral solution"}
    [med] = mr["contained"]
    assert med["id"] == "med" and med["code"] == methadone["code"] and med["status"] == "active"
    assert "meta" not in med and "text" not in med  # a contained resource has neither (dom-1, dom-4)
    assert med["manufacturer"] == {"reference": f"{upstream.fhir}/Organization/maker"}  # still the upstream's
    assert {"ETH", "SUD"} <= _labels(mr)  # the contained Medication's code is labelled
    assert [r["id"] for r in search_all(local, "MedicationRequest", code=f"{DMD}|{METHADONE}")] == [mr["id"]]

    again = _sync_medicines(live, upstream, _UpstreamWithMedication({"methadone-oral": methadone}))
    assert again.ok and again.total("created") == 0 and again.total("updated") == 0, again.render()


def test_an_upstream_medication_that_cannot_be_fetched_leaves_the_upstream_url_and_a_warning(live, upstream):
    nhs = next_nhs()
    _seed(upstream, nhs, medication_reference="Medication/gone")
    summary = _sync_medicines(live, upstream, _UpstreamWithMedication({}))
    assert summary.ok, summary.render()
    assert summary.of("MedicationRequest").created == 1
    assert any("Medication/gone" in w.message for w in summary.warnings), summary.render()
    [mr] = search_all(live.source(GP_ORG, "general-practice"), "MedicationRequest")
    assert mr["medicationReference"]["reference"] == f"{upstream.fhir}/Medication/gone"
    assert "contained" not in mr and not _labels(mr)
