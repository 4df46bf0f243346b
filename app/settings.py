"""One settings class for the whole service, read from the environment (prefix FAMILYVIEW_)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = PROJECT_ROOT / "var"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAMILYVIEW_", env_file=None, extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_VAR_DIR / 'familyview.db'}",
        validation_alias=AliasChoices("FAMILYVIEW_DATABASE_URL", "DATABASE_URL"),
    )
    # Public base URL for Location headers, fullUrls and Bundle links; when unset, the
    # base URL each request arrived on (set it behind a load balancer or proxy).
    public_base_url: str | None = None

    # Auth: production trusts an issuer's JWKS; the embedded default signs with a local key.
    auth_issuer: str = "urn:familyview:local"
    auth_audience: str = "urn:familyview"
    auth_jwks_url: str | None = None
    # The embedded default's signing key (dev auth only): beside the database unless set
    # (local_key_path), so that no two deployments started from one checkout share a key.
    auth_local_key_path: Path | None = None
    auth_algorithms: tuple[str, ...] = ("RS256", "ES256")
    auth_leeway_seconds: int = 30
    # The longest lifetime (exp - iat) of a token this server mints or accepts
    auth_max_token_minutes: int = Field(default=12 * 60, gt=0)
    # The issuer's OAuth2 endpoints, published in /fhir/.well-known/smart-configuration
    auth_authorization_url: str | None = None
    auth_token_url: str | None = None

    # Sign-in to the pages (app/web). Production: OpenID Connect against the configured provider
    # (NHS CIS2: its discovery URL, this client's id and secret). Unset: the embedded default's
    # clearly marked demo sign-in, which picks one of the demo users.
    oidc_discovery_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid profile nationalrbacaccess selectedrole"
    oidc_redirect_url: str | None = None  # default: <base>/sign-in/callback on the URL the page was asked on
    # CIS2-shaped claims -> familyview: the claim naming the selected role (its person_roleid),
    # the claim listing the user's roles ({person_roleid, org_code, role_code, ...}), and the
    # job-role code (the last part of role_code, e.g. "R8000") -> familyview role. A role not in
    # the map is refused. The service follows from the role (oidc_role_services).
    oidc_claim_selected_role: str = "selected_roleid"
    oidc_claim_roles: str = "nhsid_nrbac_roles"
    oidc_claim_name: str = "name"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)
    oidc_role_services: dict[str, str] = Field(default_factory=lambda: {
        "midwife": "maternity", "health-visitor": "health-visiting", "gp": "general-practice", "mash": "social-care"})
    # Bearer tokens from the OIDC provider are accepted on the API too (the same mapping), with
    # this audience (default: the client id).
    oidc_api_audience: str | None = None
    # The page session: a signed cookie (HttpOnly, SameSite=Lax, Secure on https). The secret
    # signs it; unset, it is derived from the local signing key (the embedded default only).
    web_session_secret: str | None = None
    web_session_minutes: int = 480
    web_demo_sign_in: bool | None = None  # None: on exactly when no OIDC provider is configured

    @property
    def demo_sign_in(self) -> bool:
        return self.web_demo_sign_in if self.web_demo_sign_in is not None else not self.oidc_discovery_url

    # Limits
    max_body_bytes: int = 10 * 1024 * 1024
    max_bundle_entries: int = 1000
    default_page_size: int = 50
    max_page_size: int = 500
    # One search (every search endpoint, GET, POST _search and a Bundle's GET entries): at most
    # this many parameters, repeats of one parameter, values in all (comma alternatives
    # counted) and characters per value; beyond them a 400 (too-costly).
    search_max_parameters: int = 20
    search_max_repeats: int = 4
    search_max_values: int = 50
    search_max_value_length: int = 256
    # One resource (app.fhir.validation.ResourceLimits): characters of any string, of each part
    # of a person's name, identifiers, and items of any repeating element; beyond them a 400.
    resource_max_string_length: int = 65_536
    resource_max_name_length: int = 200
    resource_max_identifiers: int = 20
    resource_max_repeats: int = 100
    # Characters of a $family-view justification (a safeguarding reason, not a case file).
    max_justification_length: int = 2_000
    # PostgreSQL: no statement of a request runs longer than this (0: no limit); a search
    # cut short answers 503 (too-costly) rather than holding a connection for minutes.
    statement_timeout_ms: int = 30_000

    # Record linkage thresholds (match probability)
    linkage_auto_link_probability: float = 0.95
    linkage_review_probability: float = 0.5
    linkage_twin_guard: bool = True  # never auto-link a pair that could be twins (matching.twin_shaped) without a shared identifier
    linkage_max_candidates: int = 500  # cap on candidate records compared with one new record
    # bounds on one write request's linkage (a bundle of 1,000 near-identical records must not make
    # hundreds of thousands of review pairs or hold the write lock for seconds): review pairs queued
    # per record (the most likely kept) and per request, candidate comparisons per request
    linkage_max_reviews_per_record: int = Field(10, ge=1)
    linkage_max_reviews_per_request: int = Field(500, ge=1)
    linkage_max_comparisons_per_request: int = Field(5_000, ge=100)
    # writes of one source organisation running at once in a server process (a bulk load never takes
    # every worker thread), and how long the next one waits for its turn before a 429
    max_concurrent_writes_per_source: int = Field(4, ge=1)
    write_turn_wait_seconds: float = Field(30.0, gt=0)
    # When linkage runs. "inline": in each write's transaction. "queued": the write names its
    # records in a durable queue and a worker process that `familyview serve` starts links
    # them right after commit, beside the next request (readers of linkage link what is
    # still queued before they read). "auto": queued on PostgreSQL, where the worker runs
    # in parallel with the server and the database; inline on SQLite, where a second
    # writing process could only wait for the one write lock.
    linkage_mode: Literal["auto", "inline", "queued"] = "auto"
    linkage_worker_poll_seconds: float = 0.25  # how often an idle worker looks (a commit also wakes it: NOTIFY on PostgreSQL, a datagram on SQLite)

    # Sync from an upstream FHIR server (`familyview sync`, the rest-hook receiver).
    # Auth to the upstream: a bearer token, or OAuth2 client credentials from sync_token_url.
    sync_bearer_token: str | None = None
    sync_token_url: str | None = None
    sync_client_id: str | None = None
    sync_client_secret: str | None = None
    sync_scope: str | None = None
    sync_timeout_seconds: float = 30.0
    sync_max_retries: int = 5
    sync_backoff_seconds: float = 0.5
    sync_max_backoff_seconds: float = 60.0
    sync_page_size: int = 100
    # Rest-hook receiver: upstream name -> {"base_url", "source_org", "service"} (JSON in the
    # environment), and the header each Subscription is given with its shared secret.
    sync_upstreams: dict[str, dict[str, str]] = Field(default_factory=dict)
    sync_rest_hook_header: str = "X-Familyview-Hook-Secret"
    sync_rest_hook_secret: str | None = None

    # Information governance: a queued override or break-glass view is overdue after this many days
    ig_review_overdue_days: int = Field(default=7, ge=0)

    # Notifications to the holders of records a safeguarding override disclosed: ODS code ->
    # {"url": base, "kind": "fhir" (POST {url}/Communication) | "webhook" (POST {url}), optional
    # "bearer_token"} (JSON in the environment). A holder with none fetches its own (awaiting pick-up).
    notification_endpoints: dict[str, dict[str, str]] = Field(default_factory=dict)
    notification_max_attempts: int = Field(default=8, ge=1)
    notification_backoff_seconds: float = Field(default=2.0, gt=0)
    notification_max_backoff_seconds: float = Field(default=600.0, gt=0)
    notification_timeout_seconds: float = Field(default=10.0, gt=0)
    notification_poll_seconds: float = Field(default=1.0, gt=0)

    # The key that signs audit anchors (`familyview audit anchor`): RS256, created on first use.
    # Keep it apart from the database (whoever can rewrite the chain must not hold it).
    audit_anchor_key_path: Path = DEFAULT_VAR_DIR / "audit-anchor-key.pem"

    # Name of this deployment in audit records
    deployment_name: str = "familyview"
    log_level: str = "INFO"

    # Operations (app.ops): logs, security headers, metrics, rate limits
    log_format: Literal["json", "text"] = "json"
    access_log: bool = False  # one line per request: method, path (never the query string), status, time
    hsts_seconds: int = 365 * 24 * 3600
    metrics_token: str | None = None  # when set, /metrics needs "Authorization: Bearer <it>"
    workers: int = Field(default=1, ge=1)  # uvicorn workers (serve --workers sets it); rate limits are shared out among them
    # Requests running at once in one server process; beyond it the most urgent waiting runs
    # next: family views and pages, then reads, then writes (app.ops.admission). 0: no limit.
    admission_slots: int = Field(default=2, ge=0)
    admission_write_slots: int = Field(default=1, ge=1)  # of those, at most this many writes
    # Per-client token buckets: an authenticated client by its token's subject, anyone else by IP.
    # A request with a token that fails verification counts against the stricter bad-token bucket.
    rate_limit_enabled: bool = True
    rate_limit_per_minute: int = Field(default=1200, gt=0)
    rate_limit_burst: int = Field(default=300, gt=0)
    rate_limit_anonymous_per_minute: int = Field(default=300, gt=0)
    rate_limit_anonymous_burst: int = Field(default=60, gt=0)
    rate_limit_bad_token_per_minute: int = Field(default=60, gt=0)
    rate_limit_bad_token_burst: int = Field(default=20, gt=0)
    # Refused requests of one client: the first N of each window audited one by one, the rest
    # in one summary AuditEvent with their count (app.ops.refusals)
    audit_refusals_per_window: int = Field(default=10, ge=1)
    audit_refusals_window_seconds: int = Field(default=60, ge=1)

    def fhir_base(self, request_base_url: str) -> str:
        from app.urls import fhir_base

        return fhir_base(self.public_base_url, request_base_url)

    @property
    def trusts_local_key(self) -> bool:
        """Without an issuer's JWKS the server checks the tokens that are not the OpenID provider's
        (source systems', administrators') with its own local key: for development only
        (`familyview serve --dev-auth`)."""
        return not self.auth_jwks_url

    @property
    def local_key_path(self) -> Path:
        """Where the local signing key lives: the configured path, else beside a SQLite
        database file, else in the user's data directory under a name of this database."""
        if self.auth_local_key_path is not None:
            return Path(self.auth_local_key_path)
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            db = Path(url.database).resolve()
            return db.with_name(f"{db.stem}-signing-key.pem")
        import hashlib
        import os

        where = f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
        data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "familyview" / "keys"
        return data / f"{url.database or 'memory'}-{hashlib.sha256(where.encode()).hexdigest()[:12]}-signing-key.pem"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def linkage_queued(self) -> bool:
        return self.linkage_mode == "queued" or (self.linkage_mode == "auto" and not self.is_sqlite)


@lru_cache
def get_settings() -> Settings:
    return Settings()
