"""Faults under load on PostgreSQL: the server (a `familyview serve` subprocess) SIGKILLed during
concurrent transaction writes, then the database restarted (pg_ctl restart of the throwaway
PostgreSQL) during a load. Afterwards every acknowledged Bundle is stored whole, every Bundle
that never reached the server or was refused is absent, none is stored in part, the server
serves again once the database is back, and the audit chain verifies (`familyview audit verify`).

Needs scripts/with-postgres.sh (it exports FAMILYVIEW_TEST_PGDATA and FAMILYVIEW_TEST_PG_BIN)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.auth.tokens import mint_token
from app.settings import PROJECT_ROOT, Settings
from tests.conftest import GP_ORG, MATERNITY_ORG, PG_URL, new_database_url
from tests.fhirdata import family_bundle, nhs_numbers
from tests.serve import ServeProcess

PGDATA = os.environ.get("FAMILYVIEW_TEST_PGDATA")
PG_BIN = os.environ.get("FAMILYVIEW_TEST_PG_BIN")
WRITERS = 8
pytestmark = [pytest.mark.postgres, pytest.mark.serial]  # it restarts the run's one PostgreSQL: nothing else may run beside it


@pytest.fixture
def pg_url(tmp_path, sqlite_template, pg_template):
    if not (PG_URL and PGDATA and PG_BIN):
        pytest.skip("needs the throwaway PostgreSQL of scripts/with-postgres.sh (FAMILYVIEW_TEST_PGDATA, FAMILYVIEW_TEST_PG_BIN)")
    url, drop = new_database_url("postgres", tmp_path, sqlite_template, pg_template)
    yield url
    drop()


def _serve(url: str, key: Path, log: Path) -> ServeProcess:
    env = {"FAMILYVIEW_DATABASE_URL": url, "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key), "FAMILYVIEW_LOG_LEVEL": "WARNING",
           "FAMILYVIEW_RATE_LIMIT_ENABLED": "false"}  # a few tokens stand for many clients here: the per-client limits are tested in tests/ops
    return ServeProcess(env, "--dev-auth", log=log).wait_up()


def restart_postgres() -> None:
    """pg_ctl restart -m fast: every connection is cut, the server is back when it returns."""
    cmd = [f"{PG_BIN}/pg_ctl", "-D", PGDATA, "-m", "fast", "-w", "-t", "60", "restart"]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=90)


@dataclass
class Ledger:
    """What each writer sent and what it was told, by the Bundle's NHS number."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[str] = field(default_factory=list)  # 200 with every entry created
    refused: dict[str, int] = field(default_factory=dict)  # a 4xx: must be absent
    unavailable: list[str] = field(default_factory=list)  # 503 (the database cut mid-request): whole or absent
    never_sent: list[str] = field(default_factory=list)  # no connection: must be absent
    in_flight: list[str] = field(default_factory=list)  # sent, no answer: whole or absent
    views: int = 0

    def acks(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _writer(base: str, token: str, numbers, ledger: Ledger, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
        while not stop.is_set():
            with ledger.lock:
                nhs = next(numbers)
            body = json.dumps(family_bundle(nhs, suffix=f"-fault-{nhs[-6:]}"))
            try:
                r = c.post("/fhir", content=body)
            except httpx.ConnectError:
                with ledger.lock:
                    ledger.never_sent.append(nhs)
                time.sleep(0.05)
                continue
            except httpx.HTTPError:
                with ledger.lock:
                    ledger.in_flight.append(nhs)
                continue
            with ledger.lock:
                if r.status_code == 200 and all(e["response"]["status"].startswith("201") for e in r.json()["entry"]):
                    ledger.acknowledged.append(nhs)
                elif r.status_code == 503 and r.headers.get("retry-after"):
                    ledger.unavailable.append(nhs)
                else:
                    ledger.refused[nhs] = r.status_code


def _viewer(base: str, token: str, ledger: Ledger, stop: threading.Event) -> None:
    """Family views (refused for want of a relationship, and audited) beside the writes."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        while not stop.is_set():
            with ledger.lock:
                nhs = ledger.acknowledged[-1] if ledger.acknowledged else None
            if nhs is None:
                time.sleep(0.05)
                continue
            try:
                c.get("/fhir/Patient/$family-view", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "direct-care"})
                with ledger.lock:
                    ledger.views += 1
            except httpx.HTTPError:
                time.sleep(0.05)


def _load(server: ServeProcess, settings: Settings, numbers, ledger: Ledger):
    stop = threading.Event()
    source = mint_token(settings, role="source-system", org=MATERNITY_ORG, service="maternity")
    gp = mint_token(settings, role="gp", org=GP_ORG)
    threads = [threading.Thread(target=_writer, args=(server.base, source, numbers, ledger, stop)) for _ in range(WRITERS)]
    threads.append(threading.Thread(target=_viewer, args=(server.base, gp, ledger, stop)))
    for t in threads:
        t.start()

    def finish():
        stop.set()
        for t in threads:
            t.join(timeout=90)

    return finish


def _wait_for(ledger: Ledger, acks: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while ledger.acks() < acks:
        assert time.monotonic() < deadline, f"{what}: {ledger.acks()} of {acks} bundles acknowledged in {seconds:.0f} s"
        time.sleep(0.05)


def test_sigkill_and_database_restart_under_load_lose_no_acknowledged_bundle(pg_url, tmp_path, key_path):
    settings = Settings(database_url=pg_url, auth_local_key_path=key_path)
    numbers = nhs_numbers(781_000)
    ledger = Ledger()

    # 1. the server SIGKILLed while eight clients post transactions
    server = _serve(pg_url, key_path, tmp_path / "serve-1.log")
    finish = _load(server, settings, numbers, ledger)
    try:
        _wait_for(ledger, 20, 120, "before the SIGKILL")
        server.kill()
        time.sleep(0.5)
    finally:
        finish()
        server.stop()
    killed_at = ledger.acks()

    # 2. a new server; the database restarted while the clients post again
    server = _serve(pg_url, key_path, tmp_path / "serve-2.log")
    finish = _load(server, settings, numbers, ledger)
    try:
        _wait_for(ledger, killed_at + 20, 120, "before the database restart")
        restart_postgres()
        restarted_at = ledger.acks()
        _wait_for(ledger, restarted_at + 20, 120, "after the database restart (the server must serve again)")
    finally:
        finish()
        server.stop()

    # every Bundle: 3 records (Patient, RelatedPerson, Consent) or none
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT code, count(DISTINCT res_type || '/' || res_id) FROM search_token "
                                  "WHERE param = 'identifier' AND (code LIKE 'p-999%' OR code LIKE 'rp-999%' OR code LIKE 'c-999%') "
                                  "GROUP BY code")).all()
    finally:
        engine.dispose()
    stored: dict[str, int] = {}
    for code, n in rows:
        assert n == 1, f"{code} stored {n} times"
        nhs = code.split("-", 1)[1]
        stored[nhs] = stored.get(nhs, 0) + 1
    partial = {nhs: n for nhs, n in stored.items() if n != 3}
    assert not partial, f"bundles stored in part: {partial}"
    lost = [nhs for nhs in ledger.acknowledged if nhs not in stored]
    assert not lost, f"{len(lost)} acknowledged bundles lost: {lost[:5]}"
    refused_but_stored = [nhs for nhs in ledger.refused if nhs in stored]
    assert not refused_but_stored, f"refused bundles stored: {refused_but_stored[:5]}"
    never_sent_but_stored = [nhs for nhs in ledger.never_sent if nhs in stored]
    assert not never_sent_but_stored
    assert set(stored) <= set(ledger.acknowledged) | set(ledger.in_flight) | set(ledger.unavailable), "a stored bundle no client sent"
    # the answers during the restart are ones a client can act on (503 and Retry-After), never a bare 500
    assert all(status == 409 for status in ledger.refused.values()), ledger.refused
    assert ledger.views > 0

    verify = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify", "--database-url", pg_url], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
