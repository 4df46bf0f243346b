"""Per-source write throttle (issue 18, finding 2): while one source's writes fill its turns, its
next write waits and then gets 429 with Retry-After; other sources' writes and every read go on."""
from __future__ import annotations

import json

import pytest

from tests.conftest import HV_ORG, MATERNITY_ORG, make_settings, start_server
from tests.fhirdata import patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def throttled(database_url, key_path):
    settings = make_settings(database_url, key_path, max_concurrent_writes_per_source=1, write_turn_wait_seconds=0.3)
    base, app, server, stop = start_server(settings)
    from tests.conftest import LiveServer

    yield LiveServer(base, settings, app, server)
    stop()


def test_a_source_with_its_turns_taken_waits_then_gets_429_others_go_on(throttled):
    maternity = throttled.source(MATERNITY_ORG, "maternity")
    hv = throttled.source(HV_ORG, "health-visiting")
    first = maternity.post("/Patient", content=json.dumps(patient("Thistlewood", "Maud", local_id="thr-1")), headers=FHIR_JSON)
    assert first.status_code == 201, first.text
    with throttled.app.state.write_throttle.turn(MATERNITY_ORG):  # a bulk load of this source in progress
        r = maternity.post("/Patient", content=json.dumps(patient("Thistlewood", "Nell", local_id="thr-2")), headers=FHIR_JSON)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["issue"][0]["code"] == "throttled"
        other = hv.post("/Patient", content=json.dumps(patient("Ravenscroft", "Olive", local_id="thr-3")), headers=FHIR_JSON)
        assert other.status_code == 201, other.text
        assert maternity.get(f"/Patient/{first.json()['id']}").status_code == 200  # reads never wait for a turn
    again = maternity.post("/Patient", content=json.dumps(patient("Thistlewood", "Nell", local_id="thr-2")), headers=FHIR_JSON)
    assert again.status_code == 201, again.text
    assert maternity.get("/Patient", params={"family": "Thistlewood", "_count": 0}).json()["total"] == 2
