"""Content negotiation for every route: which format to answer in, from ``_format`` (first)
or ``Accept``, against the formats the route declares (``produces``); a 406 OperationOutcome
for anything else. Called by every route's access dependency (app.auth.access), after the
role check, so a refused requester learns nothing of a route's formats."""
from __future__ import annotations

from typing import Any

from fastapi import Request

from app.errors import FhirError

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
