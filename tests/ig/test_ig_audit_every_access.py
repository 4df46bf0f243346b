"""Issue 17 item 1: every access is audited BALP-style on the hash chain, in the access's own
transaction (create, update, read, vread, history, search, transaction, Person, the GP
reading its notifications, the IG officer's own searches, refusals, linkage decisions,
login and logout), and each search parameter of AuditEvent finds it."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.audit import balp
from app.auth.tokens import Principal
from app.errors import FhirError
from tests.conftest import FHIR_JSON, GP_ORG, MATERNITY_ORG
from tests.fhirdata import family_bundle, nhs_numbers, patient

NHS_NUMBERS = nhs_numbers(710_000)
IG = ("ig-officer", "X26")


def _events(live, **params) -> list[dict]:
    r = live.client(*IG).get("/AuditEvent", params={"_count": 500, **params})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _subtypes(event: dict) -> set[str]:
    return {c["code"] for c in event["subtype"]}


def _one(live, **params) -> dict:
    found = _events(live, **params)
    assert len(found) == 1, (params, [(_subtypes(e), e.get("outcomeDesc")) for e in found])
    return found[0]


def test_each_rest_interaction_writes_its_balp_event(live):
    src = live.source(MATERNITY_ORG, "maternity")
    nhs = next(NHS_NUMBERS)
    r = src.post("/Patient", content=json.dumps(patient("Ashdown", "Imogen", nhs=nhs)), headers=FHIR_JSON)
    assert r.status_code == 201
    pid = r.json()["id"]
    ref = f"Patient/{pid}"
    created = _one(live, entity=ref, subtype="create")
    assert created["action"] == "C" and created["type"]["code"] == "rest"
    assert {"http://hl7.org/fhir/restful-interaction"} <= {c["system"] for c in created["subtype"]}
    assert created["agent"][0]["who"]["identifier"]["value"] == "source-system@RMT01"
    # the data subject is named by reference and NHS number
    assert {(e.get("what") or {}).get("reference") or e["what"]["identifier"]["value"] for e in created["entity"]
            if e["role"]["code"] == "1"} == {ref, nhs}

    body = r.json()
    body["name"][0]["given"] = ["Imogen", "Rose"]
    assert src.put(f"/Patient/{pid}", content=json.dumps(body), headers=FHIR_JSON).status_code == 200
    assert _one(live, entity=ref, subtype="update")["action"] == "U"

    assert src.get(f"/Patient/{pid}").status_code == 200
    assert _one(live, entity=ref, subtype="read")["action"] == "R"
    assert src.get(f"/Patient/{pid}/_history/1").status_code == 200
    assert _one(live, entity=ref, subtype="vread")["entity"][-1]["detail"] == [{"type": "version", "valueString": "1"}]
    assert src.get(f"/Patient/{pid}/_history").status_code == 200
    history = _one(live, entity=ref, subtype="history-instance")
    assert [d["valueString"] for e in history["entity"] if e["role"]["code"] == "4" for d in e["detail"]] == ["2", "1"]
    assert src.get("/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"}).status_code == 200
    assert src.post("/Patient/_search", content="family=Ashdown", headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
    searches = _events(live, entity=ref, subtype="search-type")
    assert len(searches) == 2 and all(e["action"] == "E" for e in searches)
    assert any("Ashdown" in __import__("base64").b64decode(q["query"]).decode() for e in searches for q in e["entity"] if "query" in q)
    # all of them are found again by the data subject's NHS number
    assert {s for e in _events(live, patient=nhs) for s in _subtypes(e)} >= {"create", "update", "read", "vread", "history-instance", "search-type"}


def test_a_transaction_is_one_event_naming_every_record_it_wrote(live):
    src = live.source(GP_ORG, "general-practice")
    nhs = next(NHS_NUMBERS)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": patient("Brackley", "Owen", nhs=nhs, gender="male"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]}},
         "request": {"method": "POST", "url": "Condition"}},
    ]}
    r = src.post("", content=json.dumps(bundle), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    refs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
    event = _one(live, entity=refs[1], subtype="transaction")
    assert [e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "4"] == refs
    # the Condition is the Patient's: found by the patient's record and by the NHS number
    assert event["id"] in {e["id"] for e in _events(live, patient=refs[0])}
    assert event["id"] in {e["id"] for e in _events(live, patient=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}")}


def test_refusals_notifications_person_reads_and_ig_searches_are_audited(live):
    gp = live.source(GP_ORG, "general-practice")
    # the GP system reading its notifications
    assert gp.get("/Communication").status_code == 200
    read_notes = _one(live, agent="source-system@A99001", subtype="search-type")
    assert "Communication?" in __import__("base64").b64decode(read_notes["entity"][0]["query"]).decode()
    # an IG officer refused clinical records: refused, and the refusal audited (outcome 4)
    ig = live.client(*IG)
    for path in ("/Condition", "/Patient", "/Condition/some-id", "/Patient/some-id"):
        r = ig.get(path)
        assert r.status_code == 403 and r.json()["issue"][0]["details"]["coding"][0]["code"] == "ACCESS_DENIED"
    refused = _events(live, agent="ig-officer@X26", outcome="4")
    assert len(refused) == 4 and {next(iter(_subtypes(e) - {"read", "search-type"}), None) for e in refused} == {None}
    assert {e["entity"][-1]["what"]["reference"] for e in refused if e["entity"][-1].get("what")} >= {"Condition/some-id", "Patient/some-id"}
    # the IG officer's own searches are on the chain too
    mine = _events(live, agent="ig-officer@X26", outcome="0", subtype="search-type")
    assert len(mine) >= 2
    # an administrator reading a linked person
    src = live.source(MATERNITY_ORG, "maternity")
    pid = src.post("/Patient", content=json.dumps(patient("Corley", "Nia", nhs=next(NHS_NUMBERS))), headers=FHIR_JSON).json()["id"]
    admin = live.client("admin", "X26")
    found = admin.get("/Person", params={"link": f"Patient/{pid}"}).json()
    person = found["entry"][0]["resource"]["id"]
    assert admin.get(f"/Person/{person}").status_code == 200
    read = _one(live, entity=f"Person/{person}", subtype="read")
    assert f"Patient/{pid}" in {(e.get("what") or {}).get("reference") for e in read["entity"]}
    assert len(_events(live, entity=f"Person/{person}", subtype="search-type")) == 1


def test_linkage_decisions_automatic_and_by_an_administrator_are_audited(live):
    nhs = next(NHS_NUMBERS)
    gp = live.source(GP_ORG, "general-practice")
    mat = live.source(MATERNITY_ORG, "maternity")
    a = gp.post("/Patient", content=json.dumps(patient("Denholm", "Ruth", nhs=nhs)), headers=FHIR_JSON).json()["id"]
    b = mat.post("/Patient", content=json.dumps(patient("Denholm", "Ruth", nhs=nhs)), headers=FHIR_JSON).json()["id"]
    auto = _one(live, entity=f"Patient/{b}", subtype="linkage-auto")
    detail = {d["type"]: d["valueString"] for e in auto["entity"] if e.get("detail") for d in e["detail"]}
    assert detail["action"] == "join" and detail["person"].startswith("Person/")
    admin = root_client(live, "admin", "X26")
    r = admin.post("/linkage/unlink", content=json.dumps({"record": f"Patient/{b}", "reason": "a different Ruth Denholm"}),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    unlinked = _one(live, entity=f"Patient/{b}", subtype="linkage-unlink")
    assert unlinked["agent"][0]["who"]["identifier"]["value"] == "admin@X26" and "a different Ruth" in unlinked["outcomeDesc"]
    assert f"Patient/{a}" in {(e.get("what") or {}).get("reference") for e in unlinked["entity"]}


def root_client(live, role: str, org: str) -> httpx.Client:
    return httpx.Client(base_url=live.base_url, headers={"Authorization": f"Bearer {live.token(role, org)}"}, timeout=30)


def test_login_and_logout_hooks_write_their_events(live):
    db = live.app.state.db
    officer = Principal(sub="ig-jane", role="ig-officer", org="X26")
    with db.session() as s:
        balp.record(s, balp.session_event(officer, "login", request_id="req-1"))
        balp.record(s, balp.session_event(None, "login", succeeded=False, reason="wrong password", user="mallory"))
        balp.record(s, balp.session_event(officer, "logout"))
    assert len(_events(live, type="110114", agent="ig-jane")) == 2
    login = _one(live, type="http://dicom.nema.org/resources/ontology/DCM|110114", subtype="login", agent="ig-jane")
    assert {c["code"] for c in login["subtype"]} == {"110122", "login"}
    failed = _one(live, subtype="login", outcome="4")
    assert failed["agent"][0]["who"]["identifier"]["value"] == "mallory"


def test_the_policy_in_force_is_audited_when_it_changes(live):
    """A server that starts with another disclosure policy than the audit last recorded records
    the change; a restart with the same policy does not repeat it."""
    from consent import load_policy

    changes = _events(live, subtype="policy-change")
    assert len(changes) == 1 and changes[0]["outcome"] == "0"
    version = load_policy().version
    assert {"url": balp.EXT_POLICY_VERSION, "valueString": version} in changes[0]["extension"]
    with live.app.state.db.session() as s:
        assert balp.record_policy_in_force(s, version, "baseline.yaml") is False
        assert balp.record_policy_in_force(s, "9.9.9", "edited.yaml") is True
    newest = _events(live, subtype="policy-change")[0]
    assert "9.9.9 in force (was " in newest["outcomeDesc"] and newest["entity"][0]["what"]["reference"].endswith("/policy/edited.yaml")


def test_date_and_purpose_search_and_the_chain_verifies(live, capsys):
    src = live.source(MATERNITY_ORG, "maternity")
    before = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert src.post("/Patient", content=json.dumps(patient("Ellery", "May", nhs=next(NHS_NUMBERS))), headers=FHIR_JSON).status_code == 201
    created = _events(live, subtype="create", date=f"ge{before}Z")
    assert len(created) == 1
    assert _events(live, subtype="create", date="lt2020-01-01") == []
    assert _events(live, purpose="THREAT") == []  # no safeguarding view yet
    from app import cli

    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 0
    assert "intact" in capsys.readouterr().out


def test_a_write_whose_audit_cannot_be_written_is_not_made(live):
    eng = create_engine(live.settings.database_url)
    with eng.begin() as c:
        if eng.dialect.name == "postgresql":
            c.execute(text("CREATE FUNCTION break_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END; $$ LANGUAGE plpgsql"))
            c.execute(text("CREATE TRIGGER break_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION break_audit()"))
        else:
            c.execute(text("CREATE TRIGGER break_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"))
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", content=json.dumps(patient("Fairley", "Joan", nhs=next(NHS_NUMBERS))), headers=FHIR_JSON)
    assert r.status_code == 503 and r.json()["issue"][0]["code"] == "transient"
    assert r.headers.get("retry-after") == "1"  # a transient 503 the client retries, as every other
    # a Bundle too (on PostgreSQL its audit goes in the round trip of its inserts): refused whole
    r = src.post("", content=json.dumps(family_bundle()), headers=FHIR_JSON)
    assert r.status_code == 503 and r.json()["issue"][0]["code"] == "transient"
    with eng.begin() as c:
        assert c.execute(text("SELECT count(*) FROM resource")).scalar() == 0
        assert c.execute(text("SELECT count(*) FROM search_token")).scalar() == 0
    eng.dispose()


def test_events_appended_together_make_the_same_chain(database, capsys):
    """record_many (bulk append) chains as record does one by one: verify holds, search rows found."""
    from app.audit.service import verify

    someone = Principal(sub="gp-1@A99001", role="gp", org="A99001")
    with database.session() as s:
        balp.record(s, balp.AccessEvent(someone, "read").entity("Patient/a").about(["Patient/a"]))
    with database.session() as s:
        balp.record_many(s, [balp.AccessEvent(someone, "read").entity(f"Patient/b{i}").about([f"Patient/b{i}", "9990000018"]) for i in range(5)])
    with database.session() as s:
        balp.record(s, balp.AccessEvent(someone, "read").entity("Patient/c"))
    with database.session(readonly=True) as s:
        result = verify(s)
        assert result.ok and result.checked == 7, result
        found = s.execute(text("SELECT count(DISTINCT event_seq) FROM audit_index WHERE param = 'patient' AND value = '9990000018'")).scalar()
    assert found == 5


@pytest.mark.parametrize("kind, own", [("IntegrityError", True), ("DataError", True), ("OperationalError", True),
                                       ("InternalError", False), ("ProgrammingError", False)])
def test_a_failure_of_writes_sent_with_their_audit_is_answered_as_the_writes_or_as_the_audit(kind, own):
    """On PostgreSQL a write's audit goes in the round trip of its inserts: an error the inserts
    can raise (a key another writer took, a value too long, the connection) keeps its meaning (a
    retry, a 400, a 503), and any other is the audit's: 503, nothing written."""
    import sqlalchemy.exc as sa_exc

    err = getattr(sa_exc, kind)("INSERT ...", None, Exception("boom"))
    answer = balp.writes_failed(err)
    if own:
        assert answer is err
    else:
        assert isinstance(answer, FhirError) and answer.status == 503 and answer.headers.get("Retry-After") == "1"
