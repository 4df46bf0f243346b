"""Issue 17 item 5: each safeguarding override's notification reaches the holder of the
records through a durable outbox: POSTed to its endpoint (here a real local HTTP receiver
that fails twice, then accepts) by a familyview that is restarted (a real uvicorn
subprocess) between the failures and the success; a holder without an endpoint fetches its
own (awaiting pick-up); retries end as failed. The IG officer reads every notification and
its delivery status."""
from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.demo.loader import load_demo
from app.demo.scenarios import GP_FAMILY, GP_FATHERS, HEALTH_VISITING, IG_ORG, N
from app.ig.notifications import NOTIFICATION_ID_SYSTEM
from tests.conftest import free_port, make_settings, start_server
from tests.family.test_family_scenarios import JUSTIFICATION
from tests.serve import ServeProcess

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ROOT = Path(__file__).resolve().parents[2]


def _client(base: str, settings, role: str, org: str, service: str | None = None) -> httpx.Client:
    from app.auth.tokens import mint_token

    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {mint_token(settings, role=role, org=org, service=service)}"}, timeout=30)


def _safeguarding_view(base: str, settings) -> str:
    r = _client(base, settings, "health-visitor", HEALTH_VISITING.org).get(
        "/fhir/Patient/$family-view", params={"identifier": f"{NHS}|{N['s2_infant']}", "purpose": "safeguarding", "justification": JUSTIFICATION})
    assert r.status_code == 200, r.text
    return r.headers["x-audit-event"].split("/", 1)[1]


class Receiver:
    """A holder's FHIR server: refuses the first ``failures`` POSTs with 503, then takes them (201)."""

    def __init__(self, failures: int):
        self.failures, self.bodies, self.paths = failures, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.paths.append(self.path)
                outer.bodies.append(json.loads(body))
                status = 503 if len(outer.bodies) <= outer.failures else 201
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while len(self.bodies) < n:
            assert time.time() < deadline, f"{len(self.bodies)} deliveries, waited for {n}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()


def _ig_notifications(base: str, settings, **params) -> dict:
    r = _client(base, settings, "ig-officer", IG_ORG).get("/ig/notifications", params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_delivery_survives_a_restart_between_failures_and_success(tmp_path, key_path, sqlite_template, backend):
    db = tmp_path / "fv.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    settings = make_settings(url, key_path)
    receiver = Receiver(failures=2)
    env = {"FAMILYVIEW_DATABASE_URL": url, "FAMILYVIEW_AUTH_LOCAL_KEY_PATH": str(key_path), "FAMILYVIEW_LOG_LEVEL": "WARNING",
           "FAMILYVIEW_NOTIFICATION_ENDPOINTS": json.dumps({GP_FATHERS.org: {"url": receiver.url, "kind": "fhir"}}),
           "FAMILYVIEW_NOTIFICATION_BACKOFF_SECONDS": "1.5", "FAMILYVIEW_NOTIFICATION_POLL_SECONDS": "0.1"}
    server = ServeProcess(env, "--dev-auth", log=tmp_path / "serve-1.log").wait_up()
    try:
        load_demo(server.base, settings)
        event = _safeguarding_view(server.base, settings)
        receiver.wait_for(2)  # refused twice...
        server.stop()  # ...and familyview stops before the third attempt is due
        time.sleep(0.5)
        assert len(receiver.bodies) == 2
        server = ServeProcess(env, "--dev-auth", log=tmp_path / "serve-2.log").wait_up()  # a new process: the outbox row is all it has
        receiver.wait_for(3)
        deadline = time.time() + 20
        while (found := _ig_notifications(server.base, settings))["notifications"][0]["status"] != "sent":
            assert time.time() < deadline, found
            time.sleep(0.1)
    finally:
        server.stop()
        receiver.close()
    n = found["notifications"][0]
    assert found["total"] == 1 and n["recipient"] == GP_FATHERS.org and n["attempts"] == 3 and n["lastError"] is None
    assert n["auditEvent"] == f"AuditEvent/{event}" and n["endpoint"] == receiver.url + "/Communication"
    assert receiver.paths == ["/fhir/Communication"] * 3
    sent = receiver.bodies[-1]
    assert sent["resourceType"] == "Communication" and sent["status"] == "completed"
    assert sent["identifier"] == [{"system": NOTIFICATION_ID_SYSTEM, "value": n["id"]}]
    assert sent["recipient"][0]["identifier"]["value"] == GP_FATHERS.org
    assert {"reference": f"AuditEvent/{event}"} in sent["about"]
    assert receiver.bodies[0] == sent  # the same notification each time (a receiver can drop a repeat)


def test_without_an_endpoint_the_holder_fetches_its_own(live):
    load_demo(live.base_url, live.settings)
    event = _safeguarding_view(live.base_url, live.settings)
    found = _ig_notifications(live.base_url, live.settings)
    assert found["total"] == 1
    n = found["notifications"][0]
    assert n["status"] == "awaiting-pickup" and n["attempts"] == 0 and n["auditEvent"] == f"AuditEvent/{event}"
    assert _ig_notifications(live.base_url, live.settings, status="sent")["total"] == 0
    assert _ig_notifications(live.base_url, live.settings, recipient=GP_FAMILY.org)["total"] == 0
    holder = _client(live.base_url, live.settings, "source-system", GP_FATHERS.org, GP_FATHERS.service).get("/notifications")
    assert holder.status_code == 200 and holder.json()["total"] == 1
    assert holder.json()["notifications"][0]["resource"]["resourceType"] == "Communication"
    other = _client(live.base_url, live.settings, "source-system", GP_FAMILY.org, GP_FAMILY.service).get("/notifications")
    assert other.status_code == 200 and other.json()["total"] == 0
    # the holder's reading is audited
    ig = _client(live.base_url, live.settings, "ig-officer", IG_ORG)
    reads = ig.get("/fhir/AuditEvent", params={"subtype": "notifications-read", "agent": GP_FATHERS.org}).json()
    assert reads["total"] == 1
    for role, org in (("ig-officer", IG_ORG), ("admin", "X26")):
        assert _client(live.base_url, live.settings, role, org).get("/notifications").status_code == 403
    for role, org in (("health-visitor", HEALTH_VISITING.org), ("admin", "X26")):
        assert _client(live.base_url, live.settings, role, org).get("/ig/notifications").status_code == 403
    assert ig.get("/ig/notifications", params={"status": "lost"}).status_code == 400


def test_retries_back_off_and_end_as_failed(tmp_path, key_path, sqlite_template):
    db = tmp_path / "fv.db"
    shutil.copy(sqlite_template, db)
    closed = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens
    settings = make_settings(f"sqlite:///{db}", key_path, notification_endpoints={GP_FATHERS.org: {"url": closed, "kind": "webhook"}},
                             notification_max_attempts=3, notification_backoff_seconds=0.2, notification_poll_seconds=0.05)
    base, app, server, stop = start_server(settings)
    try:
        load_demo(base, settings)
        _safeguarding_view(base, settings)
        deadline = time.time() + 20
        while (n := _ig_notifications(base, settings)["notifications"][0])["status"] != "failed":
            assert time.time() < deadline, n
            time.sleep(0.05)
    finally:
        stop()
    assert n["attempts"] == 3 and n["lastError"] == "ConnectError" and n["endpoint"] == closed
