"""$family-view latency against a plain read, at 10,000 and 100,000 families, over HTTP to a
single-worker server, on SQLite and PostgreSQL. Targets: view p95 <= 3x the plain read's p95
in the same run, and view p95 at 100k <= 1.3x at 10k (the view's cost follows the family,
not the size of the database).

    scripts/with-postgres.sh .venv/bin/python benchmarks/family_view.py           # both databases
    scripts/with-postgres.sh .venv/bin/python benchmarks/family_view.py --interleave   # sizes timed in turn
    .venv/bin/python benchmarks/family_view.py --quick --database sqlite         # 1k and 10k

Loading: families are built as the sources send them (maternity: infant, mother, her
relationship to the infant, the father's RelatedPerson, a Flag and an Observation; health
visiting: an EpisodeOfCare; GP: the father's Patient, a substance-misuse Condition and his
Consent) — 10 resources each — then stamped with labels and indexed by the gateway's own
functions and bulk-inserted, with linkage rows joining each person's records. Bulk loading
stands in for a million HTTP posts; the measured requests go through the real server."""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone

from harness import Databases, Server, backends, nhs_numbers, percentile

import httpx  # noqa: E402
from sqlalchemy import create_engine, insert  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.fhir.indexing import IndexRows, index_resource  # noqa: E402
from app.fhir.models import SearchDate, SearchReference, SearchString, SearchToken, StoredResource  # noqa: E402
from app.ingest.labelling import SecurityLabelHook  # noqa: E402
from app.linkage.matching import PersonRecord  # noqa: E402
from app.linkage.models import Link, LinkedPerson  # noqa: E402
from app.linkage.service import features_json  # noqa: E402
from app.settings import Settings  # noqa: E402

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SCT = "http://snomed.info/sct"
MAT, HV, GP = "RMT01", "RHV01", "A99002"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def build_family(i: int, numbers, today: date, fake) -> tuple[list[tuple[dict, str]], list[list[str]], str]:
    """(resources with their source org, person groups as references, the infant's NHS number)."""
    ids = {k: str(uuid.uuid4()) for k in ("inf", "mum", "rpm", "rpf", "eoc", "dad", "cond", "cons", "flag", "obs")}
    n_inf, n_mum, n_dad = next(numbers), next(numbers), next(numbers)
    surname = fake.last_name()
    pc = fake.postcode()
    addr = [{"use": "home", "line": [f"{i % 200 + 1} {fake.street_name()}"], "postalCode": pc}]
    inf_dob = today - timedelta(days=10 + i % 300)
    mum_dob = date(1982, 1, 1) + timedelta(days=(i * 7) % 6500)
    dad_dob = date(1978, 1, 1) + timedelta(days=(i * 11) % 8000)
    loc = lambda k: [{"system": "https://bench.example.nhs.uk/Id/record", "value": f"{k}-{i}"}]  # noqa: E731
    res = [
        ({"resourceType": "Patient", "id": ids["inf"], "identifier": [{"system": NHS, "value": n_inf}] + loc("inf"), "name": [{"family": surname, "given": [fake.first_name()]}],
          "gender": "female", "birthDate": str(inf_dob), "address": addr, "generalPractitioner": [{"identifier": {"system": ODS, "value": "A99001"}}]}, MAT),
        ({"resourceType": "Patient", "id": ids["mum"], "identifier": [{"system": NHS, "value": n_mum}] + loc("mum"), "name": [{"family": surname, "given": [fake.first_name_female()]}],
          "gender": "female", "birthDate": str(mum_dob), "address": addr}, MAT),
        ({"resourceType": "RelatedPerson", "id": ids["rpm"], "identifier": [{"system": NHS, "value": n_mum}] + loc("rpm"), "patient": {"reference": f"Patient/{ids['inf']}"},
          "relationship": [{"coding": [{"system": ROLE, "code": "MTH"}]}], "gender": "female", "birthDate": str(mum_dob), "name": [{"family": surname}]}, MAT),
        ({"resourceType": "RelatedPerson", "id": ids["rpf"], "identifier": [{"system": NHS, "value": n_dad}] + loc("rpf"), "patient": {"reference": f"Patient/{ids['inf']}"},
          "relationship": [{"coding": [{"system": ROLE, "code": "FTH"}]}], "gender": "male", "birthDate": str(dad_dob), "name": [{"family": surname, "given": [fake.first_name_male()]}]}, MAT),
        ({"resourceType": "Flag", "id": ids["flag"], "identifier": loc("flag"), "status": "active", "code": {"text": "Hearing screen follow-up"}, "subject": {"reference": f"Patient/{ids['inf']}"}}, MAT),
        ({"resourceType": "Observation", "id": ids["obs"], "identifier": loc("obs"), "status": "final", "subject": {"reference": f"Patient/{ids['inf']}"},
          "code": {"coding": [{"system": SCT, "code": "27113001", "display": "Body weight"}]}, "effectiveDateTime": str(inf_dob + timedelta(days=5)),
          "valueQuantity": {"value": 3.4, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}, MAT),
        ({"resourceType": "EpisodeOfCare", "id": ids["eoc"], "identifier": loc("eoc"), "status": "active", "patient": {"identifier": {"system": NHS, "value": n_inf}},
          "managingOrganization": {"identifier": {"system": ODS, "value": HV}}, "period": {"start": str(inf_dob)}}, HV),
        ({"resourceType": "Patient", "id": ids["dad"], "identifier": [{"system": NHS, "value": n_dad}] + loc("dad"), "name": [{"family": surname}], "gender": "male",
          "birthDate": str(dad_dob), "address": addr}, GP),
        ({"resourceType": "Condition", "id": ids["cond"], "identifier": loc("cond"), "subject": {"reference": f"Patient/{ids['dad']}"},
          "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
          "code": {"coding": [{"system": SCT, "code": "66214007", "display": "Substance abuse"}]}, "recordedDate": "2025-01-01"}, GP),
        ({"resourceType": "Consent", "id": ids["cons"], "identifier": loc("cons"), "status": "active", "patient": {"reference": f"Patient/{ids['dad']}"},
          "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
          "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}], "dateTime": "2025-06-01",
          "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
          "provision": {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                                                      "reference": {"identifier": {"system": ODS, "value": HV}}}],
                        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                        "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}}, GP),
    ]
    persons = [[f"Patient/{ids['inf']}"], [f"Patient/{ids['mum']}", f"RelatedPerson/{ids['rpm']}"], [f"RelatedPerson/{ids['rpf']}", f"Patient/{ids['dad']}"]]
    return res, persons, ids["inf"]


def load(url: str, families: int, start: int, today: date) -> list[str]:
    """Bulk-load families; returns the infants' Patient ids."""
    from faker import Faker

    fake = Faker("en_GB")
    fake.seed_instance(start)
    labeller = SecurityLabelHook()
    numbers = nhs_numbers(300_000 + start * 3)
    now = datetime.now(timezone.utc)
    eng = create_engine(url)
    infants: list[str] = []
    chunk = 2000
    try:
        for base in range(start, start + families, chunk):
            resources, index, links, people = [], IndexRows(), [], []
            for i in range(base, min(base + chunk, start + families)):
                res, persons, infant = build_family(i, numbers, today, fake)
                infants.append(infant)
                bodies = {}
                for body, org in res:
                    labeller.prepare(body)
                    body["meta"] = {**(body.get("meta") or {}), "versionId": "1", "lastUpdated": now.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
                    index_resource(body, index)
                    bodies[f"{body['resourceType']}/{body['id']}"] = (body, org)
                    resources.append({"res_type": body["resourceType"], "res_id": body["id"], "version_id": 1, "last_updated": now, "deleted": False,
                                      "body": json.dumps(body, separators=(",", ":")), "source_org": org, "source_system": "bench"})
                for group in persons:
                    pid = str(uuid.uuid4())
                    people.append({"id": pid, "version_id": 1, "created_at": now, "updated_at": now, "active": True, "merged_into": None})
                    for ref in group:
                        body, org = bodies[ref]
                        rec = PersonRecord.from_fhir(body)
                        links.append({"res_type": body["resourceType"], "res_id": body["id"], "person_id": pid, "assurance": "level3" if len(group) > 1 else "level4",
                                      "probability": 1.0, "how": "auto", "matched_ref": group[0] if ref != group[0] else None,
                                      "nhs_number": rec.nhs_number, "source_org": org, "features": features_json(rec), "updated_at": now})
            with eng.begin() as c:
                c.execute(insert(StoredResource), resources)
                for table, rows in ((SearchToken, index.tokens), (SearchString, index.strings), (SearchDate, index.dates), (SearchReference, index.references)):
                    if rows:
                        c.execute(insert(table), rows)
                c.execute(insert(LinkedPerson), people)
                c.execute(insert(Link), links)
            print(f"  loaded {min(base + chunk, start + families) - start:,} / {families:,} families", end="\r", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        with eng.connect() as c:  # fresh planner statistics after a bulk load, as a DBA would take
            c.exec_driver_sql("ANALYZE")
            c.commit()
    finally:
        eng.dispose()
    return infants


class _Target:
    """One loaded database behind its own server, with a client and tokens for it."""

    def __init__(self, server: Server, settings: Settings, infants: list[str], samples: int):
        self.client = httpx.Client(base_url=server.base + "/fhir", timeout=60)
        self.hv = {"Authorization": f"Bearer {mint_token(settings, role='health-visitor', org=HV, minutes=120)}"}
        self.mat = {"Authorization": f"Bearer {mint_token(settings, role='source-system', org=MAT, service='maternity', minutes=120)}"}
        rng = random.Random(7)
        self.picks = [rng.choice(infants) for _ in range(samples)]
        self.view_t: list[float] = []
        self.read_t: list[float] = []

    def one(self, pid: str, record: bool = True) -> None:
        t0 = time.perf_counter()
        r = self.client.get(f"/Patient/{pid}/$family-view", params={"purpose": "direct-care"}, headers=self.hv)
        t1 = time.perf_counter()
        if r.status_code != 200 or len(r.json()["entry"]) < 4:
            sys.exit(f"unexpected view: {r.status_code} {r.text[:300]}")
        t2 = time.perf_counter()
        r = self.client.get(f"/Patient/{pid}", headers=self.mat)
        t3 = time.perf_counter()
        if r.status_code != 200:
            sys.exit(f"unexpected read: {r.status_code}")
        if record:
            self.view_t.append(t1 - t0)
            self.read_t.append(t3 - t2)

    def figures(self) -> dict[str, float]:
        self.client.close()
        ms = lambda xs, p: percentile(xs, p) * 1000  # noqa: E731
        return {"view_p50": ms(self.view_t, 50), "view_p95": ms(self.view_t, 95), "read_p50": ms(self.read_t, 50), "read_p95": ms(self.read_t, 95)}


def measure(targets: list[_Target]) -> list[dict[str, float]]:
    """A view and a plain read of one infant, in each target in turn (one target: the sizes are
    measured one after another; several: all sizes within the same minutes)."""
    for t in targets:
        for pid in t.picks[:30]:  # warm-up
            t.one(pid, record=False)
    for i in range(len(targets[0].picks)):
        for t in targets:
            t.one(t.picks[i])
    return [t.figures() for t in targets]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--quick", action="store_true", help="sizes 1,000 and 10,000")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--database", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--interleave", action="store_true",
                    help="load each size into its own database and time them in turn, under the same machine conditions")
    args = ap.parse_args()
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    today = date.today()
    ok = True
    print(f"family-view benchmark: {args.samples} requests per size, single-worker server over HTTP, direct care by a health visitor")
    for kind in backends(args.database):
        dbs = Databases(kind)
        key = dbs.tmp / "key.pem"
        figures = {}
        servers: list[Server] = []

        def report(size: int, f: dict[str, float]) -> bool:
            ratio = f["view_p95"] / f["read_p95"]
            print(f"{kind:8} {size:>7,} families: $family-view p50 {f['view_p50']:.1f} ms p95 {f['view_p95']:.1f} ms | "
                  f"plain read p50 {f['read_p50']:.1f} ms p95 {f['read_p95']:.1f} ms | view/read p95 {ratio:.2f}x (target <= 3x)", flush=True)
            return ratio <= 3

        try:
            if args.interleave:  # one database per size, all served at once, measured in turn
                targets = []
                for size in sizes:
                    url = dbs.new(f"view{size}")
                    settings = Settings(database_url=url, auth_local_key_path=key)
                    t0 = time.perf_counter()
                    infants = load(url, size, 0, today)
                    print(f"{kind}: {size:,} families ({size * 10:,} resources) loaded in {time.perf_counter() - t0:.0f}s", flush=True)
                    servers.append(Server(url, key))
                    targets.append(_Target(servers[-1], settings, infants, args.samples))
                for size, f in zip(sizes, measure(targets)):
                    figures[size] = f
                    ok &= report(size, f)
            else:  # one database grown size by size, measured after each
                url = dbs.new("view")
                settings = Settings(database_url=url, auth_local_key_path=key)
                infants: list[str] = []
                for size in sizes:
                    t0 = time.perf_counter()
                    infants += load(url, size - len(infants), len(infants), today)
                    print(f"{kind}: {size:,} families ({size * 10:,} resources) loaded in {time.perf_counter() - t0:.0f}s", flush=True)
                    server = Server(url, key)
                    try:
                        figures[size] = measure([_Target(server, settings, infants, args.samples)])[0]
                    finally:
                        server.stop()
                    ok &= report(size, figures[size])
            growth = figures[sizes[-1]]["view_p95"] / figures[sizes[0]]["view_p95"]
            ok &= growth <= 1.3
            print(f"{kind:8} growth of view p95 from {sizes[0]:,} to {sizes[-1]:,} families: {growth:.2f}x (target <= 1.3x)", flush=True)
        finally:
            for server in servers:
                server.stop()
            dbs.drop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
