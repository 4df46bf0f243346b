"""ASGI middleware: request and correlation ids on every response, the body size limit, and a
last-resort 500 OperationOutcome that names only the request id."""
from __future__ import annotations

import json
import logging
import re
import uuid
from urllib.parse import parse_qsl

from app.errors import FhirError, Issue, error_summary, operation_outcome
from app.ops import logs
from app.fhir.validation import CONTROL_CHARS, control_char_error

log = logging.getLogger("familyview")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
scrub = logs.scrub  # logs never carry an NHS number in clear


def _control_char_in_url(scope) -> str | None:
    """Where a control character sits in the URL, named as the handler would name it
    (Patient.id, Patient?family), or None."""
    path = scope.get("path", "")
    parts = [p for p in path.split("/") if p]
    fhir = bool(parts) and parts[0] == "fhir"
    res_type = parts[1] if fhir and len(parts) > 1 else "the URL"
    if CONTROL_CHARS.search(path):
        return f"{res_type}.id" if fhir and len(parts) > 2 and CONTROL_CHARS.search(parts[2]) else "the URL path"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True) if query else ():
        if CONTROL_CHARS.search(name) or CONTROL_CHARS.search(value):
            return f"{res_type}?{name.partition(':')[0]}"
    return None


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")
        if not _SAFE_ID.match(request_id):
            request_id = str(uuid.uuid4())
        correlation_id = headers.get("x-correlation-id", "")
        if not _SAFE_ID.match(correlation_id):
            correlation_id = request_id
        scope.setdefault("state", {})["request_id"] = request_id
        scope["state"]["correlation_id"] = correlation_id
        logs.request_id.set(request_id)  # every log line of this request carries them (app.ops.logs)
        logs.correlation_id.set(correlation_id)
        extra = [(b"x-request-id", request_id.encode()), (b"x-correlation-id", correlation_id.encode())]
        started = False

        async def send_wrapper(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        async def send_error(status: int, outcome: dict, more_headers=()):
            body = json.dumps(outcome).encode()
            await send_wrapper({
                "type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode()), *more_headers],
            })
            await send_wrapper({"type": "http.response.body", "body": body})

        declared = headers.get("content-length")
        too_large = FhirError(413, "too-costly", f"The request body is larger than this server accepts ({self.max_body_bytes} bytes)", spine_code="REQUEST_TOO_LARGE")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_error(413, too_large.outcome())
            return
        where = _control_char_in_url(scope)
        if where is not None:
            # PostgreSQL cannot hold U+0000, and FHIR strings hold no control character: one
            # 400 here for any path segment or query value, whichever handler it would reach
            await send_error(400, control_char_error(where, "a path segment or query value").outcome())
            return
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, receive_limited, send_wrapper)
        except _BodyTooLarge:
            if not started:
                await send_error(413, too_large.outcome())
        except Exception:  # noqa: BLE001 - the last resort: log the detail, answer with the id only
            log.error("unhandled error request_id=%s path=%s error=%s", request_id, scrub(scope.get("path", "")), error_summary())
            if not started:
                outcome = operation_outcome([Issue("exception", f"An unexpected error occurred. Quote request id {request_id} to the service desk.", spine_code="SERVER_ERROR")])
                await send_error(500, outcome)
