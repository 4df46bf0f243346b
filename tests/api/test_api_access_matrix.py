"""The authorisation matrix (app/auth/access.py) walked over every route of the app.

Every route declares its operation (an Access dependency); a route without a row fails here.
For each row, over real HTTP: a role the row allows is not refused with 403 by the table, and
a role it refuses gets a 403 OperationOutcome with ACCESS_DENIED."""
from __future__ import annotations

import json
import re
from datetime import date, timedelta

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from app.auth import access
from app.auth.tokens import ROLES
from app.main import create_app
from app.settings import Settings
from consent import load_policy
from tests.conftest import GP_ORG, HV_ORG, MATERNITY_ORG
from tests.fhirdata import next_nhs

CT = {"Content-Type": "application/fhir+json"}
ORG = {"source-system": MATERNITY_ORG, "midwife": MATERNITY_ORG, "health-visitor": HV_ORG, "gp": GP_ORG,
       "mash": "LA001", "ig-officer": "X26", "admin": "X26"}
SERVICE = {"source-system": "maternity"}
DOCS = {"/openapi.json": "docs", "/docs": "docs", "/docs/oauth2-redirect": "docs"}


def app_routes(app) -> list[tuple[str, str, str | None]]:
    """(method, path, operation) of every route the app answers, whatever the router nesting."""
    out = []

    def walk(routes):
        for r in routes:
            if type(r).__name__ == "_IncludedRouter":  # FastAPI >= 0.120 keeps included routers as such
                for c in r.effective_route_contexts():
                    out.extend((m, c.path, access.operation_of(c.dependant)) for m in sorted(c.methods))
            elif isinstance(r, APIRoute):
                out.extend((m, r.path, access.operation_of(r.dependant)) for m in sorted(r.methods))
            elif isinstance(r, Route):
                out.extend((m, r.path, DOCS.get(r.path)) for m in sorted(r.methods or ()) if m != "HEAD")
            else:
                out.append(("?", getattr(r, "path", repr(r)), None))

    walk(app.routes)
    return out


@pytest.fixture(scope="module")
def routes():
    return app_routes(create_app(Settings(database_url="sqlite:///:memory:")))


def test_every_route_has_a_row_in_the_access_table(routes):
    missing = [(m, p) for m, p, op in routes if op is None or op not in access.table()]
    assert not missing, f"routes without a row in app/auth/access.py: {missing}"
    # and no row is dead
    used = {op for _, _, op in routes}
    assert set(access.table()) <= used, set(access.table()) - used


def test_the_never_roles_are_the_policys():
    never = set(load_policy().never)
    assert never == set(access.never_roles())
    assert {r for r in ROLES if access.refused("family-view", r)} == never
    assert set(access.rule("family-view").purposes) == set(load_policy().purposes)
    # an administrator reads people, not clinical records; only a source system records a Consent
    assert access.allowed("fhir.read", "admin", "Patient") and not access.allowed("fhir.read", "admin", "Condition")
    assert access.allowed("fhir.write", "source-system", "Consent") and not access.allowed("fhir.write", "admin", "Consent")
    assert access.allowed("fhir.write", "admin", "Patient")


def _concrete(path: str, infant: str) -> str:
    fill = {"res_type": "Patient", "res_id": "no-such-record", "vid": "1", "event_id": "no-such-event",
            "person_id": "no-such-person", "cid": "999999", "name": "no-such-upstream", "patient_id": infant,
            "asset": "familyview.css"}
    return re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], path)


def _send(client: httpx.Client, method: str, path: str, infant: str, infant_nhs: str) -> httpx.Response:
    url = _concrete(path, infant)
    params = {}
    if "$family-view" in path:
        params = {"purpose": "direct-care"}
        if "{patient_id}" not in path:
            params["identifier"] = f"https://fhir.nhs.uk/Id/nhs-number|{infant_nhs}"
        if method == "POST":
            body = {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in params.items()]}
            return client.post(url, content=json.dumps(body), headers=CT)
    if path.endswith("/_search"):
        return client.post(url, content="", headers={"Content-Type": "application/x-www-form-urlencoded"})
    if method in ("POST", "PUT"):
        return client.request(method, url, content="{}", headers=CT)
    return client.request(method, url, params=params)


def _client(live, role: str | None) -> httpx.Client:
    headers = {"Accept": "application/fhir+json"}
    if role:
        headers["Authorization"] = f"Bearer {live.token(role, ORG[role], SERVICE.get(role))}"
    return httpx.Client(base_url=live.base_url, headers=headers, timeout=30)


def test_each_row_allows_its_roles_and_refuses_the_others_over_http(live, routes):
    src = _client(live, "source-system")
    nhs = next_nhs()
    infant = {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
              "name": [{"family": "Matrix", "given": ["Baby"]}], "gender": "female",
              "birthDate": (date.today() - timedelta(days=30)).isoformat()}
    r = src.post("/fhir/Patient", content=json.dumps(infant), headers=CT)
    assert r.status_code == 201, r.text
    infant_id = r.json()["id"]
    clients = {role: _client(live, role) for role in ROLES}
    problems, refused = [], 0
    for method, path, op in routes:
        rule = access.rule(op)
        for role in ROLES:
            resp = _send(clients[role], method, path, infant_id, nhs)
            where = f"{method} {path} as {role} ({op})"
            if rule.allows(role):
                refusal = access.refusal(op, role).outcome()["issue"][0]["diagnostics"]
                if resp.status_code == 403 and (op != "family-view" or resp.json()["issue"][0]["diagnostics"] == refusal):
                    problems.append(f"{where}: allowed by the table but 403: {resp.text[:200]}")
                elif resp.status_code >= 500:
                    problems.append(f"{where}: {resp.status_code}")
            else:
                refused += 1
                body = resp.json() if resp.headers.get("content-type", "").startswith("application/fhir+json") else {}
                coding = ((body.get("issue") or [{}])[0].get("details") or {}).get("coding") or [{}]
                if resp.status_code != 403 or body.get("resourceType") != "OperationOutcome" or coding[0].get("code") != "ACCESS_DENIED":
                    problems.append(f"{where}: refused by the table but {resp.status_code}: {resp.text[:200]}")
        if rule.public:  # no token at all
            resp = _send(_client(live, None), method, path, infant_id, nhs)
            if resp.status_code in (401, 403) or resp.status_code >= 500:
                problems.append(f"{method} {path} without a token: {resp.status_code}")
    assert not problems, "\n".join(problems)
    assert refused >= 60  # every refused role of every row was asked
