"""Mixed load against PostgreSQL with the server at two workers: 16 concurrent clients for 60 s
of ingest (one family's transaction Bundle), reads (read by id, search by NHS number) and
family views, then the family view's latency while a 1,000-record near-duplicate Bundle is
ingested. Prints throughput, p50/p95/p99 per kind and the errors, beside the same run's
baseline (family views from one client with nothing else running).

Targets: 0 errors; family-view p99 < 250 ms under the mixed load; family-view p99 < 1 s while
the near-duplicate Bundle is ingested (and linked).

    scripts/with-postgres.sh .venv/bin/python benchmarks/load.py
    scripts/with-postgres.sh .venv/bin/python benchmarks/load.py --seconds 20 --clients 8   # shorter

An error is a transport failure or any status other than the one the request should get
(200 for reads and views, 200 for a transaction); each kind's are counted by status."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import date, timedelta

from harness import Databases, LinkageQueue, Server, nhs_numbers, percentile

import httpx  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.settings import Settings  # noqa: E402

from ingest import NHS, family  # noqa: E402

MAT, HV = "RMT01", "RHV01"
WEIGHTS = {"ingest": 0.15, "read": 0.45, "family-view": 0.40}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, Counter] = defaultdict(Counter)

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.times[kind].append(seconds)
            if error:
                self.errors[kind][error] += 1


def _timed(rec: Recorder, kind: str, send, expect: int = 200) -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        r = send()
    except httpx.HTTPError as exc:
        rec.add(kind, time.perf_counter() - t0, type(exc).__name__)
        return None
    rec.add(kind, time.perf_counter() - t0, None if r.status_code == expect else str(r.status_code))
    return r


class World:
    """Families the load reads and views, and new ones it ingests (distinct NHS numbers)."""

    def __init__(self, settings: Settings, base: str):
        self.base = base
        self.source = {"Authorization": f"Bearer {mint_token(settings, role='source-system', org=MAT, service='maternity')}",
                       "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        self.hv = {"Authorization": f"Bearer {mint_token(settings, role='health-visitor', org=HV)}", "Accept": "application/fhir+json"}
        self.numbers = nhs_numbers(770_000)
        self.next_family = 900_000
        self.lock = threading.Lock()
        self.infants: list[tuple[str, str]] = []  # (Patient id, NHS number)

    def family_bundle(self) -> dict:
        with self.lock:
            i = self.next_family
            self.next_family += 1
            entries = family(i, self.numbers)
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def remember(self, bundle: dict, response: httpx.Response) -> None:
        body = response.json()
        location = body["entry"][0]["response"]["location"]  # the infant is the first entry
        pid = location.split("Patient/", 1)[1].split("/", 1)[0]
        nhs = bundle["entry"][0]["resource"]["identifier"][0]["value"]
        with self.lock:
            self.infants.append((pid, nhs))

    def seed(self, families: int) -> None:
        with httpx.Client(base_url=self.base, headers=self.source, timeout=120) as c:
            for _ in range(families):
                b = self.family_bundle()
                r = c.post("/fhir", content=json.dumps(b))
                if r.status_code != 200:
                    sys.exit(f"seeding failed: {r.status_code} {r.text[:300]}")
                self.remember(b, r)


def client_loop(world: World, rec: Recorder, until: float, seed: int, kinds: dict[str, float]) -> None:
    rnd = random.Random(seed)
    names, weights = list(kinds), list(kinds.values())
    with httpx.Client(base_url=world.base, timeout=60) as c:
        while time.perf_counter() < until:
            kind = rnd.choices(names, weights)[0]
            if kind == "ingest":
                b = world.family_bundle()
                r = _timed(rec, kind, lambda: c.post("/fhir", content=json.dumps(b), headers=world.source))
                if r is not None and r.status_code == 200:
                    world.remember(b, r)
                continue
            pid, nhs = rnd.choice(world.infants)
            if kind == "read":
                if rnd.random() < 0.5:
                    _timed(rec, kind, lambda: c.get(f"/fhir/Patient/{pid}", headers=world.source))
                else:
                    _timed(rec, kind, lambda: c.get("/fhir/Patient", params={"identifier": f"{NHS}|{nhs}"}, headers=world.source))
            else:
                _timed(rec, kind, lambda: c.get(f"/fhir/Patient/{pid}/$family-view", params={"purpose": "direct-care"}, headers=world.hv))


def run_clients(world: World, rec: Recorder, clients: int, seconds: float, kinds: dict[str, float]) -> float:
    until = time.perf_counter() + seconds
    threads = [threading.Thread(target=client_loop, args=(world, rec, until, n, kinds)) for n in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def near_duplicates(n: int, numbers) -> dict:
    """A transaction of n Patients whose demographics are one person's, local ids one slip apart:
    the linkage worst case (each could be the same person as every other)."""
    born = (date.today() - timedelta(days=40)).isoformat()
    entries = []
    for i in range(n):
        patient = {"resourceType": "Patient",
                   "identifier": [{"system": "https://bench.example.nhs.uk/Id/near-duplicate", "value": f"ND{i:05d}"},
                                  {"system": NHS, "value": next(numbers)}],
                   "name": [{"family": "Nearduplicate", "given": ["Robin" if i % 2 else "Robyn"]}], "gender": "female",
                   "birthDate": born, "address": [{"postalCode": "LS1 4AP", "line": ["1 Bulk Street"]}]}
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": patient, "request": {"method": "POST", "url": "Patient"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def figures(rec: Recorder, elapsed: float) -> None:
    print(f"  {'kind':<12} {'requests':>8} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    for kind in sorted(rec.times):
        t = rec.times[kind]
        errs = dict(rec.errors[kind]) or 0
        print(f"  {kind:<12} {len(t):>8} {len(t) / elapsed:>7.1f} {percentile(t, 50) * 1e3:>8.1f} {percentile(t, 95) * 1e3:>8.1f} "
              f"{percentile(t, 99) * 1e3:>8.1f}  {errs}")
    total = sum(len(t) for t in rec.times.values())
    print(f"  all          {total:>8} {total / elapsed:>7.1f}   errors: {sum(sum(c.values()) for c in rec.errors.values())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--families", type=int, default=200, help="families loaded before the load")
    ap.add_argument("--bulk", type=int, default=1000, help="records in the near-duplicate Bundle")
    args = ap.parse_args()
    if not os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL"):
        sys.exit("load.py runs against PostgreSQL: scripts/with-postgres.sh .venv/bin/python benchmarks/load.py")
    dbs = Databases("postgres")
    key = dbs.tmp / "signing-key.pem"
    try:
        url = dbs.new("load")
        settings = Settings(database_url=url, auth_local_key_path=key)
        server = Server(url, key, workers=args.workers)
        queue = LinkageQueue(url)
        try:
            print(f"load: PostgreSQL, familyview serve --workers {args.workers}, {args.clients} clients, {args.seconds:.0f} s", flush=True)
            world = World(settings, server.base)
            t0 = time.perf_counter()
            world.seed(args.families)
            queue.wait_until_linked()
            print(f"  seeded {args.families} families ({args.families * 10} records) in {time.perf_counter() - t0:.1f} s", flush=True)

            base = Recorder()
            run_clients(world, base, 1, min(10.0, args.seconds / 4), {"family-view": 1.0})
            fv = base.times["family-view"]
            print(f"baseline (one client, views only): family-view p50 {percentile(fv, 50) * 1e3:.1f} ms, "
                  f"p99 {percentile(fv, 99) * 1e3:.1f} ms over {len(fv)} requests", flush=True)

            print(f"phase 1: mixed load ({', '.join(f'{k} {w:.0%}' for k, w in WEIGHTS.items())})", flush=True)
            mixed = Recorder()
            elapsed = run_clients(world, mixed, args.clients, args.seconds, WEIGHTS)
            figures(mixed, elapsed)
            t_link = queue.wait_until_linked()
            print(f"  linkage queue drained {t_link:.1f} s after the load", flush=True)

            print(f"phase 2: family views (4 clients) while a {args.bulk}-record near-duplicate Bundle is ingested and linked", flush=True)
            bulk_rec, during = Recorder(), Recorder()
            bundle = near_duplicates(args.bulk, nhs_numbers(790_000))
            done = threading.Event()

            def bulk() -> None:
                with httpx.Client(base_url=server.base, timeout=600) as c:
                    _timed(bulk_rec, "bulk bundle", lambda: c.post("/fhir", content=json.dumps(bundle), headers=world.source))
                bulk_rec.add("bulk linked", queue.wait_until_linked(), None)
                done.set()

            def views(n: int) -> None:
                rnd = random.Random(1000 + n)
                with httpx.Client(base_url=server.base, timeout=60) as c:
                    while not done.is_set():
                        pid, _ = rnd.choice(world.infants)
                        _timed(during, "family-view", lambda: c.get(f"/fhir/Patient/{pid}/$family-view", params={"purpose": "direct-care"}, headers=world.hv))

            threads = [threading.Thread(target=bulk)] + [threading.Thread(target=views, args=(n,)) for n in range(4)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed2 = time.perf_counter() - t0
            b = bulk_rec.times
            print(f"  bundle answered in {b['bulk bundle'][0]:.1f} s ({dict(bulk_rec.errors['bulk bundle']) or 'ok'}), "
                  f"linked {b['bulk linked'][0]:.1f} s after", flush=True)
            figures(during, elapsed2)

            fv_p99 = percentile(mixed.times["family-view"], 99)
            bulk_p99 = percentile(during.times["family-view"], 99)
            errors = sum(sum(c.values()) for c in (*mixed.errors.values(), *during.errors.values(), *bulk_rec.errors.values()))
            print("targets:")
            print(f"  errors {errors} (target 0): {'met' if errors == 0 else 'MISSED'}")
            print(f"  family-view p99 under mixed load {fv_p99 * 1e3:.0f} ms (target < 250 ms; baseline p99 {percentile(fv, 99) * 1e3:.0f} ms): "
                  f"{'met' if fv_p99 < 0.25 else 'MISSED'}")
            print(f"  family-view p99 during the bulk load {bulk_p99 * 1e3:.0f} ms (target < 1000 ms): {'met' if bulk_p99 < 1.0 else 'MISSED'}")
            return 0
        finally:
            queue.close()
            server.stop()
    finally:
        dbs.drop()


if __name__ == "__main__":
    sys.exit(main())
