"""HTTP helpers shared by every FHIR route: the response type, body parsing and dependencies."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from app.db import Database
from app.errors import FhirError, bad_request
from app.settings import Settings

FHIR_JSON = "application/fhir+json"
_ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


class FhirResponse(Response):
    media_type = "application/fhir+json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        if isinstance(content, (bytes, str)):
            return content.encode() if isinstance(content, str) else content
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


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
    if not raw.strip():
        raise bad_request("The request body is empty", code="required")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" at line {line}, column {exc.colno}" if line else ""
        raise FhirError(400, "structure", f"The body is not valid JSON{where}", spine_code="INVALID_RESOURCE") from None


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_hooks(request: Request) -> list:
    return request.app.state.ingest_hooks


def resource_headers(res_type: str, res_id: str, version_id: int, last_updated: datetime, base: str) -> dict[str, str]:
    last_updated = last_updated.replace(tzinfo=timezone.utc) if last_updated.tzinfo is None else last_updated.astimezone(timezone.utc)
    return {
        "ETag": f'W/"{version_id}"',
        "Last-Modified": format_datetime(last_updated, usegmt=True),
        "Location": f"{base}/{res_type}/{res_id}/_history/{version_id}",
    }
