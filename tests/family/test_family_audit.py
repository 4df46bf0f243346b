"""No audit, no disclosure; an append-only, hash-chained audit store that proves itself."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.demo.loader import load_demo
from app.demo.scenarios import HEALTH_VISITING, IG_ORG, N, SOURCES

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _view(live, key="s2_infant", purpose="direct-care"):
    return live.client("health-visitor", HEALTH_VISITING.org).get(
        "/Patient/$family-view", params={"identifier": f"{NHS}|{N[key]}", "purpose": purpose}
    )


def _audit_count(url: str, subtype: str | None = "family-view") -> int:
    """Events of one subtype (loading the demo writes Consent-write events too), or all of them."""
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            where, params = (" WHERE subtype_code = :s", {"s": subtype}) if subtype else ("", {})
            return c.execute(text("SELECT count(*) FROM audit_event" + where), params).scalar()
    finally:
        eng.dispose()


def test_audit_rows_cannot_be_updated_or_deleted(live):
    load_demo(live.base_url, live.settings)
    assert _view(live).status_code == 200
    eng = create_engine(live.settings.database_url)
    try:
        for stmt in ("UPDATE audit_event SET outcome = '0'", "DELETE FROM audit_event", "UPDATE audit_index SET value = 'x'", "DELETE FROM audit_index",
                     "UPDATE audit_head SET hash = 'x'", "DELETE FROM audit_head"):
            with eng.connect() as c:
                with pytest.raises(DBAPIError) as err:
                    c.execute(text(stmt))
                    c.commit()
                assert "append-only" in str(err.value)
        if eng.dialect.name == "postgresql":
            with eng.connect() as c:
                with pytest.raises(DBAPIError):
                    c.execute(text("TRUNCATE audit_event"))
            with eng.connect() as c:
                with pytest.raises(DBAPIError):
                    c.execute(text("TRUNCATE audit_head"))
    finally:
        eng.dispose()
    assert _audit_count(live.settings.database_url) == 1


def test_when_the_audit_cannot_be_written_nothing_is_disclosed(live):
    load_demo(live.base_url, live.settings)
    eng = create_engine(live.settings.database_url)
    try:
        with eng.begin() as c:
            if eng.dialect.name == "postgresql":
                c.execute(text("CREATE FUNCTION break_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END; $$ LANGUAGE plpgsql"))
                c.execute(text("CREATE TRIGGER break_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION break_audit()"))
            else:
                c.execute(text("CREATE TRIGGER break_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"))
    finally:
        eng.dispose()
    r = _view(live, "s2_infant", "direct-care")
    assert r.status_code == 503
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
    assert N["s2_father"] not in r.text and "Harris" not in r.text and "x-audit-event" not in r.headers
    # nor is the notification that a safeguarding view would have sent left behind
    s = live.client("health-visitor", HEALTH_VISITING.org).get(
        "/Patient/$family-view", params={"identifier": f"{NHS}|{N['s2_infant']}", "purpose": "safeguarding", "justification": "x"})
    assert s.status_code == 503
    # no audit, no access of any kind: a plain read is refused too, and leaves nothing behind
    r = live.source(SOURCES[0].org, SOURCES[0].service).get("/Communication", params={"_count": 0})
    assert r.status_code == 503 and r.json()["issue"][0]["code"] == "transient", r.text
    assert _audit_count(live.settings.database_url) == 0
    eng = create_engine(live.settings.database_url)
    try:
        with eng.begin() as c:
            c.execute(text("DROP TRIGGER break_audit" + (" ON audit_event" if eng.dialect.name == "postgresql" else "")))
    finally:
        eng.dispose()
    for src in SOURCES:  # each data controller reads the notices sent to it (an administrator reads none)
        r = live.source(src.org, src.service).get("/Communication", params={"_count": 0})
        assert r.status_code == 200 and r.json()["total"] == 0, r.text


def test_chain_verifies_and_names_the_first_broken_link(live, capsys):
    load_demo(live.base_url, live.settings)
    consents = _audit_count(live.settings.database_url, None)  # the demo's Consent writes are audited too
    for key in ("s1_infant", "s2_infant", "s3_infant", "s4_infant"):
        assert _view(live, key).status_code == 200
    from app import cli

    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 0
    # the four views, and whatever linkage the first of them settled (queued linkage decisions, PostgreSQL)
    assert _audit_count(live.settings.database_url) == 4
    assert _audit_count(live.settings.database_url, None) >= consents + 4
    assert f"intact: {_audit_count(live.settings.database_url, None)} events" in capsys.readouterr().out
    # an administrator with the power to disable the triggers alters the third event
    eng = create_engine(live.settings.database_url)
    try:
        with eng.begin() as c:
            third = c.execute(text("SELECT seq, event_id FROM audit_event ORDER BY seq LIMIT 1 OFFSET 2")).one()
            if eng.dialect.name == "postgresql":
                c.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
                c.execute(text("UPDATE audit_event SET body = replace(body, '\"outcome\":\"0\"', '\"outcome\":\"0\" ') WHERE seq = :s"), {"s": third.seq})
                c.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
            else:
                c.execute(text("DROP TRIGGER audit_event_no_update"))
                c.execute(text("UPDATE audit_event SET body = replace(body, '\"outcome\":\"0\"', '\"outcome\":\"0\" ') WHERE seq = :s"), {"s": third.seq})
    finally:
        eng.dispose()
    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and third.event_id in out and "2 events before it verified" in out
    assert consents >= 3  # three Consents in the demo, each write audited


def _as_attacker(url: str, *statements: tuple[str, dict]) -> None:
    """Someone with database access: the append-only triggers bypassed, then the statements run."""
    eng = create_engine(url)
    try:
        with eng.begin() as c:
            for table in ("audit_event", "audit_index", "audit_head"):
                if eng.dialect.name == "postgresql":
                    c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
                else:
                    for action in ("update", "delete"):
                        c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{action}"))
            for stmt, params in statements:
                c.execute(text(stmt), params)
            if eng.dialect.name == "postgresql":
                for table in ("audit_event", "audit_index", "audit_head"):
                    c.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
    finally:
        eng.dispose()


def _verify(live, capsys, *extra: str) -> tuple[int, str]:
    from app import cli

    rc = cli.main(["audit", "verify", "--database-url", live.settings.database_url, *extra])
    return rc, capsys.readouterr().out


def test_verify_sees_searchable_columns_and_index_rows_that_disagree_with_the_body(live, capsys):
    load_demo(live.base_url, live.settings)
    for key in ("s1_infant", "s2_infant", "s3_infant"):
        assert _view(live, key).status_code == 200
    url = live.settings.database_url
    assert _verify(live, capsys)[0] == 0
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            views = "SELECT * FROM audit_event WHERE subtype_code = 'family-view' ORDER BY seq"
            first = c.execute(text(views + " LIMIT 1")).mappings().one()
            second = c.execute(text(views + " LIMIT 1 OFFSET 1")).mappings().one()
            index = c.execute(text("SELECT pk, param, value FROM audit_index WHERE event_seq = :s ORDER BY pk"), {"s": second["seq"]}).all()
    finally:
        eng.dispose()
    s = second["seq"]
    assert second["purpose_of_use"] == "TREAT" and index
    # each searchable column an IG search reads, edited so the event hides from it
    for column, value in (("purpose_of_use", "BTG"), ("purpose_of_use", None), ("agent_sub", "someone-else"), ("agent_org", "RZZ99"),
                          ("agent_role", "gp"), ("outcome", "4"), ("type_code", "x"), ("subtype_code", "x"), ("action", "R"),
                          ("policy_version", "0"), ("review_required", not second["review_required"]), ("recorded", first["recorded"])):
        _as_attacker(url, (f"UPDATE audit_event SET {column} = :v WHERE seq = :s", {"v": value, "s": s}))
        rc, out = _verify(live, capsys)
        assert rc == 1 and "BROKEN" in out and f"#{s} ({second['event_id']})" in out, (column, out)
        assert column in out or "does not match its hash" in out, (column, out)
        _as_attacker(url, (f"UPDATE audit_event SET {column} = :v WHERE seq = :s", {"v": second[column], "s": s}))
        assert _verify(live, capsys)[0] == 0, column
    # the audit_index rows patient= and entity= search: edited, deleted, inserted
    pk, param, value = index[0]
    for tamper, undo in (
        (("UPDATE audit_index SET value = 'x' WHERE pk = :pk", {"pk": pk}), ("UPDATE audit_index SET value = :v WHERE pk = :pk", {"v": value, "pk": pk})),
        (("DELETE FROM audit_index WHERE pk = :pk", {"pk": pk}), ("INSERT INTO audit_index (pk, event_seq, param, value) VALUES (:pk, :s, :p, :v)", {"pk": pk, "s": s, "p": param, "v": value})),
        (("INSERT INTO audit_index (event_seq, param, value) VALUES (:s, 'patient', '9434765919')", {"s": s}), ("DELETE FROM audit_index WHERE value = '9434765919'", {})),
        (("INSERT INTO audit_index (event_seq, param, value) VALUES (:s, 'patient', '9434765919')", {"s": s + 1000}), ("DELETE FROM audit_index WHERE value = '9434765919'", {})),
    ):
        _as_attacker(url, tamper)
        rc, out = _verify(live, capsys)
        assert rc == 1 and "BROKEN" in out and "audit_index" in out, (tamper, out)
        _as_attacker(url, undo)
        assert _verify(live, capsys)[0] == 0, tamper


def test_verify_sees_the_newest_events_deleted_and_checks_a_kept_anchor(live, capsys):
    load_demo(live.base_url, live.settings)
    for key in ("s1_infant", "s2_infant", "s3_infant"):
        assert _view(live, key).status_code == 200
    url = live.settings.database_url
    count = str(_audit_count(url, None))  # three views and the demo's audited Consent writes
    rc, out = _verify(live, capsys)
    assert rc == 0 and f"intact: {count} events verified" in out
    head = out.split("hash ", 1)[1].split()[0]
    assert len(head) == 64 and _verify(live, capsys, "--expect-count", count, "--expect-head", head)[0] == 0
    assert _view(live, "s4_infant").status_code == 200  # the chain grows past the anchor: still good
    assert _verify(live, capsys, "--expect-count", count, "--expect-head", head)[0] == 0
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            newest = c.execute(text("SELECT max(seq) FROM audit_event")).scalar()
    finally:
        eng.dispose()
    # the newest event deleted
    _as_attacker(url, ("DELETE FROM audit_event WHERE seq = :s", {"s": newest}))
    rc, out = _verify(live, capsys)
    assert rc == 1 and f"BROKEN at event #{newest}" in out and "newest events were deleted" in out, out
    # every event deleted
    _as_attacker(url, ("DELETE FROM audit_event", {}))
    rc, out = _verify(live, capsys)
    assert rc == 1 and "BROKEN" in out and "newest events were deleted" in out, out
    # the head table bypassed too: only the anchor the IG officer kept shows it
    _as_attacker(url, ("DELETE FROM audit_head", {}), ("DELETE FROM audit_index", {}))
    assert _verify(live, capsys)[0] == 0
    rc, out = _verify(live, capsys, "--expect-count", "3")
    assert rc == 1 and "holds 0 events, fewer than the 3" in out
    rc, out = _verify(live, capsys, "--expect-head", head)
    assert rc == 1 and f"no event has the anchored head hash {head}" in out


def test_audit_search_parameters(live):
    load_demo(live.base_url, live.settings)
    r1 = _view(live, "s2_infant")
    r2 = live.client("health-visitor", "RZZ99").get("/Patient/$family-view", params={"identifier": f"{NHS}|{N['s2_infant']}", "purpose": "direct-care"})
    assert r2.status_code == 403
    ig = live.client("ig-officer", IG_ORG)
    ids = lambda r: {e["resource"]["id"] for e in r.json().get("entry", [])}  # noqa: E731
    e1, e2 = (x.headers["x-audit-event"].split("/")[1] for x in (r1, r2))
    assert ids(ig.get("/AuditEvent", params={"outcome": "4"})) == {e2}
    assert ids(ig.get("/AuditEvent", params={"agent": "RZZ99"})) == {e2}
    # both requests concerned the father (the refused one is recorded with what it would have reached)
    # (every write of his records is audited too: subtype picks the views)
    assert ids(ig.get("/AuditEvent", params={"patient": N["s2_father"], "subtype": "family-view"})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"patient": N["s1_father"], "subtype": "family-view"})) == set()
    assert ids(ig.get("/AuditEvent", params={"type": "rest", "subtype": "family-view"})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"purpose": "TREAT", "date": "ge2020-01-01"})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"date": "lt2020-01-01"})) == set()
    event = ig.get(f"/AuditEvent/{e1}").json()
    withheld = next(e for e in event["entity"] if any(d["valueString"] == "substance-misuse" for d in e.get("detail", [])))
    assert ids(ig.get("/AuditEvent", params={"entity": withheld["what"]["reference"], "subtype": "family-view"})) == {e1}
    # the record's own write was audited too (by the GP system that sent it)
    written = ig.get("/AuditEvent", params={"entity": withheld["what"]["reference"], "subtype": "create,transaction"}).json()
    assert written["total"] == 1 and written["entry"][0]["resource"]["action"] in ("C", "E")
    assert ig.get("/AuditEvent", params={"colour": "red"}).status_code == 400
    assert ig.get("/AuditEvent/nope").status_code == 404


def test_audit_date_search_covers_the_minute_or_hour_given_and_refuses_what_is_not_a_date(live):
    load_demo(live.base_url, live.settings)
    for key in ("s1_infant", "s2_infant"):
        assert _view(live, key).status_code == 200
    # the IG officer's own searches are audited as they go: the views are what is searched here
    ig = live.client("ig-officer", IG_ORG)
    ig.params = {"subtype": "family-view"}
    events = [e["resource"] for e in ig.get("/AuditEvent").json()["entry"]]
    ids = lambda r: {e["resource"]["id"] for e in r.json().get("entry", [])}  # noqa: E731
    recorded = events[0]["recorded"]  # e.g. 2026-11-26T12:50:07.123Z
    minute, hour = recorded[:16], recorded[:13]
    in_minute = {e["id"] for e in events if e["recorded"].startswith(minute)}
    in_hour = {e["id"] for e in events if e["recorded"].startswith(hour)}
    assert events[0]["id"] in in_minute
    assert ids(ig.get("/AuditEvent", params={"date": minute})) == in_minute
    assert ids(ig.get("/AuditEvent", params={"date": hour})) == in_hour
    assert ids(ig.get("/AuditEvent", params={"date": minute + "Z"})) == in_minute
    assert ids(ig.get("/AuditEvent", params={"date": f"ge{minute}"})) >= in_minute
    assert ids(ig.get("/AuditEvent", params={"date": f"lt{minute}"})) & in_minute == set()
    assert ids(ig.get("/AuditEvent", params={"date": f"le{hour}"})) >= in_hour
    # the same minute given in another time zone
    shifted = (datetime.fromisoformat(minute + ":00+00:00") + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M") + "+01:00"
    assert ids(ig.get("/AuditEvent", params={"date": shifted})) == in_minute
    for bad in (f"{recorded[:10]} {recorded[11:16]}", recorded[:10].replace("-", ""), f"{recorded[:13]}:5", "yesterday", f"ge{recorded[:10]}T25:00", f"{minute}+15:00"):
        r = ig.get("/AuditEvent", params={"date": bad})
        assert r.status_code == 400, bad
        assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["expression"] == ["AuditEvent?date"], bad


def test_date_range_precision_defines_the_range():
    from app.fhir.indexing import date_range

    assert date_range("2026-11-26T12:50") == ("2026-11-26T12:50:00", "2026-11-26T12:50:59")
    assert date_range("2026-11-26T12") == ("2026-11-26T12:00:00", "2026-11-26T12:59:59")
    assert date_range("2026-11-26T12:50-05:00") == ("2026-11-26T17:50:00", "2026-11-26T17:50:59")
    assert date_range("2026-11-26T12:50:07.123456789Z") == ("2026-11-26T12:50:07", "2026-11-26T12:50:07")
    assert date_range("0001-01-01T00:00:00+14:00") == ("0001-01-01T00:00:00", "0001-01-01T00:00:00")
    for bad in ("2026-11-26 12:50", "20261126", "2026-11-26T1", "2026-11-26T12:5", "2026-11-26T12:50+15:00", "2026-W48"):
        with pytest.raises(ValueError):
            date_range(bad)


def test_refused_requests_are_audited_with_the_valid_purpose_given(live):
    load_demo(live.base_url, live.settings)
    ig = live.client("ig-officer", IG_ORG)
    params = {"identifier": f"{NHS}|{N['s2_infant']}"}
    forbidden = ig.get("/Patient/$family-view", params={**params, "purpose": "direct-care"})
    no_justification = _view(live, "s2_infant", "safeguarding")
    no_identifier = live.client("health-visitor", HEALTH_VISITING.org).get("/Patient/$family-view", params={"purpose": "direct-care"})
    bad_purpose = _view(live, "s2_infant", "curiosity")
    assert (forbidden.status_code, no_justification.status_code, no_identifier.status_code, bad_purpose.status_code) == (403, 400, 400, 400)
    e403, e400, e400b, ebad = (r.headers["x-audit-event"].split("/")[1] for r in (forbidden, no_justification, no_identifier, bad_purpose))
    ids = lambda r: {e["resource"]["id"] for e in r.json().get("entry", [])}  # noqa: E731
    assert ids(ig.get("/AuditEvent", params={"purpose": "TREAT"})) == {e403, e400b}
    assert ids(ig.get("/AuditEvent", params={"purpose": "THREAT"})) == {e400}
    event = ig.get(f"/AuditEvent/{e403}").json()
    assert event["outcome"] == "4" and event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert event["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert "purposeOfEvent" not in ig.get(f"/AuditEvent/{ebad}").json()
    from app import cli

    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 0


def test_an_event_appended_by_code_that_predates_the_head_table_is_still_anchored(live):
    """During a rolling deploy a worker still on the old code appends events without knowing
    audit_head. The database writes the head row itself (a trigger), so verify does not
    report those events as inserted outside the gateway."""
    assert "x-audit-event" in _view(live, "s1_infant").headers  # one audited request (a 404: no demo here)
    eng = create_engine(live.settings.database_url)
    try:
        with eng.begin() as c:  # what the old append did: the event (and index rows) only
            c.execute(text(
                "INSERT INTO audit_event (event_id, recorded, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub,"
                " agent_org, agent_role, review_required, policy_version, body, prev_hash, hash)"
                " SELECT 'old-worker-event', recorded, type_code, subtype_code, action, outcome, purpose_of_use, agent_sub, agent_org,"
                " agent_role, review_required, policy_version, body, prev_hash, 'f' || substr(hash, 2) FROM audit_event"
                " WHERE seq = (SELECT max(seq) FROM audit_event)"))
            seq, digest = c.execute(text("SELECT seq, hash FROM audit_event WHERE event_id = 'old-worker-event'")).one()
            assert c.execute(text("SELECT hash FROM audit_head WHERE seq = :s"), {"s": seq}).scalar() == digest
    finally:
        eng.dispose()
