"""openapi/openapi.json is generated from the app (`familyview openapi`); it must not drift, and it
describes the API well enough for a generated client or a fuzzer (tests/api/test_api_fuzz.py)."""
from __future__ import annotations

import json

import pytest

from app.auth import access
from app.fhir.indexing import SEARCH_PARAMS, STORED_TYPES, WRITABLE_TYPES
from app.main import create_app
from app.openapi_doc import app_routes, openapi_json
from app.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(openapi_json())


def _operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_openapi_document_is_current():
    committed = (PROJECT_ROOT / "openapi" / "openapi.json").read_text()
    assert committed == openapi_json(), "openapi/openapi.json is stale: run `make openapi` (familyview openapi) and commit it"


def test_the_served_document_is_the_generated_one():
    app = create_app(Settings(database_url="sqlite:///:memory:"))
    assert json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n" == openapi_json()


def test_openapi_names_the_wire_contract_routes(doc):
    paths = doc["paths"]
    for path in ("/fhir", "/fhir/metadata", "/fhir/Patient", "/fhir/Patient/{res_id}", "/fhir/Patient/$family-view",
                 "/fhir/Patient/{patient_id}/$family-view", "/fhir/AuditEvent", "/fhir/AuditEvent/{event_id}"):
        assert path in paths, path


def test_every_route_of_the_app_is_described(doc):
    """Each route the app answers appears (the generic FHIR routes once per resource type)."""
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for r in app_routes(create_app(Settings(database_url="sqlite:///:memory:"))):
        if not r.in_schema or r.operation == "docs":
            continue
        types = (WRITABLE_TYPES if r.method in ("POST", "PUT") and not r.path.endswith("/_search") else STORED_TYPES) \
            if "{res_type}" in r.path and r.path.startswith("/fhir") else (None,)
        if r.name == "disclosure_report_by_record":  # a person's report: only of the person types
            types = ("Patient", "RelatedPerson")
        for t in types:
            path = r.path.replace("{res_type}", t) if t else r.path
            assert (r.method, path) in documented, (r.method, path)


def test_operation_ids_are_stable_and_unique(doc):
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    by_key = {(p, m): op["operationId"] for p, m, op in _operations(doc)}
    # the ids clients are generated against: renaming one breaks them
    assert by_key[("/fhir/Patient/{res_id}", "get")] == "readPatient"
    assert by_key[("/fhir/Condition", "get")] == "searchCondition"
    assert by_key[("/fhir/Observation", "post")] == "createObservation"
    assert by_key[("/fhir", "post")] == "transaction"
    assert by_key[("/fhir/Patient/$family-view", "get")] == "familyViewByIdentifier"
    assert by_key[("/fhir/AuditEvent", "get")] == "searchAuditEvent"


def test_fhir_writes_take_the_resource_type_they_write(doc):
    schemas = doc["components"]["schemas"]
    for t in WRITABLE_TYPES:
        body = doc["paths"][f"/fhir/{t}"]["post"]["requestBody"]
        ref = body["content"]["application/fhir+json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[-1]]
        assert schema["properties"]["resourceType"]["enum"] == [t]
        assert schema["required"] == ["resourceType"]
        assert schema["x-fhir-type"] == f"http://hl7.org/fhir/StructureDefinition/{t}"
        assert doc["paths"][f"/fhir/{t}/{{res_id}}"]["put"]["requestBody"]["required"] is True
    # Communication is stored (notifications) but no one writes it through the API
    assert "post" not in doc["paths"]["/fhir/Communication"]
    transaction = doc["paths"]["/fhir"]["post"]["requestBody"]["content"]["application/fhir+json"]["schema"]
    assert transaction == {"$ref": "#/components/schemas/TransactionBundle"}


def _response(doc, response: dict) -> dict:
    ref = response.get("$ref")
    return doc["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref else response


def test_errors_are_operation_outcomes_with_their_status_codes(doc):
    for path, method, op in _operations(doc):
        codes = {int(c) for c in op["responses"]}
        assert 422 not in codes or "HTTPValidationError" not in json.dumps(op["responses"]["422"])
        for code in codes:
            if code >= 400:
                schema = _response(doc, op["responses"][str(code)])["content"]["application/fhir+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/OperationOutcome"}, (path, method, code)
        assert 400 in codes and 429 in codes, (path, method)
        assert not any(c >= 500 and c != 503 for c in codes), (path, method)
        if op["security"]:
            assert {401, 403} <= codes, (path, method)
    paths = doc["paths"]
    assert {404} <= {int(c) for c in paths["/fhir/Patient/{res_id}"]["get"]["responses"]}
    assert {409, 412, 413, 415, 422} <= {int(c) for c in paths["/fhir/Patient/{res_id}"]["put"]["responses"]}
    assert {201, 200} <= {int(c) for c in paths["/fhir/Patient"]["post"]["responses"]}
    assert "Retry-After" in _response(doc, paths["/fhir/Patient"]["get"]["responses"]["429"])["headers"]


def test_bearer_security_with_roles_and_scopes_from_the_access_table(doc):
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    paths = doc["paths"]
    assert paths["/fhir/metadata"]["get"]["security"] == []
    read = paths["/fhir/Condition/{res_id}"]["get"]
    assert read["security"] == [{"bearer": []}]
    assert read["x-familyview-roles"] == [r for r in access.table()["fhir.read"].roles]
    assert "user/Condition.r" in read["x-smart-scopes"] and "system/*.r" in read["x-smart-scopes"]
    fv = paths["/fhir/Patient/{patient_id}/$family-view"]["get"]
    assert set(fv["x-familyview-purposes"]) == set(access.policy_purposes())
    assert "ig-officer" not in fv["x-familyview-roles"] and "admin" not in fv["x-familyview-roles"]
    assert paths["/fhir/AuditEvent"]["get"]["x-familyview-roles"] == ["ig-officer"]


def test_search_parameters_per_type(doc):
    for t in STORED_TYPES:
        names = {p["name"] for p in doc["paths"][f"/fhir/{t}"]["get"]["parameters"]}
        assert set(SEARCH_PARAMS.get(t, {})) | {"_id", "_lastUpdated", "_count", "_offset"} == names, t
    form = doc["paths"]["/fhir/Patient/_search"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"identifier", "birthdate", "name"} <= set(form["properties"])
