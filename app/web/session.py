"""The page session: a signed cookie holding who signed in (as the claims mapping made them)
and the form token that every POST must echo (CSRF). HttpOnly, SameSite=Lax, Secure on https;
it expires after Settings.web_session_minutes, or when its holder signs out (its id revoked in
the database, so a copy of the cookie is refused too). Signed with HMAC-SHA256: the secret is
Settings.web_session_secret, or in the embedded default one derived from the local signing key."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from datetime import datetime, timezone

from fastapi import Request, Response
from sqlalchemy import delete

from app.auth.tokens import DEFAULT_SCOPES, LocalKey, Principal, Scope
from app.settings import Settings
from app.web.models import RevokedSession

COOKIE = "familyview_session"
FLOW_COOKIE = "familyview_signin"  # the OpenID sign-in under way: state, nonce, PKCE verifier
FLOW_SECONDS = 600


def _secret(settings: Settings) -> bytes:
    if settings.web_session_secret:
        return settings.web_session_secret.encode()
    if not settings.demo_sign_in:
        raise RuntimeError("FAMILYVIEW_WEB_SESSION_SECRET must be set when sign-in is by OpenID Connect")
    key = LocalKey(settings.local_key_path)
    return hashlib.sha256(b"familyview-web-session|" + key.private_key.private_numbers().d.to_bytes(256, "big")).digest()


class Signer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = _secret(self.settings)
        return self._key

    def dumps(self, data: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
        mac = hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def loads(self, value: str | None) -> dict[str, Any] | None:
        if not value or "." not in value:
            return None
        body, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac, hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(data, dict) or float(data.get("exp", 0)) < time.time():
            return None
        return data


@dataclass
class WebSession:
    principal: Principal
    name: str
    org_name: str
    csrf: str
    how: str  # "oidc" or "demo"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def signer(request: Request) -> Signer:
    return request.app.state.web_signer


def current(request: Request) -> WebSession | None:
    """The request's session (read once a request: it asks the database whether it was revoked)."""
    if "web_session" not in request.state._state:
        request.state.web_session = _current(request)
    return request.state.web_session


def _current(request: Request) -> WebSession | None:
    data = signer(request).loads(request.cookies.get(COOKIE))
    if data is None or not data.get("sid") or _revoked(request, str(data["sid"])):
        return None
    role = data["role"]
    principal = Principal(sub=data["sub"], role=role, org=data["org"], service=data.get("service"),
                          scopes=tuple(s for s in (Scope.parse(t) for t in DEFAULT_SCOPES.get(role, "").split()) if s),
                          token_id=data.get("sid"), claims={"name": data.get("name")})
    return WebSession(principal, data.get("name") or principal.sub, data.get("org_name") or principal.org, data["csrf"], data.get("how", "demo"))


def start(request: Request, response: Response, principal: Principal, *, name: str, org_name: str, how: str) -> str:
    """Sign in: a fresh session (new id and form token). Returns the session id."""
    settings: Settings = request.app.state.settings
    sid = secrets.token_urlsafe(16)
    data = {"sub": principal.sub, "role": principal.role, "org": principal.org, "service": principal.service,
            "name": name, "org_name": org_name, "how": how, "sid": sid, "csrf": secrets.token_urlsafe(32),
            "exp": time.time() + settings.web_session_minutes * 60}
    response.set_cookie(COOKIE, signer(request).dumps(data), max_age=settings.web_session_minutes * 60,
                        httponly=True, samesite="lax", secure=_secure(request), path="/")
    return sid


def end(request: Request, response: Response) -> None:
    """Sign out: the cookie deleted, and its session id revoked, so a copy of it is refused too."""
    data = signer(request).loads(request.cookies.get(COOKIE))
    if data is not None and data.get("sid"):
        expires = datetime.fromtimestamp(float(data["exp"]), timezone.utc)
        with request.app.state.db.session() as session:
            session.execute(delete(RevokedSession).where(RevokedSession.expires_at < datetime.now(timezone.utc)))
            session.merge(RevokedSession(sid=str(data["sid"]), expires_at=expires))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))


def _revoked(request: Request, sid: str) -> bool:
    with request.app.state.db.session(readonly=True) as session:
        return session.get(RevokedSession, sid) is not None


def csrf_ok(session: WebSession, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf, str(token))


def start_flow(request: Request, response: Response, flow: dict[str, Any]) -> None:
    flow = {**flow, "exp": time.time() + FLOW_SECONDS}
    response.set_cookie(FLOW_COOKIE, signer(request).dumps(flow), max_age=FLOW_SECONDS, httponly=True,
                        samesite="lax", secure=_secure(request), path="/sign-in")


def take_flow(request: Request, response: Response) -> dict[str, Any] | None:
    response.delete_cookie(FLOW_COOKIE, path="/sign-in")
    return signer(request).loads(request.cookies.get(FLOW_COOKIE))
