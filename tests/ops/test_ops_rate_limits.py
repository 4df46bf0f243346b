"""Finding 8 of issue 18: per-client rate limits (429 with Retry-After), refused requests
audited without a flood growing the audit, and an access log without query strings, NHS
numbers, names or justifications."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta

import httpx
import pytest

from app.ops.ratelimit import Buckets, Limit
from app.settings import PROJECT_ROOT, Settings
from tests.conftest import GP_ORG, HV_ORG, MATERNITY_ORG, LiveServer, free_port, make_settings, start_server
from tests.fhirdata import nhs_numbers, patient

CT = {"Content-Type": "application/fhir+json"}
_NHS = nhs_numbers(750_500)


def _limited_server(database_url, key_path, **overrides):
    limits = dict(rate_limit_enabled=True, rate_limit_per_minute=60, rate_limit_burst=20,
                  rate_limit_anonymous_per_minute=30, rate_limit_anonymous_burst=15,
                  rate_limit_bad_token_per_minute=60, rate_limit_bad_token_burst=5)
    s = make_settings(database_url, key_path, **{**limits, **overrides})
    base, app, server, stop = start_server(s)
    yield LiveServer(base, s, app, server)
    stop()


@pytest.fixture
def limited(database_url, key_path):
    yield from _limited_server(database_url, key_path)


@pytest.fixture
def limited_no_refill(database_url, key_path):
    """An address's bucket that refills one request a minute: a test that empties it and then
    expects a refusal does not depend on how fast a busy machine sends the requests between."""
    yield from _limited_server(database_url, key_path, rate_limit_anonymous_per_minute=1)


def _burst(send, n: int) -> list[httpx.Response]:
    return [send() for _ in range(n)]


def test_a_bad_token_flood_is_cut_off_and_does_not_starve_a_valid_client(limited):
    bad = httpx.Client(base_url=limited.fhir, headers={"Authorization": "Bearer not.a.jwt"})
    answers = _burst(lambda: bad.get("/Patient"), 40)
    codes = [r.status_code for r in answers]
    assert codes[:5] == [401] * 5 and codes.count(429) >= 30, codes
    throttled = next(r for r in answers if r.status_code == 429)
    assert int(throttled.headers["retry-after"]) >= 1
    outcome = throttled.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "throttled"
    assert throttled.headers["x-request-id"] and throttled.headers["x-content-type-options"] == "nosniff"
    # a client with a valid token, from the same address, has its own bucket
    assert limited.client("health-visitor", HV_ORG).get("/Patient").status_code == 200


def test_each_subject_has_its_own_limit_and_retry_after_is_honest(limited):
    a = limited.client("health-visitor", HV_ORG, sub="hv-a")
    b = limited.client("health-visitor", HV_ORG, sub="hv-b")
    codes = [r.status_code for r in _burst(lambda: a.get("/Patient"), 30)]
    assert codes[:20] == [200] * 20 and 429 in codes[20:], codes
    assert b.get("/Patient").status_code == 200  # another subject is not held back
    retry = next(r for r in (a.get("/Patient") for _ in range(5)) if r.status_code == 429)
    time.sleep(float(retry.headers["retry-after"]) + 0.05)
    assert a.get("/Patient").status_code == 200  # after Retry-After, served again


def test_anonymous_clients_are_limited_by_address_and_probes_are_not(limited):
    codes = [httpx.get(limited.fhir + "/metadata").status_code for _ in range(25)]
    assert codes[:15] == [200] * 15 and 429 in codes, codes
    assert all(httpx.get(limited.base_url + p).status_code == 200 for p in ("/healthz", "/readyz") for _ in range(20))


def test_buckets_refill_at_the_configured_rate():
    buckets, limit = Buckets(), Limit(per_second=2.0, burst=3)
    assert [buckets.take("c", limit, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("c", limit, now=100.0) == pytest.approx(0.5)
    assert buckets.take("c", limit, now=100.6) == 0.0


def _infant(live) -> str:
    nhs = next(_NHS)
    birth = (date.today() - timedelta(days=20)).isoformat()
    r = live.source(MATERNITY_ORG, "maternity").post("/Patient", json=patient("Floodgate", "Ivy", nhs=nhs, birth=birth), headers=CT)
    assert r.status_code == 201, r.text
    return nhs


@pytest.fixture
def coalescing(database_url, key_path):
    s = make_settings(database_url, key_path, audit_refusals_per_window=10)  # the default
    assert s.audit_refusals_per_window == Settings().audit_refusals_per_window
    base, app, server, stop = start_server(s)
    yield LiveServer(base, s, app, server)
    stop()


def test_refused_family_views_are_audited_one_by_one_then_coalesced_per_client_and_minute(coalescing):
    """90 refused views a second used to write 90 AuditEvents a second per token: the first ten
    of a client's minute are written one by one, the rest counted into one summary event."""
    live = coalescing
    nhs = _infant(live)
    stranger = live.client("health-visitor", "RZZ98", sub="stranger")  # no relationship with the family
    params = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "direct-care"}
    answers = [stranger.get("/Patient/$family-view", params=params) for _ in range(40)]
    assert {r.status_code for r in answers} == {403}
    events = [r.headers["x-audit-event"].split("/")[1] for r in answers]
    assert len(set(events[:10])) == 10 and len(set(events[10:])) == 1 and events[10] not in events[:10]
    ig = live.client("ig-officer", "X26")
    summary_id = events[10]
    live.app.state.refusals.flush(live.app.state.db, everything=True)  # the window's end (flusher, next refusal or shutdown)
    summary = ig.get(f"/AuditEvent/{summary_id}")
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["outcome"] != "0" and "30 further refused requests" in body["outcomeDesc"]
    assert any(a.get("who", {}).get("identifier", {}).get("value") == "stranger" for a in body["agent"])
    found = ig.get("/AuditEvent", params={"agent": "stranger", "_count": 100}).json()
    assert found["total"] == 11 if "total" in found else len(found["entry"]) == 11
    # another client is audited one by one, whatever the first one did
    other = live.client("health-visitor", "RZZ97", sub="another")
    ids = {other.get("/Patient/$family-view", params=params).headers["x-audit-event"] for _ in range(3)}
    assert len(ids) == 3
    from app import cli

    assert cli.main(["audit", "verify", "--database-url", live.settings.database_url]) == 0


def test_the_access_log_has_no_query_string_nhs_number_name_or_justification(tmp_path):
    from app.migrate import upgrade
    from app.auth.tokens import mint_token

    db = tmp_path / "fv.db"
    upgrade(f"sqlite:///{db}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAMILYVIEW_")}
    env.update({"FAMILYVIEW_DATABASE_URL": f"sqlite:///{db}", "FAMILYVIEW_LOG_FORMAT": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--dev-auth", "--access-log", "--port", str(port)],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=f"sqlite:///{db}")
    nhs = next(_NHS)
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        src = {"Authorization": "Bearer " + mint_token(settings, role="source-system", org=MATERNITY_ORG, service="maternity"), **CT}
        r = httpx.post(base + "/fhir/Patient", json=patient("Quillfeather", "Ottoline", nhs=nhs), headers=src)
        assert r.status_code == 201, r.text
        gp = {"Authorization": "Bearer " + mint_token(settings, role="gp", org=GP_ORG), "X-Request-ID": "req-ops-1", "X-Correlation-ID": "corr-ops-1"}
        httpx.get(base + "/fhir/Patient/$family-view", headers=gp, params={
            "identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}", "purpose": "safeguarding",
            "justification": "Bruising seen by Ottoline Quillfeather's neighbour"})
        httpx.get(base + "/fhir/Patient", headers=gp, params={"family": "Quillfeather", "identifier": nhs})
        httpx.get(base + f"/fhir/Patient/{nhs}", headers=gp)  # an NHS number where an id goes
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    for secret in (nhs, "Quillfeather", "Ottoline", "Bruising", "justification", "identifier="):
        assert secret not in err, (secret, err[-3000:])
    access = [json.loads(line) for line in err.splitlines() if line.startswith("{") and '"familyview.access"' in line]
    view = [a for a in access if a.get("route") == "/fhir/Patient/$family-view"]
    assert view and view[0]["request_id"] == "req-ops-1" and view[0]["correlation_id"] == "corr-ops-1", access
    assert view[0]["path"] == "/fhir/Patient/$family-view" and view[0]["status"] in (200, 403, 404)
    assert any(a["method"] == "POST" and a["status"] == 201 for a in access)


def test_signed_in_page_users_are_limited_each_by_their_session_not_their_shared_address(limited_no_refill):
    """The users of one hospital share its address: a signed-in page user (a valid session
    cookie) has a bucket of its own; a forged cookie counts as the address."""
    limited = limited_no_refill
    signer = limited.app.state.web_signer
    exp = time.time() + 600

    def cookie(sub: str) -> dict[str, str]:
        return {"Cookie": f"familyview_session={signer.dumps({'sub': sub, 'role': 'health-visitor', 'org': HV_ORG, 'csrf': 'x', 'exp': exp})}"}

    anonymous = [httpx.get(limited.fhir + "/metadata").status_code for _ in range(20)]
    assert 429 in anonymous  # the address's bucket is empty
    assert httpx.get(limited.fhir + "/metadata", headers=cookie("hv-page-1")).status_code == 200
    assert httpx.get(limited.fhir + "/metadata", headers=cookie("hv-page-2")).status_code == 200
    assert httpx.get(limited.fhir + "/metadata", headers={"Cookie": "familyview_session=forged.0000"}).status_code == 429
    assert httpx.get(limited.base_url + "/static/familyview.css").status_code == 200  # the pages' files are not counted
