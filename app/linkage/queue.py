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

import hashlib
import json
import logging
import os
import select as io_select
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

import orjson
from fastapi import Depends, Request
from sqlalchemy import Integer, and_, bindparam, delete, event, func, literal_column, select
from sqlalchemy.ext.compiler import compiles

from app.auth.deps import get_principal
from app.auth.tokens import Principal
from app.db import Database, ListPredicate, in_list, insert_tables, pipelined, plan_each_execution_first, ref_lists
from app.fhir.models import StoredResource
from app.ingest.hooks import Written
from app.linkage.matching import PersonRecord, blocking_keys
from app.linkage.models import BlockingKey, Link, QueuedRecord, QueuedRecordKey
from app.linkage.service import BEFORE_LINKAGE_READ, LinkageService, key_hash
from app.errors import error_summary

log = logging.getLogger("familyview")

_Q = QueuedRecord.__table__
_QK = QueuedRecordKey.__table__
_K = BlockingKey.__table__
_L = Link.__table__
_R = StoredResource.__table__
ANY_KEY = 0  # a queued record's key row when its keys are not known: every reader settles it
BATCH = 1000  # records linked per transaction: a few Bundles' worth when the worker is behind



def _batch_query(wait: bool, by_ids: bool):
    """A batch of queue entries (up to :up_to, of :ids when ``by_ids``, :batch of them, locked;
    another drainer's skipped unless ``wait``) with each one's record, in queue order: one statement."""
    entries = select(_Q.c.id, _Q.c.res_type, _Q.c.res_id).where(_Q.c.id <= bindparam("up_to"))
    if by_ids:
        entries = entries.where(in_list(_Q.c.id, "ids"))
    entries = entries.order_by(_Q.c.id).limit(bindparam("batch", type_=Integer())).with_for_update(skip_locked=not wait).subquery("q")
    record = and_(_R.c.res_type == entries.c.res_type, _R.c.res_id == entries.c.res_id, _R.c.deleted.is_(False))
    return (select(entries.c.id, entries.c.res_type, entries.c.res_id, _R.c.version_id, _R.c.body, _R.c.source_org, _R.c.source_system)
            .select_from(entries.outerjoin(_R, record)).order_by(entries.c.id))


_SEL_BATCH = {(wait, by_ids): _batch_query(wait, by_ids) for wait in (False, True) for by_ids in (False, True)}
_ALL = 2**62  # up_to when every entry is wanted
_DEL_BATCH = delete(_Q).where(in_list(_Q.c.id, "qids"))
# a drained record's keys go once no entry names it any more (a write queued meanwhile keeps them)
_DEL_KEYS = delete(_QK).where(in_list(_QK.c.res_type, "types"), in_list(_QK.c.res_id, "ids"), ~(
    select(_Q.c.id).where(_Q.c.res_type == _QK.c.res_type, _Q.c.res_id == _QK.c.res_id).exists()))


CHANNEL = "familyview_linkage"  # PostgreSQL NOTIFY channel: wakes the worker at each commit


# SQLite has no NOTIFY: a write that queued records wakes the worker after its commit with a
# datagram on a Linux abstract socket named after the database file (no file to clean up;
# elsewhere, or with no worker listening, the worker's poll interval is the fallback).
def _wake_address(path: str | None) -> str | None:
    if not path or path == ":memory:" or not sys.platform.startswith("linux"):
        return None
    return "\0familyview-linkage-" + hashlib.blake2b(os.path.abspath(path).encode(), digest_size=12).hexdigest()


_SENDER: socket.socket | None = None
_WAKE_PENDING = "familyview.linkage_wake"  # session.info: this transaction will wake the worker at commit


def wake_after_commit(session) -> None:
    """SQLite: tell the worker when this session's transaction commits (once per transaction)."""
    address = _wake_address(session.get_bind().url.database)
    if address is None or session.info.get(_WAKE_PENDING):
        return
    session.info[_WAKE_PENDING] = True

    def committed(sess) -> None:
        sess.info.pop(_WAKE_PENDING, None)
        global _SENDER
        try:
            if _SENDER is None:
                _SENDER = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                _SENDER.setblocking(False)
            _SENDER.sendto(b"1", address)
        except OSError:  # no worker listening, or its socket is full (it is awake then): nothing to do
            pass

    def rolled_back(sess, *_) -> None:
        sess.info.pop(_WAKE_PENDING, None)

    event.listen(session, "after_commit", committed, once=True)
    event.listen(session, "after_soft_rollback", rolled_back, once=True)


def _listen_for_wakes(path: str | None) -> socket.socket | None:
    """The worker's end of wake_after_commit; None when another worker holds it (that one is
    woken; this one polls) or the platform has no abstract sockets."""
    address = _wake_address(path)
    if address is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _wait_for_wake(sock: socket.socket, timeout: float) -> None:
    ready, _, _ = io_select.select([sock], [], [], timeout)
    if ready:
        try:
            while sock.recv(16):  # every wake so far: one drain links what they all queued
                pass
        except BlockingIOError:
            pass


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
    return [(_Q, [{"res_type": w.res_type, "res_id": w.res_id, "enqueued_at": now} for w in written]),
            (_QK, [{"res_type": w.res_type, "res_id": w.res_id, "key_hashes": hashes} for w in written if (hashes := _key_hashes(w))])], notify


def _key_hashes(w: Written) -> list[int]:
    resource = dict(w.resource)
    resource["id"] = w.res_id
    return sorted({key_hash(k) for k in blocking_keys(PersonRecord.from_fhir(resource))})


def drain(db: Database, settings, *, wait: bool, up_to: int | None = None, batch: int = BATCH, ids: list[int] | None = None) -> int:
    """Link queued records, a batch per transaction, until none is left (or none up to
    ``up_to``, or of ``ids``); returns how many queue entries were done.

    ``wait=False`` (the worker) skips entries another drainer holds. ``wait=True`` (a
    reader) waits for that drainer's transaction, so when it returns every entry up to
    ``up_to`` is linked. On SQLite, writers are serialised by BEGIN IMMEDIATE anyway."""
    done = 0
    params = {"up_to": _ALL if up_to is None else up_to, "batch": batch, **({"ids": sorted(ids)} if ids is not None else {})}
    query = _SEL_BATCH[wait, ids is not None]
    while True:
        with db.session() as session:
            conn = session.connection()
            # linking binds arrays of key hashes, as the write path does: plan_each_execution,
            # in one round trip with the batch (and the transaction's BEGIN) on PostgreSQL
            entries = pipelined(conn, plan_each_execution_first(conn) + [(query, params)])[-1]
            if not entries:
                return done
            stored = {}
            for e in entries:  # each record once, in queue order
                stored.setdefault((e.res_type, e.res_id), e)
            written = [
                Written(r.res_type, r.res_id, r.version_id, orjson.loads(r.body), False, r.source_org, r.source_system)
                for r in stored.values() if r.version_id is not None
            ]
            # the entries go first (one round trip): linking ends with its audit event, whose chain
            # lock every write's audit waits for, so the commit follows it at once (this process
            # runs at a lower priority than the server's, and must not hold that lock long)
            pipelined(conn, [(_DEL_BATCH, {"qids": [e.id for e in entries]}),
                             (_DEL_KEYS, ref_lists(stored))])
            if written:
                LinkageService.from_settings(session, settings).link_written(written)
        done += len(entries)


def settle(db: Database, settings) -> None:
    """Link everything queued before this call: a reader of linkage calls it first."""
    with db.session(readonly=True) as session:
        last = session.scalar(select(func.max(_Q.c.id)))
    if last is not None:
        drain(db, settings, wait=True, up_to=last)


# the closure of settle_records: a record's blocking keys (linked and queued), the other
# records of its person, and the queued records sharing any of those keys
class SharesKey(ListPredicate):
    """A queued record's key hashes (``linkage_queue_key.key_hashes``) include any of a list
    bound at execution: the array overlap `&&` on PostgreSQL (its GIN index), a look into
    the JSON array on SQLite."""

    inherit_cache = True


@compiles(SharesKey)
def _shares_key_json(element: SharesKey, compiler, **kw) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(literal_column("value").in_(bindparam(element.name, expanding=True)), **kw)
    return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE {values})"


@compiles(SharesKey, "postgresql")
def _shares_key_array(element: SharesKey, compiler, **kw) -> str:
    return compiler.process(element.column.op("&&")(bindparam(element.name, type_=element.column.type)), **kw)


_SEL_KEYS = select(_K.c.res_type, _K.c.res_id, _K.c.key_hash).where(in_list(_K.c.res_type, "types"), in_list(_K.c.res_id, "ids"))
_SEL_QUEUED_KEYS = select(_QK.c.res_type, _QK.c.res_id, _QK.c.key_hashes).where(in_list(_QK.c.res_type, "types"), in_list(_QK.c.res_id, "ids"))
_ME = _L.alias("me")
_SEL_MEMBERS = (select(_ME.c.res_type.label("me_type"), _ME.c.res_id.label("me_id"), _L.c.res_type, _L.c.res_id)
                .join(_L, _L.c.person_id == _ME.c.person_id).where(in_list(_ME.c.res_type, "types"), in_list(_ME.c.res_id, "ids")))
_SEL_SHARING = select(_QK.c.res_type, _QK.c.res_id).where(SharesKey(_QK.c.key_hashes, "hashes"))
_SEL_ENTRIES = select(_Q.c.id, _Q.c.res_type, _Q.c.res_id).where(in_list(_Q.c.res_type, "types"), in_list(_Q.c.res_id, "ids"))
CLOSURE_LIMIT = 2000  # records: a reader whose closure grows past this settles the whole queue


def pending_for(conn, refs: Iterable[tuple[str, str]]) -> list[int] | None:
    """The queue entries a reader of these records must see linked: the records themselves, the
    other records of their persons, and every queued record sharing a blocking key with any of
    those, transitively (linking a record compares it only with records sharing a key and with
    its own person's); records queued with ANY_KEY always. None when that closure is too large
    to follow: then settle it all."""
    if conn.execute(select(_Q.c.id).limit(1)).first() is None:
        return []
    known: set[tuple[str, str]] = set()
    hashes: set[int] = set()
    frontier, new_hashes = set(refs), {ANY_KEY}
    while True:
        if new_hashes:
            hashes |= new_hashes
            frontier |= {(r.res_type, r.res_id) for r in conn.execute(_SEL_SHARING, {"hashes": sorted(new_hashes)})}
        frontier -= known
        if not frontier:
            break
        known |= frontier
        if len(known) > CLOSURE_LIMIT:
            return None
        binds = ref_lists(frontier)
        linked, queued = pipelined(conn, [(_SEL_KEYS, binds), (_SEL_QUEUED_KEYS, binds)])  # one round trip
        new_hashes = {r.key_hash for r in linked if (r.res_type, r.res_id) in frontier}
        for r in queued:
            if (r.res_type, r.res_id) in frontier:
                new_hashes.update(r.key_hashes)
        new_hashes -= hashes
        frontier = {(r.res_type, r.res_id) for r in conn.execute(_SEL_MEMBERS, binds) if (r.me_type, r.me_id) in frontier}
    return [e.id for e in conn.execute(_SEL_ENTRIES, ref_lists(known)) if (e.res_type, e.res_id) in known]


def settle_records(db: Database, settings, refs: Iterable[tuple[str, str]], conn=None) -> None:
    """:func:`settle` for a reader of these records only: links what is queued that could join
    their people, and waits for nothing else (a bulk load of unrelated records stays queued).
    ``conn``: the reader's own connection to find them on (else a session of its own)."""
    if conn is None:
        with db.session(readonly=True) as session:
            ids = pending_for(session.connection(), refs)
    else:
        ids = pending_for(conn, refs)
    if ids is None:
        settle(db, settings)
    elif ids:
        drain(db, settings, wait=True, ids=ids)


@contextmanager
def settling_session(db: Database, settings) -> Iterator:
    """A session (one transaction, as ``db.session()``) whose linkage reads settle first only
    the queued records they could see (each once, :func:`settle_records`): a family view waits
    for its own family's linking, never for a bulk load of others. On PostgreSQL each statement
    of the transaction (READ COMMITTED) sees what a drain committed meanwhile; SQLite's reader
    keeps the snapshot of its first read, so there the whole queue is settled before the session
    (inline linkage, the default there, leaves it empty)."""
    if db.dialect != "postgresql":
        settle(db, settings)
        with db.session() as session:
            yield session
        return
    with db.session() as session:
        _settle_before_reads(session, db, settings)
        yield session


def _settle_before_reads(session, db: Database, settings) -> None:
    settled: set[tuple[str, str]] = set()

    def before_read(refs: set[tuple[str, str]]) -> None:
        new = refs - settled
        if new:
            settle_records(db, settings, new, session.connection())  # READ COMMITTED: the drain's commits are seen
            settled.update(new)

    session.info[BEFORE_LINKAGE_READ] = before_read


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
    waker = _listen_for_wakes(db.engine.url.database) if db.dialect == "sqlite" else None
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
                elif waker is not None:
                    _wait_for_wake(waker, idle)
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
