"""Per-client rate limits: token buckets keyed by who is asking, a 429 OperationOutcome with
Retry-After when one is empty.

Who is asking: a verified token's issuer and subject; otherwise the client address, in a
stricter bucket when the request carried a token that failed verification (so a flood of bad
tokens is cut off quickly and cannot drown the server in signature checks). Buckets live in
this process; with several workers each gets its share of the configured rate (a connection
is served by one worker, so a client's requests spread over them)."""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from app.auth.tokens import bearer_token
from app.errors import FhirError
from app.ops import metrics
from app.settings import Settings

EXEMPT = ("/healthz", "/readyz", "/metrics")  # probes and scrapes are not clients
EXEMPT_PREFIXES = ("/static/",)  # the pages' stylesheets, scripts and icons (files, cached by the browser)
SESSION_COOKIE = "familyview_session"  # app.web.session.COOKIE: a signed-in page user is a subject too
MAX_CLIENTS = 100_000


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: float


class Buckets:
    """Token buckets for many clients, least recently seen dropped first past MAX_CLIENTS."""

    def __init__(self) -> None:
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, limit: Limit, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        tokens, last = self._state.pop(key, (limit.burst, now))
        tokens = min(limit.burst, tokens + (now - last) * limit.per_second)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / limit.per_second
        self._state[key] = (tokens, now)
        if len(self._state) > MAX_CLIENTS:
            self._state.popitem(last=False)
        return wait


def limits(settings: Settings) -> dict[str, Limit]:
    share = max(1, settings.workers)
    return {
        "subject": Limit(settings.rate_limit_per_minute / 60 / share, max(1.0, settings.rate_limit_burst / share)),
        "anonymous": Limit(settings.rate_limit_anonymous_per_minute / 60 / share, max(1.0, settings.rate_limit_anonymous_burst / share)),
        "bad-token": Limit(settings.rate_limit_bad_token_per_minute / 60 / share, max(1.0, settings.rate_limit_bad_token_burst / share)),
    }


class RateLimitMiddleware:
    """Identifies the client (verifying its token once: the principal is handed on to the
    route in the request state) and answers 429 when its bucket is empty."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.limits = limits(settings)
        self.buckets = Buckets()

    def client(self, scope) -> tuple[str, str]:
        """(bucket kind, key) for this request; a verified principal goes into the state."""
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization")
        address = (scope.get("client") or ("unknown", 0))[0]
        if authorization is None:
            return self._page_user(scope, headers.get(b"cookie")) or ("anonymous", f"ip:{address}")
        try:
            token = bearer_token(authorization.decode("latin-1"))
            principal = scope["app"].state.verifier.verify(token)
        except FhirError:
            return "bad-token", f"bad:{address}"
        state = scope.setdefault("state", {})
        state["bearer"], state["principal"] = token, principal
        return "subject", f"sub:{principal.claims.get('iss', '')}|{principal.sub}"

    @staticmethod
    def _page_user(scope, cookie: bytes | None) -> tuple[str, str] | None:
        """A page user signed in (the session cookie's signature checked, app.web), by subject:
        the users of one hospital share its address."""
        signer = getattr(scope["app"].state, "web_signer", None)
        if not cookie or signer is None:
            return None
        from http.cookies import CookieError, SimpleCookie

        try:
            jar = SimpleCookie(cookie.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(SESSION_COOKIE)
        try:
            data = signer.loads(morsel.value) if morsel is not None else None
        except Exception:  # noqa: BLE001 - a session that cannot be read is no session
            data = None
        return ("subject", f"web:{data.get('sub')}") if data else None

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or not self.settings.rate_limit_enabled or path in EXEMPT
                or path.startswith(EXEMPT_PREFIXES)):
            await self.app(scope, receive, send)
            return
        if self.settings.auth_jwks_url:  # an unknown key id fetches the issuer's JWKS: never on the event loop
            kind, key = await run_in_threadpool(self.client, scope)
        else:
            kind, key = self.client(scope)
        scope.setdefault("state", {})["client_key"] = key
        wait = self.buckets.take(key, self.limits[kind])
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        metrics.THROTTLED.labels(kind).inc()
        retry = str(max(1, math.ceil(wait)))
        body = json.dumps(FhirError(429, "throttled", f"Too many requests from this client; retry after {retry} s",
                                    spine_code="TOO_MANY_REQUESTS").outcome()).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", retry.encode())]})
        await send({"type": "http.response.body", "body": body})
