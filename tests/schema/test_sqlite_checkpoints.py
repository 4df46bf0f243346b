"""SQLite WAL checkpoints run on a background thread, not in a request's commit: committed
pages reach the database file itself shortly after a write, and the thread ends when writes
stop and when the database is disposed."""
from __future__ import annotations

import sqlite3
import time

from sqlalchemy import text

from app.db import Database
from app.migrate import upgrade


def _rows_in_main_file(path) -> int:
    """Rows of the resource table as the database file holds them, ignoring the WAL."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM resource").fetchone()[0]
    finally:
        conn.close()


def _write(db: Database, n: int) -> None:
    with db.session() as s:
        for i in range(n):
            s.execute(text(
                "INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted, body, source_org, source_system) "
                "VALUES ('Patient', :id, 1, '2026-11-26 00:00:00', 0, '{}', 'RMT01', 'test')"), {"id": f"p{n}-{i}"})


def test_commits_leave_checkpoints_to_the_background_thread(tmp_path):
    path = tmp_path / "wal.db"
    upgrade(f"sqlite:///{path}")
    db = Database(f"sqlite:///{path}")
    try:
        with db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 10000  # writers only as a fallback
        checkpointer = db.checkpointer
        checkpointer.interval = 0.05
        _write(db, 5)
        deadline = time.time() + 5
        while _rows_in_main_file(path) < 5 and time.time() < deadline:
            time.sleep(0.05)
        assert _rows_in_main_file(path) == 5  # copied from the WAL into the file without another commit
        assert checkpointer._thread is not None and checkpointer._thread.is_alive()
    finally:
        db.dispose()
    assert checkpointer._thread is None  # dispose stops it


def test_the_thread_ends_when_writes_stop(tmp_path):
    path = tmp_path / "idle.db"
    upgrade(f"sqlite:///{path}")
    db = Database(f"sqlite:///{path}")
    try:
        db.checkpointer.interval = 0.01
        db.checkpointer.idle_seconds = 0.2
        _write(db, 1)
        deadline = time.time() + 5
        while db.checkpointer._thread is not None and time.time() < deadline:
            time.sleep(0.05)
        assert db.checkpointer._thread is None
        _write(db, 2)  # a later write starts it again
        assert db.checkpointer._thread is not None
    finally:
        db.dispose()
