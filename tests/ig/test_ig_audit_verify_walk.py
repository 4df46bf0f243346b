"""The verify walk's shortcuts (issue 17's benchmark: a million events) must judge exactly as
the full parse does: the body's instant against the stored one, and a SQLite instant as the
chain hashes it."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from app.audit.service import _body_problem, _recorded_text, _sqlite_recorded, columns_from_body


def _row(body: dict, recorded: str) -> tuple:
    c = columns_from_body(body)
    return (1, body["id"], recorded, c.type_code, c.subtype_code, c.action, c.outcome, c.purpose_of_use, c.agent_sub, c.agent_org,
            c.agent_role, c.review_required, c.policy_version, b"", "0" * 64, "0" * 64, 2)


STORED = "2026-12-07T02:46:53.123000Z"


@pytest.mark.parametrize("said, problem", [
    ("2026-12-07T02:46:53.123Z", None),          # as balp writes it
    ("2026-12-07T02:46:53.123000Z", None),       # the same instant, other precision
    ("2026-12-07T03:46:53.123+01:00", None),     # the same instant, another offset
    ("2026-12-07T02:46:53.123+01", "recorded"),  # 24 characters, but an hour earlier
    ("2026-12-07T02:46:53.124Z", "recorded"),
    ("not a date at all, 24 ch", "recorded"),
])
def test_the_bodys_instant_is_compared_as_an_instant(said, problem):
    body = {"id": "e1", "recorded": said, "action": "R", "outcome": "0", "type": {"code": "rest"}}
    assert _body_problem(_row(body, STORED), body, STORED) == problem


def test_a_column_that_disagrees_is_named():
    body = {"id": "e1", "recorded": "2026-12-07T02:46:53.123Z", "action": "R", "outcome": "0", "type": {"code": "rest"}}
    row = list(_row(body, STORED))
    row[5] = "C"  # action
    assert _body_problem(tuple(row), body, STORED) == "action"
    assert _body_problem(_row(body, STORED), {**body, "id": "e2"}, STORED) == "event_id"


@pytest.mark.parametrize("stored", ["2026-12-07 02:46:53.123456", "2026-12-07 02:46:53", "2026-12-07T02:46:53.123456+00:00",
                                    datetime(2026, 12, 7, 2, 46, 53, 123456)])
def test_a_sqlite_instant_reads_as_the_chain_hashes_it(stored):
    expected = "2026-12-07T02:46:53.123456Z" if "." in str(stored) else "2026-12-07T02:46:53.000000Z"
    assert _sqlite_recorded(stored) == expected == _recorded_text(datetime.fromisoformat(str(stored)).replace(tzinfo=timezone.utc))


def test_what_is_not_an_instant_is_none():
    assert _sqlite_recorded("2026-13-07 02:46:53.1234567") is None and _sqlite_recorded("yesterday") is None
    assert _sqlite_recorded("٢٠٢٦-12-07 02:46:53.123456") is None  # digits, but not ASCII ones: not taken by the fast path


# ---------------------------------------------------------------- the fast walk (issue 17: verify at 100,000 events/s)

from sqlalchemy import create_engine, text  # noqa: E402

from app.audit import balp  # noqa: E402
from app.audit.service import _EXT_IG_REVIEW, _EXT_POLICY_VERSION, _URLS, index_from_body, verify  # noqa: E402
from app.audit.walk import BODY, typed_facts  # noqa: E402
from app.auth.tokens import Principal  # noqa: E402
from tests.family.test_family_audit import _as_attacker  # noqa: E402

_SUBTYPE = "https://familyview.example.nhs.uk/fhir/CodeSystem/audit-subtype"


def _dict_facts(body: dict) -> tuple:
    c = columns_from_body(body)
    columns = (c.type_code, c.subtype_code, c.action, c.outcome, c.purpose_of_use, c.agent_sub, c.agent_org, c.agent_role,
               c.review_required, c.policy_version)
    return columns, "".join(f"{len(p)}:{p}{len(v)}:{v}" for p, v in index_from_body(body))


def _gateway_bodies() -> list[dict]:
    someone = Principal(sub="hv-1@RHV01", role="health-visitor", org="RHV01")
    events = [balp.AccessEvent(someone, "read", request_id="r1").entity("Patient/a", version="2").about(["Patient/a", "9990000018"]),
              balp.AccessEvent(someone, "search-type", query="Condition?patient=Patient/a").entity("Condition/c1").entity("Observation/o1"),
              balp.AccessEvent(None, "login"), balp.AccessEvent(someone, "read", purpose_of_use="TREAT", purpose="direct-care",
                                                                  policy_version="3").refused(403, "no")]
    return [e.to_fhir() for e in events]


BASE = {"id": "e1", "recorded": "2026-12-07T02:46:53.123Z", "action": "R", "outcome": "0", "type": {"code": "rest"},
        "subtype": [{"system": "x", "code": "read"}, {"system": _SUBTYPE, "code": "read"}],
        "agent": [{"requestor": True, "who": {"identifier": {"value": "u"}}, "role": [{"coding": [{"code": "gp"}]}]},
                  {"requestor": False, "who": {"identifier": {"value": "ORG"}}}],
        "entity": [{"role": {"code": "1"}, "what": {"reference": "Patient/a"}, "detail": [{"type": "nhs-number", "valueString": "9990000018"}]},
                   {"role": {"code": "4"}, "what": {"reference": "Condition/c#frag"}, "detail": [{"type": "subject", "valueString": "Patient/a"}]}]}

# shapes the gateway does not write, each read the same way by both readings (or refused by the typed one)
ODD = [
    {}, {"agent": []}, {"agent": [{"who": {"identifier": {"value": "x"}}}]},                      # no requestor: no user
    {"agent": [{"requestor": True, "role": [{"coding": []}, {"coding": [{"code": "b"}]}]}, {"requestor": True, "role": [{"coding": [{"code": "c"}]}]}]},
    {"agent": [{"requestor": True, "who": None}, {"requestor": None, "who": {}}]},
    {"purposeOfEvent": [{"coding": None}, {"coding": [{"code": "TREAT"}, {"code": "BTG"}]}]},
    {"subtype": [{"system": _SUBTYPE}, {"system": _SUBTYPE, "code": "second"}]},                  # the first match, without a code
    {"extension": [{"url": _EXT_IG_REVIEW, "valueBoolean": None, "valueString": "yes"}]},         # valueBoolean there, null
    {"extension": [{"url": _EXT_IG_REVIEW, "valueString": "yes"}, {"url": _EXT_POLICY_VERSION, "valueBoolean": True}]},
    {"extension": [{"url": _EXT_POLICY_VERSION, "valueString": "1"}, {"url": _EXT_POLICY_VERSION, "valueString": "2"}]},
    {"entity": [{"role": {"code": "1"}, "what": {"reference": "", "display": "Dee"}}, {"role": {"code": "1"}, "what": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}}},
                {"role": {"code": "1"}, "what": None, "detail": [{"type": "nhs-number", "valueString": ""}]}, {"role": None, "what": {"reference": "Patient/z"}},
                {"role": {"code": "4"}, "what": {"reference": "#only-a-fragment"}}, {"role": {"code": "4"}, "what": {"reference": "P/" + "é" * 300}},
                {"role": {"code": "1"}, "what": {"reference": "Patient/a"}}, {"role": {"code": "4"}}]},
    {"type": None, "action": None}, {"type": {}},
]
REFUSED = [{"type": {"code": 5}}, {"agent": [{"requestor": "yes"}]}, {"agent": {"requestor": True}}, {"subtype": ""},
           {"entity": [{"role": {"code": 1}}]}, {"extension": [{"url": _EXT_IG_REVIEW, "valueBoolean": "true"}]}, {"id": 7}]


@pytest.mark.parametrize("body", [BASE] + _gateway_bodies() + [{**BASE, **odd} for odd in ODD])
def test_the_typed_reading_of_a_body_is_the_dict_reading(body):
    """The fast walk's facts (msgspec, typed) are exactly columns_from_body and index_from_body."""
    import orjson

    raw = orjson.dumps(body)
    assert typed_facts(BODY.decode(raw), _URLS) == _dict_facts(orjson.loads(raw))


@pytest.mark.parametrize("odd", REFUSED)
def test_a_body_of_another_shape_is_left_to_the_exact_walk(odd):
    import msgspec
    import orjson

    with pytest.raises(msgspec.ValidationError):
        typed_facts(BODY.decode(orjson.dumps({**BASE, **odd})), _URLS)


def _record(database, n: int) -> None:
    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    with database.session() as s:
        balp.record_many(s, [balp.AccessEvent(someone, ["read", "search-type", "create"][i % 3], request_id=f"q{i}")
                             .entity(f"Patient/p{i}").entity(f"Condition/c{i}").about([f"Patient/p{i}", "9990000018"]) for i in range(n)])


def test_a_clean_chain_is_verified_the_fast_way_in_batches(database):
    _record(database, 11)
    with database.session(readonly=True) as s:
        result = verify(s, batch=4)
    assert result.ok and result.checked == 11 and result.rechecked == 0, result


def test_a_batch_the_fast_way_doubts_is_walked_the_exact_way_and_the_walk_goes_on(database):
    """Search rows re-inserted in another order (the same rows): the fast way doubts that batch
    only; the exact walk finds it sound and the walk goes on the fast way."""
    _record(database, 10)
    eng = create_engine(database.engine.url)
    try:
        with eng.begin() as c:
            if eng.dialect.name == "postgresql":
                c.execute(text("ALTER TABLE audit_index DISABLE TRIGGER USER"))
            else:
                c.execute(text("DROP TRIGGER IF EXISTS audit_index_no_delete"))
            rows = c.execute(text("SELECT pk, event_seq, param, value FROM audit_index WHERE event_seq = 6 ORDER BY pk")).all()
            assert len(rows) >= 2
            c.execute(text("DELETE FROM audit_index WHERE event_seq = 6"))
            for pk, seq, param, value in reversed(rows):
                c.execute(text("INSERT INTO audit_index (event_seq, param, value) VALUES (:s, :p, :v)"), {"s": seq, "p": param, "v": value})
            if eng.dialect.name == "postgresql":
                c.execute(text("ALTER TABLE audit_index ENABLE TRIGGER USER"))
    finally:
        eng.dispose()
    with database.session(readonly=True) as s:
        result = verify(s, batch=4)
    assert result.ok and result.checked == 10 and result.rechecked == 4, result  # events 5-8 only


def test_a_search_row_stored_as_bytes_is_not_taken_for_its_text(database):
    """SQLite stores any type in any column: a search row whose value is a BLOB of the same bytes
    folds into the same string, so the fast way counts such rows and leaves the batch to the
    exact walk, which names it."""
    if database.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL types its columns")
    _record(database, 3)
    eng = create_engine(database.engine.url)
    try:
        with eng.begin() as c:
            c.execute(text("DROP TRIGGER IF EXISTS audit_index_no_update"))
            c.execute(text("UPDATE audit_index SET value = CAST(value AS BLOB) WHERE pk = (SELECT min(pk) FROM audit_index WHERE event_seq = 2)"))
    finally:
        eng.dispose()
    with database.session(readonly=True) as s:
        result = verify(s)
    assert not result.ok and result.broken_at == 2 and "audit_index" in (result.problem or ""), result


# ---------------------------------------------------------------- verify's workers (`familyview audit verify`)

_ODD_INDEX = "INSERT INTO audit_index (event_seq, param, value) VALUES (:s, 'patient', '9434765919')"


@pytest.mark.parametrize("tamper", [
    [],
    [("UPDATE audit_event SET body = replace(body, '\"outcome\":\"0\"', '\"outcome\":\"0\" ') WHERE seq = 14", {})],
    [("UPDATE audit_event SET action = 'X' WHERE seq = 3", {})],
    [("UPDATE audit_event SET agent_sub = 'someone-else' WHERE seq = 21", {})],
    [("UPDATE audit_index SET value = 'x' WHERE pk = (SELECT min(pk) FROM audit_index WHERE event_seq = 9)", {})],
    [("DELETE FROM audit_index WHERE pk = (SELECT max(pk) FROM audit_index WHERE event_seq = 16)", {})],
    [(_ODD_INDEX, {"s": 12})],
    [(_ODD_INDEX, {"s": 1000})],
    [("DELETE FROM audit_event WHERE seq = 8", {})],  # the first event of a span: its link is verify's to check
    [("DELETE FROM audit_event WHERE seq = 8", {}), ("DELETE FROM audit_head WHERE seq = 8", {}),
     ("DELETE FROM audit_index WHERE event_seq = 8", {})],
    [("DELETE FROM audit_event WHERE seq = 24", {})],  # the newest
    [("DELETE FROM audit_head WHERE seq = 17", {})],
    [("UPDATE audit_head SET hash = :h WHERE seq = 5", {"h": "f" * 64})],
])
def test_the_workers_judge_as_the_serial_walk(database, monkeypatch, tamper):
    """Spans walked by worker processes: a clean chain needs no exact walk; anything else is
    named exactly as the serial walk names it (the walk goes on from the first span in doubt)."""
    from app.audit import service

    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)  # a short chain: all the workers'
    monkeypatch.setattr(service, "_SPANS_PER_WORKER", 3)  # 24 events, batches of 4: spans of 4 events
    _record(database, 24)
    _as_attacker(database.engine.url, *tamper)
    with database.session(readonly=True) as s:
        serial = verify(s, batch=4)
    with database.session(readonly=True) as s:
        spans = service._parallel_spans(s, database.engine.dialect.name, 4, None, 2)
    assert [(x.lo, x.hi) for x in spans] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24)] or tamper
    with database.session(readonly=True) as s:
        parallel = verify(s, batch=4, workers=2)
    assert parallel == serial and parallel.ok == (not tamper), (parallel, serial)
    if not tamper:
        assert parallel.checked == 24 and parallel.rechecked == 0 and parallel.worker_cpu > 0
    else:
        assert parallel.rechecked <= serial.rechecked


def test_the_workers_see_the_anchor(database, monkeypatch):
    from app.audit import service

    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)  # a short chain: all the workers'
    _record(database, 20)
    with database.session(readonly=True) as s:
        head = s.execute(text("SELECT hash FROM audit_event WHERE seq = 13")).scalar()
    with database.session(readonly=True) as s:
        assert verify(s, batch=4, workers=2, expect_head=head, expect_count=20).ok
    with database.session(readonly=True) as s:
        missed = verify(s, batch=4, workers=2, expect_head="e" * 64, expect_count=21)
    assert not missed.ok and "fewer than the 21" in (missed.problem or "")
    with database.session(readonly=True) as s:
        missed = verify(s, batch=4, workers=2, expect_head="e" * 64)
    assert not missed.ok and "no event has the anchored head hash" in (missed.problem or "")


def test_workers_that_cannot_start_leave_the_walk_to_this_process(database, monkeypatch):
    import concurrent.futures

    from app.audit import service

    class NoProcesses:
        def __init__(self, *args, **kwargs):
            raise OSError("no processes here")

    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)  # a short chain: all the workers'
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", NoProcesses)
    _record(database, 9)
    with database.session(readonly=True) as s:
        result = verify(s, batch=4, workers=2)
    assert result.ok and result.checked == 9 and result.worker_cpu == 0, result


def test_the_workers_walk_a_chain_with_gaps_in_its_seqs(database, monkeypatch):
    """The spans are cut by seq: events a rolled-back request never appended leave seqs unused
    (PostgreSQL's sequence does not give them back), here a whole span of them and part of the
    next; the walk still needs no exact walk and counts every event once."""
    from app.audit import service

    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite gives a rolled-back seq out again")
    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)  # a short chain: all the workers'
    monkeypatch.setattr(service, "_SPANS_PER_WORKER", 3)
    _record(database, 6)
    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    with pytest.raises(RuntimeError), database.session() as s:
        balp.record_many(s, [balp.AccessEvent(someone, "read", request_id=f"gone{i}").entity(f"Patient/g{i}") for i in range(7)])
        s.flush()
        raise RuntimeError("the request fails after its events were appended: they are rolled back")
    _record(database, 11)
    with database.session(readonly=True) as s:
        assert s.execute(text("SELECT max(seq) FROM audit_event")).scalar() == 24  # 6 events, seqs 7-13 unused, 11 events
        spans = service._parallel_spans(s, database.engine.dialect.name, 4, None, 2)
    assert [(x.lo, x.hi, x.count) for x in spans] == [(0, 4, 4), (4, 8, 2), (8, 12, 0), (12, 16, 3), (16, 20, 4), (20, 24, 4)]
    with database.session(readonly=True) as s:
        serial = verify(s, batch=4)
    with database.session(readonly=True) as s:
        parallel = verify(s, batch=4, workers=2)
    assert parallel == serial and parallel.ok and parallel.checked == 17 and parallel.rechecked == 0 and parallel.head_seq == 24


def test_postgresql_keeps_audit_bodies_compressed_with_lz4(database):
    """Migration 0019: every read of the chain decompresses each body (~2.5 kB of JSON, over the
    size PostgreSQL compresses); LZ4 does it faster than the default pglz."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not compress")
    _record(database, 3)
    with database.session(readonly=True) as s:
        methods = s.execute(text("SELECT DISTINCT pg_column_compression(body) FROM audit_event")).scalars().all()
        sizes = s.execute(text("SELECT min(octet_length(body)) FROM audit_event")).scalar()
    assert sizes > 2100 and methods == ["lz4"], (sizes, methods)


@pytest.mark.parametrize("tamper", [[], [("UPDATE audit_event SET action = 'X' WHERE seq = 3", {})],
                                    [("UPDATE audit_event SET action = 'X' WHERE seq = 19", {})]])
def test_verify_walks_the_first_batches_while_its_workers_start(database, monkeypatch, tamper):
    """verify walks batches itself until the workers are up, then hands them the rest from
    where it got to: the same judgement as the serial walk, wherever the problem lies."""
    from app.audit import service

    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    ready, asked = service._Workers.ready, []

    def up_after_three_batches(self):
        asked.append(1)
        if len(asked) <= 3:
            return False
        self.wait_until_up()
        return ready(self)

    monkeypatch.setattr(service._Workers, "ready", up_after_three_batches)
    _record(database, 24)
    _as_attacker(database.engine.url, *tamper)
    with database.session(readonly=True) as s:
        serial = verify(s, batch=4)
    with database.session(readonly=True) as s:
        parallel = verify(s, batch=4, workers=2)
    assert parallel == serial and parallel.ok == (not tamper), (parallel, serial)
    assert len(asked) >= 4 or parallel.broken_at == 3  # (a problem in verify's own batches ends the walk there)
    if not tamper:
        assert parallel.checked == 24 and parallel.rechecked == 0 and parallel.worker_cpu > 0


def test_the_workers_module_imports_neither_sqlalchemy_nor_the_consent_engine():
    """verify's worker processes start from app.audit.walk while verify walks the first batches
    itself: what it imports is the workers' start-up (SQLAlchemy and the consent engine's code
    lists were most of a second of it)."""
    import subprocess
    import sys

    probe = ("import sys, app.audit.walk; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'consent', 'fastapi', 'pydantic', 'orjson'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


@pytest.mark.parametrize("tamper", [[], [("UPDATE audit_event SET outcome = '8' WHERE seq = 10", {})],
                                    [("DELETE FROM audit_head WHERE seq = 15", {})]])
def test_a_span_is_judged_the_same_with_or_without_fetching_ahead(database, tamper):
    """A worker fetches its next batch on a second thread only when there are cores to spare
    (app.audit.service._Workers.fetch_ahead): both ways give the same span."""
    from app.audit import walk

    _record(database, 24)
    _as_attacker(database.engine.url, *tamper)
    spans = []
    for ahead in (True, False):
        with database.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            cursor = conn.connection.driver_connection.cursor()
            span = walk.walk_span(walk.FastWalk(cursor, conn.dialect.name, 4, None, _URLS), 0, 24, fetch_ahead=ahead)
            spans.append(span)
            cursor.close()
            conn.rollback()
    assert spans[0] == spans[1] and spans[0].clean == (not tamper), spans
    if not tamper:
        assert spans[0].count == 24 and spans[0].last_seq == 24


# ---------------------------------------------------------------- the hash's two forms (migration 0020)

def append_as_before_0020(conn, events: list[dict]) -> None:
    """Events appended as the writer before migration 0020 appended them, on ``conn``: hashed
    over the body alone, their hash_form left to the column's default (1) or, before 0020, absent."""
    from app.audit import service

    for event in events:
        recorded = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
        body = service.event_text(event)
        prev = conn.execute(service._LAST_HASH).scalar() or service.GENESIS
        seq = conn.execute(service._INSERT_EVENT, {"event_id": event["id"], "recorded": recorded, "body": body, "prev_hash": prev,
                                                   "hash": service.chain_hash(prev, event["id"], _recorded_text(recorded), body),
                                                   **columns_from_body(event).__dict__}).scalar_one()
        for p, v in index_from_body(event):
            conn.execute(text("INSERT INTO audit_index (event_seq, param, value) VALUES (:s, :p, :v)"), {"s": seq, "p": p, "v": v})


def old_events(tag: str, n: int) -> list[dict]:
    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    return [balp.AccessEvent(someone, "read", request_id=f"{tag}{i}").entity(f"Patient/{tag}{i}").about([f"Patient/{tag}{i}", "9990000018"]).to_fhir()
            for i in range(n)]


def _mixed_chain(database) -> None:
    """Six events of form 1 (written before the upgrade), then six of form 2."""
    with database.session() as s:
        append_as_before_0020(s.connection(), old_events("old", 6))
    _record(database, 6)
    with database.session(readonly=True) as s:
        forms = s.execute(text("SELECT hash_form FROM audit_event ORDER BY seq")).scalars().all()
    assert forms == [1] * 6 + [2] * 6


def test_a_chain_of_both_forms_is_verified_the_fast_way(database, monkeypatch):
    from app.audit import service

    _mixed_chain(database)
    with database.session(readonly=True) as s:
        result = verify(s, batch=4)  # the batch of events 5-8 holds both forms
    assert result.ok and result.checked == 12 and result.rechecked == 0, result
    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)
    with database.session(readonly=True) as s:
        assert verify(s, batch=4, workers=2) == result


@pytest.mark.parametrize("seq, tamper, problem", [
    # form 1: the body proves the columns and search rows
    (3, "UPDATE audit_event SET agent_org = 'RZZ99' WHERE seq = 3", "searchable column agent_org disagrees with its body"),
    (2, "UPDATE audit_index SET value = 'Patient/x' WHERE pk = (SELECT min(pk) FROM audit_index WHERE event_seq = 2)", "audit_index"),
    # form 2: the hash seals them; the body, which the hash also seals, names what was altered
    (9, "UPDATE audit_event SET agent_org = 'RZZ99' WHERE seq = 9", "searchable column agent_org disagrees with its body"),
    (10, "UPDATE audit_event SET review_required = NOT review_required WHERE seq = 10", "searchable column review_required disagrees"),
    (8, "UPDATE audit_event SET purpose_of_use = 'BTG' WHERE seq = 8", "searchable column purpose_of_use disagrees"),
    (11, "UPDATE audit_index SET value = 'Patient/x' WHERE pk = (SELECT min(pk) FROM audit_index WHERE event_seq = 11)", "audit_index"),
    (11, "DELETE FROM audit_index WHERE pk = (SELECT min(pk) FROM audit_index WHERE event_seq = 11)", "audit_index"),
    (7, "INSERT INTO audit_index (event_seq, param, value) VALUES (7, 'patient', '9434765919')", "audit_index"),
    (12, "UPDATE audit_event SET body = replace(body, '\"outcome\":\"0\"', '\"outcome\":\"0\" ') WHERE seq = 12", "does not match its hash"),
    # a downgrade to form 1 (or a form no writer writes): the hash no longer holds
    (9, "UPDATE audit_event SET hash_form = 1 WHERE seq = 9", "does not match its hash"),
    (3, "UPDATE audit_event SET hash_form = 2 WHERE seq = 3", "does not match its hash"),
    (10, "UPDATE audit_event SET hash_form = 3 WHERE seq = 10", "hash form 3"),
])
def test_what_either_form_seals_is_named_when_altered(database, monkeypatch, seq, tamper, problem):
    from app.audit import service

    _mixed_chain(database)
    if database.engine.dialect.name == "sqlite":
        tamper = tamper.replace("NOT review_required", "1 - review_required")
    _as_attacker(database.engine.url, (tamper, {}))
    with database.session(readonly=True) as s:
        serial = verify(s, batch=4)
    assert not serial.ok and serial.broken_at == seq and problem in (serial.problem or ""), serial
    monkeypatch.setattr(service, "_PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(service, "_WALK_WHILE_WORKERS_START", False)
    with database.session(readonly=True) as s:
        assert verify(s, batch=4, workers=2) == serial


def test_an_event_downgraded_to_form_1_and_rehashed_breaks_the_chain_after_it(database):
    """Someone alters a sealed column, then rewrites the event as form 1 with a hash over its
    body alone (which the alteration does not touch): the event's hash changes, so the next
    event's link and the head table no longer hold."""
    _record(database, 6)
    with database.session(readonly=True) as s:
        seq, event_id, recorded, body, prev = s.execute(text(
            "SELECT seq, event_id, recorded, body, prev_hash FROM audit_event WHERE seq = 3")).one()
    recorded = recorded if not isinstance(recorded, str) else datetime.fromisoformat(recorded)
    from app.audit.service import chain_hash

    digest = chain_hash(prev, event_id, _recorded_text(recorded), body)
    _as_attacker(database.engine.url, ("UPDATE audit_event SET hash_form = 1, hash = :h WHERE seq = 3", {"h": digest}))
    with database.session(readonly=True) as s:
        result = verify(s, batch=4)
    assert not result.ok and result.broken_at == 3 and "head table" in (result.problem or ""), result
    _as_attacker(database.engine.url, ("UPDATE audit_head SET hash = :h WHERE seq = 3", {"h": digest}))
    with database.session(readonly=True) as s:
        result = verify(s, batch=4)
    assert not result.ok and result.broken_at == 4 and "previous-hash" in (result.problem or ""), result


def test_a_writer_whose_columns_are_not_what_the_body_says_cannot_append(database):
    """Verify's fast walk proves what the hash seals, not that the columns are the body's: the
    append checks that, and an event whose columns an IG search would read otherwise than its
    body is refused (and with it the access), leaving the chain as it was."""
    from app.audit import service

    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    access = balp.AccessEvent(someone, "read", request_id="r1").entity("Patient/a")
    event = access.to_fhir()
    wrong = dataclasses.replace(access.columns(event), agent_org="RZZ99")
    for columns, index in ((wrong, index_from_body(event)), (access.columns(event), [("patient", "Patient/b")])):
        with pytest.raises(service.AuditMismatch), database.session() as s:
            service.append(s, event, columns, index)
    with database.session() as s:
        service.append(s, event, access.columns(event), index_from_body(event))
    with database.session(readonly=True) as s:
        result = verify(s)
    assert result.ok and result.checked == 1, result
