"""HTTP helpers shared by every FHIR route: the response type, body parsing and dependencies."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from app.auth.deps import get_principal
from app.auth.tokens import Principal
from app.db import Database
from app.errors import FhirError, bad_request
from app.settings import Settings

if TYPE_CHECKING:  # the ingest pipeline imports this module
    from app.ingest.service import IngestService

_ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


class FhirResponse(Response):
    media_type = "application/fhir+json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        if isinstance(content, (bytes, str)):
            return content.encode() if isinstance(content, str) else content
        return orjson.dumps(content)


async def fhir_body(request: Request) -> Any:
    """The request's JSON body: 415 for another content type, 400 for JSON that does not parse."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in _ACCEPTED_BODY_TYPES:
        raise FhirError(
            415, "not-supported",
            f"Content-Type must be application/fhir+json (got {ctype or 'none'})",
            spine_code="UNSUPPORTED_MEDIA_TYPE",
        )
    raw = await request.body()
    request.state.raw_body = raw  # a retried write re-parses it: the pipeline completes the parsed body in place
    if not raw.strip():
        raise bad_request("The request body is empty", code="required")
    try:
        return orjson.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # orjson's error is a json.JSONDecodeError
        line = getattr(exc, "lineno", None)
        where = f" at line {line}, column {exc.colno}" if line else ""
        raise FhirError(400, "structure", f"The body is not valid JSON{where}", spine_code="INVALID_RESOURCE") from None


def resource_headers(res_type: str, res_id: str, version_id: int, last_updated: datetime, base: str) -> dict[str, str]:
    last_updated = last_updated.replace(tzinfo=timezone.utc) if last_updated.tzinfo is None else last_updated.astimezone(timezone.utc)
    return {
        "ETag": f'W/"{version_id}"',
        "Last-Modified": format_datetime(last_updated, usegmt=True),
        "Location": f"{base}/{res_type}/{res_id}/_history/{version_id}",
    }


@dataclass
class FhirContext:
    """What every authenticated FHIR route needs, injected once."""

    principal: Principal
    db: Database
    settings: Settings
    base: str
    hooks: list
    request_id: str = ""

    def ingest(self, session) -> "IngestService":
        from app.ingest.service import IngestService

        service = IngestService(session, self.principal, self.settings, self.hooks, base=self.base)
        service.request_id = self.request_id
        return service


def fhir_context(request: Request, principal: Principal = Depends(get_principal)) -> FhirContext:
    state = request.app.state
    return FhirContext(principal, state.db, state.settings, state.settings.fhir_base(str(request.base_url)), state.ingest_hooks,
                       getattr(request.state, "request_id", ""))


# ---------------------------------------------------------------- content negotiation

FHIR_JSON = "application/fhir+json"
CSV, NDJSON, HTML = "text/csv", "application/x-ndjson", "text/html"
_FORMAT_ALIASES = {
    "json": FHIR_JSON, "fhir+json": FHIR_JSON, "application/json": FHIR_JSON, "application/fhir+json": FHIR_JSON,
    "application/json+fhir": FHIR_JSON,
    "csv": CSV, "text/csv": CSV,
    "ndjson": NDJSON, "application/x-ndjson": NDJSON, "application/fhir+ndjson": NDJSON, "application/ndjson": NDJSON,
    "html": HTML, "text/html": HTML,
}
PRODUCES_KEY = "x-familyview-produces"
PRODUCES_ONLY_KEY = "x-familyview-produces-only"


def produces(*media_types: str, only: bool = False) -> dict[str, Any]:
    """A route's ``openapi_extra`` naming the formats it answers in besides FHIR JSON (with
    ``only``: instead of it; the first is the default)."""
    return {PRODUCES_KEY: list(media_types), PRODUCES_ONLY_KEY: only}


def _route_formats(request: Request) -> list[str]:
    from fastapi.responses import HTMLResponse

    route = request.scope.get("route")
    declared = getattr(route, "openapi_extra", None) or {}
    extra = declared.get(PRODUCES_KEY, [])
    formats = list(extra) if declared.get(PRODUCES_ONLY_KEY) else [FHIR_JSON, *extra]
    if isinstance(getattr(route, "response_class", None), type) and issubclass(route.response_class, HTMLResponse):
        formats = [HTML, *formats]
    return formats


def _accepted(header: str) -> list[tuple[float, str]]:
    out = []
    for part in header.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media:
            out.append((q, media.lower()))
    return out


def _matches(pattern: str, media: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media.startswith(pattern[:-1])
    return _FORMAT_ALIASES.get(pattern, pattern) == media


def negotiate(request: Request) -> str:
    """One dependency for every route: the format to answer in, from ``_format`` (first) or
    ``Accept``; 406 with an OperationOutcome for a format the route does not produce, so a
    client asking for CSV or XML never gets JSON with a 200."""
    formats = _route_formats(request)
    wanted = request.query_params.getlist("_format")
    if wanted:
        media = _FORMAT_ALIASES.get(wanted[-1].split(";")[0].strip().lower())
        if media is None or media not in formats:
            raise not_acceptable(f"_format={wanted[-1]} is not available here (available: {', '.join(formats)})")
        request.state.media_type = media
        return media
    header = request.headers.get("accept")
    if not header or not header.strip():
        request.state.media_type = formats[0]
        return formats[0]
    best: tuple[float, int, str] | None = None
    for q, pattern in _accepted(header):
        if q <= 0:
            continue
        for rank, media in enumerate(formats):
            if _matches(pattern, media) and (best is None or (q, -rank) > (best[0], best[1])):
                best = (q, -rank, media)
    if best is None:
        raise not_acceptable(f"Accept: {header[:100]} names no format available here (available: {', '.join(formats)})")
    request.state.media_type = best[2]
    return best[2]


def not_acceptable(message: str) -> FhirError:
    return FhirError(406, "not-supported", message, spine_code="NOT_SUPPORTED")
