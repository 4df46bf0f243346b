"""Liveness and readiness for a load balancer or orchestrator, and the Prometheus scrape.

/healthz: the process answers (no database touched, so a slow database does not get a
healthy process restarted). /readyz: this process can serve, i.e. the database answers, its
schema is at the migrations' head, and the audit chain's head can be read (no audit, no
disclosure); else a 503 OperationOutcome naming each failing check. /metrics: see app.ops.metrics; no PHI, only counts by route template."""
from __future__ import annotations

import hmac
import time
from functools import lru_cache

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.auth.access import Health, MetricsReader
from app.db import Database
from app.errors import Issue, operation_outcome, unauthorized
from app.fhir.http import FhirResponse
from app.ops import metrics

router = APIRouter(tags=["Operations"])


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The revisions the code expects (the Alembic scripts' heads)."""
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def readiness(db: Database) -> tuple[bool, dict[str, dict[str, object]]]:
    checks: dict[str, dict[str, object]] = {}
    try:
        with db.engine.connect() as conn:
            t0 = time.perf_counter()
            conn.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
            current = frozenset(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))
            expected = migration_heads()
            checks["migrations"] = {"ok": current == expected, "current": sorted(current), "expected": sorted(expected)}
            head = conn.execute(text("SELECT seq, hash FROM audit_head ORDER BY seq DESC LIMIT 1")).first()
            checks["audit"] = {"ok": True, "head_seq": head[0] if head else 0}
    except Exception as exc:  # noqa: BLE001 - not ready, and why (the exception's kind, never its SQL)
        failing = next((k for k in ("database", "migrations", "audit") if k not in checks), "audit")
        checks[failing] = {"ok": False, "error": type(exc).__name__}
    ok = all(c.get("ok") for c in checks.values()) and len(checks) == 3
    return ok, checks


def database_gauges(db: Database) -> metrics.DatabaseGauges:
    def read() -> dict[str, float]:
        with db.engine.connect() as conn:
            queue = conn.execute(text("SELECT count(*) FROM linkage_queue")).scalar() or 0
            audit = conn.execute(text("SELECT max(seq) FROM audit_head")).scalar() or 0
        return {"familyview_linkage_queue_depth": float(queue), "familyview_audit_events": float(audit)}

    return metrics.DatabaseGauges(read)


@router.get("/healthz", summary="Liveness: the process answers (public)")
def healthz(_: Health) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: database reachable, migrations at head, audit chain head readable (public)")
async def readyz(request: Request, _: Health) -> JSONResponse:
    ok, checks = await run_in_threadpool(readiness, request.app.state.db)
    if ok:
        return JSONResponse({"status": "ready", "checks": checks})
    failing = [Issue("transient", f"Not ready: {name} " + ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok"),
                     spine_code="SERVICE_UNAVAILABLE")
               for name, check in checks.items() if not check.get("ok")]
    return FhirResponse(operation_outcome(failing), status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics (operators; no PHI)")
async def prometheus(request: Request, _: MetricsReader) -> Response:
    secret = request.app.state.settings.metrics_token
    if secret and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {secret}".encode()):
        raise unauthorized("The metrics need Authorization: Bearer <FAMILYVIEW_METRICS_TOKEN>")
    body, content_type = await run_in_threadpool(metrics.exposition, database_gauges(request.app.state.db))
    return Response(body, media_type=content_type)
