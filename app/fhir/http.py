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
    throttle: Any = None  # app.ingest.throttle.WriteThrottle: one source's writes at once
    request_id: str = ""

    def ingest(self, session) -> "IngestService":
        from app.ingest.service import IngestService

        service = IngestService(session, self.principal, self.settings, self.hooks, base=self.base)
        service.request_id = self.request_id
        return service


def fhir_context(request: Request, principal: Principal = Depends(get_principal)) -> FhirContext:
    state = request.app.state
    return FhirContext(principal, state.db, state.settings, state.settings.fhir_base(str(request.base_url)), state.ingest_hooks,
                       getattr(state, "write_throttle", None), getattr(request.state, "request_id", ""))


# content negotiation lives below auth (the access dependencies call it): re-exported here
from app.negotiation import CSV as CSV, FHIR_JSON as FHIR_JSON, HTML as HTML, NDJSON as NDJSON  # noqa: E402
from app.negotiation import negotiate as negotiate, not_acceptable as not_acceptable, produces as produces  # noqa: E402


async def json_object(request: Request, *names: str) -> dict[str, Any]:
    """The body of a plain-JSON action (linkage admin, IG review): a JSON object, else 415 or 400."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "application/fhir+json"):
        raise FhirError(415, "not-supported", f"Content-Type must be application/json (got {ctype or 'none'})", spine_code="UNSUPPORTED_MEDIA_TYPE")
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FhirError(400, "structure", "The body is not valid JSON", spine_code="INVALID_RESOURCE") from None
    if not isinstance(body, dict):
        raise bad_request(f"The body must be a JSON object with {' and '.join(repr(n) for n in names)}", code="structure")
    return body


def required_text(body: dict[str, Any], name: str) -> str:
    """A required, non-blank string member of such a body, stripped; control characters refused
    (PostgreSQL cannot hold U+0000: a 400 here, not a 500 at the write)."""
    from app.fhir.validation import CONTROL_CHARS, control_char_error

    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FhirError(400, "required", f"'{name}' is required", expression=name, spine_code="MISSING_VALUE")
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", expression=name)
    if CONTROL_CHARS.search(value):
        raise control_char_error(name)
    return value.strip()
