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


def test_events_appended_before_0020_stay_verifiable_after_it(empty_url):
    """Migration 0020 (the hash's form): events already in the chain keep their hash over the
    body alone and say form 1; events appended after it seal their columns and search rows
    (form 2); verify proves both, before and after a downgrade past 0020 and upgrade again."""
    from app.audit import balp
    from app.audit.service import verify
    from app.auth.tokens import Principal
    from app.db import Database
    from tests.ig.test_ig_audit_verify_walk import append_as_before_0020, old_events

    upgrade(empty_url, "0019_audit_body_lz4")
    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    eng = create_engine(empty_url)
    try:
        with eng.begin() as c:
            append_as_before_0020(c, old_events("old", 3))
    finally:
        eng.dispose()
    upgrade(empty_url)
    db = Database(empty_url)
    try:
        with db.session() as s:
            balp.record_many(s, [balp.AccessEvent(someone, "read", request_id=f"new{i}").entity(f"Patient/n{i}") for i in range(3)])
        with db.session(readonly=True) as s:
            assert s.execute(text("SELECT hash_form FROM audit_event ORDER BY seq")).scalars().all() == [1, 1, 1, 2, 2, 2]
        with db.session(readonly=True) as s:
            result = verify(s, batch=2)
        assert result.ok and result.checked == 6 and result.rechecked == 0, result
    finally:
        db.engine.dispose()
    # a downgrade keeps the form of each event (dropping the column would lose it for good): upgraded again, all verify
    downgrade(empty_url, "0019_audit_body_lz4")
    upgrade(empty_url)
    db = Database(empty_url)
    try:
        with db.session(readonly=True) as s:
            result = verify(s, batch=2)
        assert result.ok and result.checked == 6 and result.rechecked == 0, result
    finally:
        db.engine.dispose()
