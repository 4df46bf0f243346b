"""Ingest throughput: transaction Bundles of 100 mixed resources posted over HTTP to a running
single-worker server, next to the rate at which fhir.resources alone validates the same
Bundles (the baseline, timed in the same run: blocks of 10 Bundles validated, then posted).
Target: ingest >= 50% of validate-only, the median of 3 runs per database, the runs of the
databases interleaved (SQLite, PostgreSQL, SQLite, ...) so that a shared machine's changing
load falls on both alike. Ingest time is the requests' time plus, after each
block, the wait until the server's linkage queue is empty (linkage runs after commit when
queued, the default on PostgreSQL), so linking every record is always counted. Each run
also prints the CPU the machine spent per Bundle while familyview's clock ran (the server, its
linkage worker, PostgreSQL's processes, the rest) as a multiple of validate-only's time: on
N cores ingest cannot exceed N / that multiple of validate-only, however its work overlaps.

    scripts/with-postgres.sh .venv/bin/python benchmarks/ingest.py            # SQLite and PostgreSQL
    .venv/bin/python benchmarks/ingest.py --bundles 50 --database sqlite --runs 1
    scripts/with-postgres.sh scripts/with-hapi.sh .venv/bin/python benchmarks/ingest.py --against-hapi

With --against-hapi (under scripts/with-hapi.sh, which starts the HAPI FHIR JPA server of
tests/hapi/server and sets HAPI_FHIR_BASE_URL), each block of Bundles is also posted to HAPI
right after familyview, so both rates come from the same minutes of the same machine; target:
familyview at least 2x HAPI's rate.

A bundle holds 10 families of 10 resources: infant and mother (Patient), the mother's and
the father's RelatedPerson, a Consent, an EpisodeOfCare, a CareTeam, a Condition, a Flag and
an Observation, cross-referenced by urn:uuid."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import date, timedelta

from harness import CpuMeter, Databases, LinkageQueue, Server, backends, nhs_numbers, percentile

import httpx  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.settings import Settings  # noqa: E402

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
LOCAL = "https://bench.example.nhs.uk/Id/record"
SCT = "http://snomed.info/sct"


_FAKE = None


def _faker():
    global _FAKE
    if _FAKE is None:
        from faker import Faker

        _FAKE = Faker("en_GB")
        _FAKE.seed_instance(20261126)
    return _FAKE


def family(i: int, numbers) -> list[dict]:
    fake = _faker()
    surname, mum_given, dad_given, baby_given = fake.last_name(), fake.first_name_female(), fake.first_name_male(), fake.first_name()
    def e(resource, full_url=None):
        return {"fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}

    inf, mum = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    n_inf, n_mum, n_dad = next(numbers), next(numbers), next(numbers)
    ident = lambda kind: [{"system": LOCAL, "value": f"{kind}-{i}"}]  # noqa: E731
    # varied as a real population is: birth dates over years, postcodes over districts
    postcode = fake.postcode()
    addr = [{"use": "home", "line": [f"{i} Bench Street"], "city": "Leeds", "postalCode": postcode}]
    infant_dob = date(2026, 1, 1) + timedelta(days=i % 300)
    mother_dob = date(1980, 1, 1) + timedelta(days=(i * 7) % 7000)
    father_dob = date(1975, 1, 1) + timedelta(days=(i * 11) % 9000)
    return [
        e({"resourceType": "Patient", "identifier": [{"system": NHS, "value": n_inf}] + ident("inf"), "name": [{"family": surname, "given": [baby_given]}],
           "gender": "female", "birthDate": str(infant_dob), "address": addr, "generalPractitioner": [{"identifier": {"system": ODS, "value": "A99001"}}]}, inf),
        e({"resourceType": "Patient", "identifier": [{"system": NHS, "value": n_mum}] + ident("mum"), "name": [{"family": surname, "given": [mum_given]}],
           "gender": "female", "birthDate": str(mother_dob), "address": addr, "telecom": [{"system": "phone", "value": "07700 900000", "use": "mobile"}]}, mum),
        e({"resourceType": "RelatedPerson", "identifier": ident("rp-mum"), "patient": {"reference": inf}, "gender": "female",
           "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}], "name": [{"family": surname, "given": [mum_given]}], "birthDate": str(mother_dob)}),
        e({"resourceType": "RelatedPerson", "identifier": [{"system": NHS, "value": n_dad}] + ident("rp-dad"), "patient": {"reference": inf}, "gender": "male",
           "birthDate": str(father_dob), "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]}],
           "name": [{"family": surname, "given": [dad_given]}], "address": addr}),
        e({"resourceType": "Consent", "identifier": ident("consent"), "status": "active", "patient": {"reference": mum},
           "organization": [{"identifier": {"system": ODS, "value": "RMT01"}}],
           "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
           "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
           "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
           "provision": {"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}}),
        e({"resourceType": "EpisodeOfCare", "identifier": ident("eoc"), "status": "active", "patient": {"reference": inf},
           "managingOrganization": {"identifier": {"system": ODS, "value": "RHV01"}}, "period": {"start": "2026-06-02"}}),
        e({"resourceType": "CareTeam", "identifier": ident("ct"), "status": "active", "subject": {"reference": inf},
           "participant": [{"member": {"identifier": {"system": ODS, "value": "RHV01"}}}]}),
        e({"resourceType": "Condition", "identifier": ident("cond"), "subject": {"reference": mum},
           "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
           "code": {"coding": [{"system": SCT, "code": "35489007", "display": "Depressive disorder"}]}, "recordedDate": "2026-05-01"}),
        e({"resourceType": "Flag", "identifier": ident("flag"), "status": "active", "subject": {"reference": inf}, "code": {"text": "Hearing screen follow-up"}}),
        e({"resourceType": "Observation", "identifier": ident("obs"), "status": "final", "subject": {"reference": inf},
           "code": {"coding": [{"system": SCT, "code": "27113001", "display": "Body weight"}]}, "effectiveDateTime": "2026-06-10",
           "valueQuantity": {"value": 3.4, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
    ]


def make_bundles(count: int, start: int = 0) -> list[dict]:
    """`count` Bundles of 10 families each, numbered from family `start` (distinct records)."""
    numbers = nhs_numbers(200_000 + start * 3)
    return [{"resourceType": "Bundle", "type": "transaction", "entry": [e for f in range(10) for e in family(start + b * 10 + f, numbers)]}
            for b in range(count)]


def validate_one(text: str) -> float:
    """Seconds fhir.resources alone takes to parse and validate one Bundle (R4B models)."""
    from fhir.resources.R4B.bundle import Bundle

    t0 = time.perf_counter()
    Bundle.model_validate(json.loads(text))
    return time.perf_counter() - t0


BLOCK = 10  # Bundles validated, then the same Bundles posted, in turn


def run(kind: str, bundles: list[dict], hapi: str | None = None) -> dict:
    """Validate a block of Bundles with fhir.resources alone, post the same block, and so on:
    the baseline and the ingest are timed in turn through the whole run, so a machine that
    speeds up or slows down (a shared VM does, by up to 2x within a minute) moves both alike,
    and each side runs a block at a time with its caches warm."""
    dbs = Databases(kind)
    key = dbs.tmp / "key.pem"
    url = dbs.new("ingest")
    server = Server(url, key)
    queue = None
    token = mint_token(Settings(database_url=url, auth_local_key_path=key), role="source-system", org="RMT01", service="maternity", minutes=240)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        texts = [json.dumps(b) for b in bundles]
        times, baseline, waits, hapi_times = [], [], [], []
        queue = LinkageQueue(url)
        cpu = CpuMeter(server.proc.pid)
        with httpx.Client(timeout=120, headers=headers) as client, httpx.Client(timeout=300, headers={"Content-Type": "application/fhir+json"}) as hc:
            warm = json.dumps(make_bundles(1, start=250_000)[0])
            validate_one(warm)
            client.post(server.base + "/fhir", content=warm.encode())  # warm-up, not counted
            if hapi:
                hc.post(hapi, content=warm.encode())
            for start in range(0, len(texts), BLOCK):
                block = texts[start:start + BLOCK]
                baseline.extend(validate_one(text) for text in block)
                cpu.start()
                for text in block:
                    t0 = time.perf_counter()
                    r = client.post(server.base + "/fhir", content=text.encode())
                    times.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        sys.exit(f"a bundle was refused: {r.status_code} {r.text[:400]}")
                waits.append(queue.wait_until_linked())
                cpu.stop()
                for text in block if hapi else ():  # the same block to HAPI, after familyview's
                    t0 = time.perf_counter()
                    r = hc.post(hapi, content=text.encode())
                    hapi_times.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        sys.exit(f"HAPI refused a bundle: {r.status_code} {r.text[:400]}")
        n = sum(len(b["entry"]) for b in bundles)
        return {"rate": n / (sum(times) + sum(waits)), "baseline": n / sum(baseline),
                "p50": percentile(times, 50) * 1000, "p95": percentile(times, 95) * 1000,
                "wait": sum(waits) / len(times) * 1000, "hapi": n / sum(hapi_times) if hapi_times else None,
                # CPU per Bundle while familyview's clock ran, as a multiple of validate-only's time for it
                "cpu": {k: v / len(times) * 1000 for k, v in cpu.totals.items()}, "cpu_x": cpu.totals.get("machine", 0.0) / sum(baseline),
                "cores": cpu.cores}
    finally:
        if queue is not None:
            queue.close()
        server.stop()
        dbs.drop()


TARGET = 0.5       # of validate-only
HAPI_TARGET = 2.0  # times HAPI's rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3, help="runs per database, interleaved; the median is the figure")
    ap.add_argument("--database", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--against-hapi", action="store_true", help="post the same Bundles to HAPI FHIR (HAPI_FHIR_BASE_URL) in the same run")
    args = ap.parse_args()
    hapi = None
    if args.against_hapi:
        hapi = os.environ.get("HAPI_FHIR_BASE_URL", "").rstrip("/")
        if not hapi:
            sys.exit("benchmarks/ingest.py: --against-hapi needs HAPI_FHIR_BASE_URL (run it under scripts/with-hapi.sh)")
    bundles = make_bundles(args.bundles)
    kinds = backends(args.database)
    print(f"ingest benchmark: {args.bundles} transaction Bundles of 100 mixed resources, single-worker server over HTTP;"
          f" blocks of {BLOCK} Bundles validated by fhir.resources alone, then posted{', then posted to HAPI' if hapi else ''}, in turn;"
          f" {args.runs} runs per database, interleaved", flush=True)
    figs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(args.runs):
        for kind in kinds:
            fig = run(kind, bundles, hapi)
            fig["ratio"] = fig["rate"] / fig["baseline"]
            figs[kind].append(fig)
            extra = f", HAPI {fig['hapi']:,.0f}/s ({fig['rate'] / fig['hapi']:.2f}x)" if hapi else ""
            print(f"  run {i + 1} {kind:9} ingest {fig['rate']:,.0f}/s, validate-only {fig['baseline']:,.0f}/s: {fig['ratio']:.0%}; "
                  f"per bundle p50 {fig['p50']:.0f} ms, p95 {fig['p95']:.0f} ms, {fig['wait']:.1f} ms waiting for queued linkage{extra}", flush=True)
            if fig["cpu"]:
                print(f"      CPU per bundle: {fig['cpu']['machine']:.0f} ms ({fig['cpu_x']:.2f}x validate-only's): "
                      + ", ".join(f"{k} {v:.0f}" for k, v in fig["cpu"].items() if k != "machine"), flush=True)
    ok = True
    for kind in kinds:
        runs = figs[kind]
        cpu_x = statistics.median(f["cpu_x"] for f in runs)
        if cpu_x:  # a rate that needs more CPU than the cores give in its time is out of reach
            print(f"{kind:9} CPU while posting: {cpu_x:.2f}x validate-only's for the same Bundles (median); on {runs[0]['cores']} cores "
                  f"ingest cannot exceed {runs[0]['cores'] / cpu_x:.0%} of validate-only however its work overlaps")
        ratio = statistics.median(f["ratio"] for f in runs)
        ok &= ratio >= TARGET
        print(f"{kind:9} baseline fhir.resources validate-only: {statistics.median(f['baseline'] for f in runs):,.0f} resources/s (median)")
        print(f"{kind:9} ingest: {statistics.median(f['rate'] for f in runs):,.0f} resources/s (median); "
              f"{ratio:.0%} of validate-only, median of the same-run ratios {', '.join(format(f['ratio'], '.0%') for f in runs)} "
              f"(target >= {TARGET:.0%}: {'met' if ratio >= TARGET else 'NOT met'})")
        if hapi:
            times = statistics.median(f["rate"] / f["hapi"] for f in runs)
            ok &= times >= HAPI_TARGET
            print(f"{kind:9} HAPI FHIR (same Bundles, same blocks): {statistics.median(f['hapi'] for f in runs):,.0f} resources/s (median); "
                  f"familyview {times:.2f}x HAPI, median of the same-run ratios (target >= {HAPI_TARGET:.0f}x: {'met' if times >= HAPI_TARGET else 'NOT met'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
