"""Against the HAPI FHIR JPA server itself, on both familyview databases: a `familyview sync`
process killed midway resumes from HAPI's paging link with nothing lost or written twice, and an
R4 rest-hook Subscription created on HAPI brings a changed record to familyview within a bounded
time, with nothing lost while familyview is down and HAPI retries its deliveries."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from app.sync.models import SyncCursor, SyncLink
from tests.conftest import MATERNITY_ORG, LiveServer, free_port, make_settings
from tests.fhirdata import family_bundle, nhs_numbers, patient
from tests.hapi.conftest import TAG_SYSTEM, hapi_headers, need_hapi
from tests.sync.sync_support import history_len, search_all

ROOT = Path(__file__).resolve().parents[2]
_NHS = nhs_numbers(700000)  # apart from the scenarios' (and tests.fhirdata's) numbers: HAPI holds them all


def next_nhs() -> str:
    return next(_NHS)
NHS = "https://fhir.nhs.uk/Id/nhs-number"
SECRET = "hook-secret-for-the-hapi-suite"
HOOK_HEADER = "X-Familyview-Hook-Secret"


def _tag_all(bundle: dict, code: str) -> dict:
    for e in bundle["entry"]:
        e["resource"].setdefault("meta", {}).setdefault("tag", []).append({"system": TAG_SYSTEM, "code": code})
    return bundle


def _post_hapi(hapi: str, body: dict, path: str = "") -> dict:
    r = httpx.post(f"{hapi}/{path}".rstrip("/"), json=body, headers=hapi_headers(), timeout=60)
    assert r.status_code in (200, 201), r.text[:1000]
    return r.json()


# ------------------------------------------------------------------ killed sync, resumed

def test_sync_from_hapi_killed_midway_resumes_without_loss_or_duplicates(live, key_path):
    hapi = need_hapi()
    tag = f"killed-{uuid.uuid4().hex[:10]}"
    families = 24
    for i in range(families):
        _post_hapi(hapi, _tag_all(family_bundle(next_nhs(), suffix=str(i)), tag))
    env = {
        **os.environ,
        "FAMILYVIEW_DATABASE_URL": live.settings.database_url,
        "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key_path),
        "FAMILYVIEW_SYNC_BACKOFF_SECONDS": "0.05",
    }
    cmd = [sys.executable, "-m", "app.cli", "sync", "--from", hapi, "--source-org", MATERNITY_ORG, "--service", "maternity",
           "--types", "Patient,RelatedPerson,Consent", "--page-size", "2", "--param", f"_tag={TAG_SYSTEM}|{tag}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pages, seen = 0, []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("sync RelatedPerson: page"):
            pages += 1
            if pages == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the sync finished before it could be killed:\n" + "".join(seen[-20:])
    with live.app.state.db.session(readonly=True) as s:
        cur = s.scalar(select(SyncCursor).where(SyncCursor.res_type == "RelatedPerson"))
        assert cur is not None and cur.next_url and cur.next_url.startswith(hapi)  # killed mid-pass, on HAPI's paging link
    local = live.source(MATERNITY_ORG, "maternity")
    assert len(search_all(local, "Patient")) == families
    assert 0 < len(search_all(local, "RelatedPerson")) < families

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming the interrupted pass" in done.stderr, done.stderr[-2000:]
    for res_type in ("Patient", "RelatedPerson", "Consent"):
        records = search_all(local, res_type)
        assert len(records) == families, res_type
        assert len({r["meta"]["source"] for r in records}) == families  # each HAPI record once
        for r in records[:5]:
            assert history_len(local, res_type, r["id"]) == 1
    with live.app.state.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(SyncLink)) >= 3 * families
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    for res_type in ("Patient", "RelatedPerson", "Consent"):
        assert len(search_all(local, res_type)) == families


# ------------------------------------------------------------------ rest-hook Subscription

class _Restartable:
    """A familyview on a fixed port that can be stopped (connection refused) and started again."""

    def __init__(self, settings):
        self.settings, self.port = settings, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = self.thread = self.app = None

    def start(self) -> LiveServer:
        from app.main import create_app

        self.app = create_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "familyview did not start"
            time.sleep(0.02)
        return LiveServer(self.base_url, self.settings, self.app, self.server)

    def stop(self) -> None:
        if self.server:
            self.server.should_exit = True
            self.thread.join(timeout=15)
            self.app.state.db.dispose()
            self.server = None


def _wait_for(what, predicate, timeout: float) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return time.time() - start
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout}s")


def _local_patient(live: LiveServer, nhs: str) -> dict | None:
    with live.source(MATERNITY_ORG, "maternity") as c:
        found = search_all(c, "Patient", identifier=f"{NHS}|{nhs}")
    return found[0] if found else None


# alone, after the parallel run: HAPI retries a failed delivery a bounded number of times, so
# familyview must be back within that window, which a loaded machine (the parallel run) can miss
@pytest.mark.serial
@pytest.mark.parametrize("payload", ["application/fhir+json", None], ids=["payload", "empty"])
def test_rest_hook_subscription_on_hapi_reaches_familyview_and_survives_downtime(database_url, key_path, payload):
    hapi = need_hapi()
    tag = f"hook-{uuid.uuid4().hex[:10]}"
    settings = make_settings(
        database_url, key_path, sync_rest_hook_header=HOOK_HEADER, sync_rest_hook_secret=SECRET,
        sync_upstreams={"hapi": {"base_url": hapi, "source_org": MATERNITY_ORG, "service": "maternity",
                                 "params": f"_tag={TAG_SYSTEM}|{tag}"}},
    )
    fv = _Restartable(settings)
    live = fv.start()
    sub_id = None
    try:
        channel = {"type": "rest-hook", "endpoint": f"{fv.base_url}/subscriptions/rest-hook/hapi",
                   "header": [f"{HOOK_HEADER}: {SECRET}"]}
        if payload:
            channel["payload"] = payload
        sub = _post_hapi(hapi, {"resourceType": "Subscription", "status": "requested", "reason": "familyview sync (HAPI suite)",
                                "criteria": f"Patient?_tag={TAG_SYSTEM}|{tag}", "channel": channel}, "Subscription")
        sub_id = sub["id"]
        _wait_for("the Subscription to become active on HAPI",
                  lambda: httpx.get(f"{hapi}/Subscription/{sub_id}", headers=hapi_headers()).json().get("status") == "active", 60)

        # 1. a record created in HAPI reaches familyview
        nhs = next_nhs()
        p = patient("Hookham", "Ada", nhs=nhs)
        p["meta"] = {"tag": [{"system": TAG_SYSTEM, "code": tag}]}
        created = _post_hapi(hapi, p, "Patient")
        took = _wait_for("the new Patient to reach familyview", lambda: _local_patient(live, nhs) is not None, 60)
        local = _local_patient(live, nhs)
        assert local["meta"]["source"] == f"{hapi}/Patient/{created['id']}"
        print(f"rest-hook ({payload or 'empty'}): a Patient created on HAPI was in familyview after {took:.1f}s")

        # 2. a change made while familyview is down arrives once it is back, by HAPI's retries
        fv.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{fv.base_url}/fhir/metadata", timeout=2)
        changed = dict(created, name=[{"family": "Hookham-Reed", "given": ["Ada"]}])
        r = httpx.put(f"{hapi}/Patient/{created['id']}", json=changed, headers=hapi_headers(), timeout=30)
        assert r.status_code == 200, r.text[:500]
        nhs2 = next_nhs()
        p2 = patient("Downtime", "Dora", nhs=nhs2)
        p2["meta"] = {"tag": [{"system": TAG_SYSTEM, "code": tag}]}
        _post_hapi(hapi, p2, "Patient")
        time.sleep(5)  # HAPI's deliveries fail (connection refused) and are retried
        live = fv.start()
        took = _wait_for("the changes made while familyview was down", lambda: (
            (_local_patient(live, nhs) or {}).get("name", [{}])[0].get("family") == "Hookham-Reed"
            and _local_patient(live, nhs2) is not None), 120)
        print(f"rest-hook ({payload or 'empty'}): changes made during 5s of downtime arrived {took:.1f}s after familyview came back")
        with live.source(MATERNITY_ORG, "maternity") as c:
            assert len(search_all(c, "Patient")) == 2  # nothing lost, nothing twice
            assert history_len(c, "Patient", _local_patient(live, nhs)["id"]) == 2
    finally:
        if sub_id:
            httpx.delete(f"{hapi}/Subscription/{sub_id}", headers=hapi_headers(), timeout=30)
        fv.stop()
