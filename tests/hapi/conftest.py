"""The HAPI suite's world: the DESIGN.md scenarios seeded into an upstream FHIR server as the
sources' transaction Bundles, then synced into a familyview by `familyview sync`, source by source.

Two upstreams, every test run against each (and each on both familyview databases):
- "hapi": the HAPI FHIR JPA server at HAPI_FHIR_BASE_URL. `make test` builds and starts one
  (tests/hapi/server, scripts/with-hapi.sh) and sets FAMILYVIEW_REQUIRE_HAPI=1, so a missing HAPI
  fails the suite rather than skipping it. Outside `make test` the HAPI cases are skipped.
- "familyview": a SECOND familyview started on another port with its own database, the fast
  extra case.
Either way a familyview where the sources posted their Bundles directly ("direct") is there to
compare the synced views with."""
from __future__ import annotations

import copy
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.demo.scenarios import SOURCES, build_scenarios
from app.sync.engine import SyncSummary
from tests.conftest import BACKENDS, LiveServer, make_settings, new_database_url, start_server
from tests.sync.sync_support import syncer_for, upstream_server

HAPI_BASE = os.environ.get("HAPI_FHIR_BASE_URL", "").rstrip("/")
REQUIRE_HAPI = os.environ.get("FAMILYVIEW_REQUIRE_HAPI") == "1"
UPSTREAMS = ["hapi", "familyview"]


def need_hapi() -> str:
    """HAPI's FHIR base; skips the test without one, fails it when `make test` promised one."""
    if not HAPI_BASE:
        if REQUIRE_HAPI:
            pytest.fail("FAMILYVIEW_REQUIRE_HAPI=1 but HAPI_FHIR_BASE_URL is not set: run the suite with `make test` (scripts/with-hapi.sh)")
        pytest.skip("HAPI FHIR tests run under `make test` (HAPI_FHIR_BASE_URL is not set)")
    return HAPI_BASE


def hapi_headers() -> dict[str, str]:
    return {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
            **({"Authorization": f"Bearer {HAPI_TOKEN}"} if HAPI_TOKEN else {})}
HAPI_TOKEN = os.environ.get("HAPI_FHIR_BEARER_TOKEN")
TAG_SYSTEM = "https://familyview.example.nhs.uk/fhir/CodeSystem/hapi-suite-run"


@dataclass
class World:
    mode: str  # "hapi" | "familyview"
    upstream_fhir: str
    upstream: LiveServer | None  # the second familyview, when that is the upstream
    local: LiveServer
    direct: LiveServer | None = None  # where the sources posted directly (the upstream familyview, or one beside HAPI)
    seeded: dict[str, dict[str, int]] = field(default_factory=dict)  # source key -> type -> count
    runs: list[dict[str, SyncSummary]] = field(default_factory=list)
    run_id: str = ""

    def sync_all(self) -> dict[str, SyncSummary]:
        out = {}
        for src in SOURCES:  # maternity first: later sources refer to its records
            if src.key not in self.seeded:
                continue
            token, params = self._access(src)
            syncer = syncer_for(self.local, self.upstream_fhir, token, src.org, src.service, page_size=5, extra_params=params)
            try:
                out[src.key] = syncer.run()
            finally:
                syncer.client.close()
        self.runs.append(out)
        return out

    def _access(self, src) -> tuple[str | None, list[tuple[str, str]]]:
        if self.mode == "hapi":  # one HAPI holds every source: this run's records of this source, by tag
            return HAPI_TOKEN, [("_tag", f"{TAG_SYSTEM}|{self.run_id}-{src.key}")]
        return self.upstream.token("source-system", src.org, src.service), []  # familyview scopes reads to the org

    def readers(self) -> list[httpx.Client]:
        """One client per source: together they read every synced record (an administrator
        reads no clinical records), each only its own source's."""
        return [self.local.source(src.org, src.service) for src in SOURCES]


def _tagged(bundle: dict[str, Any], tag: str) -> dict[str, Any]:
    for e in bundle["entry"]:
        meta = e["resource"].setdefault("meta", {})
        meta.setdefault("tag", []).append({"system": TAG_SYSTEM, "code": tag})
    return bundle


def _seed(world: World, *, upstream: bool = True) -> None:
    """Post every scenario's Bundles to the familyview that ingests them directly and (unless
    already done this session, as HAPI is) to the upstream, counting the records each source holds."""
    conditional: set[tuple[str, str]] = set()
    for scenario in build_scenarios():
        for src, bundle in scenario.bundles:
            counts = world.seeded.setdefault(src.key, {})
            for e in bundle["entry"]:
                t = e["resource"]["resourceType"]
                criteria = e["request"].get("ifNoneExist")
                if criteria:  # a conditional create (a source describing itself) stores one record however often sent
                    if (t, criteria) in conditional:
                        continue
                    conditional.add((t, criteria))
                counts[t] = counts.get(t, 0) + 1
            with world.direct.source(src.org, src.service) as c:
                r = c.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, f"scenario {scenario.number} ({src.name}): {r.status_code} {r.text[:1000]}"
            if world.mode == "hapi" and upstream:
                r = httpx.post(world.upstream_fhir, json=_tagged(copy.deepcopy(bundle), f"{world.run_id}-{src.key}"), headers=hapi_headers(), timeout=60)
                if r.status_code == 412 and "Multiple resources match" in r.text:
                    pytest.fail(f"HAPI at {world.upstream_fhir} already holds the DESIGN.md scenarios (an earlier run's): the suite needs "
                                "a HAPI without them (`make test` starts a fresh one; else $expunge it)")
                assert r.status_code == 200, f"scenario {scenario.number} ({src.name}) to HAPI: {r.status_code} {r.text[:1000]}"


def _expunge_everything(hapi: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "expungeEverything", "valueBoolean": True}]}
    r = httpx.post(f"{hapi}/$expunge", json=body, headers=hapi_headers(), timeout=300)
    assert r.status_code == 200, f"$expunge on HAPI: {r.status_code} {r.text[:500]}"


_HAPI_RUN: dict[str, str] = {}  # HAPI holds the scenarios once per session (their conditional references would match twice)


@pytest.fixture(scope="module", params=[(b, u) for u in UPSTREAMS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}")
def world(request, tmp_path_factory, key_path, sqlite_template, pg_template):
    backend, kind = request.param
    hapi = need_hapi() if kind == "hapi" else None
    if backend == "postgres" and pg_template is None:
        pytest.skip("PostgreSQL tests run under `make test` (FAMILYVIEW_TEST_POSTGRES_URL is not set)")
    tmp = tmp_path_factory.mktemp("hapi")
    url, drop = new_database_url(backend, tmp, sqlite_template, pg_template)
    settings = make_settings(url, key_path)
    base, app, server, stop = start_server(settings)
    local = LiveServer(base, settings, app, server)
    try:
        # the upstream familyview, or (beside HAPI) the familyview the sources post to directly
        with upstream_server(backend, tmp, sqlite_template, pg_template, key_path) as up:
            if hapi:
                first = hapi not in _HAPI_RUN
                if first and os.environ.get("HAPI_FHIR_DISPOSABLE") == "1":  # ours (scripts/with-hapi.sh): start it empty
                    _expunge_everything(hapi)
                w = World("hapi", hapi, None, local, direct=up, run_id=_HAPI_RUN.setdefault(hapi, uuid.uuid4().hex[:12]))
                _seed(w, upstream=first)
            else:
                w = World("familyview", up.fhir, up, local, direct=up)
                _seed(w)
            w.sync_all()
            yield w
    finally:
        stop()
        drop()
