"""A pooled PostgreSQL connection the server has closed is replaced at checkout: the pool
checks an idle connection without a round trip (its socket turns readable when the server
closes it) and pings it only then."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from app.db import make_engine
from tests.conftest import PG_URL, _pg_admin_engine

pytestmark = pytest.mark.postgres


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL tests run under `make test` (FAMILYVIEW_TEST_POSTGRES_URL is not set)")
def test_a_connection_the_server_closed_is_replaced_at_checkout():
    engine = make_engine(PG_URL, statement_timeout_ms=0)
    engine.pool.dispose()
    admin = _pg_admin_engine()
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as conn:  # healthy: the same connection again
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == first
        with admin.connect() as c:
            assert c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar()
        time.sleep(0.2)  # the backend's exit reaches the pooled socket
        with engine.connect() as conn:  # no error: the closed one was replaced
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    finally:
        engine.dispose()
        admin.dispose()
