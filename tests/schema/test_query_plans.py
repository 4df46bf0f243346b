"""The write path's list look-ups are index probes on SQLite: a statement built with
`app.db.in_list` must render a plain `col IN (...)` (not `(... IN ...) = 1`, which SQLite
cannot serve from an index), or every Bundle scans the source-key and linkage tables."""
from __future__ import annotations

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
