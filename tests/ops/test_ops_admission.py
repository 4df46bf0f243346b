"""Admission by priority (app.ops.admission): with every slot of a process taken, the waiting
family view runs before waiting reads, and reads before writes; a client that goes away while
waiting, or just as its turn came, never keeps a slot; probes and the audit export are not held."""
from __future__ import annotations

import asyncio

import pytest

from app.ops.admission import READ, VIEW, WRITE, AdmissionMiddleware, request_class


@pytest.mark.parametrize("method,path,klass", [
    ("GET", "/fhir/Patient/p1/$family-view", VIEW),
    ("POST", "/fhir/Patient/$family-view", VIEW),
    ("GET", "/family/p1", VIEW),
    ("POST", "/find", VIEW),
    ("GET", "/governance/audit", VIEW),
    ("GET", "/fhir/Patient", READ),
    ("GET", "/fhir/Patient/p1", READ),
    ("GET", "/ig/reviews", READ),
    ("POST", "/fhir", WRITE),
    ("PUT", "/fhir/Patient/p1", WRITE),
    ("DELETE", "/fhir/Flag/f1", WRITE),
    ("PUT", "/subscriptions/rest-hook/hapi/Patient/p1", WRITE),
    ("POST", "/linkage/candidates/1/confirm", WRITE),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/ig/audit/export", None),
])
def test_each_request_has_its_class(method, path, klass):
    assert request_class(method, path) == klass


def _scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path}


def _gated_app():
    """An app that notes each request's path as it starts and holds it until its gate is set."""
    started: list[str] = []
    gates: dict[str, asyncio.Event] = {}

    async def app(scope, receive, send):
        started.append(scope["path"])
        gates[scope["path"]] = gate = asyncio.Event()
        await gate.wait()

    return started, gates, app


def test_the_most_urgent_waiting_request_runs_next():
    async def scenario():
        started, gates, app = _gated_app()
        mw = AdmissionMiddleware(app, slots=1)
        holder = asyncio.create_task(mw(_scope("POST", "/fhir"), None, None))
        await asyncio.sleep(0)
        # arrive in the worst order for a view: a write, a read, then the view
        waiting = [asyncio.create_task(mw(_scope(m, p), None, None)) for m, p in
                   [("POST", "/fhir/Flag"), ("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/p1/$family-view")]]
        await asyncio.sleep(0.01)
        assert started == ["/fhir"] and mw.running == 1
        for expected in ["/fhir", "/fhir/Patient/p1/$family-view", "/fhir/Patient", "/fhir/Flag"]:
            gates[expected].set()
            await asyncio.sleep(0.01)
        await asyncio.gather(holder, *waiting)
        assert started == ["/fhir", "/fhir/Patient/p1/$family-view", "/fhir/Patient", "/fhir/Flag"]
        assert mw.running == 0

    asyncio.run(scenario())


def test_a_client_gone_while_waiting_or_at_its_turn_keeps_no_slot():
    async def scenario():
        _, gates, app = _gated_app()
        mw = AdmissionMiddleware(app, slots=1)
        holder = asyncio.create_task(mw(_scope("POST", "/fhir"), None, None))
        await asyncio.sleep(0)
        gone = asyncio.create_task(mw(_scope("GET", "/fhir/Patient"), None, None))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away while it waited
        await asyncio.gather(gone, return_exceptions=True)
        late = asyncio.create_task(mw(_scope("GET", "/fhir/Flag"), None, None))
        await asyncio.sleep(0)
        gates["/fhir"].set()  # the slot is handed to the waiting read (its turn set, not yet run)...
        await asyncio.sleep(0)
        late.cancel()  # ...as its client goes away: the slot passes on, not kept
        await asyncio.gather(holder, late, return_exceptions=True)
        assert mw.running == 0
        after = asyncio.create_task(mw(_scope("GET", "/fhir/Patient/p1/$family-view"), None, None))
        await asyncio.sleep(0)
        assert "/fhir/Patient/p1/$family-view" in gates  # runs at once: no slot leaked
        gates["/fhir/Patient/p1/$family-view"].set()
        await after
        assert mw.running == 0

    asyncio.run(scenario())


def test_probes_and_the_export_are_never_held():
    async def scenario():
        ran: list[str] = []
        gate = asyncio.Event()

        async def app(scope, receive, send):
            ran.append(scope["path"])
            if scope["path"] == "/fhir":
                await gate.wait()

        mw = AdmissionMiddleware(app, slots=1)
        holder = asyncio.create_task(mw(_scope("POST", "/fhir"), None, None))
        await asyncio.sleep(0)
        for path in ("/healthz", "/readyz", "/metrics", "/ig/audit/export"):
            await asyncio.wait_for(mw(_scope("GET", path), None, None), 1)
        assert ran == ["/fhir", "/healthz", "/readyz", "/metrics", "/ig/audit/export"]
        gate.set()
        await holder

    asyncio.run(scenario())


def test_writes_never_hold_every_slot_so_a_view_runs_beside_a_bulk_load():
    async def scenario():
        started, gates, app = _gated_app()
        mw = AdmissionMiddleware(app, slots=2, write_slots=1)
        bulk = asyncio.create_task(mw(_scope("POST", "/fhir"), None, None))
        second = asyncio.create_task(mw(_scope("PUT", "/fhir/Patient/p1"), None, None))
        await asyncio.sleep(0.01)
        assert started == ["/fhir"] and mw.running == 1 and mw.writes == 1  # the second write waits, a slot stays free
        view = asyncio.create_task(mw(_scope("GET", "/fhir/Patient/p1/$family-view"), None, None))
        await asyncio.sleep(0.01)
        assert started == ["/fhir", "/fhir/Patient/p1/$family-view"]  # at once, beside the bulk load
        gates["/fhir/Patient/p1/$family-view"].set()
        await view
        assert mw.running == 1
        gates["/fhir"].set()
        await bulk
        await asyncio.sleep(0.01)
        assert started[-1] == "/fhir/Patient/p1" and mw.writes == 1  # the waiting write runs once the first is done
        gates["/fhir/Patient/p1"].set()
        await second
        assert mw.running == 0 and mw.writes == 0

    asyncio.run(scenario())
