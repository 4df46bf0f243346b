"""The audit chain at scale: 1,000,000 BALP AuditEvents appended through the chain (the
first 20,000 one at a time, as each request appends its own, app.audit.balp.record; the rest
500 to a transaction with app.audit.balp.record_many, the same chain in bulk), then `familyview audit verify`'s walk of the whole chain, then the IG export of
all of it as NDJSON and as CSV (app.ig.export, streamed). Prints each rate and the process's
peak memory, each beside the same run's baseline taken just before it: fetching the rows that
phase reads with bare SELECTs through the driver, on one connection (the floor a one-process
walk of the chain stands on; on a shared machine the ratio is the steadier figure). Verify runs
as `familyview audit verify` does: with --workers processes (default the machine's cores, at
most 4) that walk spans of the chain side by side; their CPU time and peak memory are printed
beside the benchmark's own.

Targets: verify and export >= 100,000 events/s; peak memory < 200 MB.

    .venv/bin/python benchmarks/audit.py                       # SQLite, 1,000,000 events
    .venv/bin/python benchmarks/audit.py --events 100000 --one-by-one 2000   # a quick run
    scripts/with-postgres.sh .venv/bin/python benchmarks/audit.py --database postgres
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import threading
import time

from harness import Databases, backends, nhs_numbers

from app.audit import balp  # noqa: E402
from app.audit.service import collector_paused, verify  # noqa: E402
from app.auth.tokens import Principal  # noqa: E402
from app.db import Database, scan_cache  # noqa: E402
from app.ig import export  # noqa: E402

ORGS = [("health-visitor", "RHV01"), ("gp", "A99001"), ("source-system", "RMT01"), ("mash", "LAM01"), ("ig-officer", "X26")]
KINDS = ["read", "search-type", "create", "update", "read", "read", "vread", "transaction"]


def _rss_anon(pid: str) -> int:
    """A process's anonymous resident memory, KiB (0 when it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: str) -> list[str]:
    """The process ids below ``pid`` (verify's fork server and its workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = f.read().split()
        except OSError:
            continue
        found += kids
        todo += kids
    return found


class PeakMemory:
    """The process's peak anonymous memory (heap, Python objects, buffers), sampled every 20 ms
    from /proc/self/status (RssAnon); and the largest of its worker processes' (verify's). SQLite
    maps the database file into memory (mmap_size), and those file pages count in the resident
    set (ru_maxrss, printed beside it) though they are the OS page cache, not the process's memory."""

    def __init__(self) -> None:
        self.peak = self.worker_peak = 0
        threading.Thread(target=self._run, daemon=True).start()

    def sample(self) -> int:
        kb = _rss_anon("self")
        self.peak = max(self.peak, kb)
        for pid in _descendants(str(os.getpid())):
            self.worker_peak = max(self.worker_peak, _rss_anon(pid))
        return kb

    def _run(self) -> None:
        while True:
            self.sample()
            time.sleep(0.02)


MEMORY: PeakMemory | None = None


def peak_mb() -> float:
    """Peak anonymous memory so far, MB."""
    if MEMORY is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    MEMORY.sample()
    return MEMORY.peak / 1024


def worker_peak_mb() -> float:
    """The largest peak anonymous memory of one of the worker processes so far, MB."""
    return MEMORY.worker_peak / 1024 if MEMORY is not None else 0.0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def events(n: int, seed: int = 20261207):
    rnd = random.Random(seed)
    numbers = nhs_numbers(900_000)
    people = [next(numbers) for _ in range(5000)]
    principals = [Principal(sub=f"{role}-{i}@{org}", role=role, org=org) for role, org in ORGS for i in range(20)]
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        e = balp.AccessEvent(rnd.choice(principals), kind, request_id=f"req-{i}")
        nhs = rnd.choice(people)
        e.entity(f"Patient/p{nhs}", version=str(1 + i % 3)).about([f"Patient/p{nhs}", nhs])
        if kind in ("search-type", "transaction"):
            e.entity(f"Condition/c{i}").entity(f"Observation/o{i}")
            e.query = f"Condition?patient=Patient/p{nhs}" if kind == "search-type" else None
        yield e


def write(db: Database, n: int, per_tx: int, *, one_by_one: bool, it=None) -> float:
    """n events, per_tx to a transaction: each appended on its own (balp.record, as a request
    appends its event) or the transaction's together (balp.record_many)."""
    started = time.perf_counter()
    it = it or events(n)
    done = 0
    while done < n:
        batch = [next(it) for _ in range(min(per_tx, n - done))]
        with db.session() as s:
            if one_by_one:
                for e in batch:
                    balp.record(s, e)
            else:
                balp.record_many(s, batch)
        done += len(batch)
        if done % 100_000 == 0:
            print(f"  written {done:,} ({done / (time.perf_counter() - started):,.0f}/s, peak {peak_mb():.0f} MB)", flush=True)
    return time.perf_counter() - started


# the reads each phase stands on, as bare SELECTs through the driver (no hashing, no parsing, no
# formatting): verify reads the events, their head rows and their search rows; the exports the
# body, or the CSV's columns
BASELINES = {
    "verify": ("SELECT * FROM audit_event ORDER BY seq", "SELECT seq, hash FROM audit_head ORDER BY seq",
               "SELECT event_seq, param, value FROM audit_index ORDER BY event_seq"),
    "ndjson": ("SELECT seq, body FROM audit_event ORDER BY seq",),
    "csv": ("SELECT seq, event_id, recorded, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub, agent_org, "
            "agent_role, review_required, policy_version, prev_hash, hash FROM audit_event ORDER BY seq",),
}


def bare_read(db: Database, queries: tuple[str, ...]) -> float:
    """Seconds to fetch every row of each query through the driver itself, 5,000 at a time, on
    one read transaction (PostgreSQL: a server-side cursor, so the rows are never all in memory)."""
    started = time.perf_counter()
    with db.engine.connect() as c, scan_cache(c):  # as the phases read (SQLite: a small page cache)
        raw = c.connection.driver_connection
        for i, q in enumerate(queries):
            cursor = raw.cursor(name=f"baseline_{i}") if c.dialect.name == "postgresql" else raw.cursor()
            cursor.execute(q)
            while cursor.fetchmany(5000):
                pass
            cursor.close()
        c.rollback()
    return time.perf_counter() - started


def timed(n: int, label: str, seconds: float, baseline: float, cpu: float) -> None:
    """A phase's rate beside its baseline's; and the events per second of this process's own CPU
    time (all its threads, and verify's worker processes'; not the PostgreSQL server's): on a
    shared machine, what the Python side would do with a core to itself."""
    rate = n / seconds
    print(f"{label:14}: {rate:>10,.0f} events/s  ({seconds:.1f} s)   same run's bare SELECT of its rows: {n / baseline:>10,.0f}/s "
          f"({rate * baseline / n:.0%} of it)   peak {peak_mb():.0f} MB   target >= 100,000/s: {'met' if rate >= 100_000 else 'NOT met'}   "
          f"[{n / cpu:,.0f} events per CPU-second of this process]", flush=True)


def run(kind: str, n: int, per_tx: int, one_by_one: int, workers: int) -> None:
    dbs = Databases(kind)
    try:
        db = Database(dbs.new("audit"))
        print(f"\n== {kind}: {n:,} events ==", flush=True)
        it = events(n)
        single = min(n, one_by_one)
        w1 = write(db, single, per_tx, one_by_one=True, it=it)
        print(f"write, one append per event (a request's path): {single / w1:>10,.0f} events/s  (first {single:,} events, "
              f"{w1:.1f} s)   peak {peak_mb():.0f} MB", flush=True)
        w = write(db, n - single, per_tx, one_by_one=False, it=it) if n > single else 0.0
        if n > single:
            print(f"write, {per_tx} appended together per transaction: {(n - single) / w:>10,.0f} events/s  ({w:.1f} s)   "
                  f"peak {peak_mb():.0f} MB", flush=True)
        b = bare_read(db, BASELINES["verify"])
        started, cpu = time.perf_counter(), time.process_time()
        with collector_paused(), db.session(readonly=True) as s:  # as `familyview audit verify` walks it
            result = verify(s, workers=workers)
        v, cpu = time.perf_counter() - started, time.process_time() - cpu + result.worker_cpu
        assert result.ok and result.checked == n, result
        # every batch of a clean chain is checked the fast way; the exact walk is only for doubt
        assert result.rechecked == 0, f"{result.rechecked} events needed the exact walk"
        timed(n, "verify", v, b, cpu)
        if workers > 1:
            print(f"{'':14}  ({workers} worker processes: {result.worker_cpu:.1f} CPU-s between them (in the figure above), "
                  f"peak {worker_peak_mb():.0f} MB anonymous the largest of them)", flush=True)
        for fmt, gen in (("ndjson", export.ndjson), ("csv", export.csv_rows)):
            b = bare_read(db, BASELINES[fmt])
            started, cpu = time.perf_counter(), time.process_time()
            size = sum(len(chunk) for chunk in gen(db, None))
            x, cpu = time.perf_counter() - started, time.process_time() - cpu
            timed(n, f"export {fmt}", x, b, cpu)
            print(f"{'':14}  ({size / 1e6:,.0f} MB streamed)", flush=True)
        peak = max(peak_mb(), worker_peak_mb())
        print(f"peak memory: {peak_mb():.0f} MB anonymous (heap), {worker_peak_mb():.0f} MB the largest verify worker   "
              f"target < 200 MB: {'met' if peak < 200 else 'NOT met'}   "
              f"(peak resident set {rss_mb():.0f} MB, which counts the database file SQLite maps)", flush=True)
        db.dispose()
    finally:
        dbs.drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--per-transaction", type=int, default=500)
    ap.add_argument("--one-by-one", type=int, default=20_000, help="how many of the events are appended one at a time (the rest in bulk)")
    ap.add_argument("--database", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                    help="verify's worker processes, as `familyview audit verify --workers` (default the cores, at most 4)")
    args = ap.parse_args()
    global MEMORY
    MEMORY = PeakMemory()
    for kind in backends(args.database):
        run(kind, args.events, args.per_transaction, args.one_by_one, args.workers)


if __name__ == "__main__":
    sys.exit(main())
