"""No audit, no disclosure; an append-only, hash-chained audit store that proves itself."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.demo.loader import load_demo
from app.demo.scenarios import HEALTH_VISITING, IG_ORG, N

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _view(live, key="s2_infant", purpose="direct-care"):
    return live.client("health-visitor", HEALTH_VISITING.org).get(
        "/Patient/$family-view", params={"identifier": f"{NHS}|{N[key]}", "purpose": purpose}
    )


def _audit_count(url: str) -> int:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return c.execute(text("SELECT count(*) FROM audit_event")).scalar()
    finally:
        eng.dispose()


def test_audit_rows_cannot_be_updated_or_deleted(live):
    load_demo(live.base_url, live.settings)
    assert _view(live).status_code == 200
    eng = create_engine(live.settings.database_url)
    try:
        for stmt in ("UPDATE audit_event SET outcome = '0'", "DELETE FROM audit_event", "UPDATE audit_index SET value = 'x'", "DELETE FROM audit_index"):
            with eng.connect() as c:
                with pytest.raises(DBAPIError) as err:
                    c.execute(text(stmt))
                    c.commit()
                assert "append-only" in str(err.value)
        if eng.dialect.name == "postgresql":
            with eng.connect() as c:
                with pytest.raises(DBAPIError):
                    c.execute(text("TRUNCATE audit_event"))
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
    admin = live.client("admin", "X26")
    assert admin.get("/Communication", params={"_count": 0}).json()["total"] == 0
    assert _audit_count(live.settings.database_url) == 0


def test_chain_verifies_and_names_the_first_broken_link(live, capsys):
    load_demo(live.base_url, live.settings)
    for key in ("s1_infant", "s2_infant", "s3_infant", "s4_infant"):
        assert _view(live, key).status_code == 200
    from app import cli

    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 0
    assert "intact: 4 events" in capsys.readouterr().out
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
    assert ids(ig.get("/AuditEvent", params={"patient": N["s2_father"]})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"patient": N["s1_father"]})) == set()
    assert ids(ig.get("/AuditEvent", params={"type": "rest", "subtype": "family-view"})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"purpose": "TREAT", "date": "ge2020-01-01"})) == {e1, e2}
    assert ids(ig.get("/AuditEvent", params={"date": "lt2020-01-01"})) == set()
    event = ig.get(f"/AuditEvent/{e1}").json()
    withheld = next(e for e in event["entity"] if any(d["valueString"] == "substance-misuse" for d in e.get("detail", [])))
    assert ids(ig.get("/AuditEvent", params={"entity": withheld["what"]["reference"]})) == {e1}
    assert ig.get("/AuditEvent", params={"colour": "red"}).status_code == 400
    assert ig.get("/AuditEvent/nope").status_code == 404
