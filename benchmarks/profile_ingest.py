"""Where the time of one ingest goes: a transaction Bundle of 100 mixed resources (the
benchmark's) posted in-process to the app (TestClient, SQLite, linkage inline, or PostgreSQL
under scripts/with-postgres.sh), the write's transaction (validation to commit) profiled with cProfile over a few Bundles after a warm-up,
and the time split by stage of the write pipeline.

    .venv/bin/python benchmarks/profile_ingest.py [--bundles 5] [--database sqlite|postgres] [--top 25]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys

from harness import Databases, backends

from fastapi.testclient import TestClient  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.fhir import views  # noqa: E402
from app.main import create_app  # noqa: E402
from app.runtime import collect_garbage_rarely  # noqa: E402
from app.settings import Settings  # noqa: E402
from ingest import make_bundles  # noqa: E402

# stage -> functions (module path fragment, function name) whose cumulative time is the stage's;
# the first matching stage wins, so nested stages are listed first
STAGES = [
    ("linkage", [("app/linkage/hooks.py", "after_write")]),
    ("labelling", [("app/ingest/labelling.py", "prepare")]),
    ("business rules", [("app/fhir/validation.py", "check_business_rules"), ("app/fhir/validation.py", "_check_local_references")]),
    ("R4B validation", [("app/fhir/validation.py", "validate_structure"), ("app/fhir/validation.py", "_validate_structure")]),
    ("validation, all (holds the two above)", [("app/fhir/validation.py", "validate_resource")]),
    ("search index", [("app/fhir/indexing.py", "index_resource")]),
    ("source keys", [("app/ingest/service.py", "_dedupe_by_source_key"), ("app/ingest/service.py", "_new_source_keys")]),
    ("references", [("app/ingest/service.py", "_rewrite_references"), ("app/ingest/service.py", "_check_exist")]),
    ("inserts", [("app/ingest/service.py", "_flush")]),
    ("audit", [("app/audit/balp.py", "record"), ("app/audit/balp.py", "record_each")]),
    ("commit", [("sqlalchemy/orm/session.py", "commit")]),
    ]


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    found: dict[str, float] = {}
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, funcs in STAGES:
            if any(path.endswith(p) and name == f for p, f in funcs):
                found[stage] = found.get(stage, 0.0) + ct
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=5)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    backends([args.database])
    dbs = Databases(args.database)
    try:
        url = dbs.new("profile")
        settings = Settings(database_url=url, auth_local_key_path=dbs.tmp / "key.pem", linkage_mode="inline")
        app = create_app(settings)
        collect_garbage_rarely()  # as the server does: otherwise collections land in whichever function allocates
        token = mint_token(settings, role="source-system", org="RMT01", service="maternity", minutes=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        bundles = [json.dumps(b).encode() for b in make_bundles(args.bundles + 2)]
        prof = cProfile.Profile()
        plain = views.run_write
        profiling = False

        def profiled(*args, **kwargs):  # the write's transaction, in the server's worker thread
            if not profiling:
                return plain(*args, **kwargs)
            prof.enable()
            try:
                return plain(*args, **kwargs)
            finally:
                prof.disable()

        views.run_write = profiled
        with TestClient(app) as client:
            for text in bundles[:2]:
                assert client.post("/fhir", content=text, headers=headers).status_code == 200
            profiling = True
            for text in bundles[2:]:
                r = client.post("/fhir", content=text, headers=headers)
                assert r.status_code == 200, r.text[:300]
        stats = pstats.Stats(prof)
        total = max(ct for (_p, _l, n), (_cc, _nc, _tt, ct, _c) in stats.stats.items())  # type: ignore[attr-defined]
        per = total / args.bundles
        print(f"{args.database}: {per * 1000:.0f} ms per Bundle of 100 under cProfile")
        for stage, t in sorted(stage_times(stats).items(), key=lambda kv: -kv[1]):
            print(f"  {stage:38} {t / args.bundles * 1000:7.1f} ms  {t / total:5.1%}")
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        dbs.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
