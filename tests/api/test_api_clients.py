"""Real FHIR clients from PyPI against the server running in uvicorn, over real HTTP."""
from __future__ import annotations

import asyncio

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import next_nhs, patient


def test_fhirpy_creates_reads_and_searches(live):
    from fhirpy import AsyncFHIRClient, SyncFHIRClient

    token = live.token("source-system", MATERNITY_ORG, "maternity")
    client = SyncFHIRClient(live.fhir, authorization=f"Bearer {token}")
    nhs = next_nhs()
    pat = client.resource("Patient", **patient("Fhirpy", "Fay", nhs=nhs))
    pat.save()
    assert pat.id
    fetched = client.reference("Patient", pat.id).to_resource()
    assert fetched["name"][0]["family"] == "Fhirpy"
    found = client.resources("Patient").search(identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}").fetch()
    assert [p.id for p in found] == [pat.id]
    assert client.resources("Patient").search(family="fhirpy").count() == 1

    async def run_async():
        aclient = AsyncFHIRClient(live.fhir, authorization=f"Bearer {token}")
        for i in range(5):
            await aclient.resource("Patient", **patient("Asyncpy", f"A{i}")).save()
        return await aclient.resources("Patient").search(family="asyncpy").limit(2).fetch_all()

    everyone = asyncio.run(run_async())
    assert len(everyone) == 5  # fetch_all follows the next links


def test_fhirclient_creates_reads_and_searches(live):
    from fhirclient import client as fc_client
    from fhirclient.models.humanname import HumanName
    from fhirclient.models.identifier import Identifier
    from fhirclient.models.patient import Patient

    token = live.token("source-system", MATERNITY_ORG, "maternity")
    smart = fc_client.FHIRClient(settings={"app_id": "familyview-test", "api_base": live.fhir + "/"})
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    nhs = next_nhs()
    p = Patient()
    p.name = [HumanName({"family": "Fhirclient", "given": ["Cal"]})]
    p.gender = "male"
    p.identifier = [Identifier({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs})]
    created = p.create(smart.server)
    pid = created["id"]
    read = Patient.read(pid, smart.server)
    assert read.name[0].family == "Fhirclient"
    results = Patient.where(struct={"family": "fhirclient"}).perform_resources(smart.server)
    assert [r.id for r in results] == [pid]
