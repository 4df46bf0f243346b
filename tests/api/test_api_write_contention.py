"""Concurrent writers of the same records (issue 18, finding 6): batches that overlap in
opposite orders never answer 5xx; a transaction the database picks as a deadlock victim is run
again and succeeds."""
from __future__ import annotations

import json
import random
import threading

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import bundle, entry, nhs_numbers, patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
LOCAL = "https://test.example.nhs.uk/Id/patient"
FAMILIES = ["Abernethy", "Blencowe", "Carrodus", "Dimmock", "Etheridge", "Fairweather", "Gorringe", "Hebblethwaite"]


def test_overlapping_batches_in_opposite_orders_never_fail(live):
    numbers = nhs_numbers(760_100)
    people = [patient(f, "Robin", nhs=next(numbers), gender="male", birth=f"198{i}-03-0{i + 1}", local_id=f"wc-{i}")
              for i, f in enumerate(FAMILIES)]
    failures: list[str] = []

    def client_run(seed: int) -> None:
        rnd = random.Random(seed)
        with live.source(MATERNITY_ORG, "maternity") as src:
            for _ in range(6):
                order = people[:]
                rnd.shuffle(order)
                r = src.post("", content=json.dumps(bundle([entry(p) for p in order], kind="batch")), headers=FHIR_JSON)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                failures.extend(e["response"]["status"] for e in r.json()["entry"] if e["response"]["status"][:3] not in ("200", "201"))

    threads = [threading.Thread(target=client_run, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with live.source(MATERNITY_ORG, "maternity") as src:
        assert src.get("/Patient", params={"given": "Robin", "_count": 0}).json()["total"] == len(FAMILIES)


def test_a_deadlock_victim_is_retried(live, backend):
    """A real deadlock on uq_source_key: another connection holds one key of the entry and then
    asks for the other; PostgreSQL cancels the request's transaction (its deadlock_timeout is the
    shorter), and the server runs it again once the other connection is gone."""
    if backend != "postgres":
        pytest.skip("a deadlock between writers needs row locks: SQLite takes one write lock per transaction")
    engine = create_engine(live.settings.database_url)
    key = {"org": MATERNITY_ORG, "t": "Patient", "s": LOCAL}
    person = patient("Inchbald", "Jude", gender="female", birth="1984-06-07", local_id="wc-zz")
    person["identifier"].append({"system": LOCAL, "value": "wc-aa"})
    with engine.connect() as other:
        other.execute(text("SET deadlock_timeout = '20s'"))
        other.execute(text("INSERT INTO source_key (source_org, res_type, system, value, res_id) VALUES (:org, :t, :s, 'wc-zz', 'held')"), key)
        result: dict = {}

        def post() -> None:
            with live.source(MATERNITY_ORG, "maternity") as src:
                result["r"] = src.post("", content=json.dumps(bundle([entry(person)], kind="batch")), headers=FHIR_JSON)

        writer = threading.Thread(target=post)
        writer.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:  # a fresh statistics snapshot each time
            for _ in range(400):  # the request holds wc-aa and waits for wc-zz
                if watch.execute(text(waiting)).scalar():
                    break
                threading.Event().wait(0.02)
        other.execute(text("INSERT INTO source_key (source_org, res_type, system, value, res_id) VALUES (:org, :t, :s, 'wc-aa', 'held')"), key)
        other.rollback()
        writer.join(timeout=30)
    engine.dispose()
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"] == "201 Created"
