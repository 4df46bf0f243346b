"""Transaction and batch Bundles: parse the entries, run them through the ingest service,
and answer with a transaction-response or batch-response Bundle."""
from __future__ import annotations

from typing import Any

from app.errors import FhirError, bad_request
from app.fhir import store
from app.fhir.validation import CONTROL_CHARS, control_char_error
from app.ingest.service import EntryRequest, EntryResult, IngestService
from app.settings import Settings

# FHIR processing order inside a transaction: writes before reads.
_METHODS = ("POST", "PUT", "GET")


def parse_entries(bundle: Any, settings: Settings, base: str) -> tuple[str, list[EntryRequest]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request("POST to the base URL takes a Bundle of type transaction or batch", expression="Bundle", code="structure")
    btype = bundle.get("type")
    if btype not in ("transaction", "batch"):
        raise bad_request(f"Bundle.type must be transaction or batch (got {btype!r})", expression="Bundle.type", code="invalid")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise bad_request("Bundle.entry must be a list", expression="Bundle.entry", code="structure")
    if len(entries) > settings.max_bundle_entries:
        raise FhirError(
            413, "too-costly", f"The Bundle has {len(entries)} entries; this server takes at most {settings.max_bundle_entries}",
            expression="Bundle.entry", spine_code="REQUEST_TOO_LARGE",
        )
    out = []
    for i, entry in enumerate(entries):
        expr = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            raise bad_request(f"{expr} must be an object", expression=expr, code="structure")
        request = entry.get("request")
        if not isinstance(request, dict) or not request.get("method") or not isinstance(request.get("url"), str):
            raise bad_request(f"{expr}.request with method and url is required in a {btype}", expression=f"{expr}.request", code="required")
        method = str(request["method"]).upper()
        if method not in _METHODS:
            raise bad_request(f"{expr}.request.method {method} is not supported (POST, PUT, GET)", expression=f"{expr}.request.method", code="not-supported")
        resource = entry.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise bad_request(f"{expr}.resource is required for {method}", expression=f"{expr}.resource", code="required")
        for where, value in ((f"{expr}.fullUrl", entry.get("fullUrl")), (f"{expr}.request.url", request["url"]),
                             (f"{expr}.request.ifNoneExist", request.get("ifNoneExist")), (f"{expr}.request.ifMatch", request.get("ifMatch"))):
            if value is None:
                continue
            if not isinstance(value, str):
                raise bad_request(f"{where} must be a string", expression=where, code="structure")
            if CONTROL_CHARS.search(value):
                raise control_char_error(where)
        url = request["url"]
        if url.startswith(base + "/"):
            url = url[len(base) + 1:]
        out.append(
            EntryRequest(
                index=i, method=method, url=url, resource=resource, full_url=entry.get("fullUrl"),
                if_none_exist=request.get("ifNoneExist"), if_match=request.get("ifMatch"),
            )
        )
    return btype, out


def _response_entry(result: EntryResult, base: str) -> dict[str, Any]:
    response: dict[str, Any] = {"status": result.status_line}
    if result.location:
        response["location"] = result.location
        response["etag"] = store.etag(result.version_id)
        response["lastModified"] = store.format_instant(result.last_updated)
    if result.outcome:
        response["outcome"] = result.outcome
    entry: dict[str, Any] = {"response": response}
    if result.res_type and result.res_id:
        entry["fullUrl"] = f"{base}/{result.res_type}/{result.res_id}"
    if result.resource is not None and result.location is None:  # GET entries carry their Bundle
        entry["resource"] = result.resource
    return entry


def process_bundle(service: IngestService, bundle: Any, settings: Settings) -> dict[str, Any]:
    btype, entries = parse_entries(bundle, settings, service.base)
    results = service.transaction(entries) if btype == "transaction" else service.batch(entries)
    return {
        "resourceType": "Bundle",
        "type": f"{btype}-response",
        "entry": [_response_entry(r, service.base) for r in results],
    }
