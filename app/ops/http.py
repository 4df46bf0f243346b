"""The outermost middleware: security headers on every response, request metrics by route
template, and the access log (method, path without the query string, status, time)."""
from __future__ import annotations

import logging
import time

from app.ops import metrics
from app.ops.logs import scrub
from app.settings import Settings

access_log = logging.getLogger("familyview.access")

# JSON answers (FHIR, OperationOutcome, health) load nothing; HTML pages (Swagger UI, the web
# pages) their own scripts and styles and the Swagger UI's from its CDN. A page that sets its own
# policy keeps it.
CSP_API = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
CSP_HTML = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


class OpsMiddleware:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.hsts = f"max-age={settings.hsts_seconds}; includeSubDomains".encode()

    def _secure(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        names = {k.lower() for k, _ in headers}
        ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        out = list(headers)
        wanted = [
            (b"cache-control", b"no-store"),  # PHI is never kept by a browser or a proxy
            (b"pragma", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"strict-transport-security", self.hsts),
            (b"content-security-policy", (CSP_HTML if ctype.startswith(b"text/html") else CSP_API).encode()),
        ]
        out += [(k, v) for k, v in wanted if k not in names]
        return out

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_secured(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": self._secure(list(message.get("headers", [])))}
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.record_request(scope.get("method", ""), route, status, elapsed)
            if self.settings.access_log:
                client = (scope.get("client") or ("-", 0))[0]
                access_log.info(
                    "%s %s %s %.1fms", scope.get("method"), scrub(scope.get("path", "")), status, elapsed * 1000,
                    extra={"method": scope.get("method"), "path": scrub(scope.get("path", "")), "route": route,
                           "status": status, "duration_ms": round(elapsed * 1000, 1), "client": client},
                )
