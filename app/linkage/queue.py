"""Linkage after commit: the durable queue, its drain, and the worker process that drains it.

In the queued mode (settings ``linkage_mode``; the default on PostgreSQL) a write names its
Patients and RelatedPersons in ``linkage_queue`` inside its own transaction, so the names
commit exactly when the records do. A worker process, `familyview linkage-worker`, links
them right after commit: `serve` starts one (and restarts it if it dies), woken by the
commit's NOTIFY. It runs beside the server process, which has by then gone on to the next
request. Linking is about a third of a Bundle's time on PostgreSQL; one Python process would
take it in turn with validation, so the worker is a process, not a thread.

Nothing ever reads a half-linked state:
- each drain links a batch of records and removes them from the queue in one transaction;
- every reader of linkage (the family view, FHIR Person, the review queue and the admin
  operations) first calls :func:`settle`. It links everything that was queued before the
  call: it waits for a batch a worker holds, and links the rest itself.

So the worker only makes linking early; the readers make it certain. If the worker stops,
nothing is lost: the queue is a table, and the next reader or a restarted worker drains it.
On SQLite the default is inline (a second writing process could only wait for the one
write lock), and the queue stays empty.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import orjson
from fastapi import Depends, Request
from sqlalchemy import Integer, and_, bindparam, delete, func, select

from app.auth.deps import get_principal
from app.auth.tokens import Principal
from app.db import Database, in_list, insert_tables, pipelined, plan_each_execution_first
from app.fhir.models import StoredResource
from app.ingest.hooks import Written
from app.linkage.models import QueuedRecord
from app.linkage.service import LinkageService
from app.errors import error_summary

log = logging.getLogger("familyview")

_Q = QueuedRecord.__table__
_R = StoredResource.__table__
BATCH = 1000  # records linked per transaction: a few Bundles' worth when the worker is behind



def _batch_query(wait: bool):
    """A batch of queue entries (up to :up_to, :batch of them, locked; another drainer's
    skipped unless ``wait``) with each one's record, in queue order: one statement."""
    entries = (select(_Q.c.id, _Q.c.res_type, _Q.c.res_id).where(_Q.c.id <= bindparam("up_to")).order_by(_Q.c.id)
               .limit(bindparam("batch", type_=Integer())).with_for_update(skip_locked=not wait).subquery("q"))
    record = and_(_R.c.res_type == entries.c.res_type, _R.c.res_id == entries.c.res_id, _R.c.deleted.is_(False))
    return (select(entries.c.id, entries.c.res_type, entries.c.res_id, _R.c.version_id, _R.c.body, _R.c.source_org, _R.c.source_system)
            .select_from(entries.outerjoin(_R, record)).order_by(entries.c.id))


_SEL_BATCH = {wait: _batch_query(wait) for wait in (False, True)}
_ALL = 2**62  # up_to when every entry is wanted
_DEL_BATCH = delete(_Q).where(in_list(_Q.c.id, "qids"))


CHANNEL = "familyview_linkage"  # PostgreSQL NOTIFY channel: wakes the worker at each commit


def enqueue(session, written: list[Written]) -> None:
    """Name the written records in the queue, in the write's transaction (on PostgreSQL the
    worker is told at commit: NOTIFY is delivered then, and not at all on rollback)."""
    conn = session.connection()
    insert_tables(conn, *queue_entries(conn, written))  # one round trip


def queue_entries(conn, written: list[Written]) -> tuple[list, tuple[str, ...]]:
    """enqueue's rows and statements, for a writer to insert with its own rows (insert_tables):
    the queue table's rows, and on PostgreSQL the NOTIFY that wakes the worker at commit."""
    now = datetime.now(timezone.utc)
    notify = (f"NOTIFY {CHANNEL}",) if conn.dialect.name == "postgresql" else ()
    return [(_Q, [{"res_type": w.res_type, "res_id": w.res_id, "enqueued_at": now} for w in written])], notify


def drain(db: Database, settings, *, wait: bool, up_to: int | None = None, batch: int = BATCH) -> int:
    """Link queued records, a batch per transaction, until none is left (or none up to
    ``up_to``); returns how many queue entries were done.

    ``wait=False`` (the worker) skips entries another drainer holds. ``wait=True`` (a
    reader) waits for that drainer's transaction, so when it returns every entry up to
    ``up_to`` is linked. On SQLite, writers are serialised by BEGIN IMMEDIATE anyway."""
    done = 0
    params = {"up_to": _ALL if up_to is None else up_to, "batch": batch}
    while True:
        with db.session() as session:
            conn = session.connection()
            # linking binds arrays of key hashes, as the write path does: plan_each_execution,
            # in one round trip with the batch (and the transaction's BEGIN) on PostgreSQL
            entries = pipelined(conn, plan_each_execution_first(conn) + [(_SEL_BATCH[wait], params)])[-1]
            if not entries:
                return done
            stored = {}
            for e in entries:  # each record once, in queue order
                stored.setdefault((e.res_type, e.res_id), e)
            written = [
                Written(r.res_type, r.res_id, r.version_id, orjson.loads(r.body), False, r.source_org, r.source_system)
                for r in stored.values() if r.version_id is not None
            ]
            if written:
                LinkageService.from_settings(session, settings).link_written(written)
            conn.execute(_DEL_BATCH, {"qids": [e.id for e in entries]})
        done += len(entries)


def settle(db: Database, settings) -> None:
    """Link everything queued before this call: a reader of linkage calls it first."""
    with db.session(readonly=True) as session:
        last = session.scalar(select(func.max(_Q.c.id)))
    if last is not None:
        drain(db, settings, wait=True, up_to=last)


def linkage_settled(request: Request, principal: Principal = Depends(get_principal)) -> None:
    """Route dependency of every reader of linkage (after authentication, so an anonymous
    request never makes the server link)."""
    settle(request.app.state.db, request.app.state.settings)


# ------------------------------------------------------------------ the worker process
def run_worker(settings) -> None:
    """Drain the queue for ever. When it is empty, wait for a commit's NOTIFY (PostgreSQL) or
    the poll interval, whichever comes first."""
    db = Database(settings.database_url)
    idle = settings.linkage_worker_poll_seconds
    listener = None  # a pooled connection held checked out for LISTEN (PostgreSQL)
    while True:
        try:
            if db.dialect == "postgresql" and listener is None:
                listener = db.engine.raw_connection()
                listener.driver_connection.autocommit = True
                listener.driver_connection.execute(f"LISTEN {CHANNEL}")
            if drain(db, settings, wait=False) == 0:
                if listener is not None:
                    for _ in listener.driver_connection.notifies(timeout=idle, stop_after=1):
                        pass
                else:
                    time.sleep(idle)
        except Exception:  # a database outage or a bug: logged, the entries stay queued, try again
            log.error("linkage worker: a batch failed; its records stay queued: %s", error_summary())
            if listener is not None:
                listener.invalidate()
                listener = None
            time.sleep(min(5.0, 20 * idle))


def worker_main(settings, exit_with: int | None = None) -> None:
    """`familyview linkage-worker`: the process `serve` starts (``exit_with`` its pid), or one
    an operator runs on its own; any number may run against one database."""
    from app.runtime import collect_garbage_rarely

    collect_garbage_rarely()
    os.nice(10)  # requests first: linking fills the time the server waits on the database or the network
    if exit_with is not None:  # the server may die by a signal, never telling its worker
        threading.Thread(target=_exit_when_gone, args=(exit_with,), name="parent-watch", daemon=True).start()
    run_worker(settings)


def _exit_when_gone(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    log.info("linkage worker: the server that started it is gone; exiting")
    os._exit(0)  # mid-batch is safe: the transaction rolls back and its entries stay queued


class LinkageWorker:
    """The worker process of one server or sync (`familyview linkage-worker`), configured with
    the same settings, restarted if it dies."""

    def __init__(self, settings):
        self._env = {**os.environ, **_settings_env(settings)}
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watch = threading.Thread(target=self._supervise, name="linkage-worker-watch", daemon=True)
        self._watch.start()

    def _spawn(self) -> None:
        # a fresh interpreter, configured as this process is
        self._process = subprocess.Popen([sys.executable, "-m", "app.cli", "linkage-worker", "--exit-with", str(os.getpid())], env=self._env)
        log.info("linkage worker started (pid %s)", self._process.pid)

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            code = self._process.poll()
            if code is not None and not self._stop.is_set():
                log.error("linkage worker exited (code %s); starting another", code)
                self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()


def _settings_env(settings) -> dict[str, str]:
    """The settings as the FAMILYVIEW_ environment variables that give them back."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"FAMILYVIEW_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@contextmanager
def linking_alongside(settings, db: Database) -> Iterator[None]:
    """For a batch of writes outside the server (`familyview sync`): with linkage queued, a
    worker links while the writes go on, and on the way out whatever is left is linked, so
    the batch ends fully linked."""
    worker = LinkageWorker(settings) if settings.linkage_queued else None
    if worker is not None:
        worker.start()
    try:
        yield
    finally:
        if worker is not None:
            worker.stop()
    settle(db, settings)
