"""Issue 17 item 4: the audit export (NDJSON and CSV, a period, streamed, the export itself
audited), and one rule for formats on every route: an unsupported `_format` or `Accept` is
a 406 OperationOutcome, never JSON with a 200."""
from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from app.audit.service import chain_hash, sealed_facts_of_body
from app.ig.export import CSV_COLUMNS
from tests.conftest import FHIR_JSON, MATERNITY_ORG
from tests.fhirdata import nhs_numbers, patient

NHS_NUMBERS = nhs_numbers(711_000)


def root(live, role: str = "ig-officer", org: str = "X26", service: str | None = None, **headers) -> httpx.Client:
    return httpx.Client(base_url=live.base_url, headers={"Authorization": f"Bearer {live.token(role, org, service)}", **headers}, timeout=30)


def _write(live, n: int) -> None:
    src = live.source(MATERNITY_ORG, "maternity")
    for _ in range(n):
        r = src.post("/Patient", content=json.dumps(patient("Gatley", "Ivy", nhs=next(NHS_NUMBERS))), headers=FHIR_JSON)
        assert r.status_code == 201


def test_export_ndjson_is_the_chain_in_order_and_csv_its_columns(live):
    _write(live, 3)
    ig = root(live)
    r = ig.get("/ig/audit/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+ndjson")
    events = [json.loads(line) for line in r.text.splitlines()]
    # the policy in force at start-up, 3 creates and this export
    assert len(events) == 5 and all(e["resourceType"] == "AuditEvent" for e in events)
    assert {c["code"] for c in events[0]["subtype"]} == {"policy-change", "operation"}
    # the lines are the stored bodies in chain order: the chain can be recomputed from the export and the CSV
    c = ig.get("/ig/audit/export", params={"format": "csv"})
    assert c.status_code == 200 and c.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(c.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {row["id"]: row for row in rows}
    prev = "0" * 64
    for line, e in zip(r.text.splitlines(), events):
        row = by_id[e["id"]]
        assert row["prev_hash"] == prev
        recorded = row["recorded"][:-1] + "000Z"  # the chain hashes the instant to the microsecond
        # form 2: the hash seals the searchable columns and search rows, as the body implies them
        assert row["hash_form"] == "2"
        assert chain_hash(prev, e["id"], recorded, line, sealed_facts_of_body(e)) == row["hash"]
        prev = row["hash"]
    assert {"create"} <= {row["subtype"] for row in rows}
    # the exports themselves are audited
    assert sum(1 for row in rows if row["subtype"] == "audit-export") >= 1
    for how in ({"params": {"_format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        assert ig.get("/ig/audit/export", **how).headers["content-type"].startswith("text/csv")


def test_export_takes_a_period(live):
    _write(live, 1)
    ig = root(live)
    everything = ig.get("/ig/audit/export").text.splitlines()
    first = json.loads(everything[0])["recorded"]
    assert ig.get("/ig/audit/export", params={"to": "2020-01-01"}).text == ""
    assert ig.get("/ig/audit/export", params={"from": "2999-01-01"}).text == ""
    day = first[:10]
    assert len(ig.get("/ig/audit/export", params={"from": day, "to": day}).text.splitlines()) >= len(everything)
    for bad in ({"from": "yesterday"}, {"to": "2026-13-01"}, {"format": "xml"}, {"colour": "red"}, {"from": ["2026-01-01", "2026-01-02"]}):
        r = ig.get("/ig/audit/export", params=bad)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", bad


def test_only_ig_officers_export(live):
    for role, org, service in (("health-visitor", "RHV01", None), ("admin", "X26", None), ("source-system", MATERNITY_ORG, "maternity")):
        r = root(live, role, org, service).get("/ig/audit/export")
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"


ROUTES = [
    ("source-system", MATERNITY_ORG, "maternity", "/fhir/Patient"),
    ("source-system", MATERNITY_ORG, "maternity", "/fhir/Patient/some-id"),
    ("ig-officer", "X26", None, "/fhir/AuditEvent"),
    ("ig-officer", "X26", None, "/ig/reviews"),
    ("admin", "X26", None, "/linkage/candidates"),
    ("health-visitor", "RHV01", None, "/fhir/Patient/$family-view?identifier=https://fhir.nhs.uk/Id/nhs-number|9990002118&purpose=direct-care"),
    (None, None, None, "/fhir/metadata"),
]


@pytest.mark.parametrize("role,org,service,path", ROUTES)
def test_an_unsupported_format_is_406_on_every_route(live, role, org, service, path):
    client = root(live, role, org, service) if role else httpx.Client(base_url=live.base_url, timeout=30)
    sep = "&" if "?" in path else "?"
    for url, headers in ((f"{path}{sep}_format=xml", {}), (f"{path}{sep}_format=csv", {}), (path, {"Accept": "text/csv"}),
                         (path, {"Accept": "application/fhir+xml"}), (path, {"Accept": "application/fhir+json;q=0, text/csv"})):
        r = client.get(url, headers=headers)
        assert r.status_code == 406, (url, headers, r.status_code)
        body = r.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "not-supported"
    for url, headers in ((f"{path}{sep}_format=json", {}), (f"{path}{sep}_format=application/fhir%2Bjson", {}),
                         (path, {"Accept": "application/fhir+json"}), (path, {"Accept": "*/*"}),
                         (path, {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}), (path, {"Accept": "application/json"})):
        r = client.get(url, headers=headers)
        assert r.status_code != 406, (url, headers)


def test_export_refuses_fhir_json(live):
    r = root(live, Accept="application/fhir+json").get("/ig/audit/export")
    assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome"


def test_export_csv_quotes_and_defuses_awkward_cells_as_csv_writer_does(database):
    """The export writes plain rows itself and only awkward ones through csv.writer: every row,
    plain or awkward, must come out byte for byte as csv.writer (QUOTE_MINIMAL) writes it, and
    read back to the values stored (formula cells defused)."""
    from app.audit import balp
    from app.auth.tokens import Principal
    from app.ig import export
    from app.ig.disclosure import safe_cell

    subs = ["plain-user@RHV01", 'comma, "quoted" user', "line\nbreak", "carriage\rreturn", "=HYPERLINK(1)", "+1", "-1", "@x", "\ttab"]
    with database.session() as s:
        for sub in subs:
            balp.record(s, balp.AccessEvent(Principal(sub=sub, role="gp", org="A99001"), "read", request_id="r"))
    body = b"".join(export.csv_rows(database, None, batch=4)).decode()
    rows = list(csv.reader(io.StringIO(body, newline="")))
    ours = [r for r in rows[1:] if r[CSV_COLUMNS.index("subtype")] == "read"]
    assert rows[0] == list(CSV_COLUMNS) and len(ours) == len(subs)
    assert [r[CSV_COLUMNS.index("agent")] for r in ours] == [safe_cell(sub) for sub in subs]
    reference = io.StringIO()
    csv.writer(reference, lineterminator="\r\n").writerows(rows)
    assert body == reference.getvalue()


def test_a_long_read_keeps_a_small_page_cache_and_gives_the_connection_its_own_back(database, monkeypatch):
    """SQLite reads past mmap's 2 GiB through the connection's page cache: an export (or the
    audit walk) reads with a small one, so that a million events do not fill 64 MiB of the
    process's memory, and the connection has its own size again for its next user."""
    from contextlib import contextmanager

    import app.ig.export as export
    from app.audit import balp
    from app.auth.tokens import Principal
    from app.db import scan_cache

    if database.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's cache is the server's")

    def cache_kib(conn) -> int:
        return -conn.exec_driver_sql("PRAGMA cache_size").scalar()

    with database.engine.connect() as conn:
        assert cache_kib(conn) == 65536
        with scan_cache(conn):
            assert cache_kib(conn) == 2048
        assert cache_kib(conn) == 65536
    during = []

    @contextmanager
    def watched(conn):
        with scan_cache(conn):
            during.append(cache_kib(conn))
            yield

    with database.session() as s:
        balp.record(s, balp.AccessEvent(Principal(sub="gp-1@A99001", role="gp", org="A99001"), "read", request_id="r"))
    monkeypatch.setattr(export, "scan_cache", watched)
    assert len(b"".join(export.ndjson(database, None)).splitlines()) >= 1 and during == [2048]
