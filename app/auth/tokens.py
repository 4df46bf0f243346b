"""JWT verification (issuer JWKS in production, a local key for the embedded default) and minting."""
from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.errors import unauthorized
from app.identifiers import is_valid_ods_code
from app.settings import Settings

ROLES = ("source-system", "midwife", "health-visitor", "gp", "mash", "ig-officer", "admin")
SERVICES = ("maternity", "health-visiting", "general-practice", "social-care")
# who may do what is one table: app.auth.access

DEFAULT_SCOPES = {
    "source-system": "system/*.cruds",
    "admin": "system/*.cruds",
    "midwife": "user/*.rs",
    "health-visitor": "user/*.rs",
    "gp": "user/*.rs",
    "mash": "user/*.rs",
    "ig-officer": "user/AuditEvent.rs user/Person.rs",
}

_SCOPE_RE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.(\*|read|write|c?r?u?d?s?)$")


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str
    ops: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> "Scope | None":
        m = _SCOPE_RE.match(text)
        if not m:
            return None
        perms = m.group(3)
        ops = {"*": "cruds", "read": "rs", "write": "cud"}.get(perms, perms)
        return cls(m.group(1), m.group(2), frozenset(ops))


@dataclass(frozen=True)
class Principal:
    sub: str
    role: str
    org: str
    service: str | None = None
    scopes: tuple[Scope, ...] = ()
    token_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def source_system(self) -> str:
        return self.service or self.sub

    def may(self, resource_type: str, op: str, contexts: tuple[str, ...] | None = None) -> bool:
        """SMART v2 scope check: op is one of c r u d s (in one of these contexts, when given)."""
        return any(s.resource_type in ("*", resource_type) and op in s.ops and (contexts is None or s.context in contexts)
                   for s in self.scopes)


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)  # type: ignore[return-value]
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    try:
        os.link(tmp, path)  # never replaces: two processes starting at once must end with one key
    except FileExistsError:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)  # type: ignore[return-value]
    finally:
        os.unlink(tmp)
    return key


class LocalKey:
    """The embedded default's signing key: created on first use, kept beside the database."""

    def __init__(self, path: Path):
        self.private_key = _load_or_create_key(path)
        self.public_key = self.private_key.public_key()
        self.kid = "familyview-local"


def mint_token(
    settings: Settings,
    *,
    role: str,
    org: str,
    service: str | None = None,
    sub: str | None = None,
    minutes: int = 60,
    scope: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not is_valid_ods_code(org):
        raise ValueError("org must be an ODS code (upper-case letters and digits)")
    if service is not None and service not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)}")
    if not 0 < minutes <= settings.auth_max_token_minutes:
        raise ValueError(f"minutes must be between 1 and {settings.auth_max_token_minutes} (FAMILYVIEW_AUTH_MAX_TOKEN_MINUTES)")
    key = LocalKey(settings.local_key_path)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "sub": sub or f"{role}@{org}",
        "org": org,
        "role": role,
        "scope": scope or DEFAULT_SCOPES[role],
        "iat": now,
        "nbf": now - 5,
        "exp": now + int(minutes * 60),
        "jti": str(uuid.uuid4()),
    }
    if service:
        claims["service"] = service
    claims.update(extra or {})
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


class TokenVerifier:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.auth_jwks_url, cache_keys=True) if settings.auth_jwks_url else None
        self._local: LocalKey | None = None  # loaded on first use, so building the app writes nothing
        self._oidc: Any = None  # the OpenID provider (app.auth.oidc), when one is configured
        self._verified: dict[str, tuple[float, Principal]] = {}  # token -> (kept until, who it names): see verify

    def oidc(self):
        """The configured OpenID Connect provider's client (shared with the pages' sign-in)."""
        if self._oidc is None:
            from app.auth.oidc import OidcClient

            self._oidc = OidcClient(self.settings)
        return self._oidc

    def _from_oidc_provider(self, token: str) -> Principal | None:
        """A bearer token issued by the OpenID provider (CIS2-shaped claims): checked against its
        keys and mapped as the sign-in maps it. None when the token is not the provider's."""
        if not self.settings.oidc_discovery_url:
            return None
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return None
        client = self.oidc()
        if issuer is None or issuer == self.settings.auth_issuer or issuer != client.issuer_if_configured():
            return None
        from app.auth.cis2 import principal_from_cis2
        from app.auth.oidc import OidcError

        try:
            claims = client.verify(token, audience=self.settings.oidc_api_audience or str(self.settings.oidc_client_id))
        except OidcError as exc:
            raise unauthorized(f"The access token is not valid: {exc}") from None
        return principal_from_cis2(claims, self.settings)

    def _key_for(self, token: str):
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise unauthorized("The token's signing key is not known to this server") from exc
        if self._local is None:
            self._local = LocalKey(self.settings.local_key_path)
        return self._local.public_key

    VERIFIED_KEPT = 1024  # tokens
    VERIFIED_KEPT_SECONDS = 60.0

    def verify(self, token: str) -> Principal:
        """The principal a bearer token names, or 401. A token this server's key (or the JWKS)
        verified is kept for the requests that follow, for a minute at most: a client sends the
        same token on every request, and checking an RSA signature and the claims again cost ~1 ms
        each time. Everything verification checks is fixed by the token's bytes except the clock
        and the keys: the only check the clock can turn from pass to fail is expiry, which ends a
        kept token as it would a checked one; a key withdrawn from the JWKS goes on verifying for
        as long as PyJWKClient keeps the key set it fetched (five minutes), and a kept token adds
        at most the minute to that. A refused token is never kept."""
        from_provider = self._from_oidc_provider(token)
        if from_provider is not None:
            return from_provider
        kept = self._verified.get(token)
        now = time.time()
        if kept is not None:
            if now < kept[0]:
                return kept[1]
            self._verified.pop(token, None)
        try:
            claims = jwt.decode(
                token,
                key=self._key_for(token),
                algorithms=list(self.settings.auth_algorithms),
                audience=self.settings.auth_audience,
                issuer=self.settings.auth_issuer,
                leeway=self.settings.auth_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
            self._check_lifetime(claims)
        except jwt.ExpiredSignatureError:
            raise unauthorized("The access token has expired") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("The access token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("The access token's issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("The access token's signature is not valid") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"The access token is not valid ({type(exc).__name__})") from None
        principal = principal_from_claims(claims)
        if len(self._verified) >= self.VERIFIED_KEPT:
            self._verified.clear()
        # jwt.decode refuses a token once its exp is at or before now - leeway
        self._verified[token] = (min(float(claims["exp"]) + self.settings.auth_leeway_seconds, now + self.VERIFIED_KEPT_SECONDS), principal)
        return principal

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """A token that lives longer than the configured maximum is refused, however it was
        signed: a stolen long-lived token is a standing key to the service."""
        exp, iat = claims.get("exp"), claims.get("iat")
        start = iat if isinstance(iat, (int, float)) and not isinstance(iat, bool) else time.time()
        if exp - start > self.settings.auth_max_token_minutes * 60 + self.settings.auth_leeway_seconds:
            raise unauthorized(f"The access token lives longer than this server accepts ({self.settings.auth_max_token_minutes} minutes)")


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    role, org, service = claims.get("role"), claims.get("org"), claims.get("service")
    if role not in ROLES:
        raise unauthorized(f"The token's role claim must be one of {', '.join(ROLES)}")
    if not is_valid_ods_code(org):
        raise unauthorized("The token's org claim must be an ODS organisation code")
    if role == "source-system" and service not in SERVICES:
        raise unauthorized(f"A source-system token needs a service claim: one of {', '.join(SERVICES)}")
    raw_scope = claims.get("scope") or ""
    if isinstance(raw_scope, list):
        raw_scope = " ".join(raw_scope)
    scopes = tuple(s for s in (Scope.parse(t) for t in str(raw_scope).split()) if s)
    return Principal(
        sub=str(claims["sub"]), role=role, org=org, service=service, scopes=scopes,
        token_id=claims.get("jti"), claims=claims,
    )


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("An Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("The Authorization header must be 'Bearer <token>'")
    return token.strip()
