"""The CapabilityStatement: built from the same tables the server runs on, so it cannot drift."""
from __future__ import annotations

from typing import Any

from app.auth.access import scope_guide, scopes_supported
from app.fhir.indexing import SEARCH_PARAMS, STORED_TYPES, WRITABLE_TYPES
from app.settings import Settings

_TYPE_FOR_KIND = {"token": "token", "string": "string", "date": "date", "reference": "reference"}
_MEDICINE_DOC = (
    "medication[x]: medicationCodeableConcept coded with dm+d (https://dmd.nhs.uk) or SNOMED CT "
    "(http://snomed.info/sct), or medicationReference to a contained Medication (\"#id\") whose code "
    "is searched by `code` and read by sensitivity labelling. A medicationReference to a Medication "
    "held elsewhere is stored as sent, but its code is not seen: `code` searches miss it and labelling "
    "reads only the record's own codes and texts (this server stores no Medication on its own; contain it instead)."
)
_DOCUMENTATION = {"MedicationStatement": _MEDICINE_DOC, "MedicationRequest": _MEDICINE_DOC}


def capability_statement(settings: Settings, *, operations: list[dict[str, Any]], extra_resources: list[dict[str, Any]]) -> dict[str, Any]:
    resources = []
    for res_type in STORED_TYPES:
        interactions = ["read", "vread", "history-instance", "search-type"]
        if res_type in WRITABLE_TYPES:
            interactions += ["create", "update"]
        params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
        params += [
            {"name": p.name, "type": _TYPE_FOR_KIND[p.kind], **({"documentation": p.description} if p.description else {})}
            for p in SEARCH_PARAMS.get(res_type, {}).values()
        ]
        entry: dict[str, Any] = {
            "type": res_type,
            "interaction": [{"code": c} for c in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": res_type in WRITABLE_TYPES,
            "conditionalCreate": res_type in WRITABLE_TYPES,
            "conditionalUpdate": res_type in WRITABLE_TYPES,
            "conditionalDelete": "not-supported",
            "referencePolicy": ["literal", "logical", "resolves", "local"],
            "searchParam": params,
        }
        if res_type in _DOCUMENTATION:
            entry["documentation"] = _DOCUMENTATION[res_type]
        if res_type == "Patient":
            entry["operation"] = [{"name": o["code"], "definition": o["url"]} for o in operations]
        resources.append(entry)
    resources.extend(extra_resources)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "publisher": "familyview",
        "kind": "instance",
        "software": {"name": "familyview", "version": "0.1.0"},
        "implementation": {"description": "familyview FHIR R4 gateway", **({"url": settings.fhir_base("")} if settings.public_base_url else {})},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Bundles of type transaction (atomic) and batch are accepted at the base. Every interaction but this CapabilityStatement needs an OAuth2 bearer JWT.",
                "security": _security(settings),
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [{"name": o["code"], "definition": o["url"]} for o in operations],
            }
        ],
    }


def _security(settings: Settings) -> dict[str, Any]:
    """The bearer JWT and the SMART v2 scopes each interaction needs (app.auth.access)."""
    uris = [{"url": name, "valueUri": url} for name, url in (("authorize", settings.auth_authorization_url), ("token", settings.auth_token_url)) if url]
    return {
        **({"extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": uris}]} if uris else {}),
        "cors": False,
        "service": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth", "display": "OAuth"}]},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}]},
        ],
        "description": "Authorization: Bearer <JWT> with claims sub, org (ODS code), role, service (source systems) and SMART v2 "
                       "scopes (scope claim). " + " ".join(scope_guide()) + " Supported scopes: " + " ".join(scopes_supported())
                       + ". See .well-known/smart-configuration.",
    }


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """SMART App Launch 2 discovery document: the trusted issuer, its endpoints and the scopes
    this server understands (the issuer mints tokens; this server only checks them)."""
    doc: dict[str, Any] = {
        "issuer": settings.auth_issuer,
        **({"jwks_uri": settings.auth_jwks_url} if settings.auth_jwks_url else {}),
        **({"authorization_endpoint": settings.auth_authorization_url} if settings.auth_authorization_url else {}),
        **({"token_endpoint": settings.auth_token_url} if settings.auth_token_url else {}),
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.auth_algorithms),
        "scopes_supported": scopes_supported(),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-standalone", "client-confidential-asymmetric", "sso-openid-connect",
                         "permission-v2", "permission-v1", "permission-user"],
        "scope_requirements": scope_guide(),
    }
    return doc
