"""FHIR REST routes: parse, call the store or the ingest service, return. No logic lives here."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import IntegrityError

from app.auth.deps import get_principal
from app.auth.tokens import Principal, require
from app.db import Database
from app.errors import FhirError, bad_request
from app.fhir import store
from app.fhir.http import FhirResponse, fhir_body, get_db, get_hooks, get_settings_dep, resource_headers
from app.ingest.bundles import process_bundle
from app.ingest.service import EntryRequest, IngestService
from app.settings import Settings

router = APIRouter(prefix="/fhir", tags=["FHIR REST"])


def run_write(db: Database, work, *, attempts: int = 2):
    """Run a write in one transaction; retry once when a concurrent writer took the same key."""
    for attempt in range(attempts):
        try:
            with db.session() as session:
                return work(session)
        except IntegrityError:
            if attempt == attempts - 1:
                raise FhirError(409, "conflict", "A concurrent write changed the same records; retry the request", spine_code="CONFLICT") from None


@router.get("/metadata", summary="CapabilityStatement (public)")
def metadata(request: Request) -> FhirResponse:
    return FhirResponse(request.app.state.capability_statement)


@router.post("", summary="Process a transaction or batch Bundle")
@router.post("/", include_in_schema=False)
def post_bundle(
    principal: Principal = Depends(get_principal),
    body: Any = Depends(fhir_body),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    hooks: list = Depends(get_hooks),
) -> FhirResponse:
    bundle = run_write(db, lambda s: process_bundle(IngestService(s, principal, settings, hooks), body, settings))
    return FhirResponse(bundle)


def _entry_response(result, settings: Settings, status_override: int | None = None) -> FhirResponse:
    headers = resource_headers(result.res_type, result.res_id, result.version_id, result.last_updated, settings.fhir_base)
    return FhirResponse(result.resource, status_code=status_override or result.status, headers=headers)


@router.post("/{res_type}", summary="Create a resource (conditional with If-None-Exist)")
def create(
    res_type: str,
    request: Request,
    principal: Principal = Depends(get_principal),
    body: Any = Depends(fhir_body),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    hooks: list = Depends(get_hooks),
) -> FhirResponse:
    req = EntryRequest(0, "POST", res_type, body, if_none_exist=request.headers.get("if-none-exist"), in_bundle=False)
    result = run_write(db, lambda s: IngestService(s, principal, settings, hooks).write_one(req))
    return _entry_response(result, settings)


@router.put("/{res_type}/{res_id}", summary="Update (or create with this id); If-Match for version checks")
def update(
    res_type: str,
    res_id: str,
    request: Request,
    principal: Principal = Depends(get_principal),
    body: Any = Depends(fhir_body),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    hooks: list = Depends(get_hooks),
) -> FhirResponse:
    req = EntryRequest(0, "PUT", f"{res_type}/{res_id}", body, if_match=request.headers.get("if-match"), in_bundle=False)
    result = run_write(db, lambda s: IngestService(s, principal, settings, hooks).write_one(req))
    return _entry_response(result, settings)


@router.put("/{res_type}", summary="Conditional update, e.g. Patient?identifier=system|value")
def conditional_update(
    res_type: str,
    request: Request,
    principal: Principal = Depends(get_principal),
    body: Any = Depends(fhir_body),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    hooks: list = Depends(get_hooks),
) -> FhirResponse:
    query = request.url.query
    if not query:
        raise bad_request("PUT to a type needs search criteria, e.g. ?identifier=system|value", expression=res_type)
    req = EntryRequest(0, "PUT", f"{res_type}?{query}", body, if_match=request.headers.get("if-match"), in_bundle=False)
    result = run_write(db, lambda s: IngestService(s, principal, settings, hooks).write_one(req))
    return _entry_response(result, settings)


@router.get("/{res_type}", summary="Search")
def search_get(
    res_type: str,
    request: Request,
    principal: Principal = Depends(get_principal),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> FhirResponse:
    return _search(res_type, list(request.query_params.multi_items()), principal, db, settings)


@router.post("/{res_type}/_search", summary="Search with form parameters")
async def search_post(
    res_type: str,
    request: Request,
    principal: Principal = Depends(get_principal),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> FhirResponse:
    form = await request.form()
    params = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_search, res_type, params, principal, db, settings)


def _search(res_type: str, params: list[tuple[str, str]], principal: Principal, db: Database, settings: Settings) -> FhirResponse:
    store.check_type(res_type)
    require(principal, res_type, "s")
    with db.session(readonly=True) as session:
        result = store.search(session, principal, res_type, params, default_count=settings.default_page_size, max_count=settings.max_page_size)
        bundle = store.searchset_bundle(result, base=settings.fhir_base, res_type=res_type, params=params)
    return FhirResponse(bundle)


@router.get("/{res_type}/{res_id}", summary="Read")
def read(
    res_type: str,
    res_id: str,
    principal: Principal = Depends(get_principal),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> FhirResponse:
    store.check_type(res_type)
    require(principal, res_type, "r")
    with db.session(readonly=True) as session:
        row = store.read(session, principal, res_type, res_id)
    return FhirResponse(row.body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, settings.fhir_base))


@router.get("/{res_type}/{res_id}/_history", summary="History of one resource")
def instance_history(
    res_type: str,
    res_id: str,
    principal: Principal = Depends(get_principal),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> FhirResponse:
    store.check_type(res_type)
    require(principal, res_type, "r")
    with db.session(readonly=True) as session:
        rows = store.history(session, principal, res_type, res_id)
    entries = [
        {
            "fullUrl": f"{settings.fhir_base}/{r.res_type}/{r.res_id}",
            "resource": json.loads(r.body),
            "request": {"method": r.method, "url": f"{r.res_type}/{r.res_id}" if r.method == "PUT" else r.res_type},
            "response": {"status": "201 Created" if r.version_id == 1 else "200 OK", "etag": store.etag(r.version_id), "lastModified": store.format_instant(r.last_updated)},
        }
        for r in rows
    ]
    return FhirResponse({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})


@router.get("/{res_type}/{res_id}/_history/{vid}", summary="Read one version")
def version_read(
    res_type: str,
    res_id: str,
    vid: str,
    principal: Principal = Depends(get_principal),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> FhirResponse:
    store.check_type(res_type)
    require(principal, res_type, "r")
    with db.session(readonly=True) as session:
        row = store.vread(session, principal, res_type, res_id, vid)
    return FhirResponse(row.body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, settings.fhir_base))
