"""Shared fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL, the app
on a real uvicorn server over real HTTP, and tokens for each kind of requester."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.auth.tokens import mint_token
from app.db import Database
from app.migrate import upgrade
from app.settings import Settings

PG_URL = os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("FAMILYVIEW_REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", "postgres"]

# Organisations of the synthetic test world (ODS-shaped codes)
MATERNITY_ORG = "RMT01"
HV_ORG = "RHV01"
GP_ORG = "A99001"
OTHER_ORG = "RZZ99"


# Fixtures every database-backed test stands on (a migrated template, SQLite or PostgreSQL):
# a test that uses any of them, directly or through another fixture, is marked `db`, so that
# `make test-fast` (-m "not db") runs the rest (the consent engine, code lists, plan, profiles).
DB_FIXTURES = frozenset({"sqlite_template", "pg_template"})


HAPI_TESTS = Path(__file__).parent / "hapi"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its loadgroup hook)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if DB_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.db)
        # under xdist (--dist loadgroup) a file stays on one worker, so its module fixtures are built once
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
        if HAPI_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.serial)  # the one HAPI holds the scenarios once a run: one process


def pytest_configure(config):
    if REQUIRE_PG and not PG_URL:
        raise pytest.UsageError("FAMILYVIEW_REQUIRE_POSTGRES=1 but no FAMILYVIEW_TEST_POSTGRES_URL: run the suite with `make test`")


@pytest.fixture(scope="session")
def key_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys") / "signing-key.pem"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _pg_admin_engine():
    # pre-ping: a test restarts this PostgreSQL (tests/api/test_api_faults.py), cutting pooled connections
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    if not PG_URL:
        yield None
        return
    name = f"fv_template_{uuid.uuid4().hex[:8]}"
    eng = _pg_admin_engine()
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield name
    with eng.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


def new_database_url(backend: str, tmp_path: Path, sqlite_template: Path, pg_template: str | None) -> tuple[str, callable]:
    if backend == "sqlite":
        path = tmp_path / f"fv-{uuid.uuid4().hex[:8]}.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}", lambda: None
    if not PG_URL:
        pytest.skip("PostgreSQL tests run under `make test` (FAMILYVIEW_TEST_POSTGRES_URL is not set)")
    name = f"fv_{uuid.uuid4().hex[:12]}"
    eng = _pg_admin_engine()
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))

    def drop():
        with eng.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        eng.dispose()

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, sqlite_template, pg_template) -> Iterator[str]:
    url, drop = new_database_url(backend, tmp_path, sqlite_template, pg_template)
    yield url
    drop()


@pytest.fixture
def settings(database_url, key_path) -> Settings:
    return make_settings(database_url, key_path)


def make_settings(database_url: str, key_path: Path, **overrides) -> Settings:
    # the suite sends hundreds of requests a second with one token, and follows each refusal's
    # X-Audit-Event at once: the rate limits and the coalescing of refusals are tested on their
    # own (tests/ops/test_ops_rate_limits.py), out of the way elsewhere
    overrides.setdefault("rate_limit_enabled", False)
    overrides.setdefault("audit_refusals_per_window", 10_000)
    return Settings(database_url=database_url, auth_local_key_path=key_path, **overrides)


@pytest.fixture
def database(settings) -> Iterator[Database]:
    db = Database(settings.database_url)
    yield db
    db.dispose()


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    app: object
    server: object

    @property
    def fhir(self) -> str:
        return self.base_url + "/fhir"

    def token(self, role: str, org: str, service: str | None = None, **kw) -> str:
        return mint_token(self.settings, role=role, org=org, service=service, **kw)

    def client(self, role: str | None = None, org: str | None = None, service: str | None = None, **kw) -> httpx.Client:
        headers = {"Accept": "application/fhir+json"}
        if role:
            headers["Authorization"] = f"Bearer {self.token(role, org, service, **kw)}"
        return httpx.Client(base_url=self.fhir, headers=headers, timeout=30)

    def source(self, org: str, service: str) -> httpx.Client:
        return self.client("source-system", org, service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings: Settings, app=None):
    import uvicorn

    from app.main import create_app

    app = app or create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()

    return f"http://127.0.0.1:{port}", app, server, stop


@pytest.fixture
def live(settings) -> Iterator[LiveServer]:
    base, app, server, stop = start_server(settings)
    yield LiveServer(base, settings, app, server)
    stop()


FHIR_JSON = {"Content-Type": "application/fhir+json"}


# The organisation each role's test tokens come from (a source system sends as maternity)
ROLE_ORG = {"source-system": MATERNITY_ORG, "midwife": MATERNITY_ORG, "health-visitor": HV_ORG, "gp": GP_ORG,
            "mash": "LA001", "ig-officer": "X26", "admin": "X26"}
ROLE_SERVICE = {"source-system": "maternity"}
