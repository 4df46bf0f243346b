"""Issue 18, the input side: bounded searches (finding 1), paging numbers (6), one answer for
"not found or not yours" (8), and what a resource may hold (9). Each cap answers a 400
OperationOutcome naming the parameter or element, on SQLite and PostgreSQL, and writes nothing."""
from __future__ import annotations

import logging
import threading
import uuid
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.identifiers import is_valid_nhs_number
from tests.conftest import HV_ORG, MATERNITY_ORG, OTHER_ORG, make_settings, start_server
from tests.fhirdata import bundle, entry, nhs_numbers, patient

CT = {"Content-Type": "application/fhir+json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"
_NUMBERS = nhs_numbers(740_000)


def nhs() -> str:
    return next(_NUMBERS)


def _issue(r: httpx.Response) -> dict:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", r.text
    return body["issue"][0]


def _too_costly(r: httpx.Response, where: str) -> None:
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert issue["code"] == "too-costly", issue
    assert any(where in e for e in issue.get("expression", [])), issue


def _total(client: httpx.Client, res_type: str) -> int:
    return client.get(f"/{res_type}", params={"_count": 0}).json()["total"]


# ---------------------------------------------------------------- finding 1: bounded searches

def test_a_thousand_name_terms_are_refused_before_they_reach_the_database(live, caplog):
    """`name=a0&...&name=a999` ran for minutes on PostgreSQL and was a 500 with a 2,000-line
    traceback on SQLite ("Expression tree is too large"): now a 400 at once, on every way in."""
    src = live.source(MATERNITY_ORG, "maternity")
    terms = [("name", f"a{i}") for i in range(1000)]
    with caplog.at_level(logging.WARNING, logger="familyview"):
        _too_costly(src.get("/Patient", params=terms), "Patient")
        _too_costly(src.post("/Patient/_search", content=urlencode(terms), headers=FORM), "Patient")
        one_name = [("name", ",".join(f"a{i}" for i in range(1000)))]
        _too_costly(src.get("/Patient", params=one_name), "Patient")
        b = bundle([{"request": {"method": "GET", "url": "Patient?" + urlencode(terms[:30])}}], "batch")
        r = src.post("", json=b, headers=CT)
        assert r.status_code == 200, r.text
        assert r.json()["entry"][0]["response"]["status"].startswith("400")
    assert "Expression tree" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("params, where", [
    ([("name", f"n{i}") for i in range(2)] + [("family", f"f{i}") for i in range(3)]
     + [("_id", f"i{i}") for i in range(4)] + [("gender", "male")] * 4 + [("birthdate", "ge1990")] * 4
     + [("identifier", "x")] * 4, "Patient"),  # 21 parameters
    ([("family", "a")] * 5, "Patient?family"),  # one parameter repeated five times
    ([("_id", ",".join(f"i{i}" for i in range(51)))], "Patient"),  # 51 alternatives
    ([("family", "x" * 257)], "Patient?family"),  # a value longer than any name
    ([("identifier", "https://x.example/" + "s" * 300 + "|1")], "Patient?identifier"),
])
def test_each_search_cap_is_a_400_naming_what_broke_it(live, params, where):
    src = live.source(MATERNITY_ORG, "maternity")
    _too_costly(src.get("/Patient", params=params), where)


def test_a_search_at_every_cap_is_answered_on_both_databases(live):
    """20 parameters with 50 alternatives in all, the most the caps allow, and a reference
    search to a record carrying the most identifiers a resource may hold: each alternative
    is a subquery (and each identifier a logical-reference match) that once overflowed
    SQLite's expression tree."""
    src = live.source(MATERNITY_ORG, "maternity")
    mother = patient("Capwell", "Hana", nhs=nhs())
    mother["identifier"] += [{"system": "https://test.example.nhs.uk/Id/alias", "value": f"alias-{i}"} for i in range(18)]
    assert len(mother["identifier"]) == 20
    r = src.post("/Patient", json=mother, headers=CT)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    for i in range(3):  # logical references by one of her identifiers, and literal ones
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": f"obs {i}"},
               "subject": {"identifier": {"system": "https://test.example.nhs.uk/Id/alias", "value": f"alias-{i}"}} if i else {"reference": f"Patient/{pid}"}}
        assert src.post("/Observation", json=obs, headers=CT).status_code == 201
    params = ([("family", ",".join(["Capwell"] + [f"Zz{i}" for i in range(6)]))] * 4
              + [("given", "Hana,Hanna")] * 4 + [("birthdate", "ge1990-01-01"), ("birthdate", "le2000-01-01")]
              + [("gender", "female,male")] * 4 + [("_lastUpdated", "ge2000-01-01")] * 2 + [("_count", "10"), ("_sort", "_id")]
              + [("identifier", f"{NHS}|{mother['identifier'][0]['value']}")] * 2)
    assert len(params) == 20
    r = src.get("/Patient", params=params)
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [pid]
    refs = ",".join([f"Patient/{pid}"] + [f"Patient/other-{i}" for i in range(49)])
    r = src.get("/Observation", params={"subject": refs})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 3


def test_an_unexpected_database_error_logs_no_sql_and_no_traceback(live, caplog):
    """The last-resort 500 names the request id; the log says which exception and where, never
    the statement (which carries the parameters' shape and values) nor a traceback."""
    src = live.source(MATERNITY_ORG, "maternity")
    assert src.post("/Patient", json=patient("Logless", "Ida", nhs=nhs()), headers=CT).status_code == 201
    engine = create_engine(live.settings.database_url)
    with engine.begin() as c:
        c.execute(text("DROP TABLE search_string"))
    engine.dispose()
    with caplog.at_level(logging.DEBUG, logger="familyview"):
        r = src.get("/Patient", params={"family": "Logless"}, headers={"X-Request-ID": "no-sql-here"})
    assert r.status_code == 500, r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.name.startswith("familyview"))
    assert "no-sql-here" in logged and ("ProgrammingError" in logged or "OperationalError" in logged), logged
    for leak in ("SELECT", "search_string", "Logless", "logless", "Traceback", "[SQL"):
        assert leak not in logged, (leak, logged)
    assert all(rec.exc_info is None for rec in caplog.records), "a traceback was attached to a log record"


@pytest.mark.postgres
def test_postgres_statement_timeout_stops_a_request_with_503(tmp_path, sqlite_template, pg_template, key_path, caplog):
    """Every statement of a request is bounded by `statement_timeout_ms`: a search held up (here
    by a lock another session holds on the store) is stopped and answered 503, not left to
    hold a connection for minutes; nothing of the statement reaches the log."""
    from tests.conftest import new_database_url

    url, drop = new_database_url("postgres", tmp_path, sqlite_template, pg_template)
    settings = make_settings(url, key_path, statement_timeout_ms=300)
    base, app, server, stop = start_server(settings)
    try:
        with app.state.db.engine.connect() as c:
            assert c.execute(text("SHOW statement_timeout")).scalar() == "300ms"
        from app.auth.tokens import mint_token

        token = mint_token(settings, role="source-system", org=MATERNITY_ORG, service="maternity")
        client = httpx.Client(base_url=base + "/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        locker = create_engine(url)
        hold, release = threading.Event(), threading.Event()

        def lock_store():
            with locker.begin() as c:
                c.execute(text("LOCK TABLE resource IN ACCESS EXCLUSIVE MODE"))
                hold.set()
                release.wait(10)

        t = threading.Thread(target=lock_store)
        t.start()
        assert hold.wait(10)
        try:
            with caplog.at_level(logging.DEBUG, logger="familyview"):
                r = client.get("/Patient", params={"family": "Slowcoach"})
        finally:
            release.set()
            t.join()
            locker.dispose()
        assert r.status_code == 503, r.text
        assert _issue(r)["code"] == "too-costly" and r.headers.get("retry-after")
        assert "SELECT" not in caplog.text and "Slowcoach" not in caplog.text
        assert client.get("/Patient", params={"family": "Slowcoach"}).status_code == 200  # the next request is served
        client.close()
    finally:
        stop()
        drop()


# ---------------------------------------------------------------- finding 6: paging numbers

@pytest.mark.parametrize("name, value", [("_offset", "99999999999999999999"), ("_count", "\u00b2"), ("_offset", "\u0663"),
                                         ("_count", "1" * 31), ("_offset", "-5"), ("_count", "\uff11")])
def test_audit_paging_that_is_no_ascii_whole_number_is_400(live, name, value):
    ig = live.client("ig-officer", "X26")
    r = ig.get("/AuditEvent", params={name: value})
    assert r.status_code == 400, r.text
    assert _issue(r)["expression"] == [name]


# ---------------------------------------------------------------- finding 8: not found or not yours

def test_another_organisations_record_reads_as_not_known(live):
    """403 for a record another organisation sent and 404 for one never sent told a reader which
    ids exist; both are now the same 404 with the same words (read, vread and history)."""
    src = live.source(MATERNITY_ORG, "maternity")
    pid = src.post("/Patient", json=patient("Elsewhere", "Jo", nhs=nhs()), headers=CT).json()["id"]
    gp = live.client("gp", OTHER_ORG)
    for path in (f"/Patient/{pid}", f"/Patient/{pid}/_history", f"/Patient/{pid}/_history/1"):
        theirs = gp.get(path)
        missing = gp.get(path.replace(pid, "no-such-id"))
        assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
        assert _issue(theirs)["diagnostics"].replace(pid, "X") == _issue(missing)["diagnostics"].replace("no-such-id", "X")
    assert src.get(f"/Patient/{pid}").status_code == 200


def _infant_nhs(live) -> str:
    number = nhs()
    src = live.source(MATERNITY_ORG, "maternity")
    baby = patient("Newborn", "Ola", nhs=number, birth=__import__("datetime").date.today().isoformat())
    assert src.post("/Patient", json=baby, headers=CT).status_code == 201
    return number


def test_family_view_of_an_unknown_infant_is_the_same_403_as_one_without_a_relationship(live):
    """DESIGN: 403 where the requester has no legitimate relationship. Unknown and known NHS
    numbers now get that one answer, so an unrelated practitioner learns nothing of who exists;
    with a lawful route (the MASH breaking the glass) the unknown one is a 404."""
    known, unknown = _infant_nhs(live), nhs()
    hv = live.client("health-visitor", OTHER_ORG)

    def view(number: str, **extra):
        return hv.get("/Patient/$family-view", params={"identifier": f"{NHS}|{number}", "purpose": "direct-care", **extra})

    a, b = view(known), view(unknown)
    assert a.status_code == b.status_code == 403, (a.text, b.text)
    assert _issue(a)["diagnostics"] == _issue(b)["diagnostics"]
    assert _issue(a)["code"] == _issue(b)["code"] == "forbidden"
    assert b.headers.get("x-audit-event")  # the refusal is audited like any other
    by_id = hv.get("/Patient/no-such-id/$family-view", params={"purpose": "direct-care"})
    assert by_id.status_code == 403 and _issue(by_id)["diagnostics"] == _issue(a)["diagnostics"]
    mash = live.client("mash", OTHER_ORG)  # the MASH may break the glass for any child: it is told the truth
    r = mash.get("/Patient/$family-view", params={"identifier": f"{NHS}|{unknown}", "purpose": "safeguarding",
                                                   "justification": "Bruising reported by the nursery"})
    assert r.status_code == 404, r.text


# ---------------------------------------------------------------- finding 9: what a resource may hold

@pytest.mark.parametrize("number", ["0000000000", "1111111111", "9999999999", "5555555555"])
def test_an_nhs_number_of_one_digit_ten_times_is_refused(live, number):
    assert not is_valid_nhs_number(number)
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json=patient("Placeholder", "Una", nhs=number), headers=CT)
    assert r.status_code == 422, r.text
    assert _issue(r)["expression"] == ["Patient.identifier[0].value"]
    assert _total(src, "Patient") == 0


def test_nhs_number_rule():
    assert is_valid_nhs_number("9990002118")
    for bad in ("0000000000", "1111111111", "999000211", "99900021180", "999000211X", "\u0669990002118", " 9990002118", None, 9990002118):
        assert not is_valid_nhs_number(bad), bad


def _with(**fields) -> dict:
    return {**patient("Sizewell", "Vic", nhs=nhs()), **fields}


@pytest.mark.parametrize("resource, where", [
    (_with(name=[{"family": "F" * (9 * 1024 * 1024), "given": ["Vic"]}]), "Patient.name[0].family"),
    (_with(name=[{"family": "F" * 201, "given": ["Vic"]}]), "Patient.name[0].family"),
    (_with(name=[{"family": "Sizewell", "given": ["Vic", "G" * 201]}]), "Patient.name[0].given[1]"),
    (_with(contact=[{"name": {"text": "T" * 201}}]), "Patient.contact[0].name.text"),
    (_with(identifier=[{"system": "https://test.example.nhs.uk/Id/patient", "value": f"p{i}"} for i in range(21)]), "Patient.identifier"),
    (_with(telecom=[{"system": "phone", "value": f"0770090{i:04d}"} for i in range(101)]), "Patient.telecom"),
    ({"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "valueString": "x" * 70_000}, "Observation.valueString"),
])
def test_oversized_parts_of_a_resource_are_400_and_nothing_is_written(live, resource, where):
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post(f"/{resource['resourceType']}", json=resource, headers=CT)
    _too_costly(r, where)
    assert len(r.content) < 2000  # the refusal does not echo the value
    assert _total(src, resource["resourceType"]) == 0
    # in a transaction, the whole Bundle is refused
    r = src.post("", json=bundle([entry(patient("Fine", "Fay", nhs=nhs())), entry(resource)]), headers=CT)
    assert r.status_code == 400, r.text
    assert _total(src, "Patient") == 0


def test_sizes_within_the_limits_are_stored(live):
    src = live.source(MATERNITY_ORG, "maternity")
    p = _with(name=[{"family": "F" * 200, "given": ["G" * 200]}],
              identifier=[{"system": "https://test.example.nhs.uk/Id/patient", "value": f"p{i}"} for i in range(20)])
    assert src.post("/Patient", json=p, headers=CT).status_code == 201
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "valueString": "x" * 65_536}
    assert src.post("/Observation", json=obs, headers=CT).status_code == 201


def test_a_20000_character_justification_is_refused_and_audited_short(live):
    number = _infant_nhs(live)
    hv = live.client("health-visitor", HV_ORG)
    params = {"identifier": f"{NHS}|{number}", "purpose": "safeguarding"}
    r = hv.get("/Patient/$family-view", params={**params, "justification": "j" * 20_000})
    _too_costly(r, "justification")
    event = r.headers["x-audit-event"]
    audit = live.client("ig-officer", "X26").get(f"/{event}").text
    assert "j" * 2001 not in audit
    r = hv.get("/Patient/$family-view", params={**params, "justification": "j" * 2000})
    assert r.status_code != 400, r.text


@pytest.mark.parametrize("reference", [
    "http://evil.example/fhir/Patient/123",
    "https://evil.example/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9990002118",
    "ftp://evil.example/Patient/1",
    "urn:isbn:0451450523",
])
def test_references_to_other_servers_are_refused(live, reference):
    """A source names a record elsewhere by identifier; a literal reference is to this server
    (relative, or its own base URL), a Bundle entry or a contained resource."""
    src = live.source(MATERNITY_ORG, "maternity")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": reference}}
    r = src.post("/Observation", json=obs, headers=CT)
    assert r.status_code == 422, r.text
    assert _issue(r)["expression"] == ["Observation.subject.reference"]
    r = src.post("", json=bundle([entry(patient("Kept", "Out", nhs=nhs())), entry(obs)]), headers=CT)
    assert r.status_code == 422, r.text
    assert _total(src, "Observation") == 0 and _total(src, "Patient") == 0


def test_references_to_this_server_relative_or_absolute_and_logical_ones_are_kept(live):
    src = live.source(MATERNITY_ORG, "maternity")
    pid = src.post("/Patient", json=patient("Homebase", "Ava", nhs=nhs()), headers=CT).json()["id"]
    for subject in ({"reference": f"Patient/{pid}"}, {"reference": f"{live.fhir}/Patient/{pid}"},
                    {"identifier": {"system": NHS, "value": nhs()}}):
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": subject}
        r = src.post("/Observation", json=obs, headers=CT)
        assert r.status_code == 201, r.text
        if "reference" in subject:
            assert r.json()["subject"]["reference"] == f"Patient/{pid}"


# ---------------------------------------------------------------- finding 4: R and V on REST reads

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SECRET_ADDRESS = {"use": "home", "line": ["7 Refuge Row"], "city": "Safehaven", "postalCode": "LS98 1ZZ"}
SECRET_PHONE = {"system": "phone", "value": "07700 900123", "use": "mobile"}


def _restricted_mother(number: str, label: str | None, local: str) -> dict:
    p = patient("Hidewell", "Rosa", nhs=number, local_id=local, address=[SECRET_ADDRESS], telecom=[SECRET_PHONE],
                generalPractitioner=[{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A99001"}}])
    if label:
        p["meta"] = {"security": [{"system": CONFIDENTIALITY, "code": label}]}
    return p


def _no_secrets(text_: str) -> None:
    for secret in ("Refuge Row", "LS98 1ZZ", "07700 900123"):
        assert secret not in text_, secret


@pytest.mark.parametrize("label", ["R", "V"])
def test_an_administrator_never_reads_a_restricted_persons_address_or_phone(live, label):
    """An administrator reads every organisation's people (to manage linkage), but a restricted
    (R) or very restricted (V) person's address, telecom and GP practice are withheld from
    anyone but the source that sent the record, as the family view withholds them: on search,
    read, vread, history, POST _search and a Bundle's GET entries."""
    number = nhs()
    mat = live.source(MATERNITY_ORG, "maternity")
    r = mat.post("/Patient", json=_restricted_mother(number, label, "m-" + number), headers=CT)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    admin = live.client("admin", "X26")
    responses = [
        admin.get("/Patient", params={"family": "Hidewell"}),
        admin.post("/Patient/_search", content=urlencode({"family": "Hidewell"}), headers=FORM),
        admin.get(f"/Patient/{pid}"),
        admin.get(f"/Patient/{pid}/_history/1"),
        admin.get(f"/Patient/{pid}/_history"),
        admin.post("", json=bundle([{"request": {"method": "GET", "url": f"Patient/{pid}"}},
                                     {"request": {"method": "GET", "url": "Patient?family=Hidewell"}}], "batch"), headers=CT),
    ]
    for resp in responses:
        assert resp.status_code == 200, resp.text
        _no_secrets(resp.text)
        assert "Hidewell" in resp.text and "REDACTED" in resp.text  # she is there, marked as redacted
    read = responses[2].json()
    assert "address" not in read and "telecom" not in read and "generalPractitioner" not in read
    # the source that sent the record reads it as sent
    own = mat.get(f"/Patient/{pid}")
    assert "Refuge Row" in own.text and "REDACTED" not in own.text


def test_the_label_is_the_persons_so_an_unlabelled_copy_is_redacted_too(live):
    """Maternity labels her R; her GP's record of her carries no label. Linkage joins them, and
    the administrator reads neither copy's address or phone (as in the family view)."""
    number = nhs()
    mat = live.source(MATERNITY_ORG, "maternity")
    assert mat.post("/Patient", json=_restricted_mother(number, "R", "m-" + number), headers=CT).status_code == 201
    gp = live.source("A99001", "general-practice")
    r = gp.post("/Patient", json=_restricted_mother(number, None, "g-" + number), headers=CT)
    assert r.status_code == 201, r.text
    gp_id = r.json()["id"]
    admin = live.client("admin", "X26")
    found = admin.get("/Patient", params={"identifier": f"{NHS}|{number}"})
    assert found.json()["total"] == 2
    _no_secrets(found.text)
    _no_secrets(admin.get(f"/Patient/{gp_id}").text)
    assert "Refuge Row" in gp.get(f"/Patient/{gp_id}").text  # the GP still reads its own record whole


def test_an_unlabelled_person_is_read_whole_by_an_administrator(live):
    mat = live.source(MATERNITY_ORG, "maternity")
    pid = mat.post("/Patient", json=_restricted_mother(nhs(), None, "u-" + uuid.uuid4().hex[:6]), headers=CT).json()["id"]
    r = live.client("admin", "X26").get(f"/Patient/{pid}")
    assert "Refuge Row" in r.text and "REDACTED" not in r.text


def test_a_restricted_related_person_is_redacted_for_an_administrator(live):
    mat = live.source(MATERNITY_ORG, "maternity")
    baby = mat.post("/Patient", json=patient("Cradle", "Mia", nhs=nhs()), headers=CT).json()["id"]
    rp = {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{baby}"},
          "meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"}]},
          "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}],
          "name": [{"family": "Hidewell", "given": ["Rosa"]}], "gender": "female", "birthDate": "1995-02-03",
          "address": [SECRET_ADDRESS], "telecom": [SECRET_PHONE]}
    r = mat.post("/RelatedPerson", json=rp, headers=CT)
    assert r.status_code == 201, r.text
    admin = live.client("admin", "X26")
    _no_secrets(admin.get("/RelatedPerson", params={"patient": f"Patient/{baby}"}).text)
    _no_secrets(admin.get(f"/RelatedPerson/{r.json()['id']}").text)


def test_a_restricted_mothers_home_and_phone_are_not_read_on_her_baby_or_her_partner(live):
    """Scenario 8 on the REST reads, as the family view does it: her baby's record (maternity's)
    carries her home and mobile, and so does the record of the partner she lives with; another
    organisation reads neither there, while what is the baby's own (another address) stays,
    and maternity reads its records whole."""
    mat = live.source(MATERNITY_ORG, "maternity")
    own_home = {"use": "old", "line": ["1 Nursery Lane"], "postalCode": "LS2 7AA"}
    baby = mat.post("/Patient", json=patient("Cradle", "Mia", nhs=nhs(), address=[SECRET_ADDRESS, own_home], telecom=[SECRET_PHONE]),
                    headers=CT).json()["id"]
    mother = _restricted_mother(nhs(), "R", "m-" + uuid.uuid4().hex[:6])
    mum = mat.post("/Patient", json=mother, headers=CT).json()["id"]
    mth = {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{baby}"},
           "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}],
           "identifier": mother["identifier"][:1], "name": mother["name"], "gender": "female", "birthDate": mother["birthDate"]}
    assert mat.post("/RelatedPerson", json=mth, headers=CT).status_code == 201
    partner = {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{mum}"},
               "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]}],
               "name": [{"family": "Cradle", "given": ["Sam"]}], "gender": "male", "address": [SECRET_ADDRESS],
               "telecom": [SECRET_PHONE, {"system": "phone", "value": "07700 900456"}]}
    partner_id = mat.post("/RelatedPerson", json=partner, headers=CT).json()["id"]
    admin = live.client("admin", "X26")
    for r in (admin.get(f"/Patient/{baby}"), admin.get("/Patient", params={"family": "Cradle"}),
              admin.get(f"/RelatedPerson/{partner_id}"), admin.get("/RelatedPerson", params={"patient": f"Patient/{mum}"})):
        assert r.status_code == 200, r.text
        _no_secrets(r.text)
        assert "REDACTED" in r.text
    read = admin.get(f"/Patient/{baby}").json()
    assert read["address"] == [own_home] and "telecom" not in read and read["name"][0]["family"] == "Cradle"
    assert admin.get(f"/RelatedPerson/{partner_id}").json()["telecom"] == [{"system": "phone", "value": "07700 900456"}]
    assert "Refuge Row" in mat.get(f"/Patient/{baby}").text and "Refuge Row" in mat.get(f"/RelatedPerson/{partner_id}").text
