"""EHR vendors' usual FHIR clients against familyview over real HTTP: fhirpy (async), fhirclient
and the npm fhir-kit-client run by Node. Each posts a transaction, reads, searches with paging
(following Bundle.link next) and reads the CapabilityStatement."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import MATERNITY_ORG
from tests.fhirdata import next_nhs

NODE_DIR = Path(__file__).resolve().parent / "node"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def _family() -> str:
    return "Interop" + uuid.uuid4().hex[:8]


def _transaction(family: str, nhs: str, siblings: int = 4) -> dict:
    mother = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {"fullUrl": mother, "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
                      "name": [{"family": family, "given": ["Mia"]}], "gender": "female", "birthDate": "1993-02-01"}},
        {"request": {"method": "POST", "url": "RelatedPerson"},
         "resource": {"resourceType": "RelatedPerson", "patient": {"reference": mother}, "gender": "male",
                      "identifier": [{"system": "https://interop.example.nhs.uk/Id/rp", "value": f"rp-{nhs}"}],
                      "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]}],
                      "name": [{"family": family, "given": ["Max"]}]}},
    ]
    entries += [{"request": {"method": "POST", "url": "Patient"},
                 "resource": {"resourceType": "Patient", "name": [{"family": family, "given": [f"Sib{i}"]}], "gender": "female"}}
                for i in range(siblings)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_fhirpy_async_client(live):
    from fhirpy import AsyncFHIRClient

    family, nhs = _family(), next_nhs()
    token = live.token("source-system", MATERNITY_ORG, "maternity")

    async def scenario():
        client = AsyncFHIRClient(live.fhir, authorization=f"Bearer {token}")
        capability = await client.execute("metadata", method="get")
        response = await client.execute("", method="post", data=_transaction(family, nhs))
        location = response["entry"][0]["response"]["location"]
        patient = await client.reference(reference=location.split("/_history")[0]).to_resource()
        related = await client.resources("RelatedPerson").search(identifier=f"https://interop.example.nhs.uk/Id/rp|rp-{nhs}").first()
        pages = []
        searchset = client.resources("Patient").search(family=family).limit(2)
        everyone = await searchset.fetch_all()  # follows Bundle.link next
        first_page = await searchset.fetch_raw()
        pages.append(first_page)
        return capability, response, patient, related, everyone, first_page

    capability, response, patient, related, everyone, first_page = asyncio.run(scenario())
    assert capability["resourceType"] == "CapabilityStatement" and capability["fhirVersion"] == "4.0.1"
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 6
    assert patient["identifier"][0]["value"] == nhs
    assert related["patient"]["reference"] == f"Patient/{patient['id']}"
    assert len(everyone) == 5 and len({p["id"] for p in everyone}) == 5
    assert first_page["total"] == 5 and any(link["relation"] == "next" for link in first_page["link"])


def test_fhirclient(live):
    from fhirclient import client as fc_client
    from fhirclient.models.capabilitystatement import CapabilityStatement
    from fhirclient.models.patient import Patient
    from fhirclient.models.relatedperson import RelatedPerson

    family, nhs = _family(), next_nhs()
    smart = fc_client.FHIRClient(settings={"app_id": "familyview-interop", "api_base": live.fhir + "/"})
    smart.server.session.headers["Authorization"] = f"Bearer {live.token('source-system', MATERNITY_ORG, 'maternity')}"
    capability = CapabilityStatement.read_from("metadata", smart.server)
    assert capability.fhirVersion == "4.0.1"
    assert "Patient" in [r.type for r in capability.rest[0].resource]

    response = smart.server.post_json("", _transaction(family, nhs)).json()
    assert response["type"] == "transaction-response"
    pid = response["entry"][0]["response"]["location"].split("/")[1]
    rpid = response["entry"][1]["response"]["location"].split("/")[1]
    patient = Patient.read(pid, smart.server)
    assert patient.identifier[0].value == nhs
    assert RelatedPerson.read(rpid, smart.server).patient.reference == f"Patient/{pid}"

    search = Patient.where(struct={"family": family, "_count": "2"})
    bundles = list(search.perform_iter(smart.server))  # follows Bundle.link next
    assert len(bundles) == 3 and bundles[0].total == 5
    ids = [e.resource.id for b in bundles for e in (b.entry or [])]
    assert len(ids) == 5 and len(set(ids)) == 5 and pid in ids


def _npm_ready() -> None:
    """On a clean clone, install the locked fhir-kit-client (npm ci), once even under pytest-xdist."""
    import fcntl

    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed, so fhir-kit-client cannot be installed (tests/interop/node)")
    with open(NODE_DIR / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (NODE_DIR / "node_modules" / "fhir-kit-client" / "package.json").is_file():
            return
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


def test_fhir_kit_client_on_node(live):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the fhir-kit-client interop test needs `node` (it is present in CI)")
    _npm_ready()
    family, nhs = _family(), next_nhs()
    env = {**os.environ, "FHIR_BASE": live.fhir, "FHIR_TOKEN": live.token("source-system", MATERNITY_ORG, "maternity"),
           "FAMILY": family, "NHS": nhs}
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
