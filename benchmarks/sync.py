"""Sync throughput next to ingest throughput, measured in the same run.

1. Ingest: a single-worker `familyview serve` (the upstream, its own database) is sent the
   resources as transaction Bundles of 100 by a maternity source, over HTTP: resources/s
   (until its linkage queue is empty, when linkage is queued: the default on PostgreSQL).
2. Sync: `familyview sync`'s engine pulls the same resources from that server, page by page over
   HTTP, into a second database through the same ingest pipeline, and links what it queued:
   resources/s. Its clock starts, as ingest's, with the linkage worker already running (a
   server's is up before its first request; the sync's takes a second or two of CPU to start)
   and stops when every record is linked.
3. Ingest again, the same Bundles into a third database and a fresh server, after the sync: the
   machine's load drifts (other work on its 2 cores), so ingest is timed on both sides of the
   sync and the ratio is taken to both timings together (each is printed).
The target is sync >= 70% of ingest.

With --upstream hapi (run under scripts/with-hapi.sh, which starts the HAPI FHIR JPA server of
tests/hapi/server and sets HAPI_FHIR_BASE_URL), the same Bundles are also posted to HAPI (tagged
with this run, so a HAPI holding other records can be used) and step 2 syncs from HAPI instead;
ingest (1) is still familyview's, measured in the same run.

    scripts/with-postgres.sh scripts/with-hapi.sh .venv/bin/python benchmarks/sync.py --quick --upstream hapi

    scripts/with-postgres.sh .venv/bin/python benchmarks/sync.py            # 50,000 resources
    scripts/with-postgres.sh .venv/bin/python benchmarks/sync.py --quick    # 5,000
    .venv/bin/python benchmarks/sync.py --quick --database sqlite

A family is 5 resources: infant and mother (Patient), the mother's RelatedPerson, a Condition
and an Observation, linked by urn:uuid references inside each transaction.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid

from harness import Databases as _Databases, LinkageQueue, Server, nhs_numbers

import httpx  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.settings import Settings  # noqa: E402

NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOCAL = "https://bench.example.nhs.uk/Id/record"
ORG, SERVICE = "RMT01", "maternity"
PER_FAMILY = 5




_SYL = ["ash", "bel", "cor", "dan", "el", "far", "gil", "har", "ing", "jor", "kel", "lan", "mor", "nor", "ol", "pen", "quin",
        "ros", "sal", "tor", "ul", "ven", "wes", "yar", "zel"]
_GIVEN_F = ["Amy", "Beth", "Cara", "Dina", "Ella", "Faye", "Gina", "Hana", "Isla", "Jade", "Kate", "Lucy", "Mia", "Nina", "Orla",
            "Pia", "Rosa", "Sara", "Tia", "Uma", "Vera", "Zoe"]
_GIVEN_I = ["Alfie", "Ben", "Cole", "Dev", "Eli", "Finn", "Gus", "Hal", "Ivy", "Jay", "Kai", "Leo", "Max", "Ned", "Oli", "Pip"]


def family(i: int, numbers) -> list[dict]:
    """Distinct, plausible people (varied names, dates of birth and postcodes), as record linkage sees in life."""
    rnd = random.Random(i)
    surname = "".join(rnd.choice(_SYL) for _ in range(3)).capitalize()
    mum_given, baby_given = rnd.choice(_GIVEN_F), rnd.choice(_GIVEN_I)
    mum_dob = f"{rnd.randint(1980, 2004)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
    baby_dob = f"2026-{rnd.randint(1, 10):02d}-{rnd.randint(1, 28):02d}"
    postcode = f"LS{rnd.randint(1, 29)} {rnd.randint(1, 9)}{rnd.choice('ABDEFGHJLNPQRSTUWXYZ')}{rnd.choice('ABDEFGHJLNPQRSTUWXYZ')}"
    address = [{"use": "home", "line": [f"{rnd.randint(1, 200)} {rnd.choice(_SYL).capitalize()} Street"], "postalCode": postcode}]
    inf, mum = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    n_inf, n_mum = next(numbers), next(numbers)

    def e(full_url, resource):
        return {"fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}

    return [
        e(inf, {"resourceType": "Patient", "identifier": [{"system": NHS, "value": n_inf}, {"system": LOCAL, "value": f"inf-{i}"}],
                "name": [{"family": surname, "given": [baby_given]}], "gender": "male", "birthDate": baby_dob, "address": address}),
        e(mum, {"resourceType": "Patient", "identifier": [{"system": NHS, "value": n_mum}, {"system": LOCAL, "value": f"mum-{i}"}],
                "name": [{"family": surname, "given": [mum_given]}], "gender": "female", "birthDate": mum_dob, "address": address}),
        e(None, {"resourceType": "RelatedPerson", "identifier": [{"system": LOCAL, "value": f"rp-{i}"}], "patient": {"reference": inf},
                 "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}],
                 "name": [{"family": surname, "given": [mum_given]}], "gender": "female", "birthDate": mum_dob, "address": address}),
        e(None, {"resourceType": "Condition", "identifier": [{"system": LOCAL, "value": f"cond-{i}"}], "subject": {"reference": mum},
                 "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006", "display": "Pregnancy"}]}}),
        e(None, {"resourceType": "Observation", "identifier": [{"system": LOCAL, "value": f"obs-{i}"}], "status": "final", "subject": {"reference": inf},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"}]},
                 "valueQuantity": {"value": 3.4, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
    ]




def cpu_seconds(pid: str | None) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), None when unknown."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def Databases(kind: str) -> _Databases:
    if kind == "postgres" and not os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL"):
        sys.exit("benchmarks/sync.py: --database postgres needs FAMILYVIEW_TEST_POSTGRES_URL (run it under scripts/with-postgres.sh)")
    return _Databases(kind)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=50_000)
    ap.add_argument("--quick", action="store_true", help="5,000 resources")
    ap.add_argument("--database", choices=["postgres", "sqlite"], default="postgres" if os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL") else "sqlite")
    ap.add_argument("--page-size", type=int, default=500, help="sync page size (the upstream's _count)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile the sync (its writing thread) and print the N costliest functions")
    ap.add_argument("--upstream", choices=["familyview", "hapi"], default="familyview",
                    help="sync from the familyview that ingested the records, or from HAPI FHIR at HAPI_FHIR_BASE_URL")
    args = ap.parse_args()
    hapi = os.environ.get("HAPI_FHIR_BASE_URL", "").rstrip("/")
    if args.upstream == "hapi" and not hapi:
        sys.exit("benchmarks/sync.py: --upstream hapi needs HAPI_FHIR_BASE_URL (run it under scripts/with-hapi.sh)")
    total = 5_000 if args.quick else args.resources
    families = max(1, total // PER_FAMILY)
    total = families * PER_FAMILY

    dbs = Databases(args.database)
    key = dbs.tmp / "key.pem"
    upstream_url, local_url = dbs.new("upstream"), dbs.new("local")
    server = Server(upstream_url, key)
    port = server.port
    base = f"{server.base}/fhir"
    settings = Settings(database_url=local_url, auth_local_key_path=key, sync_page_size=args.page_size)
    token = mint_token(settings, role="source-system", org=ORG, service=SERVICE, minutes=240)
    try:
        numbers = nhs_numbers()
        bundles, entries = [], []
        for i in range(families):
            entries += family(i, numbers)
            if len(entries) >= 100:
                bundles.append({"resourceType": "Bundle", "type": "transaction", "entry": entries[:100]})
                entries = entries[100:]
        if entries:
            bundles.append({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        payloads = [json.dumps(b).encode() for b in bundles]

        print(f"sync benchmark: {total:,} resources, {args.database}, upstream = single-worker familyview on :{port}", flush=True)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

        def ingest(fhir_base: str, db_url: str, when: str) -> float:
            """Post the Bundles; seconds until the last record is linked."""
            queue = LinkageQueue(db_url)
            with httpx.Client(timeout=120, headers=headers) as client:
                t0 = time.perf_counter()
                for body in payloads:
                    r = client.post(fhir_base, content=body)
                    if r.status_code != 200:
                        sys.exit(f"ingest refused a bundle: {r.status_code} {r.text[:500]}")
                linking = queue.wait_until_linked()
                seconds = time.perf_counter() - t0
            queue.close()
            print(f"ingest ({when}): {total:,} resources as {len(payloads)} transaction Bundles of 100 in {seconds:.1f}s = "
                  f"{total / seconds:,.0f} resources/s (of which linking after the last Bundle: {linking:.1f}s)", flush=True)
            return seconds

        ingest_s = [ingest(base, upstream_url, "before the sync")]

        sync_base, extra_params, sync_token = base, [], token
        if args.upstream == "hapi":
            tag = f"bench-{uuid.uuid4().hex[:10]}"
            tag_system = "https://familyview.example.nhs.uk/fhir/CodeSystem/benchmark-run"
            with httpx.Client(timeout=600, headers={"Content-Type": "application/fhir+json"}) as hc:
                t0 = time.perf_counter()
                for b in bundles:
                    for e in b["entry"]:
                        e["resource"]["meta"] = {"tag": [{"system": tag_system, "code": tag}]}
                    r = hc.post(hapi, content=json.dumps(b).encode())
                    if r.status_code != 200:
                        sys.exit(f"HAPI refused a bundle: {r.status_code} {r.text[:500]}")
                hapi_s = time.perf_counter() - t0
            software = httpx.get(f"{hapi}/metadata", timeout=60).json().get("software", {})
            print(f"HAPI:   {software.get('name')} {software.get('version')} at {hapi} took the same Bundles in {hapi_s:.1f}s = "
                  f"{total / hapi_s:,.0f} resources/s (for information)", flush=True)
            sync_base, extra_params, sync_token = hapi, [("_tag", f"{tag_system}|{tag}")], None

        from app.linkage.queue import linking_alongside
        from app.main import create_app
        from app.sync.client import UpstreamClient
        from app.sync.engine import Syncer
        from app.sync.progress import Progress

        app = create_app(settings)
        client = UpstreamClient(sync_base, settings, bearer_token=sync_token)
        syncer = Syncer(app.state.db, settings, client, source_org=ORG, service=SERVICE, hooks=app.state.ingest_hooks,
                        progress=Progress(sys.stderr), page_size=args.page_size, extra_params=extra_params)
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
        from app.runtime import collect_garbage_rarely

        collect_garbage_rarely()  # as `familyview sync` and the ingest server do
        local_queue = LinkageQueue(local_url) if settings.linkage_queued else None
        with linking_alongside(settings, app.state.db):  # as `familyview sync` does: its records linked in its time
            if local_queue is not None:
                local_queue.wait_for_worker()  # as the ingest server's worker was, before its clock started
                local_queue.close()
            hapi_cpu0 = cpu_seconds(os.environ.get("HAPI_FHIR_PID")) if args.upstream == "hapi" else None
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            summary = syncer.run()
            if profiler:
                profiler.disable()
            written = time.perf_counter()
        sync_s = time.perf_counter() - t0  # with what was left to link on the way out
        hapi_cpu1 = cpu_seconds(os.environ.get("HAPI_FHIR_PID")) if hapi_cpu0 is not None else None
        if profiler:
            import pstats
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.profile)
        client.close()
        app.state.db.dispose()
        fetched = summary.total("fetched")
        if not summary.ok or summary.total("created") != total:
            print(summary.render())
            sys.exit(f"the sync did not bring every record across ({summary.total('created')} of {total})")
        sync_rate = fetched / sync_s
        print(f"sync from {args.upstream}: {fetched:,} resources in {summary.total('pages')} pages of {args.page_size} in {sync_s:.1f}s = {sync_rate:,.0f} resources/s", flush=True)
        print(f"  of which waiting for {args.upstream}'s pages: {summary.upstream_wait:.1f}s; linking after the last page: "
              f"{t0 + sync_s - written:.1f}s", flush=True)
        if hapi_cpu0 is not None and hapi_cpu1 is not None:  # the upstream on the same cores: in life it has its own
            print(f"  HAPI's own CPU meanwhile (serving the pages, on the same 2 cores): {hapi_cpu1 - hapi_cpu0:.1f}s", flush=True)
        server.stop()
        again_url = dbs.new("upstream_again")
        server = Server(again_url, key)
        ingest_s.append(ingest(f"{server.base}/fhir", again_url, "after the sync"))
        ingest_rate = total * len(ingest_s) / sum(ingest_s)
        ratio = sync_rate / ingest_rate
        print(f"ingest, both timings: {ingest_rate:,.0f} resources/s", flush=True)
        print(f"sync / ingest = {ratio:.0%} (target >= 70%: {'met' if ratio >= 0.7 else 'NOT met'})", flush=True)
        if args.json:
            print(json.dumps({"resources": total, "database": args.database, "upstream": args.upstream, "ingest_per_s": round(ingest_rate, 1),
                              "ingest_runs_s": [round(x, 2) for x in ingest_s], "sync_s": round(sync_s, 2), "upstream_wait_s": round(summary.upstream_wait, 2),
                              "sync_per_s": round(sync_rate, 1), "ratio": round(ratio, 3)}))
        return 0 if ratio >= 0.7 else 1
    finally:
        server.stop()
        dbs.drop()


if __name__ == "__main__":
    sys.exit(main())
