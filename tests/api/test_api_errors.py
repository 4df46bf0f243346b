"""Bad input gets a clear OperationOutcome and a 4xx; the unexpected gets a 500 that names
only the request id; every response carries X-Request-ID and X-Correlation-ID."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import next_nhs, patient

CT = {"Content-Type": "application/fhir+json"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _issue(r):
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


@pytest.mark.parametrize(
    "resource, status, code, expression",
    [
        ({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9990000011"}]}, 422, "value", "Patient.identifier[0].value"),
        ({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "99900000"}]}, 422, "value", "Patient.identifier[0].value"),
        ({"resourceType": "Patient", "gender": "xx"}, 400, "code-invalid", "Patient.gender"),
        ({"resourceType": "Patient", "birthDate": "03/04/1998"}, 400, "structure", "Patient.birthDate"),
        ({"resourceType": "Patient", "name": [{"given": "Jon"}]}, 400, "structure", "Patient.name[0].given"),
        ({"resourceType": "Patient", "favouriteColour": "blue"}, 400, "structure", "Patient.favouriteColour"),
        ({"resourceType": "Patient", "managingOrganization": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "not an ods"}}}, 422, "value", "Patient.managingOrganization.identifier.value"),
        ({"resourceType": "Patient", "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "Z"}]}}, 400, "code-invalid", "Patient.meta.security[0].code"),
        ({"resourceType": "Patient", "telecom": [{"system": "pigeon", "value": "x"}]}, 400, "code-invalid", "Patient.telecom[0].system"),
        ({"resourceType": "Flag", "status": "sort-of", "code": {"text": "x"}, "subject": {"reference": "Patient/x"}}, 400, "code-invalid", "Flag.status"),
        ({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "x"}], "provision": {"type": "maybe"}}, 400, "code-invalid", "Consent.provision.type"),
        ({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "x"}], "provision": {"type": "deny", "provision": [{"type": "permit", "provision": [{"type": "perhaps"}]}]}}, 400, "code-invalid", "Consent.provision.provision[0].provision[0].type"),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/x"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "gone"}]}}, 400, "code-invalid", "Condition.clinicalStatus.coding[0].code"),
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/missing"}}, 422, "not-found", "Observation.subject.reference"),
    ],
)
def test_invalid_resources_are_refused_with_the_element_named(live, resource, status, code, expression):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post(f"/{resource['resourceType']}", json=resource, headers=CT)
    assert r.status_code == status, r.text
    issue = _issue(r)
    assert issue["code"] == code
    assert issue["expression"] == [expression]
    assert issue["details"]["coding"][0]["code"]
    assert "9990000011" not in r.text
    assert src.get(f"/{resource['resourceType']}", params={"_count": 0}).json()["total"] == 0


def test_bad_json_is_400(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", content=b'{"resourceType": "Patient",', headers=CT)
    assert r.status_code == 400 and _issue(r)["code"] == "structure"
    r = src.post("/Patient", content=b"", headers=CT)
    assert r.status_code == 400
    r = src.post("/Patient", content=b"[1,2]", headers=CT)
    assert r.status_code == 400


def test_type_mismatch_and_unsupported_type(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json={"resourceType": "Flag"}, headers=CT)
    assert r.status_code == 400 and "does not match" in _issue(r)["diagnostics"]
    r = src.post("/Medication", json={"resourceType": "Medication"}, headers=CT)
    assert r.status_code == 400
    assert src.get("/Spaceship").status_code == 404
    assert src.get("/Patient", params={"shoe-size": "9"}).status_code == 400
    assert src.get("/Patient", params={"birthdate": "yesterday"}).status_code == 400
    assert src.get("/Patient", params={"_count": "-1"}).status_code == 400


def test_wrong_content_type_is_415(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415 and _issue(r)["code"] == "not-supported"
    r = src.post("", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_body_over_the_limit_is_413(tmp_path, key_path, sqlite_template):
    import shutil

    from tests.conftest import LiveServer, make_settings, start_server

    path = tmp_path / "small.db"
    shutil.copy(sqlite_template, path)
    s = make_settings(f"sqlite:///{path}", key_path, max_body_bytes=2000)
    base, app, server, stop = start_server(s)
    try:
        live = LiveServer(base, s, app, server)
        src = live.source(MATERNITY_ORG, "maternity")
        big = patient("Large", "Lara", nhs=next_nhs(), text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + "x" * 5000 + "</div>"})
        r = src.post("/Patient", json=big, headers=CT)
        assert r.status_code == 413 and _issue(r)["code"] == "too-costly"

        # chunked upload with no Content-Length is counted too
        def chunks():
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i:i + 500]

        r = src.post("/Patient", content=chunks(), headers=CT)
        assert r.status_code == 413
        assert src.get("/Patient", params={"_count": 0}).json()["total"] == 0
    finally:
        stop()


def test_version_conflict_is_412(live):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json=patient("Ver", "Vic", nhs=next_nhs()), headers=CT)
    pid, body = r.json()["id"], r.json()
    ok = src.put(f"/Patient/{pid}", json={**body, "gender": "other"}, headers={**CT, "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'
    stale = src.put(f"/Patient/{pid}", json={**body, "gender": "unknown"}, headers={**CT, "If-Match": 'W/"1"'})
    assert stale.status_code == 412 and _issue(stale)["code"] == "conflict"
    assert src.get(f"/Patient/{pid}").json()["gender"] == "other"
    r = src.put(f"/Patient/{pid}", json={**body, "id": "other-id"}, headers=CT)
    assert r.status_code == 400


def test_request_and_correlation_ids_are_echoed(live):
    r = httpx.get(live.fhir + "/metadata", headers={"X-Request-ID": "req-123", "X-Correlation-ID": "corr-9"})
    assert r.headers["x-request-id"] == "req-123" and r.headers["x-correlation-id"] == "corr-9"
    r = httpx.get(live.fhir + "/Patient")
    assert r.status_code == 401 and len(r.headers["x-request-id"]) >= 32 and r.headers["x-correlation-id"]
    r = httpx.get(live.base_url + "/nowhere")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome" and r.headers["x-request-id"]


def test_unexpected_error_is_500_naming_only_the_request_id(live, caplog, monkeypatch):
    from app.fhir import store

    def boom(*a, **k):
        raise RuntimeError("database exploded while reading 9990000018")

    monkeypatch.setattr(store, "search", boom)
    src = live.source(MATERNITY_ORG, "maternity")
    with caplog.at_level(logging.ERROR, logger="familyview"):
        r = src.get("/Patient", headers={"X-Request-ID": "trace-me-1"})
    assert r.status_code == 500
    issue = _issue(r)
    assert issue["code"] == "exception" and "trace-me-1" in issue["diagnostics"]
    assert "exploded" not in r.text and "9990000018" not in r.text
    assert r.headers["x-request-id"] == "trace-me-1"
    logged = caplog.text
    assert "trace-me-1" in logged and "RuntimeError" in logged  # the detail is in the log...
    assert "9990000018" not in logged  # ...but never an NHS number in clear
