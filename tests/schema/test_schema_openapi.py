"""openapi/openapi.json is generated from the app (`familyview openapi`); it must not drift."""
from __future__ import annotations

import json

from app.openapi_doc import openapi_json
from app.settings import PROJECT_ROOT


def test_openapi_document_is_current():
    committed = (PROJECT_ROOT / "openapi" / "openapi.json").read_text()
    assert committed == openapi_json(), "openapi/openapi.json is stale: run `make openapi` (familyview openapi) and commit it"


def test_openapi_names_the_wire_contract_routes():
    paths = json.loads(openapi_json())["paths"]
    for path in ("/fhir", "/fhir/metadata", "/fhir/{res_type}", "/fhir/{res_type}/{res_id}", "/fhir/Patient/$family-view",
                 "/fhir/Patient/{patient_id}/$family-view", "/fhir/AuditEvent", "/fhir/AuditEvent/{event_id}"):
        assert path in paths, path
