"""Scale benchmark of incremental linkage: time to link one new record at 100k and 1M persons.

    .venv/bin/python benchmarks/linkage_scale.py                 # SQLite, 100,000 and 1,000,000
    .venv/bin/python benchmarks/linkage_scale.py --quick         # SQLite, 10,000 and 100,000
    scripts/with-postgres.sh .venv/bin/python benchmarks/linkage_scale.py --postgres   # + PostgreSQL
    .venv/bin/python benchmarks/linkage_scale.py --reuse /tmp/fv-scale   # keep the loaded databases for the next run
    .venv/bin/python benchmarks/linkage_scale.py --interleave    # time all sizes in the same minutes (see below)

For each size: a fresh database migrated to head; N synthetic persons (faker en_GB names and
postcodes, dates of birth 1940-2010, valid 999… Modulus-11 NHS numbers on 60%) bulk-loaded
into the linkage tables (one linked person per record; keys and features computed by the
real ``blocking_keys``/``features_json``; executemany on SQLite, COPY on PostgreSQL; indexes
built after the load). Then ``--samples`` new records are linked one at a time, each in its
own transaction through the real ingest hook (``LinkageHook.after_write``, the code that runs
in every Patient/RelatedPerson write): 70% corrupted copies of a loaded person (a corruption
step that keeps the ground truth: nickname, name typo, day/month swap, one-digit date typo,
postcode change, NHS number dropped) and 30% new people. Printed: p50/p95 of the link time
(hook call; commit separately), candidates compared, how many duplicates joined their true
person, and the growth ratio between the sizes. Target: p95 < 10 ms at 1M, growth < 1.5x.

By default each size is timed in turn, so the growth ratio also carries whatever the machine
did in those minutes (on a shared 2-CPU VM a size's p50 varies by up to 1.7x between runs).
``--interleave`` loads every size first and then links one record into each size in turn:
both sizes see the same machine conditions, and the ratio measures the database size alone.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from app.db import Database  # noqa: E402
from app.ingest.hooks import Written  # noqa: E402
from app.linkage.matching import PersonRecord, blocking_keys  # noqa: E402
from app.linkage.nicknames import _groups  # noqa: E402
from app.linkage.hooks import LinkageHook  # noqa: E402
from app.linkage.service import features_json, key_hash, linked_person_id  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.settings import Settings  # noqa: E402

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
CHUNK = 50_000


# ------------------------------------------------------------------ synthetic people
def nhs_number(stem: int) -> str | None:
    """The valid synthetic NHS number 999<stem:06d><check>, or None when the stem has no valid check digit."""
    digits = f"999{stem:06d}"
    total = sum(int(c) * w for c, w in zip(digits, range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return None if check == 10 else digits + str(check)


class World:
    """Pools drawn from faker en_GB once, then sampled quickly (seeded, reproducible)."""

    def __init__(self, seed: int = 7):
        from faker import Faker

        fake = Faker("en_GB")
        Faker.seed(seed)
        self.rng = random.Random(seed)
        self.male = sorted({fake.first_name_male() for _ in range(6000)})
        self.female = sorted({fake.first_name_female() for _ in range(6000)})
        self.family = sorted({fake.last_name() for _ in range(30000)})
        self.postcodes = sorted({fake.postcode() for _ in range(60000)})
        self.nick = {}
        for name, groups in _groups().items():
            for g in groups:
                self.nick.setdefault(g, []).append(name)
        self._nhs_seq = 0

    def next_nhs(self) -> str:
        """Distinct valid numbers in order (about 909,000 exist with the 999 prefix)."""
        while True:
            self._nhs_seq += 1
            if self._nhs_seq >= 10**6:
                raise RuntimeError("out of synthetic 999 NHS numbers")
            n = nhs_number(self._nhs_seq)
            if n:
                return n

    def person(self, i: int) -> dict:
        rng = self.rng
        sex = "male" if rng.random() < 0.5 else "female"
        d = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 70 * 365))
        has_nhs = rng.random() < 0.6
        nhs = self.next_nhs() if has_nhs else None
        return {
            "given": rng.choice(self.male if sex == "male" else self.female), "family": rng.choice(self.family),
            "dob": d.isoformat(), "sex": sex, "postcode": rng.choice(self.postcodes) if rng.random() < 0.9 else None,
            "nhs": nhs or None,
        }

    def corrupt(self, p: dict) -> dict:
        """One to three errors, ground truth kept by the caller."""
        rng = self.rng
        q = dict(p)
        for _ in range(rng.choice((1, 1, 2, 3))):
            kind = rng.choice(("nick", "typo_given", "typo_family", "swap_dm", "digit", "postcode", "drop_nhs", "drop_postcode"))
            if kind == "nick":
                forms = self.nick.get(q["given"].lower())
                if forms:
                    q["given"] = rng.choice(forms).title()
            elif kind in ("typo_given", "typo_family"):
                field = "given" if kind == "typo_given" else "family"
                s = q[field]
                if len(s) > 3:
                    j = rng.randrange(1, len(s) - 1)
                    q[field] = s[:j] + s[j + 1] + s[j] + s[j + 2:] if rng.random() < 0.5 else s[:j] + rng.choice("aeiouy") + s[j + 1:]
            elif kind == "swap_dm":
                y, m, dd = q["dob"].split("-")
                if int(dd) <= 12:
                    q["dob"] = f"{y}-{dd}-{m}"
            elif kind == "digit":
                y, m, dd = q["dob"].split("-")
                q["dob"] = f"{y[:3]}{(int(y[3]) + rng.choice((1, 9))) % 10}-{m}-{dd}"
            elif kind == "postcode" and q["postcode"]:
                q["postcode"] = rng.choice(self.postcodes)
            elif kind == "drop_nhs":
                q["nhs"] = None
            elif kind == "drop_postcode":
                q["postcode"] = None
        return q


def fhir(p: dict, res_type: str = "Patient") -> dict:
    body = {"resourceType": res_type, "name": [{"family": p["family"], "given": [p["given"]]}],
            "gender": p["sex"], "birthDate": p["dob"]}
    if p["nhs"]:
        body["identifier"] = [{"system": NHS_SYSTEM, "value": p["nhs"]}]
    if p["postcode"]:
        body["address"] = [{"use": "home", "postalCode": p["postcode"]}]
    return body


# ------------------------------------------------------------------ databases
def new_database(backend: str, workdir: Path, label: str, keep: bool = False) -> tuple[str, callable]:
    """A database for one size; with ``keep`` a named one that survives the run (``--reuse``)."""
    if backend == "sqlite":
        path = workdir / f"scale-{label}.db"
        return f"sqlite:///{path}", (lambda: None) if keep else (lambda: path.unlink(missing_ok=True))
    base = os.environ["FAMILYVIEW_TEST_POSTGRES_URL"]
    name = f"fv_scale_keep_{label}" if keep else f"fv_scale_{label}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if not (keep and c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()):
            c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        if not keep:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def loaded_persons(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM linkage_person WHERE id LIKE 'P%'")).scalar()
    finally:
        engine.dispose()


def bulk_load(url: str, world: World, n: int, log) -> list[dict]:
    """Load n persons; returns the people (for the corruption step)."""
    now = datetime.now(timezone.utc)
    people = []
    engine = create_engine(url)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_linkage_key_record"))
        conn.execute(text("DROP INDEX ix_linkage_link_person"))
        if pg:
            conn.execute(text("ALTER TABLE linkage_key DROP CONSTRAINT linkage_key_pkey"))
            conn.execute(text("ALTER TABLE linkage_link DROP CONSTRAINT linkage_link_person_id_fkey"))
    raw = engine.raw_connection()
    t0 = time.perf_counter()
    keys_total = 0
    try:
        cur = raw.cursor()
        if not pg:
            cur.execute("PRAGMA synchronous=OFF")
            cur.execute("PRAGMA cache_size=-1000000")
        for start in range(0, n, CHUNK):
            persons, links, keys = [], [], []
            for i in range(start, min(n, start + CHUNK)):
                p = world.person(i)
                people.append(p)
                rid = f"p{i}"
                rec = PersonRecord(f"Patient/{rid}", (p["given"],), (p["family"],), p["dob"], p["sex"], p["postcode"], nhs_number=p["nhs"])
                persons.append((f"P{i}", 1, now, now, True))
                links.append(("Patient", rid, f"P{i}", "level4", 1.0, "auto", None, rec.nhs_number, "A99001", features_json(rec), now))
                for k in {key_hash(k) for k in blocking_keys(rec)}:
                    keys.append((k, "Patient", rid))
            keys_total += len(keys)
            if pg:
                with cur.copy("COPY linkage_person (id, version_id, created_at, updated_at, active) FROM STDIN") as cp:
                    for row in persons:
                        cp.write_row(row)
                with cur.copy("COPY linkage_link (res_type, res_id, person_id, assurance, probability, how, matched_ref, nhs_number, source_org, features, updated_at) FROM STDIN") as cp:
                    for row in links:
                        cp.write_row(row)
                with cur.copy("COPY linkage_key (key_hash, res_type, res_id) FROM STDIN") as cp:
                    for row in keys:
                        cp.write_row(row)
            else:
                fmt = lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
                cur.executemany("INSERT INTO linkage_person (id, version_id, created_at, updated_at, active) VALUES (?,?,?,?,?)",
                                [(a, b, fmt(c), fmt(d), e) for a, b, c, d, e in persons])
                links.sort()  # primary-key order: linkage_link and linkage_key are WITHOUT ROWID on SQLite
                cur.executemany("INSERT INTO linkage_link (res_type, res_id, person_id, assurance, probability, how, matched_ref, nhs_number, source_org, features, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                [r[:10] + (fmt(r[10]),) for r in links])
                keys.sort()
                cur.executemany("INSERT INTO linkage_key (key_hash, res_type, res_id) VALUES (?,?,?)", keys)
            raw.commit()
            log(f"    loaded {min(n, start + CHUNK):,} persons, {keys_total:,} keys ({time.perf_counter() - t0:.0f}s)")
        t1 = time.perf_counter()
        if pg:
            cur.execute("ALTER TABLE linkage_key ADD PRIMARY KEY (key_hash, res_type, res_id)")
            cur.execute("ALTER TABLE linkage_link ADD CONSTRAINT linkage_link_person_id_fkey FOREIGN KEY (person_id) REFERENCES linkage_person (id)")
        cur.execute("CREATE INDEX ix_linkage_key_record ON linkage_key (res_type, res_id)")
        cur.execute("CREATE INDEX ix_linkage_link_person ON linkage_link (person_id)")
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
        log(f"    indexes + analyze {time.perf_counter() - t1:.0f}s; {keys_total / n:.1f} keys per person")
    finally:
        raw.close()
        engine.dispose()
    return people


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Linker:
    """Links sample records into one loaded database, one per :meth:`step`, and keeps the figures."""

    def __init__(self, url: str, world: World, people: list[dict], tag: str = ""):
        self.world, self.people, self.tag = world, people, tag
        self.db = Database(url)
        # inline: the linking itself, timed here, is the same work the worker does when queued
        self.hook = LinkageHook(Settings(database_url=url, linkage_mode="inline"))
        self.link_ms: list[float] = []
        self.commit_ms: list[float] = []
        self.compared: list[int] = []
        self.dup_total = self.dup_joined = self.new_total = self.new_alone = 0

    def step(self, k: int, warm_up: bool) -> None:
        world, rng = self.world, self.world.rng
        is_dup = rng.random() < 0.7
        if is_dup:
            truth = rng.randrange(len(self.people))
            p = world.corrupt(self.people[truth])
        else:
            truth = None
            p = world.person(10**7 + k)
            p["nhs"] = None if rng.random() < 0.5 else world.next_nhs()
        res_type = "RelatedPerson" if rng.random() < 0.5 else "Patient"
        rid = f"new{self.tag}{k}"
        w = Written(res_type, rid, 1, dict(fhir(p, res_type), id=rid), True, "RMT01", "maternity")
        with self.db.session() as s:
            t0 = time.perf_counter()
            self.hook.after_write(s, [w])
            s.flush()
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        if warm_up:
            return
        self.link_ms.append((t1 - t0) * 1000)
        self.commit_ms.append((t2 - t1) * 1000)
        self.compared.append(_COUNTS[-1])
        with self.db.session(readonly=True) as s:
            mine = linked_person_id(s, res_type, rid)
            if truth is not None:
                self.dup_total += 1
                self.dup_joined += mine == f"P{truth}"
            else:
                self.new_total += 1
                self.new_alone += not mine.startswith("P")

    def close(self) -> dict:
        self.db.dispose()
        link_ms, compared = self.link_ms, self.compared
        return {
            "p50": statistics.median(link_ms), "p95": pct(link_ms, 0.95), "max": max(link_ms),
            "commit_p50": statistics.median(self.commit_ms), "cand_p50": statistics.median(compared),
            "cand_max": max(compared), "dup": (self.dup_joined, self.dup_total), "new": (self.new_alone, self.new_total),
        }


_COUNTS: list[int] = []  # candidates compared by each link_written call


def _count_candidates():
    """Patch LinkageService.link_written to record how many candidates each call compared."""
    from app.linkage.service import LinkageService

    orig = LinkageService.link_written

    def counting(self, written):
        out = orig(self, written)
        _COUNTS.extend(r.candidates_compared for r in out)
        return out

    LinkageService.link_written = counting
    return lambda: setattr(LinkageService, "link_written", orig)


WARM_UP = 20


def time_links(url: str, world: World, people: list[dict], samples: int, log, tag: str = "") -> dict:
    restore = _count_candidates()
    linker = Linker(url, world, people, tag)
    try:
        for k in range(samples + WARM_UP):
            linker.step(k, k < WARM_UP)
    finally:
        restore()
        result = linker.close()
    return result


def time_links_interleaved(setups: list[tuple[str, World, list[dict], str]], samples: int) -> list[dict]:
    """One sample record linked into each database in turn, so every size is timed in the
    same minutes: a slow spell of the machine (another process, the host) then weighs on
    all sizes alike instead of on whichever size it happened to coincide with."""
    restore = _count_candidates()
    linkers = [Linker(url, world, people, tag) for url, world, people, tag in setups]
    try:
        for k in range(samples + WARM_UP):
            for linker in linkers:
                linker.step(k, k < WARM_UP)
    finally:
        restore()
        results = [linker.close() for linker in linkers]
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--quick", action="store_true", help="10,000 and 100,000 persons, 200 samples")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--postgres", action="store_true", help="also PostgreSQL (FAMILYVIEW_TEST_POSTGRES_URL)")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--reuse", type=Path, default=None, metavar="DIR",
                    help="keep the loaded databases (SQLite files in DIR; PostgreSQL databases fv_scale_keep_<n>) and reuse "
                         "them in later runs, which then draw other sample records (saves the bulk load)")
    ap.add_argument("--interleave", action="store_true",
                    help="load every size first, then link the samples into the sizes in turn (one record each), so all "
                         "sizes are timed under the same machine conditions")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    samples = args.samples or (200 if args.quick else 500)
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgres"] if args.postgres or (os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL") and args.no_sqlite) else [])
    if "postgres" in backends and not os.environ.get("FAMILYVIEW_TEST_POSTGRES_URL"):
        ap.error("--postgres needs FAMILYVIEW_TEST_POSTGRES_URL (run under scripts/with-postgres.sh)")

    def log(msg: str) -> None:
        print(msg, flush=True)

    keep = args.reuse is not None
    workdir = args.reuse or Path(tempfile.mkdtemp(prefix="fv-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []

    def report(backend: str, n: int, r: dict) -> None:
        results.append((backend, n, r))
        log(f"    {backend}, {n:,} persons: link one record: p50 {r['p50']:.2f} ms, p95 {r['p95']:.2f} ms, max {r['max']:.1f} ms "
            f"(commit p50 {r['commit_p50']:.2f} ms); candidates compared p50 {r['cand_p50']}, max {r['cand_max']}; "
            f"duplicates joined their true person {r['dup'][0]}/{r['dup'][1]}, new people kept apart {r['new'][0]}/{r['new'][1]}")

    for backend in backends:
        setups, drops = [], []
        try:
            for n in sizes:
                log(f"== {backend}, {n:,} persons ==")
                world = World()
                url, drop = new_database(backend, workdir, f"{n}", keep)
                drops.append(drop)
                upgrade(url)
                have = loaded_persons(url) if keep else 0
                tag = ""
                if have == n:  # reuse: the same people (same seed), other samples
                    people = [world.person(i) for i in range(n)]
                    tag = uuid.uuid4().hex[:6]
                    world.rng = random.Random(tag)
                    log(f"    reusing the {n:,} persons loaded in {url.rsplit('/', 1)[-1]}")
                elif have:
                    raise SystemExit(f"{url}: {have:,} persons loaded, expected {n:,}; remove it")
                else:
                    people = bulk_load(url, world, n, log)
                if args.interleave:
                    setups.append((url, world, people, tag))
                else:
                    report(backend, n, time_links(url, world, people, samples, log, tag))
            if setups:
                log(f"== {backend}: linking {samples} records into each size in turn ==")
                for n, r in zip(sizes, time_links_interleaved(setups, samples)):
                    report(backend, n, r)
        finally:
            for drop in drops:
                drop()
    print()
    print(f"{'backend':9} {'persons':>10} {'p50 ms':>8} {'p95 ms':>8} {'cand p50':>8}  dup joined")
    for backend, n, r in results:
        print(f"{backend:9} {n:>10,} {r['p50']:8.2f} {r['p95']:8.2f} {r['cand_p50']:8}  {r['dup'][0]}/{r['dup'][1]}")
    for backend in backends:
        rs = [(n, r) for b, n, r in results if b == backend]
        if len(rs) >= 2:
            (n0, r0), (n1, r1) = rs[0], rs[-1]
            print(f"{backend}: growth {n0:,} -> {n1:,}: p50 x{r1['p50'] / r0['p50']:.2f}, p95 x{r1['p95'] / r0['p95']:.2f}"
                  f"  (target p95 < 10 ms at 1M: {'met' if r1['p95'] < 10 else 'NOT met'}; growth < 1.5x: {'met' if r1['p95'] / r0['p95'] < 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
