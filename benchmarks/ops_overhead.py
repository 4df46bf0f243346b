"""What the operations layer costs a request: security headers, request metrics, the access
log's timing and the per-client rate limit (one token check handed on to the route), measured
as the latency of a FHIR read through the whole app beside the same app without those two
middlewares (the same-run baseline). Each app is served by its own process (two servers in one
process share a GIL and measure each other), on one SQLite database, reads interleaved one by
one in alternating order.

    .venv/bin/python benchmarks/ops_overhead.py [--requests 3000] [--aa]

--aa serves the baseline twice: the difference it prints is this machine's noise floor (on a
shared 2-CPU machine, milliseconds: the end-to-end figure is then informative only). The target
is read on the layer's own CPU time per request, measured first without sockets or a database:
under 50 µs (a FHIR read costs milliseconds)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, free_port, percentile  # noqa: I001 - puts the checkout on sys.path

import httpx

TARGET_US = 50.0


def child(variant: str, port: int) -> None:
    """Serve one variant (run in its own process)."""
    import uvicorn

    from app.main import create_app
    from app.ops.http import OpsMiddleware
    from app.ops.ratelimit import RateLimitMiddleware
    from app.settings import get_settings

    app = create_app(get_settings())
    if variant == "baseline":
        app.user_middleware = [m for m in app.user_middleware if m.cls not in (OpsMiddleware, RateLimitMiddleware)]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def layer_cost(n: int = 20000) -> float:
    """CPU µs the two middlewares add to a request whose route does nothing (no token: the
    token check is not added by the layer, only moved out of the route's dependency)."""
    import asyncio

    from app.ops.http import OpsMiddleware
    from app.ops.ratelimit import RateLimitMiddleware
    from app.settings import Settings

    async def route(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/fhir+json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    settings = Settings(database_url="sqlite://", rate_limit_anonymous_per_minute=10**9, rate_limit_anonymous_burst=10**9)
    stacked = OpsMiddleware(RateLimitMiddleware(route, settings), settings)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        return None

    def scope():
        return {"type": "http", "method": "GET", "path": "/fhir/Patient/x", "headers": [(b"accept", b"application/fhir+json")],
                "client": ("127.0.0.1", 5000), "state": {}}

    async def run(app) -> float:
        t0 = time.process_time()
        for _ in range(n):
            await app(scope(), receive, send)
        return (time.process_time() - t0) / n * 1e6

    async def both() -> tuple[float, float]:
        await run(stacked)
        bare, full = [], []
        for _ in range(5):
            bare.append(await run(route))
            full.append(await run(stacked))
        return min(bare), min(full)

    bare, full = asyncio.run(both())
    print(f"layer CPU per request (no DB, no token): route alone {bare:.1f} µs, with the two middlewares {full:.1f} µs: "
          f"+{full - bare:.1f} µs")
    return full - bare


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000, help="reads per variant")
    ap.add_argument("--aa", action="store_true", help="baseline against baseline: the noise floor")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.port)
        return 0
    layer_us = layer_cost()
    from app.auth.tokens import mint_token
    from app.migrate import upgrade
    from app.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="fv-ops-bench-"))
    url = f"sqlite:///{tmp / 'fv.db'}"
    upgrade(url)
    env = {**os.environ, "FAMILYVIEW_DATABASE_URL": url, "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(tmp / "key.pem"),
           "FAMILYVIEW_RATE_LIMIT_PER_MINUTE": str(10**7), "FAMILYVIEW_RATE_LIMIT_BURST": str(10**6), "FAMILYVIEW_LOG_LEVEL": "WARNING"}
    variants = {"baseline": "baseline", "baseline'": "baseline"} if args.aa else {"with ops": "ops", "baseline": "baseline"}
    procs, bases = [], {}
    for name, variant in variants.items():
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", variant, "--port", str(port)], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL))
        bases[name] = f"http://127.0.0.1:{port}"
    try:
        for base in bases.values():
            for _ in range(300):
                try:
                    httpx.get(base + "/fhir/metadata")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
        settings = Settings(database_url=url, auth_local_key_path=tmp / "key.pem")
        token = mint_token(settings, role="source-system", org="RMT01", service="maternity", minutes=120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        patient = {"resourceType": "Patient", "name": [{"family": "Benchmark", "given": ["Ops"]}], "gender": "female", "birthDate": "1990-01-01"}
        pid = httpx.post(f"{next(iter(bases.values()))}/fhir/Patient", json=patient, headers=headers).json()["id"]
        clients = {name: httpx.Client(base_url=b, headers=headers) for name, b in bases.items()}
        for c in clients.values():  # warm
            for _ in range(100):
                c.get(f"/fhir/Patient/{pid}")
        timings: dict[str, list[float]] = {name: [] for name in clients}
        order = list(clients.items())
        for i in range(args.requests):  # one read of each in turn, the order swapped every time: drift hits both alike
            for name, c in order if i % 2 else order[::-1]:
                t0 = time.perf_counter()
                r = c.get(f"/fhir/Patient/{pid}")
                timings[name].append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
        if not args.aa:
            assert clients["with ops"].get(f"/fhir/Patient/{pid}").headers["cache-control"] == "no-store"
            assert "cache-control" not in clients["baseline"].get(f"/fhir/Patient/{pid}").headers
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)
    for name, values in timings.items():
        print(f"{name:>9}: p50 {percentile(values, 50):.2f} ms  p95 {percentile(values, 95):.2f} ms  ({len(values)} reads)")
    a, b = (percentile(v, 50) for v in timings.values())
    label = "difference between two identical servers (noise floor)" if args.aa else "end to end, with ops minus baseline"
    print(f"{label}: {a - b:+.3f} ms at p50 (run with --aa for this machine's noise floor)")
    print(f"target: the layer under {TARGET_US:.0f} µs of CPU per request: {layer_us:.1f} µs, {'met' if layer_us < TARGET_US else 'NOT met'}")
    return 0 if layer_us < TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
