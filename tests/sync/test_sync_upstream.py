"""`familyview sync` against a real upstream FHIR server (a second familyview over HTTP):
counts, references resolved, idempotence via _history, incremental cursor, interrupted runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.fhir.models import StoredResource
from app.linkage.models import Link, QueuedRecord
from app.sync.models import SyncCursor, SyncLink
from tests.conftest import MATERNITY_ORG
from tests.fhirdata import bundle, entry, family_bundle, next_nhs, patient
from tests.sync.sync_support import history_len, post_bundle, search_all, syncer_for, upstream_server

ROOT = Path(__file__).resolve().parents[2]
SYNC_TYPES = ("Patient", "RelatedPerson", "Consent", "Observation")


def _observation(subject_ref: str, performer_ref: str | None, n: int) -> dict:
    obs = {
        "resourceType": "Observation",
        "identifier": [{"system": "https://test.example.nhs.uk/Id/observation", "value": f"obs-{n}-{next_nhs()}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"}]},
        "subject": {"reference": subject_ref},
        "valueQuantity": {"value": 3.2 + n / 10, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }
    if performer_ref:
        obs["performer"] = [{"reference": performer_ref}]
    return obs


def seed(upstream, families: int, *, with_org: bool = True) -> dict[str, int]:
    """Families posted to the upstream as transaction Bundles by the maternity source."""
    src = upstream.source(MATERNITY_ORG, "maternity")
    org_ref = None
    if with_org:
        org = {"resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RMT01"}], "name": "Riverside Maternity Unit"}
        out = post_bundle(src, bundle([entry(org)]))
        org_ref = out["entry"][0]["response"]["location"].split("/_history")[0]
    for i in range(families):
        b = family_bundle(suffix=str(i))
        b["entry"].append(entry(_observation(b["entry"][0]["fullUrl"], org_ref, i)))
        post_bundle(src, b)
    src.close()
    return {"Patient": families, "RelatedPerson": families, "Consent": families, "Observation": families, "Organization": 1 if with_org else 0}


def _run(live, upstream, **kw):
    token = upstream.token("source-system", MATERNITY_ORG, "maternity")
    syncer = syncer_for(live, upstream.fhir, token, MATERNITY_ORG, "maternity", **{"page_size": 7, **kw})
    try:
        return syncer, syncer.run(types=SYNC_TYPES)
    finally:
        syncer.client.close()


def test_sync_resolves_references_and_a_second_run_changes_nothing(live, upstream):
    expected = seed(upstream, 12)
    syncer, first = _run(live, upstream)
    assert first.ok, first.render()
    for t in SYNC_TYPES:
        assert first.of(t).fetched == expected[t]
        assert first.of(t).created == expected[t], first.render()
    assert first.of("Organization").created == 1  # referenced, so fetched and synced first

    local = live.source(MATERNITY_ORG, "maternity")
    patients = {p["id"]: p for p in search_all(local, "Patient")}
    assert len(patients) == 12
    for rp in search_all(local, "RelatedPerson"):
        assert rp["patient"]["reference"].removeprefix("Patient/") in patients
    orgs = search_all(local, "Organization")
    assert len(orgs) == 1
    for obs in search_all(local, "Observation"):
        assert obs["subject"]["reference"].removeprefix("Patient/") in patients
        assert obs["performer"][0]["reference"] == f"Organization/{orgs[0]['id']}"
        assert obs["meta"]["source"].startswith(upstream.fhir + "/Observation/")

    _, second = _run(live, upstream)
    assert second.ok, second.render()
    assert second.total("created") == 0 and second.total("updated") == 0, second.render()
    for t in SYNC_TYPES:
        for r in search_all(local, t):
            assert history_len(local, t, r["id"]) == 1  # no new version
    assert len(search_all(local, "Patient")) == 12


def test_incremental_run_takes_only_what_changed(live, upstream):
    seed(upstream, 5, with_org=False)
    _, first = _run(live, upstream)
    assert first.ok and first.total("created") == 20
    src = upstream.source(MATERNITY_ORG, "maternity")
    pats = search_all(src, "Patient")
    changed = dict(pats[2])
    changed["name"] = [{"family": "Renamed", "given": ["Amy"]}]
    assert src.put(f"Patient/{changed['id']}", json=changed, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    nhs = next_nhs()
    assert src.post("Patient", json=patient("Newcomer", "Nia", nhs=nhs), headers={"Content-Type": "application/fhir+json"}).status_code == 201

    _, second = _run(live, upstream)
    assert second.ok, second.render()
    assert second.of("Patient").fetched <= 3  # the two changes, and at most the boundary record again
    assert second.of("Patient").created == 1 and second.of("Patient").updated == 1
    assert second.of("RelatedPerson").fetched <= 1 and second.of("RelatedPerson").written == 0
    local = live.source(MATERNITY_ORG, "maternity")
    renamed = search_all(local, "Patient", family="renamed")
    assert len(renamed) == 1 and history_len(local, "Patient", renamed[0]["id"]) == 2
    assert len(search_all(local, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}")) == 1


def _assert_complete_and_unduplicated(live, upstream, expected):
    local = live.source(MATERNITY_ORG, "maternity")
    upstream_src = upstream.source(MATERNITY_ORG, "maternity")
    for t in SYNC_TYPES:
        mine = search_all(local, t)
        theirs = search_all(upstream_src, t)
        assert len(mine) == len(theirs) == expected[t], t
        assert sorted(r["identifier"][0]["value"] for r in mine) == sorted(r["identifier"][0]["value"] for r in theirs)
        assert {r["meta"]["versionId"] for r in mine} == {"1"}  # nothing written twice
    with live.app.state.db.session(readonly=True) as s:
        links = s.scalar(select(func.count()).select_from(SyncLink).where(SyncLink.res_type.in_(SYNC_TYPES)))
        assert links == sum(expected[t] for t in SYNC_TYPES)
        assert all(c.next_url is None for c in s.scalars(select(SyncCursor)))


def test_interrupted_sync_resumes_from_its_cursor(live, upstream):
    expected = seed(upstream, 20, with_org=False)

    class Killed(Exception):
        pass

    def die(res_type, pages):
        if res_type == "RelatedPerson" and pages == 2:
            raise Killed()

    with pytest.raises(Killed):
        _run(live, upstream, after_page=die)
    with live.app.state.db.session(readonly=True) as s:
        cur = s.get(SyncCursor, (1, "RelatedPerson"))
        assert cur.next_url and cur.pages == 2  # the pass in progress is on record
    _, resumed = _run(live, upstream)
    assert resumed.ok, resumed.render()
    assert "RelatedPerson" in resumed.resumed
    assert resumed.of("RelatedPerson").fetched == 20 - 14  # only the pages not yet committed
    assert resumed.of("Patient").written == 0
    _assert_complete_and_unduplicated(live, upstream, expected)


def test_sync_process_killed_midway_resumes_without_loss_or_duplicates(live, backend, tmp_path, sqlite_template, pg_template, key_path):
    """The acceptance test: a real `familyview sync` process, SIGKILLed after some pages."""
    with upstream_server(backend, tmp_path, sqlite_template, pg_template, key_path, slow=0.15) as upstream:
        expected = seed(upstream, 15, with_org=False)
        env = {
            **os.environ,
            "FAMILYVIEW_DATABASE_URL": live.settings.database_url,
            "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key_path),
            "FAMILYVIEW_SYNC_BEARER_TOKEN": upstream.token("source-system", MATERNITY_ORG, "maternity"),
            "FAMILYVIEW_SYNC_BACKOFF_SECONDS": "0.05",
        }
        cmd = [sys.executable, "-m", "app.cli", "sync", "--from", upstream.fhir, "--source-org", MATERNITY_ORG,
               "--service", "maternity", "--types", ",".join(SYNC_TYPES), "--page-size", "3"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pages = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("sync RelatedPerson: page"):
                pages += 1
                if pages == 2:
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the sync finished before it could be killed"
        with live.app.state.db.session(readonly=True) as s:
            cur = s.scalar(select(SyncCursor).where(SyncCursor.res_type == "RelatedPerson"))
            assert cur is not None and cur.next_url  # killed mid-pass
        local = live.source(MATERNITY_ORG, "maternity")
        assert len(search_all(local, "Patient")) == 15
        assert 0 < len(search_all(local, "RelatedPerson")) < 15

        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "resuming the interrupted pass" in done.stderr
        assert "RelatedPerson" in done.stdout and "total" in done.stdout
        _assert_complete_and_unduplicated(live, upstream, expected)
        with live.app.state.db.session(readonly=True) as s:  # and it ends with every person it brought linked
            assert s.scalar(select(func.count()).select_from(QueuedRecord)) == 0
            people = select(func.count()).select_from(StoredResource).where(StoredResource.res_type.in_(("Patient", "RelatedPerson")))
            assert s.scalar(select(func.count()).select_from(Link)) == s.scalar(people) == 15 + 15
