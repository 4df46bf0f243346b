"""The OpenAPI document, generated from the app's routes and the tables the server runs on (the
access table, the stored and writable types, their search parameters), so that
openapi/openapi.json cannot drift and a generated client or a fuzzer can use it.

FastAPI alone would describe the generic FHIR routes (``/fhir/{res_type}``) with empty schemas:
here each is written out per resource type, with the FHIR request body, the type's search
parameters, the OperationOutcome of every error status the route can give, the bearer security
scheme (with the SMART scopes and roles that the access table lets through) and stable
operation ids. A route without a description here fails to generate (and so fails
tests/schema/test_schema_openapi.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from app.settings import Settings

FHIR_JSON = "application/fhir+json"
R4 = "https://hl7.org/fhir/R4"
ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"

# ---------------------------------------------------------------- the routes of the app


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    name: str  # the endpoint function's name: what the description below is keyed by
    operation: str | None  # the access table's row (app.auth.access)
    in_schema: bool


def app_routes(app: Any) -> list[RouteInfo]:
    """Every (method, path) the app answers, with its endpoint and access-table row, whatever
    the router nesting (FastAPI >= 0.120 keeps included routers as such)."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from app.auth import access

    docs = {"/openapi.json": "docs", "/docs": "docs", "/docs/oauth2-redirect": "docs"}
    out: list[RouteInfo] = []

    def add(methods, path, endpoint, dependant, in_schema):
        op = access.operation_of(dependant) if dependant is not None else docs.get(path)
        name = getattr(endpoint, "__name__", repr(endpoint))
        out.extend(RouteInfo(m, path, name, op, in_schema) for m in sorted(methods or ()) if m != "HEAD")

    def walk(routes):
        for r in routes:
            if type(r).__name__ == "_IncludedRouter":
                for c in r.effective_route_contexts():
                    add(c.methods, c.path, getattr(c, "endpoint", None), c.dependant, getattr(c, "include_in_schema", True))
            elif isinstance(r, APIRoute):
                add(r.methods, r.path, r.endpoint, r.dependant, r.include_in_schema)
            elif isinstance(r, Route):
                add(r.methods, r.path, r.endpoint, None, False)
            else:
                out.append(RouteInfo("?", getattr(r, "path", repr(r)), repr(r), None, False))

    walk(app.routes)
    return out


# ---------------------------------------------------------------- FHIR R4 schema fragments


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _arr(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


_S = {"type": "string"}
_CODE = {"type": "string", "pattern": r"^[^\s]+( [^\s]+)*$"}
_DATE = {"type": "string", "pattern": r"^([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$"}
_DATETIME = {"type": "string", "pattern": r"^([0-9]{4})(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$"}
_BOOL = {"type": "boolean"}


def _datatypes() -> dict[str, dict[str, Any]]:
    """The R4 data types the resource fragments use (a subset of each type's elements; others are
    allowed, as FHIR extensions and further elements are)."""

    def dt(name: str, props: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "description": f"FHIR R4 {name}", "externalDocs": {"url": f"{R4}/datatypes.html#{name}"},
                "properties": props}

    return {
        "Coding": dt("Coding", {"system": _S, "version": _S, "code": _CODE, "display": _S, "userSelected": _BOOL}),
        "CodeableConcept": dt("CodeableConcept", {"coding": _arr(_ref("Coding")), "text": _S}),
        "Period": dt("Period", {"start": _DATETIME, "end": _DATETIME}),
        "Identifier": dt("Identifier", {"use": {"type": "string", "enum": ["usual", "official", "temp", "secondary", "old"]},
                                        "type": _ref("CodeableConcept"), "system": _S, "value": _S, "period": _ref("Period")}),
        "Reference": dt("Reference", {"reference": _S, "type": _S, "identifier": _ref("Identifier"), "display": _S}),
        "HumanName": dt("HumanName", {"use": _CODE, "text": _S, "family": _S, "given": _arr(_S), "prefix": _arr(_S), "suffix": _arr(_S)}),
        "ContactPoint": dt("ContactPoint", {"system": _CODE, "value": _S, "use": _CODE}),
        "Address": dt("Address", {"use": _CODE, "line": _arr(_S), "city": _S, "district": _S, "postalCode": _S, "country": _S}),
        "Meta": dt("Meta", {"versionId": _S, "lastUpdated": _S, "source": _S, "profile": _arr(_S), "security": _arr(_ref("Coding")),
                            "tag": _arr(_ref("Coding"))}),
        "Extension": dt("Extension", {"url": _S}),
    }


_COMMON = {"id": {"type": "string", "pattern": ID_PATTERN}, "meta": _ref("Meta"), "text": {"type": "object"},
           "contained": _arr({"type": "object", "required": ["resourceType"]}), "extension": _arr(_ref("Extension"))}
_SUBJECT = {"subject": _ref("Reference")}
_CLINICAL = {"identifier": _arr(_ref("Identifier")), "category": _arr(_ref("CodeableConcept")), "code": _ref("CodeableConcept"), **_SUBJECT}
_PERSON = {"identifier": _arr(_ref("Identifier")), "active": _BOOL, "name": _arr(_ref("HumanName")), "telecom": _arr(_ref("ContactPoint")),
           "gender": {"type": "string", "enum": ["male", "female", "other", "unknown"]}, "birthDate": _DATE, "address": _arr(_ref("Address"))}

# the elements each resource type's fragment names (FHIR R4; the rest of the type is allowed)
_ELEMENTS: dict[str, dict[str, Any]] = {
    "Patient": {**_PERSON, "deceasedBoolean": _BOOL, "deceasedDateTime": _DATETIME, "managingOrganization": _ref("Reference"),
                "generalPractitioner": _arr(_ref("Reference")), "link": _arr({"type": "object", "required": ["other", "type"], "properties": {
                    "other": _ref("Reference"), "type": {"type": "string", "enum": ["replaced-by", "replaces", "refer", "seealso"]}}})},
    "RelatedPerson": {**_PERSON, "patient": _ref("Reference"), "relationship": _arr(_ref("CodeableConcept"))},
    "Consent": {"status": _CODE, "scope": _ref("CodeableConcept"), "category": _arr(_ref("CodeableConcept")), "patient": _ref("Reference"),
                "dateTime": _DATETIME, "organization": _arr(_ref("Reference")), "provision": {"type": "object"}},
    "EpisodeOfCare": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "type": _arr(_ref("CodeableConcept")), "patient": _ref("Reference"),
                      "managingOrganization": _ref("Reference"), "period": _ref("Period")},
    "CareTeam": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "category": _arr(_ref("CodeableConcept")), **_SUBJECT,
                 "period": _ref("Period"), "participant": _arr({"type": "object"})},
    "Flag": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "category": _arr(_ref("CodeableConcept")), "code": _ref("CodeableConcept"),
             **_SUBJECT, "period": _ref("Period")},
    "Condition": {**_CLINICAL, "clinicalStatus": _ref("CodeableConcept"), "verificationStatus": _ref("CodeableConcept"), "recordedDate": _DATETIME},
    "Observation": {**_CLINICAL, "status": _CODE, "effectiveDateTime": _DATETIME},
    "MedicationStatement": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "category": _ref("CodeableConcept"),
                            "medicationCodeableConcept": _ref("CodeableConcept"), "medicationReference": _ref("Reference"), **_SUBJECT,
                            "effectiveDateTime": _DATETIME, "effectivePeriod": _ref("Period")},
    "MedicationRequest": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "intent": _CODE, "category": _arr(_ref("CodeableConcept")),
                          "medicationCodeableConcept": _ref("CodeableConcept"), "medicationReference": _ref("Reference"), **_SUBJECT,
                          "authoredOn": _DATETIME},
    "Organization": {"identifier": _arr(_ref("Identifier")), "active": _BOOL, "type": _arr(_ref("CodeableConcept")), "name": _S, "alias": _arr(_S)},
    "Practitioner": {**_PERSON},
    "PractitionerRole": {"identifier": _arr(_ref("Identifier")), "active": _BOOL, "practitioner": _ref("Reference"),
                         "organization": _ref("Reference"), "code": _arr(_ref("CodeableConcept"))},
    "Encounter": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "class": _ref("Coding"), "type": _arr(_ref("CodeableConcept")),
                  **_SUBJECT, "period": _ref("Period"), "serviceProvider": _ref("Reference")},
    "ServiceRequest": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "intent": _CODE, "category": _arr(_ref("CodeableConcept")),
                       "code": _ref("CodeableConcept"), **_SUBJECT, "authoredOn": _DATETIME, "requester": _ref("Reference"),
                       "performer": _arr(_ref("Reference"))},
    "Communication": {"identifier": _arr(_ref("Identifier")), "status": _CODE, "category": _arr(_ref("CodeableConcept")), **_SUBJECT,
                      "sent": _DATETIME, "recipient": _arr(_ref("Reference")), "payload": _arr({"type": "object"})},
    "AuditEvent": {"type": _ref("Coding"), "subtype": _arr(_ref("Coding")), "action": _CODE, "recorded": _S, "outcome": _CODE,
                   "outcomeDesc": _S, "purposeOfEvent": _arr(_ref("CodeableConcept")), "agent": _arr({"type": "object"}),
                   "source": {"type": "object"}, "entity": _arr({"type": "object"})},
    "Person": {"identifier": _arr(_ref("Identifier")), "active": _BOOL, "name": _arr(_ref("HumanName")), "gender": _PERSON["gender"],
               "birthDate": _DATE, "link": _arr({"type": "object", "required": ["target"], "properties": {
                   "target": _ref("Reference"), "assurance": {"type": "string", "enum": ["level1", "level2", "level3", "level4"]}}})},
}


def _resource_schema(res_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": res_type,
        "description": f"A FHIR R4 {res_type} resource (JSON). The elements named here are typed as in R4; the resource's other "
                       f"R4 elements are accepted as R4 defines them.",
        "externalDocs": {"description": f"FHIR R4 {res_type}", "url": f"{R4}/{res_type.lower()}.html"},
        "x-fhir-type": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string", "enum": [res_type]}, **_COMMON, **_ELEMENTS.get(res_type, {})},
    }


def _fixed_schemas(stored: tuple[str, ...], writable: tuple[str, ...]) -> dict[str, Any]:
    issue = {"type": "object", "required": ["severity", "code"], "properties": {
        "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
        "code": _CODE, "details": _ref("CodeableConcept"), "diagnostics": _S, "expression": _arr(_S)}}
    entry_request = {"type": "object", "required": ["method", "url"], "properties": {
        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]}, "url": _S,
        "ifMatch": _S, "ifNoneExist": _S, "ifNoneMatch": _S, "ifModifiedSince": _S}}
    entry_response = {"type": "object", "required": ["status"], "properties": {
        "status": _S, "location": _S, "etag": _S, "lastModified": _S, "outcome": _ref("OperationOutcome")}}
    link = _arr({"type": "object", "required": ["relation", "url"], "properties": {"relation": _S, "url": _S}})
    any_resource = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": _S},
                    "description": "Any FHIR R4 resource"}

    def bundle(kinds: list[str], resource: dict[str, Any], *, request: bool = False, response: bool = False,
               search: bool = False, title: str = "Bundle") -> dict[str, Any]:
        entry: dict[str, Any] = {"fullUrl": _S, "resource": resource}
        if request:
            entry["request"] = entry_request
        if response:
            entry["response"] = entry_response
        if search:
            entry["search"] = {"type": "object", "properties": {"mode": {"type": "string", "enum": ["match", "include", "outcome"]},
                                                                "score": {"type": "number"}}}
        return {"type": "object", "title": title, "externalDocs": {"url": f"{R4}/bundle.html"}, "required": ["resourceType", "type"],
                "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]}, "id": _S, "meta": _ref("Meta"),
                               "type": {"type": "string", "enum": kinds}, "timestamp": _S, "total": {"type": "integer", "minimum": 0},
                               "link": link, "entry": _arr({"type": "object", "properties": entry})}}

    writable_one = {"oneOf": [_ref(t) for t in writable], "discriminator": {"propertyName": "resourceType"}}
    schemas: dict[str, Any] = {
        "OperationOutcome": {"type": "object", "title": "OperationOutcome", "externalDocs": {"url": f"{R4}/operationoutcome.html"},
                             "description": "Every error (and some informational answers): one or more issues, each with its FHIR issue "
                                            "code and the NHS England Spine error code in details.coding",
                             "required": ["resourceType", "issue"],
                             "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]}, "issue": {**_arr(issue), "minItems": 1}}},
        "Resource": any_resource,
        "Bundle": bundle(["document", "message", "transaction", "transaction-response", "batch", "batch-response", "history",
                          "searchset", "collection"], any_resource),
        "TransactionBundle": {**bundle(["transaction", "batch"], writable_one, request=True, title="TransactionBundle"),
                              "description": "A transaction (all or nothing) or batch (entry by entry) of writes (POST, PUT with "
                                             "If-Match or conditional URL) and reads (GET)",
                              "required": ["resourceType", "type"]},
        "TransactionResponse": bundle(["transaction-response", "batch-response"], any_resource, response=True, title="TransactionResponse"),
        "HistoryBundle": bundle(["history"], any_resource, request=True, response=True, title="HistoryBundle"),
        "FamilyView": {**bundle(["collection", "document", "searchset"], any_resource, search=True, title="FamilyView"),
                       "description": "The infant-family view: the records of the infant and the family members the requester may "
                                      "see for the purpose, each withheld element marked"},
        "Parameters": {"type": "object", "title": "Parameters", "externalDocs": {"url": f"{R4}/parameters.html"}, "required": ["resourceType"],
                       "properties": {"resourceType": {"type": "string", "enum": ["Parameters"]},
                                      "parameter": _arr({"type": "object", "required": ["name"], "properties": {
                                          "name": _S, "valueString": _S, "valueCode": _CODE, "valueIdentifier": _ref("Identifier")}})}},
        "CapabilityStatement": {"type": "object", "title": "CapabilityStatement", "externalDocs": {"url": f"{R4}/capabilitystatement.html"},
                                "required": ["resourceType", "status", "kind", "fhirVersion"],
                                "properties": {"resourceType": {"type": "string", "enum": ["CapabilityStatement"]}, "status": _CODE,
                                               "kind": _CODE, "fhirVersion": _S, "format": _arr(_S), "rest": _arr({"type": "object"})}},
        **_datatypes(),
    }
    for t in (*stored, "AuditEvent", "Person"):
        schemas[t] = _resource_schema(t)
        schemas[f"{t}Searchset"] = bundle(["searchset"], {"anyOf": [_ref(t), _ref("OperationOutcome")]}, search=True, title=f"{t}Searchset")
    # the linkage administration's plain JSON
    candidate = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "status": _S, "probability": {"type": "number"}}}
    schemas["LinkageCandidate"] = candidate
    schemas["LinkageCandidates"] = {"type": "object", "required": ["total", "offset", "count", "candidates"], "properties": {
        "total": {"type": "integer"}, "offset": {"type": "integer"}, "count": {"type": "integer"}, "candidates": _arr(_ref("LinkageCandidate"))}}
    schemas["LinkageEvents"] = {"type": "object", "required": ["events"], "properties": {"events": _arr({"type": "object", "required": ["id", "action"], "properties": {
        "id": {"type": "integer"}, "at": _S, "action": _S, "record": {"type": ["string", "null"]}, "from": {"type": ["string", "null"]},
        "to": {"type": ["string", "null"]}, "candidate": {"type": ["integer", "null"]}, "actor": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]}}})}}
    schemas["LinkageResult"] = {"type": "object", "description": "What the linkage action did"}
    return schemas


# ---------------------------------------------------------------- responses and parameters

_STATUS_TEXT = {
    400: "Bad request: a parameter, header or body that is not valid FHIR or breaks a cap of this server",
    401: "No bearer token, or one that is not valid (signature, issuer, audience, expiry, claims)",
    403: "The role, organisation or SMART scopes of the token do not allow this (Spine ACCESS_DENIED)",
    404: "Not found (or not yours to see)",
    406: "The Accept header asks for a format this server does not give (it gives application/fhir+json)",
    409: "A concurrent write changed the same records, or the record conflicts with a stored one; retry or review",
    412: "A precondition failed: If-Match version, or conditional criteria matching more than one record",
    413: "The request body or Bundle is larger than this server accepts",
    415: "The Content-Type is not one this route takes",
    422: "Valid FHIR that breaks a business rule or profile (e.g. an NHS number that fails Modulus 11)",
    429: "Too many requests from this client: wait for Retry-After seconds",
    503: "Temporarily unavailable (the database, or the audit that must record a disclosure): retry after Retry-After",
}


def _error(status: int) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/Error{status}"}


def _error_response(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _STATUS_TEXT[status], "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}
    if status in (429, 503):
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}}
    return out


_RESOURCE_HEADERS = {
    "ETag": {"description": "W/\"<versionId>\"", "schema": _S},
    "Last-Modified": {"description": "When this version was stored (HTTP date)", "schema": _S},
    "Location": {"description": "<base>/<type>/<id>/_history/<versionId>", "schema": _S},
}


def _ok(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None, media: str = FHIR_JSON) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {media: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _query(name: str, description: str, schema: dict[str, Any] | None = None, *, repeat: bool = False, required: bool = False) -> dict[str, Any]:
    schema = schema or _S
    if repeat:
        return {"name": name, "in": "query", "description": description, "required": required, "style": "form", "explode": True,
                "schema": {"type": "array", "items": schema}}
    return {"name": name, "in": "query", "description": description, "required": required, "schema": schema}


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema or {"type": "string", "pattern": ID_PATTERN}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": _S}


_KIND_TEXT = {"token": "token: [system|]code (a repeat ANDs, a comma ORs; :not)", "string": "string: starts-with, case and accent insensitive (:exact, :contains)",
              "date": "date: a FHIR date or dateTime with an optional prefix (eq ne lt gt le ge sa eb ap)",
              "reference": "reference: [Type/]id or an absolute URL of this server (:identifier for system|value)"}
_PAGING = [_query("_count", "Page size (clamped to the server's maximum)", {"type": "integer", "minimum": 0}),
           _query("_offset", "Where the page starts", {"type": "integer", "minimum": 0})]


def _search_params(res_type: str, *, repeat: bool = True) -> list[dict[str, Any]]:
    from app.fhir.indexing import SEARCH_PARAMS

    out = [_query("_id", "The logical id (a comma ORs)", repeat=repeat), _query("_lastUpdated", _KIND_TEXT["date"], repeat=repeat)]
    for p in SEARCH_PARAMS.get(res_type, {}).values():
        out.append(_query(p.name, (p.description + ". " if p.description else "") + _KIND_TEXT[p.kind], repeat=repeat))
    return out


def _form_body(params: list[dict[str, Any]]) -> dict[str, Any]:
    props = {p["name"]: p["schema"] for p in params}
    return {"required": False, "description": "Search parameters as a form (as in the query string)",
            "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": props}}}}


def _json_body(schema: dict[str, Any], description: str, media: tuple[str, ...] = (FHIR_JSON,), example: Any = None) -> dict[str, Any]:
    content = {m: {"schema": schema, **({"example": example} if example is not None and m == media[0] else {})} for m in media}
    return {"required": True, "description": description, "content": content}


# ---------------------------------------------------------------- the operations


@dataclass(frozen=True)
class Op:
    """One documented operation: where, its id, what it takes and gives."""

    path: str
    method: str
    operation_id: str
    summary: str
    ok: dict[int, dict[str, Any]]
    errors: tuple[int, ...]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    tags: tuple[str, ...] = ("FHIR REST",)
    scopes: tuple[str, ...] = ()  # SMART v2 scopes any one of which covers this operation


# the errors every route with a bearer token can give, and every route at all
_TOKEN_ERRORS = (401, 403, 429)
_ANY = (400, 406)  # 406: an Accept or _format asking for a format the route does not give (app.negotiation)
# app.ops.health and app.fhir.capability.smart_configuration: plain JSON, not FHIR
_CHECK = {"type": "object", "required": ["ok"], "properties": {"ok": _BOOL}}
_READINESS = {"type": "object", "required": ["status", "checks"], "properties": {
    "status": {"const": "ready"},
    "checks": {"type": "object", "properties": {"database": _CHECK, "migrations": _CHECK, "audit": _CHECK}}}}
_SMART_CONFIGURATION = {"type": "object", "required": ["issuer", "scopes_supported", "capabilities", "grant_types_supported"],
                        "properties": {"issuer": _S, "scopes_supported": {"type": "array", "items": _S},
                                       "capabilities": {"type": "array", "items": _S}, "grant_types_supported": {"type": "array", "items": _S}}}
_BODY = (413, 415)
_WRITE = (404, 409, 412, 422, 503)

_EXAMPLE_PATIENT = {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
                    "name": [{"family": "Example", "given": ["Alex"]}], "gender": "female", "birthDate": "2026-01-01"}


def _scopes(res_type: str, ops: str) -> tuple[str, ...]:
    return tuple(f"{ctx}/{t}.{ops}" for ctx in ("system", "user") for t in (res_type, "*"))


def _per_type(route: RouteInfo) -> Iterator[Op]:
    from app.fhir.indexing import STORED_TYPES, WRITABLE_TYPES

    res_id = _path("res_id", "The resource's logical id")
    for t in (WRITABLE_TYPES if route.method in ("POST", "PUT") and route.name != "search_post" else STORED_TYPES):
        path = route.path.replace("{res_type}", t)
        ref = _ref(t)
        example = _EXAMPLE_PATIENT if t == "Patient" else None
        body = _json_body(ref, f"A FHIR R4 {t}", (FHIR_JSON, "application/json"), example)
        searchset = {200: _ok(f"A searchset Bundle of {t} resources", _ref(f"{t}Searchset"))}
        written = {200: _ok(f"The {t} as stored (updated, or matched by the conditional criteria)", ref, _RESOURCE_HEADERS),
                   201: _ok(f"The {t} as stored (created)", ref, _RESOURCE_HEADERS)}
        read = {200: _ok(f"The {t}", ref, _RESOURCE_HEADERS)}
        match route.name:
            case "search_get":
                yield Op(path, "get", f"search{t}", f"Search {t}", searchset, (*_ANY, *_TOKEN_ERRORS),
                         (*_search_params(t), *_PAGING), scopes=_scopes(t, "s"))
            case "search_post":
                params = [*_search_params(t, repeat=False), *_PAGING]
                yield Op(path, "post", f"search{t}Post", f"Search {t} with form parameters", searchset, (*_ANY, *_TOKEN_ERRORS, 415),
                         body=_form_body(params), scopes=_scopes(t, "s"))
            case "create":
                yield Op(path, "post", f"create{t}", f"Create a {t} (conditional with If-None-Exist)", written,
                         (*_ANY, *_TOKEN_ERRORS, *_BODY, *_WRITE),
                         (_header("If-None-Exist", "Search criteria (e.g. identifier=system|value): create only if none matches"),),
                         body, scopes=_scopes(t, "c"))
            case "update":
                yield Op(path, "put", f"update{t}", f"Update a {t} (or create it with this id); If-Match for version checks", written,
                         (*_ANY, *_TOKEN_ERRORS, *_BODY, *_WRITE), (res_id, _header("If-Match", "W/\"<versionId>\": update only that version")),
                         body, scopes=_scopes(t, "u"))
            case "conditional_update":
                yield Op(path, "put", f"conditionalUpdate{t}", f"Conditional update of a {t} by search criteria (e.g. identifier=system|value)",
                         written, (*_ANY, *_TOKEN_ERRORS, *_BODY, *_WRITE),
                         (*_search_params(t, repeat=False), _header("If-Match", "W/\"<versionId>\": update only that version")),
                         body, scopes=_scopes(t, "u"))
            case "disclosure_report_by_record":
                if t in ("Patient", "RelatedPerson"):
                    yield Op(path, "get", f"disclosureReportBy{t}", f"Subject access: every disclosure of the data of the person this {t} is",
                             _REPORT_OK, (*_ANY, *_TOKEN_ERRORS, 404), (_path("record_id", f"The {t}'s logical id"),),
                             tags=("Information governance",))
            case "read":
                yield Op(path, "get", f"read{t}", f"Read a {t}", read, (*_ANY, *_TOKEN_ERRORS, 404), (res_id,), scopes=_scopes(t, "r"))
            case "instance_history":
                yield Op(path, "get", f"history{t}", f"The versions of a {t}", {200: _ok("A history Bundle", _ref("HistoryBundle"))},
                         (*_ANY, *_TOKEN_ERRORS, 404), (res_id,), scopes=_scopes(t, "r"))
            case "version_read":
                yield Op(path, "get", f"vread{t}", f"Read one version of a {t}", read, (*_ANY, *_TOKEN_ERRORS, 404),
                         (res_id, _path("vid", "The version id", {"type": "string", "pattern": r"^[0-9]{1,10}$"})), scopes=_scopes(t, "r"))
            case _:
                raise KeyError(f"{route.method} {route.path} ({route.name}) has no OpenAPI description in app/openapi_doc.py")


_FV_QUERY = (_query("purpose", "direct-care | safeguarding (the policy's purposes)"),
             _query("justification", "Why the child may be at risk (required for safeguarding)"))
_FV_IDENTIFIER = _query("identifier", "The infant's identifier, system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990001103")
_FV_OK = {200: _ok("The infant-family view (X-Audit-Event names the AuditEvent that records it)", _ref("FamilyView"),
                   {"X-Audit-Event": {"description": "AuditEvent/<id> recording this disclosure or refusal", "schema": _S}})}
_FV_ERRORS = (*_ANY, *_TOKEN_ERRORS, 404, 422, 503)
_FV_SCOPES = ("system/Patient.r", "user/Patient.r", "system/*.r", "user/*.r")
_FV_BODY = _json_body(_ref("Parameters"), "A FHIR Parameters resource: identifier (type level; valueString system|value or valueIdentifier), "
                                          "purpose (valueCode) and justification (valueString)", (FHIR_JSON, "application/json"))
_LINK_JSON = "application/json"
_JSON = "application/json"
_OBJ = {"type": "object"}
_REPORT_OK = {200: {"description": "The disclosures, as a FHIR Bundle or (Accept: text/csv or _format=csv) CSV",
                    "content": {FHIR_JSON: {"schema": _ref("Bundle")}, "text/csv": {"schema": _S}}}}


def _reason_body(*names: str) -> dict[str, Any]:
    props = {n: {"type": "string", "minLength": 1} for n in names}
    return _json_body({"type": "object", "required": list(names), "properties": props}, "The action's arguments (JSON)", (_LINK_JSON,))


def _fixed(route: RouteInfo) -> Iterator[Op]:
    """The operations whose route is not per resource type."""
    cid = _path("cid", "The review candidate's number", {"type": "integer", "minimum": 1})  # beyond 2**31-1: 404
    paging = tuple(_PAGING)
    admin = ("Linkage",)
    ig = ("Information governance",)
    linkage_errors = (*_ANY, *_TOKEN_ERRORS)
    hook_errors = (*_ANY, 401, 403, 404, 429)
    hook_params = (_path("name", "The upstream's name (a key of the sync_upstreams setting)", _S),
                   _header("X-Familyview-Hook-Secret", "The shared secret the Subscription was given (or the upstream's configured header)"))
    specs: dict[str, Callable[[], Op]] = {
        "metadata": lambda: Op(route.path, "get", "capabilities", "The CapabilityStatement (public)",
                               {200: _ok("The server's CapabilityStatement", _ref("CapabilityStatement"))}, (*_ANY, 429)),
        "smart_configuration": lambda: Op(route.path, "get", "smartConfiguration", "SMART configuration: the token issuer and the scopes (public)",
                                          {200: _ok("SMART App Launch 2 discovery document", _SMART_CONFIGURATION, media="application/json")},
                                          (*_ANY, 429), tags=("Security",)),
        "healthz": lambda: Op(route.path, "get", "healthz", "Liveness: the process answers (public, not rate-limited)",
                              {200: _ok("Alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                                        media="application/json")}, (*_ANY, 429), tags=("Operations",)),
        "readyz": lambda: Op(route.path, "get", "readyz", "Readiness: database reachable, migrations at head, audit chain head readable (public)",
                             {200: _ok("Ready, and each check", _READINESS, media="application/json")}, (*_ANY, 429, 503),
                             tags=("Operations",)),
        "prometheus": lambda: Op(route.path, "get", "metrics", "Prometheus metrics: counts by route template, no PHI (FAMILYVIEW_METRICS_TOKEN when set)",
                                 {200: _ok("The Prometheus text exposition", _S, media="text/plain")}, (*_ANY, 401, 429), tags=("Operations",)),
        "post_bundle": lambda: Op(route.path, "post", "transaction", "Process a transaction (all or nothing) or batch Bundle",
                                  {200: _ok("A transaction-response or batch-response Bundle", _ref("TransactionResponse"))},
                                  (*_ANY, *_TOKEN_ERRORS, *_BODY, *_WRITE),
                                  body=_json_body(_ref("TransactionBundle"), "A Bundle of type transaction or batch", (FHIR_JSON, "application/json")),
                                  scopes=("system/*.cruds", "system/*.cu", "user/*.cu")),
        "family_view_by_identifier": lambda: Op(route.path, "get", "familyViewByIdentifier", "The infant-family view, by the infant's identifier",
                                                _FV_OK, _FV_ERRORS, (_FV_IDENTIFIER, *_FV_QUERY), tags=("Family view",), scopes=_FV_SCOPES),
        "family_view_by_identifier_post": lambda: Op(route.path, "post", "familyViewByIdentifierPost",
                                                     "The infant-family view by identifier, parameters in a Parameters body", _FV_OK,
                                                     (*_FV_ERRORS, *_BODY), body=_FV_BODY, tags=("Family view",), scopes=_FV_SCOPES),
        "family_view_by_id": lambda: Op(route.path, "get", "familyViewById", "The infant-family view of Patient/{id} (pre-birth: the pregnant mother)",
                                        _FV_OK, _FV_ERRORS, (_path("patient_id", "The Patient's logical id"), *_FV_QUERY),
                                        tags=("Family view",), scopes=_FV_SCOPES),
        "family_view_by_id_post": lambda: Op(route.path, "post", "familyViewByIdPost", "The infant-family view of Patient/{id}, parameters in a Parameters body",
                                             _FV_OK, (*_FV_ERRORS, *_BODY), (_path("patient_id", "The Patient's logical id"),), body=_FV_BODY,
                                             tags=("Family view",), scopes=_FV_SCOPES),
        "read_event": lambda: Op(route.path, "get", "readAuditEvent", "Read one AuditEvent (IG officers)",
                                 {200: _ok("The AuditEvent", _ref("AuditEvent"))}, (*_ANY, *_TOKEN_ERRORS, 404),
                                 (_path("event_id", "The AuditEvent's id"),), tags=("Audit",), scopes=_scopes("AuditEvent", "r")),
        "search_events": lambda: Op(route.path, "get", "searchAuditEvent", "Search the audit (IG officers)",
                                    {200: _ok("A searchset Bundle of AuditEvents", _ref("AuditEventSearchset"))}, (*_ANY, *_TOKEN_ERRORS),
                                    (*(_query(n, d, repeat=True) for n, d in (
                                        ("patient", "Patient/<id> the event is about"), ("agent", "The agent's sub or organisation"),
                                        ("date", _KIND_TEXT["date"]), ("entity", "A record the event names"), ("type", "[system|]code"),
                                        ("subtype", "[system|]code"), ("outcome", "0 | 4 | 8 | 12"), ("purpose", "[system|]code"),
                                        ("_id", "The event id"))), *paging), tags=("Audit",), scopes=_scopes("AuditEvent", "s")),
        "read_person": lambda: Op(route.path, "get", "readPerson", "Read a linked person",
                                  {200: _ok("The Person", _ref("Person"))}, (*_ANY, *_TOKEN_ERRORS, 404),
                                  (_path("person_id", "The Person's logical id"),), tags=("Linkage",), scopes=_scopes("Person", "r")),
        "search_person": lambda: Op(route.path, "get", "searchPerson", "Search linked persons",
                                    {200: _ok("A searchset Bundle of Persons", _ref("PersonSearchset"))}, (*_ANY, *_TOKEN_ERRORS),
                                    (_query("_id", "The Person's id", repeat=True), _query("link", "Patient/<id> or RelatedPerson/<id>", repeat=True),
                                     _query("identifier", "system|value of any linked record", repeat=True), *paging),
                                    tags=("Linkage",), scopes=_scopes("Person", "s")),
        "list_candidates": lambda: Op(route.path, "get", "listLinkageCandidates", "The review queue of possible matches (admin)",
                                      {200: _ok("A page of candidates", _ref("LinkageCandidates"))}, linkage_errors,
                                      (_query("status", "open (default), confirmed, rejected, superseded or all"), *paging), tags=admin),
        "get_candidate": lambda: Op(route.path, "get", "readLinkageCandidate", "One review candidate (admin)",
                                    {200: _ok("The candidate", _ref("LinkageCandidate"))}, (*linkage_errors, 404), (cid,), tags=admin),
        "confirm_candidate": lambda: Op(route.path, "post", "confirmLinkageCandidate", "Confirm a possible match (admin)",
                                        {200: _ok("What was linked", _ref("LinkageResult"))}, (*linkage_errors, *_BODY, 404, 409), (cid,),
                                        _reason_body("reason"), tags=admin),
        "reject_candidate": lambda: Op(route.path, "post", "rejectLinkageCandidate", "Reject a possible match (admin)",
                                       {200: _ok("What was recorded", _ref("LinkageResult"))}, (*linkage_errors, *_BODY, 404, 409), (cid,),
                                       _reason_body("reason"), tags=admin),
        "unlink": lambda: Op(route.path, "post", "unlinkRecord", "Take a record out of its linked person (admin)",
                             {200: _ok("What was unlinked", _ref("LinkageResult"))}, (*linkage_errors, *_BODY, 404, 409), (),
                             _reason_body("record", "reason"), tags=admin),
        "merge": lambda: Op(route.path, "post", "mergePersons", "Merge one linked person into another (admin)",
                            {200: _ok("What was merged", _ref("LinkageResult"))}, (*linkage_errors, *_BODY, 404, 409), (),
                            _reason_body("from", "into", "reason"), tags=admin),
        "events": lambda: Op(route.path, "get", "listLinkageEvents", "The linkage event log (admin)",
                             {200: _ok("The events, newest first", _ref("LinkageEvents"))}, linkage_errors,
                             (_query("record", "Patient/<id> or RelatedPerson/<id>"), _query("person", "Person/<id>"), *paging), tags=admin),
        "rest_hook": lambda: Op(route.path, "post", "restHookNotify", "FHIR R4 rest-hook receiver: an upstream Subscription's notification triggers a sync",
                                {200: _ok("What was synced", _ref("OperationOutcome")), 202: _ok("A sync was started", _ref("OperationOutcome"))},
                                (*hook_errors, 413), hook_params,
                                {"required": False, "description": "Empty (a ping), a resource or a Bundle naming changed records",
                                 "content": {FHIR_JSON: {"schema": _ref("Resource")}}}, tags=("Sync",)),
        "rest_hook_record": lambda: Op(route.path, "put", "restHookRecord", "Rest-hook receiver, HAPI FHIR's style: the changed record PUT here",
                                       {200: _ok("What was synced", _ref("OperationOutcome"))}, (*hook_errors, 413),
                                       (*hook_params, _path("res_type", "The record's type", _S), _path("res_id", "The record's id")),
                                       {"required": False, "description": "The changed record (not trusted: it is re-read from the upstream)",
                                        "content": {FHIR_JSON: {"schema": _ref("Resource")}}}, tags=("Sync",)),
        "rest_hook_deleted": lambda: Op(route.path, "delete", "restHookDeleted", "Rest-hook receiver, HAPI FHIR's style for a deletion: acknowledged, not synced",
                                        {200: _ok("Acknowledged", _ref("OperationOutcome"))}, hook_errors,
                                        (*hook_params, _path("res_type", "The record's type", _S), _path("res_id", "The record's id")), tags=("Sync",)),
        "review_queue": lambda: Op(route.path, "get", "igReviewQueue", "The IG review queue: open safeguarding overrides and break-glass views, oldest first",
                                   {200: _ok("The open reviews (total, overdueAfterDays, items)", _OBJ)}, (*_ANY, *_TOKEN_ERRORS),
                                   (_query("overdue", "true: only the overdue", {"type": "string", "enum": ["true", "false"]}), *paging), tags=ig),
        "review": lambda: Op(route.path, "post", "igRecordReview", "Record an IG review of an override (appropriate | inappropriate | needs-follow-up, and a note)",
                             {201: _ok("The review recorded", _OBJ)}, (*_ANY, *_TOKEN_ERRORS, *_BODY, 404, 409),
                             (_path("event_id", "The reviewed AuditEvent's id"),),
                             _json_body({"type": "object", "required": ["outcome", "note"], "properties": {
                                 "outcome": {"type": "string", "enum": ["appropriate", "inappropriate", "needs-follow-up"]},
                                 "note": {"type": "string", "minLength": 1}}}, "The review (JSON)", (_JSON,)), tags=ig),
        "audit_export": lambda: Op(route.path, "get", "igAuditExport", "Export the audit of a period as NDJSON or CSV, streamed",
                                   {200: {"description": "The AuditEvents, one per line (NDJSON) or one per row (CSV)",
                                          "content": {"application/fhir+ndjson": {"schema": _S}, "text/csv": {"schema": _S}}}},
                                   (*_ANY, *_TOKEN_ERRORS),
                                   (_query("from", "First date or dateTime included"), _query("to", "Last date or dateTime included"),
                                    _query("format", "ndjson (default) or csv", {"type": "string", "enum": ["ndjson", "csv"]})), tags=ig),
        "ig_notifications": lambda: Op(route.path, "get", "igNotifications", "Notifications to record holders and their delivery status (IG officers)",
                                       {200: _ok("A page of notifications", _OBJ)}, (*_ANY, *_TOKEN_ERRORS),
                                       (_query("status", "Delivery status"), _query("recipient", "The holder's ODS code"), *paging), tags=ig),
        "own_notifications": lambda: Op(route.path, "get", "ownNotifications", "A record holder's own notifications of disclosures, with delivery status",
                                        {200: _ok("A page of notifications", _OBJ)}, (*_ANY, *_TOKEN_ERRORS),
                                        (_query("status", "Delivery status"), *paging), tags=ig),
        "disclosure_report_by_identifier": lambda: Op(route.path, "get", "disclosureReportByIdentifier",
                                                      "Subject access: every disclosure of a person's data, by identifier (NHS number)",
                                                      _REPORT_OK, (*_ANY, *_TOKEN_ERRORS, 404, 422),
                                                      (_query("identifier", "https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN"),), tags=ig),
    }
    if route.name not in specs:
        raise KeyError(f"{route.method} {route.path} ({route.name}) has no OpenAPI description in app/openapi_doc.py")
    yield specs[route.name]()


def _operation(op: Op, route: RouteInfo) -> dict[str, Any]:
    from app.auth import access
    from app.auth.tokens import ROLES

    rule = access.rule(route.operation) if route.operation else None
    public = rule is None or rule.public
    responses: dict[str, Any] = {str(s): v for s, v in sorted(op.ok.items())}
    for status in sorted(set(op.errors)):
        responses[str(status)] = _error(status)
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": list(op.tags), "responses": responses}
    if op.parameters:
        out["parameters"] = list(op.parameters)
    if op.body:
        out["requestBody"] = op.body
    if public:
        out["security"] = []
    else:
        assert rule is not None
        out["security"] = [{"bearer": []}]
        out["x-familyview-access"] = route.operation
        out["x-familyview-roles"] = [r for r in ROLES if rule.allows(r)]
        if rule.purposes:
            out["x-familyview-purposes"] = list(rule.purposes)
        if op.scopes:
            out["x-smart-scopes"] = list(op.scopes)
    return out


def describe(app: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this app."""
    from app.auth.tokens import DEFAULT_SCOPES
    from app.fhir.indexing import STORED_TYPES, WRITABLE_TYPES

    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for route in app_routes(app):
        if not route.in_schema or route.operation == "docs":
            continue
        ops = _per_type(route) if "{res_type}" in route.path and route.path.startswith("/fhir") else _fixed(route)
        for op in ops:
            if op.operation_id in ids:
                raise ValueError(f"operationId {op.operation_id} twice")
            ids.add(op.operation_id)
            paths.setdefault(op.path, {})[op.method] = _operation(op, route)
    roles = "; ".join(f"{r}: {s}" for r, s in DEFAULT_SCOPES.items())
    return {
        "openapi": "3.1.0",
        "info": {"title": "familyview", "version": app.version,
                 "description": app.description + "\n\nEvery answer is application/fhir+json; every error an OperationOutcome with the "
                                "FHIR issue code and the NHS England Spine error code. The roles, purposes and SMART scopes each operation "
                                "takes are under x-familyview-roles, x-familyview-purposes and x-smart-scopes."},
        "servers": [{"url": "/"}],
        "paths": {p: paths[p] for p in sorted(paths)},
        "components": {
            "schemas": _fixed_schemas(STORED_TYPES, WRITABLE_TYPES),
            "responses": {f"Error{s}": _error_response(s) for s in sorted(_STATUS_TEXT)},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An OAuth2 bearer JWT signed by the configured issuer, with claims sub, org (ODS code), role (source-system, "
                               "midwife, health-visitor, gp, mash, ig-officer, admin), service (source systems) and scope (SMART v2, e.g. "
                               f"user/*.rs, system/Patient.cruds). A role's default scopes: {roles}. The role decides what an operation "
                               "allows whatever the scopes say; the scopes can only narrow it."}},
        },
        "tags": [{"name": n} for n in ("FHIR REST", "Family view", "Audit", "Linkage", "Sync")],
    }


def openapi_json() -> str:
    from app.main import create_app

    settings = Settings(database_url="sqlite:///:memory:")
    app = create_app(settings)
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
