"""The family page against the `$family-view` API for the same family (scenario 2, asked for by
the baby's NHS number), over HTTP to one single-worker `familyview serve`, on SQLite and
PostgreSQL. The page calls the same service as the API and adds the page's work (session,
reading the Bundle, drawing the genogram, the template); target: page p95 <= 1.5x API p95.

    scripts/with-postgres.sh .venv/bin/python benchmarks/pages.py     # both databases
    .venv/bin/python benchmarks/pages.py --database sqlite --requests 200

Requests alternate (API, page, API, page, ...) so that both meet the same machine conditions."""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from harness import Databases, Server, backends, percentile

import httpx  # noqa: E402

from app.auth.tokens import mint_token  # noqa: E402
from app.demo.loader import load_demo  # noqa: E402
from app.demo.scenarios import HEALTH_VISITING, N  # noqa: E402
from app.settings import Settings  # noqa: E402

TARGET = 1.5


def run(kind: str, requests: int, warmup: int) -> bool:
    dbs = Databases(kind)
    key = Path(tempfile.mkdtemp(prefix="fv-bench-key-")) / "key.pem"
    url = dbs.new("pages")
    server = Server(url, key)
    try:
        settings = Settings(database_url=url, auth_local_key_path=key)
        load_demo(server.base, settings)
        token = mint_token(settings, role="health-visitor", org=HEALTH_VISITING.org, minutes=120)
        api = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        params = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{N['s2_infant']}", "purpose": "direct-care"}
        page = httpx.Client(base_url=server.base, headers={"Accept": "text/html"}, timeout=60)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get("/sign-in").text).group(1)
        assert page.post("/sign-in/demo", data={"csrf_token": csrf, "user": "hv"}).status_code == 303
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get("/find").text).group(1)
        form = {"csrf_token": csrf, "by": "nhs-number", "nhs_number": N["s2_infant"]}

        def time_api() -> float:
            t = time.perf_counter()
            r = api.get("/fhir/Patient/$family-view", params=params)
            dt = time.perf_counter() - t
            assert r.status_code == 200, r.text[:300]
            return dt

        def time_page() -> float:
            t = time.perf_counter()
            r = page.post("/find", data=form)
            dt = time.perf_counter() - t
            assert r.status_code == 200 and "fv-genogram" in r.text, r.text[:300]
            return dt

        for _ in range(warmup):
            time_api(), time_page()
        api_t, page_t = [], []
        for _ in range(requests):
            api_t.append(time_api())
            page_t.append(time_page())
        a50, a95 = percentile(api_t, 50) * 1000, percentile(api_t, 95) * 1000
        p50, p95 = percentile(page_t, 50) * 1000, percentile(page_t, 95) * 1000
        ratio = p95 / a95
        ok = ratio <= TARGET
        print(f"{kind:10s} {requests} requests each  $family-view API p50 {a50:6.1f} ms  p95 {a95:6.1f} ms   "
              f"family page p50 {p50:6.1f} ms  p95 {p95:6.1f} ms   page/API p95 {ratio:.2f}x  (target <= {TARGET}x: {'met' if ok else 'NOT met'})",
              flush=True)
        return ok
    finally:
        server.stop()
        dbs.drop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args()
    results = [run(kind, args.requests, args.warmup) for kind in backends(args.database)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
