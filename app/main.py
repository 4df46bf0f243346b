"""The FastAPI application: one factory, settings and database injected, routers per domain."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.tokens import TokenVerifier
from app.db import Database
from app.errors import FhirError, Issue, operation_outcome
from app.fhir.capability import capability_statement
from app.fhir.http import FhirResponse
from app.middleware import RequestContextMiddleware
from app.ops.http import OpsMiddleware
from app.settings import Settings, get_settings
from app.wiring import database as open_database
from app.wiring import ingest_hooks

log = logging.getLogger("familyview")

_STATUS_CODES = {404: ("not-found", "RESOURCE_NOT_FOUND"), 405: ("not-supported", "NOT_SUPPORTED")}


def _domain_modules() -> list[Any]:
    """Domain packages that add routes, operations and ingest hooks (in route order)."""
    from app import audit, family, sync, web
    from app.linkage import api as linkage_api

    return [family, audit, linkage_api, sync, web]


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
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
    operations: list[dict[str, Any]] = []
    extra_resources: list[dict[str, Any]] = []
    for module in _domain_modules():
        module.install(app, operations=operations, extra_resources=extra_resources)
    from app.fhir.views import router as fhir_router

    app.include_router(fhir_router)
    app.state.capability_statement = capability_statement(settings, operations=operations, extra_resources=extra_resources)

    @app.exception_handler(FhirError)
    async def _fhir_error(request: Request, exc: FhirError) -> FhirResponse:
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(request: Request, exc: Exception) -> FhirResponse:
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
