"""HTTP client for an upstream FHIR server: timeouts, retries with exponential backoff on 429 and
5xx (honouring Retry-After), a bearer token or OAuth2 client credentials, and errors that carry
the upstream's OperationOutcome."""
from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
import orjson

from app.settings import Settings

log = logging.getLogger("familyview.sync")

RETRY_STATUSES = {429, 500, 502, 503, 504}
FHIR_ACCEPT = "application/fhir+json"


class UpstreamError(Exception):
    """The upstream refused or failed a request; `outcome` is its OperationOutcome when it sent one."""

    def __init__(self, message: str, *, url: str, status: int | None = None, outcome: dict[str, Any] | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.outcome = outcome

    @property
    def diagnostics(self) -> str:
        """The upstream's own words: the OperationOutcome's issues, or the message."""
        if self.outcome:
            parts = []
            for issue in self.outcome.get("issue") or []:
                text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
                parts.append(f"{issue.get('severity', 'error')}: {text}")
            if parts:
                return "; ".join(parts)
        return str(self)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now if now is not None else time.time()
    return max(0.0, when.timestamp() - now)


class UpstreamClient:
    """One upstream base URL. Thread-safe (the sync fetches pages on other threads while it
    writes): one httpx.Client underneath, its connections kept alive and shared."""

    def __init__(
        self,
        base_url: str,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        bearer_token: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.sleep = sleep
        self.max_retries = settings.sync_max_retries
        self.backoff = settings.sync_backoff_seconds
        self.max_backoff = settings.sync_max_backoff_seconds
        self._static_token = bearer_token or settings.sync_bearer_token
        self._token: str | None = None
        self._token_expiry = 0.0
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.retries = 0  # how many retries this client has made (for the summary)
        timeout = httpx.Timeout(settings.sync_timeout_seconds, connect=min(10.0, settings.sync_timeout_seconds))
        self.http = httpx.Client(timeout=timeout, transport=transport, headers={"Accept": FHIR_ACCEPT, "User-Agent": "familyview-sync/0.1"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "UpstreamClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ auth

    def _auth_header(self, *, refresh: bool = False) -> dict[str, str]:
        if self._static_token:
            return {"Authorization": f"Bearer {self._static_token}"}
        if not self.settings.sync_token_url:
            return {}
        with self._lock:
            if refresh or self._token is None or time.time() >= self._token_expiry:
                self._token, lifetime = self._client_credentials()
                self._token_expiry = time.time() + max(0.0, lifetime - 30)
            return {"Authorization": f"Bearer {self._token}"}

    def _client_credentials(self) -> tuple[str, float]:
        s = self.settings
        data = {"grant_type": "client_credentials"}
        if s.sync_scope:
            data["scope"] = s.sync_scope
        auth = (s.sync_client_id or "", s.sync_client_secret or "")
        response = self._send("POST", s.sync_token_url, data=data, auth=auth, with_auth=False, accept="application/json")
        try:
            body = response.json()
            return str(body["access_token"]), float(body.get("expires_in") or 300)
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("The token endpoint's answer has no access_token", url=s.sync_token_url, status=response.status_code) from None

    # ------------------------------------------------------------------ requests

    def url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def get_json(self, path_or_url: str, params: list[tuple[str, str]] | dict[str, str] | None = None) -> dict[str, Any]:
        """GET a FHIR resource or Bundle; UpstreamError for a 4xx, a 5xx after the retries, a timeout
        after the retries, or a body that is not a JSON object."""
        url = self.url(path_or_url)
        response = self._send("GET", url, params=params)
        try:
            body = orjson.loads(response.content)  # FHIR JSON is UTF-8; a page of 500 parses ~3x faster than json
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError(f"The upstream answered GET {url} with a body that is not JSON", url=url, status=response.status_code) from None
        if not isinstance(body, dict) or "resourceType" not in body:
            raise UpstreamError(f"The upstream answered GET {url} with JSON that is not a FHIR resource", url=url, status=response.status_code)
        return body

    def post_json(self, path_or_url: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url(path_or_url)
        response = self._send("POST", url, content=json.dumps(body).encode(), headers={"Content-Type": FHIR_ACCEPT})
        return response.json()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random() / 2)  # jitter, so many clients do not retry in step

    def _send(self, method: str, url: str, *, with_auth: bool = True, accept: str | None = None, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if accept:
            headers["Accept"] = accept
        refreshed = False
        attempt = 0
        while True:
            if with_auth:
                headers.update(self._auth_header())
            response: httpx.Response | None = None
            try:
                response = self.http.request(method, url, headers=headers, **kw)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.max_retries:
                    raise UpstreamError(f"{method} {url} failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}", url=url) from None
                delay = self._delay(attempt, None)
                log.warning("sync: %s %s: %s; retrying in %.1fs", method, url, type(exc).__name__, delay)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401 and with_auth and self.settings.sync_token_url and not self._static_token and not refreshed:
                    refreshed = True
                    self._auth_header(refresh=True)
                    continue
                if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise self._error(method, url, response, attempt)
                delay = self._delay(attempt, response)
                log.warning("sync: %s %s: HTTP %s; retrying in %.1fs", method, url, response.status_code, delay)
            with self._count_lock:
                self.retries += 1
            attempt += 1
            self.sleep(delay)

    @staticmethod
    def _error(method: str, url: str, response: httpx.Response, attempt: int) -> UpstreamError:
        outcome = None
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
                outcome = body
        except (ValueError, UnicodeDecodeError):
            pass
        tries = f" after {attempt + 1} attempts" if attempt else ""
        err = UpstreamError(f"{method} {url}: HTTP {response.status_code}{tries}", url=url, status=response.status_code, outcome=outcome)
        return err


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
