"""The PyPI FHIR clients (fhirpy, sync and async; fhirclient) against HAPI FHIR and against
familyview with the same test code, so a difference between the servers shows as a failure of one."""
from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from tests.conftest import MATERNITY_ORG, LiveServer, make_settings, new_database_url, start_server
from tests.fhirdata import nhs_numbers, patient
from tests.hapi.conftest import HAPI_TOKEN, need_hapi

_NHS = nhs_numbers(850000 + random.randrange(0, 100000, 100))  # a HAPI kept between runs holds earlier runs' numbers


@pytest.fixture(scope="module", params=["hapi", "familyview"])
def server(request, tmp_path_factory, key_path, sqlite_template, pg_template) -> tuple[str, str | None]:
    """(FHIR base, bearer token) of the server under test."""
    if request.param == "hapi":
        yield need_hapi(), HAPI_TOKEN
        return
    url, drop = new_database_url("sqlite", tmp_path_factory.mktemp("clients"), sqlite_template, pg_template)
    settings = make_settings(url, key_path)
    base, app, srv, stop = start_server(settings)
    live = LiveServer(base, settings, app, srv)
    yield live.fhir, live.token("source-system", MATERNITY_ORG, "maternity")
    stop()
    drop()


def test_fhirpy_creates_reads_and_searches(server):
    from fhirpy import AsyncFHIRClient, SyncFHIRClient

    base, token = server
    auth = {"authorization": f"Bearer {token}"} if token else {}
    client = SyncFHIRClient(base, **auth)
    nhs, family = next(_NHS), f"Fhirpy{uuid.uuid4().hex[:8]}"
    pat = client.resource("Patient", **patient(family, "Fay", nhs=nhs))
    pat.save()
    assert pat.id
    fetched = client.reference("Patient", pat.id).to_resource()
    assert fetched["name"][0]["family"] == family
    found = client.resources("Patient").search(identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}").fetch()
    assert [p.id for p in found] == [pat.id]
    assert client.resources("Patient").search(family=family).count() == 1
    fetched["name"][0]["given"] = ["Faye"]
    fetched.save()
    assert client.reference("Patient", pat.id).to_resource()["meta"]["versionId"] == "2"

    async_family = f"Asyncpy{uuid.uuid4().hex[:8]}"

    async def run_async():
        aclient = AsyncFHIRClient(base, **auth)
        for i in range(5):
            await aclient.resource("Patient", **patient(async_family, f"A{i}", nhs=next(_NHS))).save()
        return await aclient.resources("Patient").search(family=async_family).limit(2).fetch_all()

    everyone = asyncio.run(run_async())
    assert len(everyone) == 5  # fetch_all follows the next links


def test_fhirclient_creates_reads_and_searches(server):
    from fhirclient import client as fc_client
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.identifier import Identifier
    from fhirclient.models.patient import Patient

    base, token = server
    smart = fc_client.FHIRClient(settings={"app_id": "familyview-test", "api_base": base + "/"})
    if token:
        smart.server.session.headers["Authorization"] = f"Bearer {token}"
    family = f"Fhirclient{uuid.uuid4().hex[:8]}"
    p = Patient()
    p.name = [HumanName({"family": family, "given": ["Cal"]})]
    p.gender = "male"
    p.identifier = [Identifier({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": next(_NHS)})]
    created = p.create(smart.server)
    pid = created["id"]
    read = Patient.read(pid, smart.server)
    assert read.name[0].family == family
    results = Patient.where(struct={"family": family}).perform_resources(smart.server)
    assert [r.id for r in results] == [pid]


def test_fhir_kit_client_on_node(server):
    """tests/interop/node/interop.js (fhir-kit-client) against each server, checked as tests/interop checks it."""
    import json
    import os
    import shutil
    import subprocess

    from tests.interop.test_interop_clients import NODE_DIR, _npm_ready

    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the fhir-kit-client interop test needs `node` (it is present in CI)")
    _npm_ready()
    base, token = server
    nhs = next(_NHS)
    env = {**os.environ, "FHIR_BASE": base, "FHIR_TOKEN": token or "", "FAMILY": f"Kitclient{uuid.uuid4().hex[:8]}", "NHS": nhs}
    done = subprocess.run([node, str(NODE_DIR / "interop.js")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["fhirVersion"] == "4.0.1" and "Patient" in out["capabilityTypes"]
    assert out["transactionType"] == "transaction-response"
    assert out["statuses"] == ["201 Created"] * 6
    assert out["readId"] == out["patientId"] and out["readNhs"] == nhs
    assert out["relatedPatient"] == f"Patient/{out['patientId']}"
    assert out["total"] == 5 and out["pages"] == 3
    assert len(set(out["searchIds"])) == 5 and out["patientId"] in out["searchIds"]
