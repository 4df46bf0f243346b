"""Every schema change has a migration: upgrade from empty to head on SQLite and PostgreSQL,
the result matches the models, there is a single head, and downgrade/upgrade round-trips."""
from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app.db import Base
from app.migrate import alembic_config, downgrade, upgrade
from app.models_registry import import_all_models
from tests.conftest import PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    if not PG_URL:
        pytest.skip("PostgreSQL tests run under `make test`")
    name = f"fv_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_single_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()


def test_upgrade_from_empty_matches_the_models(empty_url):
    upgrade(empty_url)
    import_all_models()
    eng = create_engine(empty_url)
    try:
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"models and migrations disagree: {diff}"
            tables = set(inspect(conn).get_table_names())
        assert {"resource", "resource_version", "search_token", "source_key", "audit_event", "audit_index"} <= tables
    finally:
        eng.dispose()


def test_downgrade_and_upgrade_again(empty_url):
    upgrade(empty_url)
    downgrade(empty_url, "0001")
    upgrade(empty_url)
    eng = create_engine(empty_url)
    try:
        with eng.connect() as conn:
            assert "audit_event" in inspect(conn).get_table_names()
    finally:
        eng.dispose()
