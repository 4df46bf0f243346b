"""Database engine and session handling, shared by SQLite (embedded) and PostgreSQL (production)."""
from __future__ import annotations

import contextlib
import logging
import os
import select
import sqlite3
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from itertools import chain
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from sqlalchemy import Boolean, Connection, Engine, Table, any_, bindparam, create_engine, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


_SQLITE_CACHE_KIB = 65536  # a connection's page cache
_SQLITE_SCAN_CACHE_KIB = 2048  # while it reads a long table once


@contextmanager
def scan_cache(connection: Any) -> Iterator[None]:
    """SQLite: a small page cache while this connection reads a long table once (an audit
    export, the audit walk). Past mmap_size's 2 GiB a read goes through the page cache, which
    would fill to its 64 MiB with pages never read again (the process's memory, not the OS's
    page cache); the connection's own size is back for its next user after."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql(f"PRAGMA cache_size=-{_SQLITE_SCAN_CACHE_KIB}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")


def make_engine(url: str, *, statement_timeout_ms: int = 0) -> Engine:
    """The engine; on PostgreSQL with `statement_timeout_ms`, no statement runs longer than that
    (set once per connection, so it costs no round trip per request)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            # pysqlite's own transaction handling defers BEGIN; take it over so that a
            # transaction holds the write lock from its first statement (no lost updates).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # a server's working set: 64 MiB page cache and memory-mapped reads per connection
            cur.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
            # reads of a large linkage index come straight from the OS page cache (2 GiB is
            # SQLite's default ceiling for mmap)
            cur.execute("PRAGMA mmap_size=2147418112")
            # WAL checkpoints run on WalCheckpointer's thread, off the request path; a writer
            # checkpoints itself only if that thread falls 40 MB behind
            cur.execute("PRAGMA wal_autocheckpoint=10000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - trivial
            readonly = conn.get_execution_options().get("familyview_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    connect_args = {"options": f"-c statement_timeout={int(statement_timeout_ms)}"} if statement_timeout_ms > 0 else {}
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)
    if engine.dialect.driver == "psycopg":
        engine.dialect.do_ping = _ping_outside_transaction(engine.dialect.do_ping)  # type: ignore[method-assign]
    return engine


def _ping_outside_transaction(default_ping):
    """pool_pre_ping's check without a round trip when the connection is known good. An idle
    connection has nothing to read: when the server closes it (a restart, an administrator's
    pg_terminate_backend, an idle timeout) it sends its FATAL message and then the end of the
    stream, so the socket turns readable (or the driver already marks it closed). Only then is
    the connection pinged with a statement (a NOTIFY waiting to be read also turns it readable:
    the ping sorts that out); a broken one fails the ping and the pool replaces it. The
    round trip this saves was one per request (on a busy machine each waits for the server's
    turn on a core). In a transaction, the dialect's own ping."""
    from psycopg.pq import TransactionStatus

    def ping(dbapi_connection) -> bool:
        if dbapi_connection.info.transaction_status != TransactionStatus.IDLE:
            return default_ping(dbapi_connection)
        if not dbapi_connection.closed and not _readable(dbapi_connection.fileno()):
            return True
        dbapi_connection.autocommit = True  # one round trip, outside a transaction (no BEGIN)
        try:
            dbapi_connection.execute(";")
        finally:
            dbapi_connection.autocommit = False
        return True

    return ping


def _readable(fd: int) -> bool:
    """Whether a socket has something to read (or its end): a poll that does not wait."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def plan_each_execution(conn: Connection) -> None:
    """For the rest of this transaction, plan every statement with its values (PostgreSQL).

    The write path binds lists of identifiers and key hashes as arrays, and the generic plan
    of a prepared statement can neither size them nor hash them: a linear search of the
    array per row read, 17 ms instead of 1.6 ms for one Bundle's source keys. Reads (the
    family view's dozen small queries) keep their prepared plans.

    It also plans them for pages that are in memory (random_page_cost 1.1, PostgreSQL's own
    advice for cached data or SSDs, for this transaction only): at the default 4, a disk's,
    a look-up of a Bundle's few hundred keys read the whole source-key table (and the
    linkage-key table) well past 20,000 rows, a cost that grew with every write."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_WRITE_PLANNING)


_WRITE_PLANNING = ("SELECT set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode, "
                "set_config('random_page_cost', '1.1', true) AS random_page_cost")  # plan_each_execution's statement, for a pipeline


def plan_each_execution_first(conn: Connection) -> list[tuple[Any, dict[str, Any]]]:
    """plan_each_execution as the first statement of a pipeline (see pipelined): no round trip of its own."""
    return [(_WRITE_PLANNING, {})] if conn.dialect.name == "postgresql" else []


def plan_once_per_statement(conn: Connection) -> None:
    """For the rest of this transaction, run each prepared statement on its one generic plan
    (PostgreSQL).

    The family view runs the same dozen small look-ups on every request, each with a few
    ids bound as arrays; planning them afresh each time (what the default chooses for a
    UNION of joins) took ~0.5 ms a statement, a third of the view's database time. Their
    plans do not depend on the values: every look-up is an index probe."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")


def new_id() -> str:
    """A new logical id: a UUID version 7 (RFC 9562) in canonical text, a valid FHIR id.

    Its first 48 bits are the Unix time in milliseconds, so ids made one after another sort
    together: every index keyed by record id (the resource table, history, search and
    linkage rows) grows at its right-hand edge instead of dirtying a random page per row, as
    random (version 4) ids do; a Bundle's commit writes a fraction of the pages. The other
    74 bits are random, so ids stay unguessable and unique across servers."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the UUID object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ListPredicate(ColumnElement[bool]):
    """A condition on a column and a list bound at execution under ``name``, rendered per
    dialect by its subclass's @compiles functions. Build statements with it once, at import."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # else dialects without a boolean type render `(... IN ...) = 1`, which no index serves
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column, name: str):
        self.column = column
        self.name = name


class InList(ListPredicate):
    """`column IN (:name)`. On PostgreSQL one array parameter, `column = ANY(:name)`: an
    expanding IN renders and the driver re-parses one placeholder per value on every call
    (~9 ms for a Bundle's few hundred identifiers); SQLite gets the expanding IN."""

    inherit_cache = True


@compiles(InList)
def _in_list_expanding(element: InList, compiler, **kw) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(InList, "postgresql")
def _in_list_array(element: InList, compiler, **kw) -> str:
    return compiler.process(element.column == any_(bindparam(element.name, type_=ARRAY(element.column.type))), **kw)


def in_list(column, name: str) -> InList:
    return InList(column, name)


def ref_lists(refs) -> dict[str, list[str]]:
    """The binds of a look-up of (type, id) pairs by two in_list columns, "types" and "ids" (one
    list per column: the statement is planned once; the caller keeps only the pairs it asked for)."""
    refs = list(refs)
    return {"types": sorted({t for t, _ in refs}), "ids": sorted({i for _, i in refs})}


def _columns_and_tuples(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """The columns the rows name and each row as a tuple in that order (None where a row
    omits a column). Rows of one shape, the usual case, go through itemgetter."""
    cols = list(rows[0])
    n = len(cols)
    if n > 1 and all(len(r) == n for r in rows):
        try:  # same length and every key of the first row present: the same keys
            return cols, list(map(itemgetter(*cols), rows))
        except KeyError:
            pass
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return cols, [tuple(r.get(c) for c in cols) for r in rows]


def insert_rows(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Bulk insert for the write path (a Bundle writes ~1,500 rows): on PostgreSQL one
    statement per table (see insert_tables); on SQLite one executemany of a statement built
    once, with each column's bind processor looked up once instead of per row. Rows may omit
    columns (NULL)."""
    insert_tables(conn, [(table, rows)])


def _json_default(value):
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError


def insert_tables(conn: Connection, batches: list[tuple[Table, list[dict]]], then: tuple[str, ...] = (),
                  after: list[tuple[Any, dict[str, Any]]] | None = None) -> None:
    """Bulk insert into several tables, in the order given. On PostgreSQL every table's rows
    go as one JSON array bound to one `INSERT ... SELECT ... FROM json_populate_recordset`,
    and all the tables' statements in one pipeline: one round trip to the server for all of
    them (COPY took two per table, and a Bundle fills seven tables; on a busy machine each
    round trip waits for the server's turn on a core). The rows are taken in array order,
    so rows sorted to take unique keys in one order still do. `then`: statements without
    parameters run after the inserts in the same pipeline (PostgreSQL only: a NOTIFY);
    `after`: statements with their parameters, as pipelined takes them, run last in the same
    round trip (the write's audit), their rows not read. On SQLite, insert_rows' way per
    table (no round trips there), then `after` one by one."""
    batches = [(t, rows) for t, rows in batches if rows]
    after = after or []
    if not batches and not then and not after:
        return
    dialect = conn.dialect
    if dialect.name != "postgresql":
        for table, rows in batches:
            _insert_sqlite(conn, table, rows)
        if after:
            pipelined(conn, after)
        return
    quote, statements = dialect.identifier_preparer.quote, []
    for table, rows in batches:
        cols = list(dict.fromkeys(chain.from_iterable(rows)))  # every column any row names (absent: NULL)
        names = ", ".join(quote(c) for c in cols)
        target = dialect.identifier_preparer.format_table(table)
        statements.append((f"INSERT INTO {target} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{target}, %s::json)",
                           orjson.dumps(rows, default=_json_default).decode()))
    last = [_for_driver(dialect, statement, params) for statement, params in after]
    driver = conn.connection.driver_connection
    try:
        with driver.pipeline(), driver.cursor() as cur:
            for statement, data in statements:
                cur.execute(statement, (data,), prepare=False)
            for statement in then:
                cur.execute(statement, prepare=False)
            for statement, params in last:
                cur.execute(statement, params, prepare=False)
    except dialect.loaded_dbapi.Error as err:  # as SQLAlchemy raises it (IntegrityError: a racing writer)
        raise DBAPIError.instance("; ".join([s for s, _ in statements] + list(then) + [s for s, _ in last]), None, err,
                                  dialect.loaded_dbapi.Error) from err


_DRIVER_SQL: dict[int, tuple[Any, str, dict[str, Any]]] = {}


def _driver_sql(dialect, statement) -> tuple[str, dict[str, Any]]:
    """A statement built once (at import) compiled once for the driver: its SQL and bind processors."""
    cached = _DRIVER_SQL.get(id(statement))
    if cached is None or cached[0] is not statement:
        compiled = statement.compile(dialect=dialect)
        cached = _DRIVER_SQL[id(statement)] = (statement, str(compiled), dict(compiled._bind_processors))
    return cached[1], cached[2]


def _for_driver(dialect, statement, params: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """A statement as the driver takes it: plain SQL text as is, a Core statement built once
    (at import) compiled once (_driver_sql), its parameters through their bind processors."""
    if isinstance(statement, str):
        return statement, None
    sql, processors = _driver_sql(dialect, statement)
    return sql, {k: processors[k](v) if k in processors else v for k, v in (params or {}).items()}


def pipelined(conn: Connection, statements: list[tuple[Any, dict[str, Any]]]) -> list[list[Any]]:
    """Run statements in order and return each one's rows (named tuples; [] for a statement
    without rows). On PostgreSQL they go in one pipeline: one round trip for all of them, the
    transaction's BEGIN too when they open it (each still runs after the one before it, with its
    own snapshot, so a lock taken by one holds for the next). A statement is a Core statement
    built once at import, or plain SQL text without parameters. Errors are raised as SQLAlchemy
    raises them (IntegrityError, OperationalError, ...). Elsewhere, one after another."""
    return Sent(conn, statements).rows()


class Sent:
    """Statements sent now and read later: pipelined's round trip, split so that the caller's
    own work runs while PostgreSQL runs them (rows() waits for them). On PostgreSQL they are
    sent to the server at once, in one pipeline that stays open until rows() or abandon(): the
    connection is not used for anything else meanwhile. Elsewhere nothing is sent: they run
    when rows() is called. abandon() gives them up (the caller's transaction is rolled back)."""

    def __init__(self, conn: Connection, statements: list[tuple[Any, dict[str, Any]]]):
        self.conn = conn
        self.statements = statements
        self._open: contextlib.ExitStack | None = None
        self._sql: list[str] = []
        self._cursors: list[Any] = []
        if conn.dialect.name == "postgresql" and statements:
            self._send()

    def _send(self) -> None:
        from psycopg.rows import namedtuple_row

        dialect = self.conn.dialect
        prepared = [_for_driver(dialect, statement, params) for statement, params in self.statements]
        self._sql = [sql for sql, _ in prepared]
        driver = self.conn.connection.driver_connection
        opened = contextlib.ExitStack()
        try:
            self._pipe = opened.enter_context(driver.pipeline())
            for sql, params in prepared:
                cur = driver.cursor(row_factory=namedtuple_row)
                self._cursors.append(cur)
                cur.execute(sql, params, prepare=False)  # unnamed: planned with its values
        except dialect.loaded_dbapi.Error as err:  # as SQLAlchemy raises it
            opened.__exit__(type(err), err, err.__traceback__)
            raise self._raised(err) from err
        except BaseException as err:
            opened.__exit__(type(err), err, err.__traceback__)
            raise
        self._open = opened

    def _raised(self, err: Exception) -> DBAPIError:
        return DBAPIError.instance("; ".join(self._sql), None, err, self.conn.dialect.loaded_dbapi.Error)

    def rows(self) -> list[list[Any]]:
        conn = self.conn
        if not self.statements:
            return []
        if conn.dialect.name != "postgresql":
            out = []
            for statement, params in self.statements:
                result = conn.exec_driver_sql(statement) if isinstance(statement, str) else conn.execute(statement, params)
                out.append(result.all() if result.returns_rows else [])
            return out
        opened, self._open = self._open, None
        if opened is None:
            raise RuntimeError("these statements were read or abandoned already")
        try:
            self._pipe.sync()
            out = [cur.fetchall() if cur.description is not None else [] for cur in self._cursors]
            opened.close()  # an error the server sends late is raised here
        except conn.dialect.loaded_dbapi.Error as err:
            opened.__exit__(type(err), err, err.__traceback__)  # nothing left to end if close() raised
            raise self._raised(err) from err
        except BaseException as err:
            opened.__exit__(type(err), err, err.__traceback__)
            raise
        for cur in self._cursors:
            cur.close()
        return out

    def abandon(self) -> None:
        """Give the statements up: the pipeline is ended and their results, or their error,
        dropped; the caller rolls its transaction back."""
        opened, self._open = self._open, None
        if opened is not None:
            try:
                opened.close()
            except self.conn.dialect.loaded_dbapi.Error:
                pass


def _insert_sqlite(conn: Connection, table: Table, rows: list[dict]) -> None:
    cols, tuples = _columns_and_tuples(rows)
    dialect = conn.dialect
    names = ", ".join(dialect.identifier_preparer.quote(c) for c in cols)
    target = dialect.identifier_preparer.format_table(table)
    procs = [(i, p) for i, c in enumerate(cols) if (p := table.c[c].type.dialect_impl(dialect).bind_processor(dialect))]
    params = tuples
    if procs:
        # a value shared by many rows (a Bundle's rows share one timestamp object) converted once:
        # a datetime's text costs more than the rest of its row's binding. By identity, not
        # equality (equal datetimes of two offsets are written differently); each entry holds its
        # value, so no id is reused while the batch is converted.
        done: list[dict[int, tuple[Any, Any]]] = [{} for _ in procs]
        for n, row in enumerate(params):
            row = list(row)
            for (i, p), seen in zip(procs, done):
                value = row[i]
                kept = seen.get(id(value))
                if kept is None or kept[0] is not value:
                    kept = seen[id(value)] = (value, p(value))
                row[i] = kept[1]
            params[n] = tuple(row)
    conn.exec_driver_sql(f"INSERT INTO {target} ({names}) VALUES ({', '.join('?' * len(cols))})", params)


log = logging.getLogger("familyview")

QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement cut short by statement_timeout

# PostgreSQL's deadlock_detected and serialization_failure: the transaction was chosen as the
# victim and rolled back whole, so running it again is safe
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def retryable(err: BaseException) -> bool:
    """Whether a database error means the transaction was a deadlock or serialization victim."""
    orig = getattr(err, "orig", None)
    return (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) in RETRYABLE_SQLSTATES


def cancelled_by_timeout(exc: BaseException) -> bool:
    """Whether a database error is a statement stopped by statement_timeout."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == QUERY_CANCELED


class WalCheckpointer:
    """Copies committed WAL pages into the SQLite database file on a background thread, as
    SQLite's documentation suggests for servers, so that a request's commit never pays for
    a checkpoint (writing pages back and an fsync: ~12 ms of a Bundle's ~100 ms). Runs
    only while writes arrive: the thread ends after `idle_seconds` without one."""

    def __init__(self, path: str, *, interval: float = 0.25, idle_seconds: float = 30.0):
        self.path = path
        self.interval = interval
        self.idle_seconds = idle_seconds
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wrote(self) -> None:
        self._dirty.set()
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(self.idle_seconds):
                with self._lock:
                    if not self._dirty.is_set():
                        self._thread = None
                        return
                continue
            if self._stop.wait(self.interval):
                break
            self._dirty.clear()
            self.checkpoint()
        with self._lock:
            self._thread = None

    def checkpoint(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()
        except sqlite3.Error as exc:  # the next one, or a writer's fallback, catches up
            log.warning("WAL checkpoint failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self._stop.clear()  # an engine may be used again after dispose


class Database:
    """Holds the engine and hands out sessions; one per app instance."""

    def __init__(self, url: str, *, statement_timeout_ms: int = 0):
        self.url = url
        self.engine = make_engine(url, statement_timeout_ms=statement_timeout_ms)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessionmaker = sessionmaker(
            self.engine.execution_options(familyview_readonly=True), expire_on_commit=False
        )
        path = self.engine.url.database if self.dialect == "sqlite" else None
        self.checkpointer = WalCheckpointer(path) if path and path != ":memory:" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        maker = self.read_sessionmaker if readonly else self.sessionmaker
        with maker() as session:
            with session.begin():
                yield session
        if not readonly and self.checkpointer is not None:
            self.checkpointer.wrote()

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()
