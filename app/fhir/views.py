"""FHIR REST routes: parse, call the store or the ingest service, return. No logic lives here."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import DataError, IntegrityError
from starlette.concurrency import run_in_threadpool

from app.auth.access import BundlePoster, Public, Reader, SmartConfiguration, Writer
from app.auth.access import require
from app.db import Database
from app.errors import FhirError, bad_request
from app.fhir import store
from app.fhir.http import FhirContext, FhirResponse, fhir_body, fhir_context, resource_headers
from app.ingest.bundles import process_bundle
from app.ingest.service import EntryRequest, EntryResult

router = APIRouter(prefix="/fhir", tags=["FHIR REST"])


def run_write(db: Database, work, body: Any, raw: bytes, *, attempts: int = 2):
    """Run a write in one transaction; when a concurrent writer took the same key, retry once
    with the body parsed afresh (the first attempt completed it in place)."""
    for attempt in range(attempts):
        try:
            with db.session() as session:
                return work(session, body if attempt == 0 else orjson.loads(raw))
        except IntegrityError:
            if attempt == attempts - 1:
                raise FhirError(409, "conflict", "A concurrent write changed the same records; retry the request", spine_code="CONFLICT") from None
        except DataError:  # a value the database cannot hold that validation let through
            raise unstorable() from None


def unstorable() -> FhirError:
    return FhirError(400, "invalid", "A value in the request cannot be stored by this server (too long, out of range or not text)", spine_code="INVALID_VALUE")


def _written(ctx: FhirContext, request: Request, body: Any, make_req) -> FhirResponse:
    result: EntryResult = run_write(ctx.db, lambda s, b: ctx.ingest(s).write_one(make_req(b)), body, request.state.raw_body)
    headers = resource_headers(result.res_type, result.res_id, result.version_id, result.last_updated, ctx.base)
    return FhirResponse(result.resource, status_code=result.status, headers=headers)


@router.get("/metadata", summary="CapabilityStatement (public)")
def metadata(request: Request, _: Public) -> FhirResponse:
    return FhirResponse(request.app.state.capability_statement)


@router.get("/.well-known/smart-configuration", summary="SMART configuration: the token issuer and the scopes (public)")
def smart_configuration(request: Request, _: SmartConfiguration) -> FhirResponse:
    from app.fhir.capability import smart_configuration as document

    return FhirResponse(document(request.app.state.settings), media_type="application/json")


@router.post("", summary="Process a transaction or batch Bundle")
@router.post("/", include_in_schema=False)
def post_bundle(request: Request, _: BundlePoster, ctx: FhirContext = Depends(fhir_context), body: Any = Depends(fhir_body)) -> FhirResponse:
    return FhirResponse(run_write(ctx.db, lambda s, b: process_bundle(ctx.ingest(s), b, ctx.settings), body, request.state.raw_body))


@router.post("/{res_type}", summary="Create a resource (conditional with If-None-Exist)")
def create(res_type: str, request: Request, _: Writer, ctx: FhirContext = Depends(fhir_context), body: Any = Depends(fhir_body)) -> FhirResponse:
    return _written(ctx, request, body, lambda b: EntryRequest(0, "POST", res_type, b, if_none_exist=request.headers.get("if-none-exist"), in_bundle=False))


@router.put("/{res_type}/{res_id}", summary="Update (or create with this id); If-Match for version checks")
def update(res_type: str, res_id: str, request: Request, _: Writer, ctx: FhirContext = Depends(fhir_context), body: Any = Depends(fhir_body)) -> FhirResponse:
    return _written(ctx, request, body, lambda b: EntryRequest(0, "PUT", f"{res_type}/{res_id}", b, if_match=request.headers.get("if-match"), in_bundle=False))


@router.put("/{res_type}", summary="Conditional update, e.g. Patient?identifier=system|value")
def conditional_update(res_type: str, request: Request, _: Writer, ctx: FhirContext = Depends(fhir_context), body: Any = Depends(fhir_body)) -> FhirResponse:
    if not request.url.query:
        raise bad_request("PUT to a type needs search criteria, e.g. ?identifier=system|value", expression=res_type)
    return _written(ctx, request, body, lambda b: EntryRequest(0, "PUT", f"{res_type}?{request.url.query}", b, if_match=request.headers.get("if-match"), in_bundle=False))


@router.get("/{res_type}", summary="Search")
def search_get(res_type: str, request: Request, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    return _search(ctx, res_type, list(request.query_params.multi_items()))


@router.post("/{res_type}/_search", summary="Search with form parameters")
async def search_post(res_type: str, request: Request, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded", spine_code="UNSUPPORTED_MEDIA_TYPE")
    form = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return await run_in_threadpool(_search, ctx, res_type, list(request.query_params.multi_items()) + form)


def _search(ctx: FhirContext, res_type: str, params: list[tuple[str, str]]) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "s")
    with ctx.db.session(readonly=True) as session:
        try:
            result = store.search(session, ctx.principal, res_type, params, default_count=ctx.settings.default_page_size, max_count=ctx.settings.max_page_size)
        except DataError:  # a search value the database cannot compare that validation let through
            raise unstorable() from None
        bundle = store.searchset_bundle(result, base=ctx.base, res_type=res_type, params=params)
    return FhirResponse(bundle)


@router.get("/{res_type}/{res_id}", summary="Read")
def read(res_type: str, res_id: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    with ctx.db.session(readonly=True) as session:
        row = store.read(session, ctx.principal, res_type, res_id)
    return FhirResponse(row.body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, ctx.base))


@router.get("/{res_type}/{res_id}/_history", summary="History of one resource")
def instance_history(res_type: str, res_id: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    with ctx.db.session(readonly=True) as session:
        rows = store.history(session, ctx.principal, res_type, res_id)
    entries = [
        {
            "fullUrl": f"{ctx.base}/{r.res_type}/{r.res_id}",
            "resource": json.loads(r.body),
            "request": {"method": r.method, "url": f"{r.res_type}/{r.res_id}" if r.method == "PUT" else r.res_type},
            "response": {"status": "201 Created" if r.version_id == 1 else "200 OK", "etag": store.etag(r.version_id), "lastModified": store.format_instant(r.last_updated)},
        }
        for r in rows
    ]
    return FhirResponse({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})


@router.get("/{res_type}/{res_id}/_history/{vid}", summary="Read one version")
def version_read(res_type: str, res_id: str, vid: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    with ctx.db.session(readonly=True) as session:
        row = store.vread(session, ctx.principal, res_type, res_id, vid)
    return FhirResponse(row.body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, ctx.base))
