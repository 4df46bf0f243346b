"""FHIR REST routes: parse, call the store or the ingest service, return. No logic lives here."""
from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.concurrency import run_in_threadpool

from app.audit import balp
from app.auth.access import BundlePoster, Public, Reader, SmartConfiguration, Writer
from app.auth.access import require, sees_all_orgs
from app.db import Database, retryable
from app.errors import FhirError, bad_request
from app.family.graph import as_shown
from app.linkage.queue import settle
from app.fhir import search as q
from app.fhir import store
from app.fhir.http import FhirContext, FhirResponse, fhir_body, fhir_context, resource_headers
from app.ingest.bundles import process_bundle
from app.ingest.service import EntryRequest, EntryResult, search_event

router = APIRouter(prefix="/fhir", tags=["FHIR REST"])
log = logging.getLogger("familyview")


def run_write(db: Database, work, body: Any, raw: bytes, *, attempts: int = 3):
    """Run a write in one transaction. When a concurrent writer took the same key, or the
    database chose this transaction as a deadlock or serialization victim, run it again with
    the body parsed afresh (the first attempt completed it in place), after a short jittered
    pause; if it still fails, 409 (a key taken) or 503 with Retry-After (contention)."""
    for attempt in range(attempts):
        if attempt:
            time.sleep(random.uniform(0.01, 0.05) * attempt)  # apart from the writer it met, not in step with it
        try:
            with db.session() as session:
                return work(session, body if attempt == 0 else orjson.loads(raw))
        except IntegrityError:
            if attempt == attempts - 1:
                raise FhirError(409, "conflict", "A concurrent write changed the same records; retry the request", spine_code="CONFLICT") from None
        except DataError:  # a value the database cannot hold that validation let through
            raise unstorable() from None
        except DBAPIError as err:
            if not retryable(err):
                raise
            log.info("write retried after a %s (attempt %d)", "deadlock" if getattr(err.orig, "sqlstate", None) == "40P01" else "serialization failure", attempt + 1)
            if attempt == attempts - 1:
                raise FhirError(503, "transient", "The database is busy with concurrent writes to the same records; retry the request",
                                spine_code="SERVICE_UNAVAILABLE", headers={"Retry-After": "1"}) from None


def unstorable() -> FhirError:
    return FhirError(400, "invalid", "A value in the request cannot be stored by this server (too long, out of range or not text)", spine_code="INVALID_VALUE")


def _source_turn(ctx: FhirContext):
    """The write waits its turn among its source's writes (app.ingest.throttle)."""
    return ctx.throttle.turn(ctx.principal.org) if ctx.throttle is not None else contextlib.nullcontext()


def _written(ctx: FhirContext, request: Request, body: Any, make_req) -> FhirResponse:
    with _source_turn(ctx):
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
    with _source_turn(ctx):
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


def _linked_first(ctx: FhirContext) -> None:
    """A reader of every organisation's people is shown each with the R and V labels of all the
    person's records (graph.as_shown), so what linkage still has queued is linked first."""
    if sees_all_orgs(ctx.principal, "fhir.read"):
        settle(ctx.db, ctx.settings)


def _search(ctx: FhirContext, res_type: str, params: list[tuple[str, str]]) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "s")
    _linked_first(ctx)
    with ctx.db.session() as session:  # the search and its audit commit together: no audit, no answer
        try:
            result = store.search(session, ctx.principal, res_type, params, default_count=ctx.settings.default_page_size,
                                  max_count=ctx.settings.max_page_size, limits=q.SearchLimits.of(ctx.settings))
        except DataError:  # a search value the database cannot compare that validation let through
            raise unstorable() from None
        bundle = store.searchset_bundle(result, base=ctx.base, res_type=res_type, params=params,
                                        resources=as_shown(session, ctx.principal, result.rows))
        query = "&".join(f"{k}={v}" for k, v in params)
        balp.record(session, search_event(ctx.principal, f"{res_type}?{query}", bundle, ctx.request_id))
    return FhirResponse(bundle)


def _audit_read(session, ctx: FhirContext, interaction: str, res_type: str, res_id: str, rows) -> None:
    """The BALP read/vread/history event, in the read's transaction."""
    event = balp.AccessEvent(ctx.principal, interaction, request_id=ctx.request_id)
    for row in rows:
        event.entity(f"{res_type}/{res_id}", version=str(row.version_id))
    event.about(balp.record_subjects(res_type, res_id, orjson.loads(rows[0].body) if rows else None))
    balp.record(session, event)


@router.get("/{res_type}/{res_id}", summary="Read")
def read(res_type: str, res_id: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    _linked_first(ctx)
    with ctx.db.session() as session:
        row = store.read(session, ctx.principal, res_type, res_id)
        body = as_shown(session, ctx.principal, [row])[0]
        _audit_read(session, ctx, "read", res_type, res_id, [row])
    return FhirResponse(body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, ctx.base))


@router.get("/{res_type}/{res_id}/_history", summary="History of one resource")
def instance_history(res_type: str, res_id: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    _linked_first(ctx)
    with ctx.db.session() as session:
        rows = store.history(session, ctx.principal, res_type, res_id)
        bodies = as_shown(session, ctx.principal, rows)
        _audit_read(session, ctx, "history-instance", res_type, res_id, rows)
    entries = [
        {
            "fullUrl": f"{ctx.base}/{r.res_type}/{r.res_id}",
            "resource": body,
            "request": {"method": r.method, "url": f"{r.res_type}/{r.res_id}" if r.method == "PUT" else r.res_type},
            "response": {"status": "201 Created" if r.version_id == 1 else "200 OK", "etag": store.etag(r.version_id), "lastModified": store.format_instant(r.last_updated)},
        }
        for r, body in zip(rows, bodies)
    ]
    return FhirResponse({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})


@router.get("/{res_type}/{res_id}/_history/{vid}", summary="Read one version")
def version_read(res_type: str, res_id: str, vid: str, _: Reader, ctx: FhirContext = Depends(fhir_context)) -> FhirResponse:
    store.check_type(res_type)
    require(ctx.principal, res_type, "r")
    _linked_first(ctx)
    with ctx.db.session() as session:
        row = store.vread(session, ctx.principal, res_type, res_id, vid)
        body = as_shown(session, ctx.principal, [row])[0]
        _audit_read(session, ctx, "vread", res_type, res_id, [row])
    return FhirResponse(body, headers=resource_headers(res_type, res_id, row.version_id, row.last_updated, ctx.base))
