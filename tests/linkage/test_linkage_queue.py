"""Linkage after commit (settings ``linkage_mode`` queued, the default on PostgreSQL): the
queue is written in the write's transaction, drained right after it by the worker process
that ``familyview serve`` starts, and every reader of linkage links what is left before it
reads. Run on SQLite and PostgreSQL with the mode set to queued; the worker on PostgreSQL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from app.auth.tokens import mint_token
from app.db import Database
from app.ingest.service import EntryRequest, IngestService
from app.linkage.models import Link, QueuedRecord, QueuedRecordKey
from app.linkage.queue import _wake_address, drain, pending_for, settle, settle_records
from app.linkage.hooks import LinkageHook
from app.linkage.service import linked_person_id
from app.settings import PROJECT_ROOT, Settings
from tests.conftest import FHIR_JSON, GP_ORG, MATERNITY_ORG, PG_URL, free_port, make_settings, start_server
from tests.fhirdata import next_nhs
from tests.linkage.linkage_testkit import create, mother_and_partner, person, post_bundle
from tests.linkage.test_linkage_service import _source, _with_patient


@pytest.fixture
def queued(database_url, key_path) -> Settings:
    return make_settings(database_url, key_path, linkage_mode="queued")


def _queue(database) -> list[tuple[str, str]]:
    with database.session(readonly=True) as s:
        return [tuple(r) for r in s.execute(select(QueuedRecord.res_type, QueuedRecord.res_id).order_by(QueuedRecord.id))]


def pending_ids(session, refs) -> list[int]:
    return sorted(pending_for(session.connection(), refs) or [])


def _links(database) -> int:
    with database.session(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(Link))


def test_linkage_mode_auto_queues_on_postgresql_and_links_inline_on_sqlite(key_path):
    sqlite, pg = "sqlite:///x.db", "postgresql+psycopg://u@127.0.0.1/db"
    assert not make_settings(sqlite, key_path).linkage_queued
    assert make_settings(pg, key_path).linkage_queued
    assert make_settings(sqlite, key_path, linkage_mode="queued").linkage_queued
    assert not make_settings(pg, key_path, linkage_mode="inline").linkage_queued


def test_a_write_queues_its_people_in_its_own_transaction(database, queued):
    """The queue rows commit with the records and roll back with them; only Patients and
    RelatedPersons are queued; nothing is linked until the queue is drained."""
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), queued, [LinkageHook(queued)], base="http://test/fhir")
        mum = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Emma", "Smith", "1995-02-01", gender="female", nhs=next_nhs()), in_bundle=False))
        svc.write_one(EntryRequest(0, "POST", "Flag", {"resourceType": "Flag", "status": "active", "code": {"text": "Home visit: dog"},
                                                        "subject": {"reference": f"Patient/{mum.res_id}"}}, in_bundle=False))
    assert _queue(database) == [("Patient", mum.res_id)] and _links(database) == 0

    with pytest.raises(RuntimeError), database.session() as s:  # the write's transaction fails after the hook ran
        svc = IngestService(s, _source(GP_ORG, "general-practice"), queued, [LinkageHook(queued)], base="http://test/fhir")
        svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Ann", "Jones", "1990-01-01", nhs=next_nhs()), in_bundle=False))
        raise RuntimeError("rolled back")
    assert _queue(database) == [("Patient", mum.res_id)]

    assert drain(database, queued, wait=True) == 1
    assert _queue(database) == [] and _links(database) == 1


def test_a_record_written_twice_before_the_drain_is_linked_once_as_it_is_now(database, queued):
    body = _with_patient(person("RelatedPerson", "Jon", "Smyth", "1998-04-03", postcode="LS6 2AB"))
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), queued, [LinkageHook(queued)], base="http://test/fhir")
        ref = svc.write_one(EntryRequest(0, "POST", "RelatedPerson", body, in_bundle=False))
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), queued, [LinkageHook(queued)], base="http://test/fhir")
        svc.write_one(EntryRequest(0, "PUT", f"RelatedPerson/{ref.res_id}", dict(body, id=ref.res_id, birthDate="1998-04-13"), in_bundle=False))
    assert len(_queue(database)) == 2
    assert drain(database, queued, wait=False) == 2
    with database.session(readonly=True) as s:
        link = s.get(Link, ("RelatedPerson", ref.res_id))
        assert '"d":"1998-04-13"' in link.features  # the stored version, not the first one
    assert _queue(database) == [] and _links(database) == 1


def test_every_reader_of_linkage_links_what_is_queued_first(queued):
    """No worker runs here (the app is served in-process): FHIR Person, the review queue and
    the family view each link what is queued before they read, so none sees a record
    unlinked (the family view, on PostgreSQL, only the records that could join the family); an anonymous request is refused before anything is linked. (The family
    scenarios run the view's content on PostgreSQL, where queued is the default.)"""
    base, app, _, stop = start_server(queued)
    db = app.state.db

    def client(role, org, service=None):
        token = mint_token(queued, role=role, org=org, service=service)
        return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    maternity = client("source-system", MATERNITY_ORG, "maternity")
    maternity.base_url = base + "/fhir"
    gp = client("source-system", GP_ORG, "general-practice")
    gp.base_url = base + "/fhir"
    admin, hv = client("admin", MATERNITY_ORG), client("health-visitor", "RHV01")
    try:
        mum, rp = post_bundle(maternity, mother_and_partner(person("RelatedPerson", "Jon", "Smyth", "1998-04-03", postcode="LS6 2AB")))
        gp_ref = create(gp, person("Patient", "Jonathan", "Smith", "1998-04-03", nhs=next_nhs(), postcode="LS6 2AB"))
        assert len(_queue(db)) == 3 and _links(db) == 0

        r = admin.get("/fhir/Person", params={"link": rp})
        assert r.status_code == 200, r.text
        [found] = [e["resource"] for e in r.json()["entry"]]
        assert {link["target"]["reference"] for link in found["link"]} == {rp, gp_ref}
        assert _queue(db) == []

        create(maternity, _with_patient(person("RelatedPerson", "Jonny", "Smith", "1998-04-03", postcode="LS6 2AB")))
        assert len(_queue(db)) == 1
        assert admin.get("/linkage/candidates").status_code == 200
        assert _queue(db) == []

        # the family view settles what could join her family (on PostgreSQL nothing else: it
        # never waits for a bulk load of others; SQLite's reader settles the whole queue)
        unrelated = create(gp, person("Patient", "Tom", "Brown", "1989-01-01", nhs=next_nhs(), postcode="BD1 1AA"))
        her_gp_record = create(gp, person("Patient", "Emma", "Taylor", "1999-09-09", gender="female", postcode="LS6 2AB"))
        r = hv.get(f"/fhir/{mum}/$family-view", params={"purpose": "direct-care"})
        assert r.status_code == 403, r.text  # no relationship with her: refused, but only after linking
        with db.session(readonly=True) as s:
            assert linked_person_id(s, *her_gp_record.split("/")) == linked_person_id(s, *mum.split("/")) is not None
        assert _queue(db) == ([tuple(unrelated.split("/"))] if db.dialect == "postgresql" else [])
        settle(db, queued)

        create(gp, person("Patient", "Zoe", "Smith", "1999-01-02", nhs=next_nhs()))
        assert httpx.get(f"{base}/fhir/Person", params={"link": rp}).status_code == 401
        assert len(_queue(db)) == 1
    finally:
        for c in (maternity, gp, admin, hv):
            c.close()
        stop()


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_reader_waits_for_the_batch_another_drainer_holds(database, queued):
    """settle() returns only when everything queued before it is linked: entries a worker's
    open transaction holds are waited for, not skipped."""
    with database.session() as s:
        svc = IngestService(s, _source(GP_ORG, "general-practice"), queued, [LinkageHook(queued)], base="http://test/fhir")
        ref = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Ann", "Jones", "1990-01-01", nhs=next_nhs()), in_bundle=False))
    holder = create_engine(queued.database_url)
    conn = holder.connect()
    conn.execute(text("SELECT id FROM linkage_queue FOR UPDATE"))  # a drainer's open batch
    done = threading.Event()
    threading.Thread(target=lambda: (settle(database, queued), done.set()), daemon=True).start()
    try:
        assert not done.wait(0.5), "settle() skipped the held batch"
        assert drain(database, queued, wait=False) == 0  # the worker's way: skip what is held
    finally:
        conn.rollback()  # the other drainer gave up: settle links the record itself
        conn.close()
        holder.dispose()
    assert done.wait(10)
    with database.session(readonly=True) as s:
        assert linked_person_id(s, "Patient", ref.res_id) is not None
    assert _queue(database) == []


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL")
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_family_reader_waits_for_its_familys_linking_not_for_a_bulk_load_of_others(database, queued):
    """settle_records (the family view's settle) follows the blocking keys: a queued record
    sharing a key with the family's records, or with another queued record that does
    (transitively), is linked first, and waited for when a worker holds it; a batch of
    unrelated records a worker holds is neither waited for nor linked."""
    def write(body, org=GP_ORG, service="general-practice"):
        with database.session() as s:
            svc = IngestService(s, _source(org, service), queued, [LinkageHook(queued)], base="http://test/fhir")
            return ("Patient", svc.write_one(EntryRequest(0, "POST", "Patient", body, in_bundle=False)).res_id)

    mum = write(person("Patient", "Emma", "Taylor", "1999-09-09", gender="female", nhs=next_nhs(), postcode="LS6 2AB"), MATERNITY_ORG, "maternity")
    settle(database, queued)
    bulk = [write(person("Patient", "Robyn", "Nearduplicate", "2026-10-01", gender="female", nhs=next_nhs(), postcode="LS1 4AP")) for _ in range(5)]
    gp_id = ("https://fhir.gp.example.nhs.uk/Id/local", uuid.uuid4().hex[:12])
    her_gp = write(person("Patient", "Emma", "Taylor", "1999-09-09", gender="female", postcode="LS6 2AB", local=gp_id))  # shares her keys
    # no key shared with her, only the GP's local identifier with her GP record: settled too
    via_gp = write(person("Patient", "Emmy", "Jones", "1980-01-01", gender="female", postcode="M1 1AA", local=gp_id), "RHV01", "health-visiting")
    with database.session(readonly=True) as s:
        queued_ids = dict((r.res_id, r.id) for r in s.execute(select(QueuedRecord.id, QueuedRecord.res_id)))
        assert pending_ids(s, [mum]) == sorted(queued_ids[r[1]] for r in (her_gp, via_gp))
        assert pending_ids(s, [via_gp]) == pending_ids(s, [mum])
        assert set(pending_ids(s, bulk[:1])) == {queued_ids[i] for _, i in bulk}  # near-duplicates share keys

    holder = create_engine(queued.database_url)
    conn = holder.connect()
    bulk_ids = [r[0] for r in conn.execute(text("SELECT id FROM linkage_queue WHERE res_id = ANY(:ids) FOR UPDATE"), {"ids": [i for _, i in bulk]})]
    try:
        t0 = time.perf_counter()
        settle_records(database, queued, [mum])  # a worker holds the bulk batch: not waited for
        assert time.perf_counter() - t0 < 5
        with database.session(readonly=True) as s:
            assert linked_person_id(s, *her_gp) == linked_person_id(s, *mum) is not None
            assert linked_person_id(s, *via_gp) is not None
            assert all(linked_person_id(s, *b) is None for b in bulk)
    finally:
        conn.rollback()
        conn.close()
        holder.dispose()
    assert sorted(_queue(database)) == sorted(bulk) and len(bulk_ids) == 5
    with database.session() as s:  # their keys stay until they are linked, then go with them
        assert s.scalar(select(func.count()).select_from(QueuedRecordKey).where(QueuedRecordKey.res_id.in_([i for _, i in bulk])))
    settle(database, queued)
    with database.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(QueuedRecordKey)) == 0


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL")
@pytest.mark.serial  # it times the worker's linking: alone, not beside the parallel run
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_serve_starts_a_worker_that_links_right_after_commit_and_is_restarted(database, settings, key_path):
    """`familyview serve` on PostgreSQL: no reader calls, yet the queue empties within moments
    of each write; when the worker process dies, the server starts another; when the server
    stops, so does its worker."""
    port = free_port()
    env = {**os.environ, "FAMILYVIEW_DATABASE_URL": settings.database_url, "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key_path),
           "FAMILYVIEW_LINKAGE_WORKER_POLL_SECONDS": "30"}  # so only a commit's NOTIFY can wake it this fast
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--dev-auth", "--port", str(port)], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    gp = {"Authorization": "Bearer " + mint_token(settings, role="source-system", org=GP_ORG, service="general-practice"), **FHIR_JSON}

    def post_and_wait_linked() -> float:
        before = _links(database)
        r = httpx.post(f"{base}/fhir/Patient", json=person("Patient", "Ann", "Jones", "1990-01-01", nhs=next_nhs()), headers=gp, timeout=30)
        assert r.status_code == 201, r.text
        t0 = time.monotonic()
        while _links(database) == before or _queue(database):
            assert time.monotonic() - t0 < 15, "the worker did not link the record"
            time.sleep(0.02)
        return time.monotonic() - t0

    def worker_pids() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "linkage-worker"], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/fhir/metadata").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert post_and_wait_linked() < 5
        [pid] = worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while worker_pids() in ([], [pid]):
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        assert post_and_wait_linked() < 5
        [pid] = worker_pids()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    deadline = time.monotonic() + 10  # the server's worker goes with it, however the server ended
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.1)


@pytest.mark.serial  # a worker process beside the writes: alone, not beside the parallel run
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the SQLite wake-up is a Linux abstract socket")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_a_queued_write_wakes_the_worker_at_commit(database, queued):
    """SQLite has no NOTIFY: a write that queued records wakes the worker after its commit (a
    datagram), so with linkage queued on SQLite the worker links at once, not at its next poll."""
    env = {**os.environ, **{f"FAMILYVIEW_{k.upper()}": str(v) for k, v in (("database_url", queued.database_url),
           ("linkage_mode", "queued"), ("auth_local_key_path", queued.auth_local_key_path))},
           "FAMILYVIEW_LINKAGE_WORKER_POLL_SECONDS": "30"}  # so only the commit's wake-up can wake it this fast
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "linkage-worker"], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = "@" + _wake_address(make_url(queued.database_url).database)[1:]
        deadline = time.monotonic() + 60
        while address not in open("/proc/net/unix").read():  # the worker is up and listening
            assert worker.poll() is None and time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        time.sleep(1)  # its first drain (of an empty queue) done, it waits
        before = _links(database)
        with database.session() as s:
            svc = IngestService(s, _source(GP_ORG, "general-practice"), queued, [LinkageHook(queued)], base="http://test/fhir")
            svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Ann", "Jones", "1990-01-01", nhs=next_nhs()), in_bundle=False))
        t0 = time.monotonic()
        while _links(database) == before or _queue(database):
            assert time.monotonic() - t0 < 10, "the worker was not woken by the commit"
            time.sleep(0.02)
    finally:
        worker.terminate()
        worker.wait(timeout=20)


def test_a_database_reopened_after_a_stop_still_links_what_was_queued(database_url, queued):
    """The queue is durable: entries left by a process that stopped are linked by the next drainer."""
    db = Database(database_url)
    with db.session() as s:
        svc = IngestService(s, _source(GP_ORG, "general-practice"), queued, [LinkageHook(queued)], base="http://test/fhir")
        ref = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Ann", "Jones", "1990-01-01", nhs=next_nhs()), in_bundle=False))
    db.dispose()
    again = Database(database_url)
    try:
        settle(again, queued)
        with again.session(readonly=True) as s:
            assert linked_person_id(s, "Patient", ref.res_id) is not None
    finally:
        again.dispose()


def test_migration_0008_queues_records_linked_before_the_multiple_birth_rules(database, database_url, settings):
    """A database whose twins were linked as one person before linkage read "Twin 1"/"Twin 2":
    upgrading queues them (and no one else), and the drain parts them, with a trace."""
    import json

    from app.linkage.models import LinkageEvent
    from app.migrate import downgrade, upgrade

    refs = {}
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), settings, [LinkageHook(settings)], base="http://test/fhir")
        for given in ("Twin 1", "Twin 2"):
            refs[given] = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", given, "Brown", "2026-10-01", postcode="LS6 2AB"), in_bundle=False))
        refs["John"] = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "John", "Smith", "1990-01-01", postcode="LS6 2AB"), in_bundle=False))
    drain(database, settings, wait=True)
    with database.session(readonly=True) as s:
        t1, t2 = (linked_person_id(s, "Patient", refs[g].res_id) for g in ("Twin 1", "Twin 2"))
    assert t1 != t2

    # the state the earlier rules left: one person, features without the birth order
    with database.session() as s:
        for g in ("Twin 1", "Twin 2"):
            link = s.get(Link, ("Patient", refs[g].res_id))
            features = json.loads(link.features)
            assert features.pop("bo") in (1, 2) and features.pop("mb") is True
            link.features = json.dumps(features, separators=(",", ":"))
            link.person_id = t1
    downgrade(database_url, "0007")
    upgrade(database_url, "0008")
    assert sorted(_queue(database)) == sorted(("Patient", refs[g].res_id) for g in ("Twin 1", "Twin 2"))
    upgrade(database_url)

    drain(database, settings, wait=True)
    with database.session(readonly=True) as s:
        assert linked_person_id(s, "Patient", refs["Twin 1"].res_id) != linked_person_id(s, "Patient", refs["Twin 2"].res_id)
        moved = s.scalars(select(LinkageEvent.action).where(LinkageEvent.from_person == t1)).all()
    assert moved and set(moved) <= {"split", "move"}
    assert _queue(database) == []


def test_migration_0010_parts_a_mother_and_baby_linked_as_one_household(database, database_url, settings):
    """A database where "Baby Fedona" and her mother were linked as one person because their
    shared home was counted twice: upgrading queues that person's records (and no one
    else's), and the drain parts them, with a trace."""
    from app.linkage.models import LinkageEvent
    from app.migrate import downgrade, upgrade

    home = {"address": [{"use": "home", "line": ["12 Fedona Yard"], "postalCode": "YO62 5LB"}]}
    with database.session() as s:
        svc = IngestService(s, _source(MATERNITY_ORG, "maternity"), settings, [LinkageHook(settings)], base="http://test/fhir")
        baby = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Baby", "Fedona", "2026-10-20", gender="female", nhs=next_nhs(), **home), in_bundle=False))
        mother = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "Emma", "Fedona", "1995-02-11", gender="female", **home), in_bundle=False))
        john = svc.write_one(EntryRequest(0, "POST", "Patient", person("Patient", "John", "Smith", "1990-01-01", postcode="LS6 2AB"), in_bundle=False))
    drain(database, settings, wait=True)
    with database.session(readonly=True) as s:
        b, m = linked_person_id(s, "Patient", baby.res_id), linked_person_id(s, "Patient", mother.res_id)
    assert b != m

    with database.session() as s:  # the state the independent count left: one person
        s.get(Link, ("Patient", mother.res_id)).person_id = b
    downgrade(database_url, "0009")
    upgrade(database_url)
    assert sorted(_queue(database)) == sorted([("Patient", baby.res_id), ("Patient", mother.res_id)])

    drain(database, settings, wait=True)
    with database.session(readonly=True) as s:
        assert linked_person_id(s, "Patient", baby.res_id) != linked_person_id(s, "Patient", mother.res_id)
        moved = s.scalars(select(LinkageEvent.action).where(LinkageEvent.from_person == b)).all()
        assert linked_person_id(s, "Patient", john.res_id) is not None
    assert moved and set(moved) <= {"split", "move"}
    assert _queue(database) == []
