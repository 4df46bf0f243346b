"""The rest-hook receiver: an upstream Subscription's notification triggers a sync of what changed."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import MATERNITY_ORG, LiveServer, make_settings, start_server
from tests.fhirdata import family_bundle, next_nhs, patient
from tests.sync.sync_support import post_bundle, search_all

SECRET = "Bearer hook-secret-for-tests"


@pytest.fixture
def downstream(database_url, key_path, upstream):
    settings = make_settings(
        database_url, key_path, sync_rest_hook_header="Authorization", sync_rest_hook_secret=SECRET,
        sync_upstreams={"maternity-hapi": {"base_url": upstream.fhir, "source_org": MATERNITY_ORG, "service": "maternity",
                                           "bearer_token": upstream.token("source-system", MATERNITY_ORG, "maternity")}},
    )
    base, app, server, stop = start_server(settings)
    yield LiveServer(base, settings, app, server)
    stop()


def _hook(down: LiveServer, body: bytes | None = None, secret: str | None = SECRET, name: str = "maternity-hapi") -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json"}
    if secret is not None:
        headers["Authorization"] = secret
    return httpx.post(f"{down.base_url}/subscriptions/rest-hook/{name}", content=body or b"", headers=headers, timeout=30)


def test_rest_hook_authentication(downstream):
    assert _hook(downstream, secret=None).status_code == 401
    r = _hook(downstream, secret="Bearer hook-secret-for-test")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert _hook(downstream, name="nobody").status_code == 404


def test_resource_payload_is_synced_at_once(downstream, upstream):
    src = upstream.source(MATERNITY_ORG, "maternity")
    nhs = next_nhs()
    created = src.post("Patient", json=patient("Hooked", "Hana", nhs=nhs), headers={"Content-Type": "application/fhir+json"}).json()
    r = _hook(downstream, httpx.Request("POST", "x", json=created).content)
    assert r.status_code == 200, r.text
    assert "1 created" in r.json()["issue"][0]["diagnostics"]
    local = downstream.source(MATERNITY_ORG, "maternity")
    [p] = search_all(local, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}")
    assert p["meta"]["source"] == f"{upstream.fhir}/Patient/{created['id']}"
    # the same notification again changes nothing
    r = _hook(downstream, httpx.Request("POST", "x", json=created).content)
    assert "1 unchanged" in r.json()["issue"][0]["diagnostics"]


def test_empty_notification_runs_an_incremental_sync_in_the_background(downstream, upstream):
    post_bundle(upstream.source(MATERNITY_ORG, "maternity"), family_bundle())
    r = _hook(downstream)
    assert r.status_code == 202
    local = downstream.source(MATERNITY_ORG, "maternity")
    deadline = time.time() + 30
    while time.time() < deadline and len(search_all(local, "Consent")) < 1:
        time.sleep(0.1)
    assert len(search_all(local, "Patient")) == 1 and len(search_all(local, "RelatedPerson")) == 1
    assert len(search_all(local, "Consent")) == 1
