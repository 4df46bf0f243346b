"""The FastAPI application: one factory, settings and database injected, routers per domain."""
from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.tokens import TokenVerifier
from app.db import Database, cancelled_by_timeout
from app.errors import FhirError, Issue, operation_outcome
from app.fhir.capability import capability_statement
from app.fhir.http import FhirResponse
from app.middleware import RequestContextMiddleware
from app.ops.http import OpsMiddleware
from app.settings import Settings, get_settings
from app.wiring import database as open_database
from app.wiring import ingest_hooks
from app.ingest.throttle import WriteThrottle

log = logging.getLogger("familyview")

_STATUS_CODES = {404: ("not-found", "RESOURCE_NOT_FOUND"), 405: ("not-supported", "NOT_SUPPORTED")}


def _domain_modules() -> list[Any]:
    """Domain packages that add routes, operations and ingest hooks (in route order)."""
    from app import audit, family, sync, web
    from app.ig import routes as ig_routes
    from app.linkage import api as linkage_api

    return [family, audit, ig_routes, linkage_api, sync, web]


def audit_refusal(request: Request, exc: FhirError) -> None:
    """A refused access is audited too (outcome 4), in its own transaction: the refused
    request's own transaction, if it had one, rolled back with the refusal."""
    from app.audit import balp

    method, path = request.method, request.url.path
    interaction, target = balp.interaction_of(method, path)
    event = balp.AccessEvent(request.state.principal, interaction, request_id=getattr(request.state, "request_id", ""),
                             query=f"{method} {path}" + (f"?{request.url.query}" if request.url.query else ""))
    if target:
        event.entity(target)
    event.refused(exc.status, exc.diagnostics)
    try:
        with request.app.state.db.session() as session:
            balp.record(session, event)
    except Exception:  # noqa: BLE001 - the refusal stands; the failure to audit it is logged
        log.error("the refusal could not be audited (request_id=%s)", getattr(request.state, "request_id", ""))


def _record_policy(app: FastAPI) -> None:
    """The disclosure policy this server starts with, audited when it changed (app.audit.balp)."""
    from app.audit import balp
    from consent import load_policy

    policy = load_policy()
    try:
        with app.state.db.session() as session:
            balp.record_policy_in_force(session, policy.version, Path(policy.source).name)
    except Exception:  # noqa: BLE001 - a database not migrated yet: serving says so on the first request
        log.warning("the disclosure policy in force could not be audited at start-up")


def _database_unreachable(exc: Exception) -> bool:
    """Whether a driver error says the database is unreachable, restarting or busy (retry
    later), not that our statement was wrong: psycopg raises OperationalError only for the
    connection and the server's state; SQLite raises it for a missing table too."""
    if isinstance(exc, InterfaceError) or getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None)
    if type(orig).__module__.startswith("psycopg"):
        return True
    return any(word in str(orig) for word in ("database is locked", "database is busy", "unable to open database"))


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_record_policy, app)
        deliverer = None
        if settings.notification_endpoints:  # notifications to holders' endpoints leave from the outbox
            from app.ig.notifications import Deliverer

            deliverer = Deliverer(app.state.db, settings)
            deliverer.start()
        try:
            yield
        finally:
            if deliverer is not None:
                deliverer.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="familyview",
        version="0.1.0",
        description="FHIR R4 gateway that joins up the infant-family record and discloses it only on a lawful basis.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = database or open_database(settings)
    app.state.verifier = TokenVerifier(settings)
    app.state.ingest_hooks = ingest_hooks(settings)
    app.state.write_throttle = WriteThrottle(settings.max_concurrent_writes_per_source, settings.write_turn_wait_seconds)
    operations: list[dict[str, Any]] = []
    extra_resources: list[dict[str, Any]] = []
    for module in _domain_modules():
        module.install(app, operations=operations, extra_resources=extra_resources)
    from app.fhir.views import router as fhir_router

    app.include_router(fhir_router)
    app.state.capability_statement = capability_statement(settings, operations=operations, extra_resources=extra_resources)

    @app.exception_handler(FhirError)
    async def _fhir_error(request: Request, exc: FhirError) -> FhirResponse:
        if exc.status == 403 and getattr(request.state, "principal", None) is not None:
            await run_in_threadpool(audit_refusal, request, exc)
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(request: Request, exc: Exception) -> FhirResponse:
        if isinstance(exc, OperationalError) and cancelled_by_timeout(exc):
            log.warning("statement timeout request_id=%s path=%s", getattr(request.state, "request_id", "-"), request.url.path)
            return FhirResponse(operation_outcome([Issue(
                "too-costly", "The request took longer than this server allows and was stopped; narrow the search and try again",
                spine_code="SERVICE_UNAVAILABLE")]), status_code=503, headers={"Retry-After": "1"})
        if not _database_unreachable(exc):
            raise exc  # a fault of ours (SQLite's "no such table"): the last-resort handler logs it (without SQL) and answers 500
        # the database restarting or unreachable: the transaction rolled back with its connection
        # (or, cut during COMMIT, its outcome is unknown), so a retry is the client's move, as the
        # 503 says; never a bare 500
        log.warning("database unavailable request_id=%s: %s", getattr(request.state, "request_id", ""), type(getattr(exc, "orig", exc)).__name__)
        outcome = operation_outcome([Issue("transient", "The database is unavailable, so the request was not completed. Retry after a moment.", spine_code="SERVICE_UNAVAILABLE")])
        return FhirResponse(outcome, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> FhirResponse:
        issues = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            issues.append(Issue("invalid", f"{where}: {err.get('msg')}", expression=[where], spine_code="INVALID_PARAMETER"))
        return FhirResponse(operation_outcome(issues or [Issue("invalid", "Invalid request")]), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FhirResponse:
        code, spine = _STATUS_CODES.get(exc.status_code, ("processing", "INVALID_REQUEST"))
        msg = "No such endpoint" if exc.status_code == 404 else str(exc.detail)
        return FhirResponse(operation_outcome([Issue(code, msg, spine_code=spine)]), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    from app.ops import install as install_ops

    install_ops(app, settings)  # health, readiness, metrics; rate limits inside the request ids, headers outside
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(OpsMiddleware, settings=settings)
    _describe_api(app)
    return app


def _describe_api(app: FastAPI) -> None:
    """/openapi.json from app.openapi_doc (FHIR bodies, errors, security), built once on first request."""
    from app.openapi_doc import describe

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
