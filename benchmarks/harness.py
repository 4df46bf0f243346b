"""Shared parts of the benchmarks: throwaway migrated databases (SQLite files, or PostgreSQL
databases when FAMILYVIEW_TEST_POSTGRES_URL is set, as under scripts/with-postgres.sh), a real
single-worker `familyview serve` subprocess, synthetic NHS numbers and percentiles."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout

import httpx  # noqa: E402

from app.fhir.validation import is_valid_nhs_number  # noqa: E402
from app.migrate import upgrade  # noqa: E402

PG_ADMIN_URL = os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL")


def nhs_numbers(start: int = 0):
    """Valid synthetic NHS numbers (999 prefix, Modulus 11), in order."""
    n = start
    while True:
        if n > 999_999:
            raise ValueError("synthetic NHS numbers run out: 999 + six digits + check digit")
        stem = f"999{n:06d}"
        n += 1
        for d in range(10):
            if is_valid_nhs_number(stem + str(d)):
                yield stem + str(d)
                break


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backends(requested: list[str] | None) -> list[str]:
    available = ["sqlite"] + (["postgres"] if PG_ADMIN_URL else [])
    if not requested:
        return available
    missing = [b for b in requested if b not in available]
    if missing:
        sys.exit(f"{', '.join(missing)} is not available: run under scripts/with-postgres.sh for PostgreSQL")
    return requested


class Databases:
    """Empty, migrated databases, dropped at the end."""

    def __init__(self, kind: str):
        self.kind = kind
        self.tmp = Path(tempfile.mkdtemp(prefix="fv-bench-"))
        self.created: list[str] = []

    def new(self, name: str) -> str:
        if self.kind == "sqlite":
            url = f"sqlite:///{self.tmp / name}.db"
        else:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            db = f"fv_bench_{name}_{uuid.uuid4().hex[:6]}"
            eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                c.execute(text(f'CREATE DATABASE "{db}"'))
            eng.dispose()
            self.created.append(db)
            url = make_url(PG_ADMIN_URL).set(database=db).render_as_string(hide_password=False)
        upgrade(url)
        return url

    def drop(self) -> None:
        if self.created:
            from sqlalchemy import create_engine, text

            eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                for db in self.created:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            eng.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Server:
    """`familyview serve` in a subprocess: one uvicorn worker, as most targets say (load.py: two)."""

    def __init__(self, url: str, key: Path, workers: int = 1):
        self.port = free_port()
        env = {**os.environ, "FAMILYVIEW_DATABASE_URL": url, "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key), "FAMILYVIEW_LOG_LEVEL": "WARNING",
               "FAMILYVIEW_RATE_LIMIT_ENABLED": "false"}  # a benchmark measures speed, not the limits
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--dev-auth", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/fhir/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"the server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        self.stop()
        sys.exit("the server did not start within 60s")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class CpuMeter:
    """CPU seconds spent while a benchmark's clock runs, by the machine's cores and by the
    processes that did the work: the server, its linkage worker, the database server's
    processes (PostgreSQL's backends; SQLite runs inside the server) and the rest (the
    benchmark itself, HAPI, anything else on the machine). A rate that needs more CPU than
    the cores give in its time cannot be reached by overlapping work: it shows where the
    ceiling is. Linux (/proc); elsewhere it measures nothing (`available` is False)."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.available = os.path.exists("/proc/stat")
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.cores = os.cpu_count() or 1
        self.totals: dict[str, float] = {}
        self._start: tuple[float, dict[int, tuple[str, float]]] | None = None

    def _role(self, pid: int, cmd: str) -> str | None:
        if pid == self.server_pid:
            return "server"
        if "linkage-worker" in cmd and f"--exit-with {self.server_pid}" in cmd:
            return "linkage worker"
        if cmd.startswith("postgres"):
            return "database"
        return None

    def _sample(self) -> tuple[float, dict[int, tuple[str, float]]]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / self.tick  # all but idle and iowait
        procs: dict[int, tuple[str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            role = self._role(int(entry), cmd)
            if role is not None:
                procs[int(entry)] = (role, (int(stat[11]) + int(stat[12])) / self.tick)  # utime + stime
        return busy, procs

    def start(self) -> None:
        if self.available:
            self._start = self._sample()

    def stop(self) -> None:
        """Adds the CPU since start() to the totals."""
        if not self.available or self._start is None:
            return
        (busy0, procs0), (busy1, procs1) = self._start, self._sample()
        self._start = None
        self.totals["machine"] = self.totals.get("machine", 0.0) + busy1 - busy0
        for pid, (role, cpu) in procs1.items():
            before = procs0.get(pid)
            spent = cpu - (before[1] if before is not None and before[0] == role else 0.0)
            self.totals[role] = self.totals.get(role, 0.0) + spent
        self.totals["other"] = self.totals["machine"] - sum(v for k, v in self.totals.items() if k not in ("machine", "other"))


class LinkageQueue:
    """A server's linkage queue, seen from outside: with linkage queued (the default on
    PostgreSQL) records are linked after the write's response, so a benchmark of writes times
    them until the queue is empty: every record's linking is counted."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine

        self.engine = create_engine(url)

    def wait_until_linked(self) -> float:
        from sqlalchemy import text

        t0 = time.perf_counter()
        with self.engine.connect() as conn:
            while conn.execute(text("SELECT EXISTS (SELECT 1 FROM linkage_queue)")).scalar():
                conn.rollback()
                time.sleep(0.005)
        return time.perf_counter() - t0

    def wait_for_worker(self, timeout: float = 60.0) -> float:
        """Until a linkage worker listens on this database (PostgreSQL): a worker process takes
        a second or two of CPU to start, which a server's worker has spent before any clock."""
        from sqlalchemy import text

        t0 = time.perf_counter()
        with self.engine.connect() as conn:
            while not conn.execute(text("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND query ILIKE 'LISTEN %')")).scalar():
                conn.rollback()
                if time.perf_counter() - t0 > timeout:
                    sys.exit(f"no linkage worker listened within {timeout:.0f}s")
                time.sleep(0.02)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.engine.dispose()
