"""Finding 10 (operations) of issue 18: liveness, readiness, Prometheus metrics (one worker and
several), JSON logs with request and correlation ids, security headers on every response,
`serve --workers N` and `make run PORT=…`."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.settings import PROJECT_ROOT
from tests.conftest import GP_ORG, HV_ORG, MATERNITY_ORG, free_port, make_settings, start_server
from tests.fhirdata import nhs_numbers, patient

CT = {"Content-Type": "application/fhir+json"}
_NHS = nhs_numbers(751_000)


def _samples(body: str, name: str) -> dict[str, float]:
    """{label text: value} of one metric in a Prometheus exposition."""
    out = {}
    for line in body.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def test_healthz_and_readyz_answer_without_a_token(live):
    r = httpx.get(live.base_url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(live.base_url + "/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["migrations"]["ok"] and checks["audit"]["ok"]
    assert checks["migrations"]["current"] == checks["migrations"]["expected"]


def test_readyz_is_503_when_migrations_are_behind_or_the_audit_cannot_be_read(backend, database_url, key_path):
    if backend != "sqlite":
        pytest.skip("the same checks; SQLite is enough to break them")
    s = make_settings(database_url, key_path)
    base, app, server, stop = start_server(s)
    engine = create_engine(database_url)
    try:
        with engine.begin() as c:
            head = c.execute(text("SELECT version_num FROM alembic_version")).scalar()
            c.execute(text("UPDATE alembic_version SET version_num = '0001_behind'"))
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["resourceType"] == "OperationOutcome", r.text
        assert [i["diagnostics"].split(" ")[2] for i in r.json()["issue"]] == ["migrations"], r.text
        assert httpx.get(base + "/healthz").status_code == 200  # alive, just not ready
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
            c.execute(text("ALTER TABLE audit_head RENAME TO audit_head_gone"))
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and r.json()["issue"][0]["diagnostics"] == "Not ready: audit error=OperationalError", r.text
        assert "SELECT" not in r.text and head
    finally:
        engine.dispose()
        stop()


def test_metrics_count_requests_by_route_template_ingest_decisions_queue_and_audit(live):
    nhs = next(_NHS)
    birth = (date.today() - timedelta(days=25)).isoformat()
    src = live.source(MATERNITY_ORG, "maternity")
    r = src.post("/Patient", json=patient("Metrica", "Isla", nhs=nhs, birth=birth,
                                          generalPractitioner=[{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": GP_ORG}}]), headers=CT)
    assert r.status_code == 201
    pid = r.json()["id"]
    for _ in range(3):
        assert src.get(f"/Patient/{pid}").status_code == 200
    src.get("/Patient/no-such-id")
    view = live.client("gp", GP_ORG).get("/Patient/$family-view", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "direct-care"})
    assert view.status_code == 200, view.text
    body = httpx.get(live.base_url + "/metrics").text
    reqs = _samples(body, "familyview_http_requests_total")
    assert reqs['{method="GET",route="/fhir/{res_type}/{res_id}",status="200"}'] >= 3
    assert reqs['{method="GET",route="/fhir/{res_type}/{res_id}",status="404"}'] >= 1
    assert _samples(body, "familyview_http_request_duration_seconds_count")['{method="GET",route="/fhir/{res_type}/{res_id}"}'] >= 4
    assert any('le="0.25"' in k for k in _samples(body, "familyview_http_request_duration_seconds_bucket"))
    assert _samples(body, "familyview_ingested_resources_total")['{action="create",type="Patient"}'] >= 1
    decisions = _samples(body, "familyview_disclosure_decisions_total")
    assert any('outcome="permit' in k and "6(1)(e)" in k for k in decisions), decisions
    assert "" in _samples(body, "familyview_linkage_queue_depth")
    assert _samples(body, "familyview_audit_events")[""] >= 1
    # no PHI: no NHS number, no name, no id of a record, no query string
    for secret in (nhs, "Metrica", "Isla", pid, "identifier="):
        assert secret not in body


def test_metrics_can_be_closed_to_all_but_the_scraper(database_url, key_path):
    s = make_settings(database_url, key_path, metrics_token="scrape-secret-0123456789")
    base, app, server, stop = start_server(s)
    try:
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"}).status_code == 200
    finally:
        stop()


SECURITY = {"x-content-type-options": "nosniff", "cache-control": "no-store", "x-frame-options": "DENY"}


def test_security_headers_on_every_response(live):
    hv = live.client("health-visitor", HV_ORG)
    answers = [
        httpx.get(live.fhir + "/metadata"), hv.get("/Patient"), hv.get("/Patient/nope"), httpx.get(live.fhir + "/Patient"),
        httpx.get(live.base_url + "/no-such-endpoint"), httpx.get(live.base_url + "/healthz"), httpx.get(live.base_url + "/metrics"),
        httpx.get(live.base_url + "/docs"), hv.post("/Patient", content="{", headers=CT),
    ]
    for r in answers:
        for name, value in SECURITY.items():
            assert r.headers.get(name) == value, (r.request.url, name, r.headers)
        assert r.headers["strict-transport-security"].startswith("max-age=") and "includeSubDomains" in r.headers["strict-transport-security"]
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        if r.headers.get("content-type", "").startswith("application/"):
            assert csp.startswith("default-src 'none'")
    assert answers[-2].headers["content-type"].startswith("text/html")


def test_request_and_correlation_ids_are_echoed_and_in_every_log_line(live, caplog):
    from app.ops.logs import JsonFormatter

    hv = live.client("health-visitor", HV_ORG)
    r = hv.get("/Patient", headers={"X-Request-ID": "req-123", "X-Correlation-ID": "corr-456"})
    assert r.headers["x-request-id"] == "req-123" and r.headers["x-correlation-id"] == "corr-456"
    r = hv.get("/Patient")
    assert re.fullmatch(r"[0-9a-f-]{36}", r.headers["x-request-id"]) and r.headers["x-correlation-id"] == r.headers["x-request-id"]
    from app.ops import logs

    token = logs.request_id.set("req-789"), logs.correlation_id.set("corr-789")
    try:
        record = logging.LogRecord("familyview", logging.WARNING, __file__, 1, "patient %s seen", ("9990001234",), None)
        line = json.loads(JsonFormatter().format(record))
    finally:
        logs.request_id.reset(token[0])
        logs.correlation_id.reset(token[1])
    assert line["request_id"] == "req-789" and line["correlation_id"] == "corr-789" and line["level"] == "WARNING"
    assert "9990001234" not in line["message"]


def test_serve_with_two_workers_shares_its_metrics(tmp_path):
    from app.migrate import upgrade

    db = tmp_path / "fv.db"
    upgrade(f"sqlite:///{db}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAMILYVIEW_", "PROMETHEUS_"))}
    # one anonymous address makes every request here: its limit, shared out between the two workers, is not what this tests
    env.update({"FAMILYVIEW_DATABASE_URL": f"sqlite:///{db}", "FAMILYVIEW_RATE_LIMIT_ENABLED": "false"})
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--dev-auth", "--workers", "2", "--port", str(port)],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        n = 40
        for _ in range(n):  # a new connection each: the two workers share them out
            assert httpx.get(base + "/fhir/metadata").status_code == 200
        scrapes = [_samples(httpx.get(base + "/metrics").text, "familyview_http_requests_total") for _ in range(4)]
        key = '{method="GET",route="/fhir/metadata",status="200"}'
        assert all(s[key] == n for s in scrapes), [s.get(key) for s in scrapes]  # every worker's count, whichever answers
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert err.count("Started server process") >= 2 or err.count('"Started server process') >= 2, err[-2000:]


def test_make_run_takes_a_port_and_passes_dev_auth():
    out = subprocess.run(["make", "-n", "run", "PORT=8123"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    serve = [line for line in out.splitlines() if "familyview serve" in line]
    assert serve and "--port 8123" in serve[0] and "--dev-auth" in serve[0], out


def test_a_failed_transaction_counts_nothing_and_a_committed_one_counts_each_write(live):
    src = live.source(MATERNITY_ORG, "maternity")

    def created(res_type: str) -> float:
        body = httpx.get(live.base_url + "/metrics").text
        return _samples(body, "familyview_ingested_resources_total").get(f'{{action="create",type="{res_type}"}}', 0.0)

    before = created("RelatedPerson")
    good = {"resourceType": "RelatedPerson", "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next(_NHS)}},
            "name": [{"family": "Countwell", "given": ["Rex"]}], "gender": "male"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [  # the second entry fails after the first is written
        {"fullUrl": "urn:uuid:0f1e2d3c-0000-4000-8000-000000000001", "resource": good, "request": {"method": "POST", "url": "RelatedPerson"}},
        {"request": {"method": "GET", "url": "Patient?_offset=99999999999999999999"}}]}
    r = src.post("", json=bundle, headers=CT)
    assert 400 <= r.status_code < 500, r.text
    assert created("RelatedPerson") == before  # rolled back: nothing counted
    bundle["entry"] = bundle["entry"][:1]
    r = src.post("", json=bundle, headers=CT)
    assert r.status_code == 200, r.text
    assert created("RelatedPerson") == before + 1
    three = [{"fullUrl": f"urn:uuid:0f1e2d3c-0000-4000-8000-00000000001{i}", "request": {"method": "POST", "url": "RelatedPerson"},
              "resource": {**good, "name": [{"family": "Countwell", "given": [name]}]}} for i, name in enumerate(["Ada", "Bo", "Cy"])]
    r = src.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": three}, headers=CT)
    assert r.status_code == 200, r.text
    assert created("RelatedPerson") == before + 4  # each of the three writes counted
