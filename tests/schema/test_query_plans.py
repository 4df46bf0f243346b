"""The write path's list look-ups are index probes on SQLite: a statement built with
`app.db.in_list` must render a plain `col IN (...)` (not `(... IN ...) = 1`, which SQLite
cannot serve from an index), or every Bundle scans the source-key and linkage tables."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql

from app.ingest.service import _CURRENT_ROWS, _SOURCE_KEYS
from app.linkage.service import _SEL_CANDIDATES, _SEL_LINKS_BY_PERSON, _SEL_LINKS_BY_REF
from app.migrate import upgrade

PARAMS = {
    "org": "RMT01", "values": ["9990000018", "x-1"], "types": ["Patient", "RelatedPerson"], "ids": ["a", "b"],
    "hashes": [1, 2, 3], "lim": 10, "pids": ["p1", "p2"],
}


def _plan(conn, stmt) -> str:
    names = set(stmt.compile().params)
    bound = stmt.params({k: v for k, v in PARAMS.items() if k in names})
    sql = str(bound.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True, "render_postcompile": True}))
    return " | ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all())


def test_write_path_lookups_are_index_searches_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        expected = {
            "source keys": (_SOURCE_KEYS, "SEARCH source_key USING INDEX sqlite_autoindex_source_key_1 (source_org=? AND value=?)"),
            "current rows": (_CURRENT_ROWS, "SEARCH resource USING"),
            "linkage candidates": (_SEL_CANDIDATES, "SEARCH linkage_key USING"),
            "links by record": (_SEL_LINKS_BY_REF, "SEARCH linkage_link USING"),
            "links by person": (_SEL_LINKS_BY_PERSON, "SEARCH linkage_link USING"),
        }
        for name, (stmt, wanted) in expected.items():
            plan = _plan(conn, stmt)
            assert wanted in plan and "SCAN linkage" not in plan and "SCAN source_key" not in plan, f"{name}: {plan}"
    engine.dispose()


def test_list_parameters_are_one_array_on_postgresql():
    sql = str(_SOURCE_KEYS.compile(dialect=postgresql.dialect()))
    assert "= ANY (%(values)s" in sql and "POSTCOMPILE" not in sql


def test_write_path_lookups_are_index_probes_on_postgresql(backend, database_url):
    """A Bundle's few hundred keys are probed in the indexes of tables of tens of thousands of
    rows, not found by reading the tables whole (the planner's choice for them at PostgreSQL's
    default random_page_cost); the setting is the write transaction's own."""
    if backend != "postgres":
        pytest.skip("the planner's choice on PostgreSQL; SQLite's is test_write_path_lookups_are_index_searches_on_sqlite")
    from sqlalchemy import text

    from app.db import _driver_sql, plan_each_execution

    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:  # a deployment some weeks in: 20,000 source keys, 40,000 linkage keys of 5,000 records
            conn.execute(text("INSERT INTO source_key (source_org, res_type, system, value, res_id) "
                              "SELECT 'RMT01', 'Patient', 'https://example.nhs.uk/id', 'v' || g, 'p' || g FROM generate_series(1, 20000) g"))
            conn.execute(text("INSERT INTO linkage_person (id, version_id, created_at, updated_at, active) "
                              "SELECT 'person-' || g, 1, now(), now(), true FROM generate_series(1, 5000) g"))
            conn.execute(text("INSERT INTO linkage_link (res_type, res_id, person_id, assurance, probability, how, source_org, features, updated_at) "
                              "SELECT 'Patient', 'p' || g, 'person-' || g, 'high', 1.0, 'nhs', 'RMT01', '{}', now() FROM generate_series(1, 5000) g"))
            conn.execute(text("INSERT INTO linkage_key (key_hash, res_type, res_id) "
                              "SELECT hashtextextended('k' || g, 0), 'Patient', 'p' || (g % 5000 + 1) FROM generate_series(1, 40000) g"))
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE source_key, linkage_key, linkage_link")
            conn.commit()
            server_default = conn.exec_driver_sql("SHOW random_page_cost").scalar()
            conn.commit()
            with conn.begin():
                plan_each_execution(conn)
                cursor = conn.connection.driver_connection.cursor()
                binds = {"org": "RMT01", "values": [f"v{i}" for i in range(1, 20000, 67)], "hashes": list(range(1, 371)), "lim": 64000}
                for name, stmt, table in (("source keys", _SOURCE_KEYS, "source_key"), ("linkage candidates", _SEL_CANDIDATES, "linkage_key")):
                    sql, _ = _driver_sql(conn.dialect, stmt)
                    cursor.execute("EXPLAIN " + sql, {k: v for k, v in binds.items() if f"%({k})s" in sql})
                    plan = " | ".join(r[0] for r in cursor.fetchall())
                    assert f"Seq Scan on {table}" not in plan and "Index" in plan, f"{name}: {plan}"
            assert conn.exec_driver_sql("SHOW random_page_cost").scalar() == server_default  # the transaction's own
    finally:
        engine.dispose()
