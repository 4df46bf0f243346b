"""The configured OpenID Connect provider (NHS CIS2 in real deployments): its discovery
document, signing keys, the authorisation-code exchange and ID token checks."""
from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from app.settings import Settings

_CACHE_SECONDS = 3600


class OidcError(Exception):
    """Sign-in failed at the provider or its answer did not check out (said plainly, no token)."""


@dataclass
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    jwks: jwt.PyJWKClient


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class OidcClient:
    """One per app: discovery read on first use and cached for an hour."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._provider: Provider | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.settings.oidc_discovery_url and self.settings.oidc_client_id)

    def provider(self) -> Provider:
        with self._lock:
            if self._provider is None or time.monotonic() - self._fetched > _CACHE_SECONDS:
                try:
                    doc = httpx.get(str(self.settings.oidc_discovery_url), timeout=10).raise_for_status().json()
                    self._provider = Provider(
                        issuer=doc["issuer"], authorization_endpoint=doc["authorization_endpoint"],
                        token_endpoint=doc["token_endpoint"], jwks_uri=doc["jwks_uri"],
                        end_session_endpoint=doc.get("end_session_endpoint"),
                        jwks=jwt.PyJWKClient(doc["jwks_uri"], cache_keys=True),
                    )
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    raise OidcError(f"The identity provider's discovery document could not be read ({type(exc).__name__})") from None
                self._fetched = time.monotonic()
            return self._provider

    def authorization_url(self, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        p = self.provider()
        query = {"response_type": "code", "client_id": self.settings.oidc_client_id, "redirect_uri": redirect_uri,
                 "scope": self.settings.oidc_scopes, "state": state, "nonce": nonce,
                 "code_challenge": challenge, "code_challenge_method": "S256"}
        return f"{p.authorization_endpoint}?{urlencode(query)}"

    def exchange(self, code: str, redirect_uri: str, verifier: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims for an authorisation code (checked: RS256 signature by the
        provider's keys, issuer, audience, expiry, nonce)."""
        p = self.provider()
        try:
            resp = httpx.post(p.token_endpoint, timeout=10, data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.settings.oidc_client_id, "client_secret": self.settings.oidc_client_secret or "",
                "code_verifier": verifier})
        except httpx.HTTPError as exc:
            raise OidcError(f"The identity provider could not be reached ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise OidcError(f"The identity provider refused the sign-in ({resp.status_code})")
        id_token = (resp.json() or {}).get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("The identity provider sent no ID token")
        claims = self.verify(id_token, audience=str(self.settings.oidc_client_id))
        if claims.get("nonce") != nonce:
            raise OidcError("The ID token is not for this sign-in (nonce)")
        return claims

    def verify(self, token: str, *, audience: str) -> dict[str, Any]:
        p = self.provider()
        try:
            key = p.jwks.get_signing_key_from_jwt(token).key
            return jwt.decode(token, key=key, algorithms=["RS256"], audience=audience, issuer=p.issuer,
                              leeway=self.settings.auth_leeway_seconds, options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
            raise OidcError(f"The token did not check out ({type(exc).__name__})") from None

    def issuer_if_configured(self) -> str | None:
        if not self.configured:
            return None
        try:
            return self.provider().issuer
        except OidcError:
            return None
