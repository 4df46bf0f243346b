"""Faults a real server will not produce on demand, with respx: 429 with Retry-After, a 503 then
success, timeouts, a malformed page, a 4xx with an OperationOutcome, client credentials."""
from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest
import respx

from app.main import create_app
from app.sync.client import UpstreamClient, parse_retry_after
from app.sync.command import build_syncer
from app.sync.models import SyncCursor
from tests.conftest import make_settings
from tests.fhirdata import next_nhs

UP = "https://upstream.example.nhs.uk/fhir"
TYPES = ("Patient", "RelatedPerson", "Consent", "Observation")


def _patient(pid: str, when: str) -> dict:
    return {
        "resourceType": "Patient", "id": pid, "meta": {"versionId": "1", "lastUpdated": when},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next_nhs()}],
        "name": [{"family": "Upstream", "given": [pid]}], "gender": "female", "birthDate": "1990-01-01",
    }


def _obs(oid: str, pid: str) -> dict:
    return {
        "resourceType": "Observation", "id": oid, "meta": {"versionId": "3", "lastUpdated": "2026-01-02T10:00:00.000+00:00"},
        "status": "final", "code": {"text": "Body weight"}, "subject": {"reference": f"{UP}/Patient/{pid}"},
    }


def page(resources: list[dict], next_url: str | None = None) -> dict:
    b = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
         "link": [{"relation": "self", "url": f"{UP}/x"}],
         "entry": [{"fullUrl": f"{UP}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources]}
    if next_url:
        b["link"].append({"relation": "next", "url": next_url})
    return b


EMPTY = page([])


@pytest.fixture
def fx(database_url, key_path):
    settings = make_settings(database_url, key_path, sync_max_retries=3, sync_backoff_seconds=0.5, sync_max_backoff_seconds=10)
    app = create_app(settings)
    sleeps: list[float] = []

    def make(**kw):
        client = UpstreamClient(UP, settings, sleep=sleeps.append, bearer_token=kw.pop("token", "upstream-token"))
        return build_syncer(settings, UP, "RMT01", "maternity", app=app, client=client, prefetch=False, **kw)

    yield settings, app, make, sleeps
    app.state.db.dispose()


def _empty_routes(mock, *types):
    for t in types:
        mock.get(path=f"/fhir/{t}").mock(return_value=httpx.Response(200, json=EMPTY))


def test_429_with_retry_after_is_honoured(fx):
    settings, app, make, sleeps = fx
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(path="/fhir/Patient").mock(side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "throttled"}]}),
            httpx.Response(200, json=page([_patient("p1", "2026-01-01T10:00:00.000+00:00"), _patient("p2", "2026-01-01T10:00:01.000+00:00")])),
        ])
        _empty_routes(mock, "RelatedPerson", "Consent", "Observation")
        summary = make().run(types=TYPES)
    assert summary.ok, summary.render()
    assert sleeps == [3.0]  # exactly what the upstream asked for
    assert route.call_count == 2 and summary.retries == 1
    assert summary.of("Patient").created == 2
    assert route.calls[0].request.headers["Authorization"] == "Bearer upstream-token"


def test_retry_after_as_an_http_date():
    now = time.time()
    assert parse_retry_after(formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None


def test_503_then_success_backs_off_exponentially(fx):
    settings, app, make, sleeps = fx
    with respx.mock(assert_all_called=False) as mock:
        mock.get(path="/fhir/Patient").mock(side_effect=[
            httpx.Response(503), httpx.Response(502), httpx.ReadTimeout("slow"),
            httpx.Response(200, json=page([_patient("p1", "2026-01-01T10:00:00.000+00:00")])),
        ])
        _empty_routes(mock, "RelatedPerson", "Consent", "Observation")
        summary = make().run(types=TYPES)
    assert summary.ok, summary.render()
    assert len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0  # 0.5·2^n with jitter
    assert summary.of("Patient").created == 1


def test_retries_give_up_and_the_other_types_still_sync(fx):
    settings, app, make, sleeps = fx
    with respx.mock(assert_all_called=False) as mock:
        mock.get(path="/fhir/Patient").mock(return_value=httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient", "diagnostics": "Database is restarting"}]}))
        mock.get(path="/fhir/Observation").mock(return_value=httpx.Response(200, json=page([_obs("o1", "p9")])))
        mock.get(path="/fhir/Patient/p9").mock(return_value=httpx.Response(200, json=_patient("p9", "2026-01-01T09:00:00.000+00:00")))
        _empty_routes(mock, "RelatedPerson", "Consent")
        summary = make().run(types=TYPES)
    assert len(sleeps) == 3  # sync_max_retries
    assert [e.res_type for e in summary.errors] == ["Patient"]
    assert summary.errors[0].status == 503 and "Database is restarting" in summary.errors[0].message
    assert summary.of("Observation").created == 1
    assert summary.of("Patient").created == 1  # the Observation's subject, fetched by id
    assert "Database is restarting" in summary.render()


def test_a_4xx_is_reported_with_the_upstream_outcome_and_does_not_stop_the_others(fx):
    settings, app, make, sleeps = fx
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "HAPI-0334: Consent search is not permitted for this client"}]}
    with respx.mock(assert_all_called=False) as mock:
        mock.get(path="/fhir/Patient").mock(return_value=httpx.Response(200, json=page([_patient("p1", "2026-01-01T10:00:00.000+00:00")])))
        consent = mock.get(path="/fhir/Consent").mock(return_value=httpx.Response(403, json=outcome))
        mock.get(path="/fhir/Observation").mock(return_value=httpx.Response(200, json=page([_obs("o1", "p1")])))
        _empty_routes(mock, "RelatedPerson")
        summary = make().run(types=TYPES)
    assert consent.call_count == 1 and sleeps == []  # a 4xx is not retried
    assert not summary.ok
    [err] = summary.errors
    assert err.res_type == "Consent" and err.status == 403 and err.outcome == outcome
    assert "HAPI-0334" in err.message and "HAPI-0334" in summary.render()
    assert summary.of("Patient").created == 1 and summary.of("Observation").created == 1
    with app.state.db.session(readonly=True) as s:
        from app.fhir.models import StoredResource
        from sqlalchemy import select

        obs = s.scalar(select(StoredResource).where(StoredResource.res_type == "Observation"))
        pat = s.scalar(select(StoredResource).where(StoredResource.res_type == "Patient"))
        assert f'"Patient/{pat.res_id}"' in obs.body  # the absolute upstream reference became the local one


@pytest.mark.parametrize("bad", [
    httpx.Response(200, text="<html>Bad gateway</html>"),
    httpx.Response(200, json={"resourceType": "OperationOutcome", "issue": []}),
    httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": ["not an entry"]}),
], ids=["not-json", "not-a-bundle", "bad-entries"])
def test_a_malformed_page_stops_that_type_at_its_cursor_and_a_rerun_resumes(fx, bad):
    settings, app, make, sleeps = fx
    p1 = page([_patient("p1", "2026-01-01T10:00:00.000+00:00")], next_url=f"{UP}/Patient?_page=2")
    p2 = page([_patient("p2", "2026-01-01T10:00:02.000+00:00")])
    with respx.mock(assert_all_called=False) as mock:
        mock.get(path="/fhir/Patient", params={"_page": "2"}).mock(return_value=bad)
        mock.get(path="/fhir/Patient").mock(return_value=httpx.Response(200, json=p1))
        mock.get(path="/fhir/Observation").mock(return_value=httpx.Response(200, json=page([_obs("o1", "p1")])))
        _empty_routes(mock, "RelatedPerson", "Consent")
        summary = make().run(types=TYPES)
    assert [e.res_type for e in summary.errors] == ["Patient"], summary.render()
    assert summary.of("Patient").created == 1 and summary.of("Observation").created == 1
    with app.state.db.session(readonly=True) as s:
        cur = s.get(SyncCursor, (1, "Patient"))
        assert cur.next_url == f"{UP}/Patient?_page=2"
    with respx.mock(assert_all_called=False) as mock:
        again = mock.get(path="/fhir/Patient", params={"_page": "2"}).mock(return_value=httpx.Response(200, json=p2))
        _empty_routes(mock, "RelatedPerson", "Consent", "Observation")
        summary = make().run(types=TYPES)
    assert summary.ok and again.call_count == 1
    assert summary.resumed == ["Patient"] and summary.of("Patient").created == 1
    with app.state.db.session(readonly=True) as s:
        cur = s.get(SyncCursor, (1, "Patient"))
        assert cur.next_url is None and cur.high_water == "2026-01-01T10:00:02.000+00:00"


def test_client_credentials_token_is_fetched_cached_and_refreshed(database_url, key_path):
    settings = make_settings(database_url, key_path, sync_token_url="https://auth.example.nhs.uk/token", sync_client_id="fv",
                             sync_client_secret="s3cret", sync_scope="system/*.rs", sync_max_retries=1)
    tokens = iter(["tok-1", "tok-2"])
    with respx.mock(assert_all_called=False) as mock:
        token_route = mock.post("https://auth.example.nhs.uk/token").mock(
            side_effect=lambda req: httpx.Response(200, json={"access_token": next(tokens), "expires_in": 3600, "token_type": "bearer"}))
        pat = mock.get(path="/fhir/Patient/p1").mock(side_effect=[
            httpx.Response(200, json=_patient("p1", "2026-01-01T10:00:00Z")),
            httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}),
            httpx.Response(200, json=_patient("p1", "2026-01-01T10:00:00Z")),
        ])
        client = UpstreamClient(UP, settings, sleep=lambda s: None)
        client.get_json("Patient/p1")
        client.get_json("Patient/p1")
    assert token_route.call_count == 2
    body = token_route.calls[0].request.content.decode()
    assert "grant_type=client_credentials" in body and "scope=system" in body
    assert token_route.calls[0].request.headers["Authorization"].startswith("Basic ")
    assert [c.request.headers["Authorization"] for c in pat.calls] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
