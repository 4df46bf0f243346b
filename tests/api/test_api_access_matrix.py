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

from app.auth import access
from app.auth.tokens import ROLES
from app.main import create_app
from app.openapi_doc import app_routes
from app.settings import Settings
from consent import load_policy
from tests.conftest import ROLE_ORG, ROLE_SERVICE
from tests.fhirdata import next_nhs

CT = {"Content-Type": "application/fhir+json"}
ORG, SERVICE = ROLE_ORG, ROLE_SERVICE


@pytest.fixture(scope="module")
def routes():
    return [(r.method, r.path, r.operation) for r in app_routes(create_app(Settings(database_url="sqlite:///:memory:")))]


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
            "person_id": "no-such-person", "record_id": "no-such-record", "cid": "999999", "name": "no-such-upstream",
            "patient_id": infant, "asset": "familyview.css"}
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


def _infant(src: httpx.Client, family: str, gender: str, days: int) -> tuple[str, str]:
    """A baby `days` old posted by the source: (its NHS number, its Patient id)."""
    nhs = next_nhs()
    infant = {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
              "name": [{"family": family, "given": ["Baby"]}], "gender": gender,
              "birthDate": (date.today() - timedelta(days=days)).isoformat()}
    r = src.post("/fhir/Patient", content=json.dumps(infant), headers=CT)
    assert r.status_code == 201, r.text
    return nhs, r.json()["id"]


def test_each_row_allows_its_roles_and_refuses_the_others_over_http(live, routes):
    src = _client(live, "source-system")
    nhs, infant_id = _infant(src, "Matrix", "female", days=30)
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


def test_family_view_over_every_route_role_and_purpose(live, routes):
    """The family-view row walked over its four routes x every role x each purpose the policy
    names (and one it does not): the `never` roles get the table's 403 whatever the purpose, the
    others are never refused by the table, an unknown purpose is a 400 for everyone, and every
    answer, refusals included, is recorded in the audit (X-Audit-Event)."""
    src = _client(live, "source-system")
    nhs, infant_id = _infant(src, "Purposeful", "male", days=20)
    rule = access.rule("family-view")
    fv_routes = [(m, p) for m, p, op in routes if op == "family-view"]
    assert len(fv_routes) == 4
    purposes = [*rule.purposes, "curiosity", None]
    clients = {role: _client(live, role) for role in ROLES}
    problems, asked = [], 0
    for method, path in fv_routes:
        url = _concrete(path, infant_id)
        for role in ROLES:
            for purpose in purposes:
                params = {"justification": "Concern raised by the health visitor at the new-birth visit"}
                if purpose:
                    params["purpose"] = purpose
                if "{patient_id}" not in path:
                    params["identifier"] = f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"
                if method == "POST":
                    body = {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in params.items()]}
                    resp = clients[role].post(url, content=json.dumps(body), headers=CT)
                else:
                    resp = clients[role].get(url, params=params)
                asked += 1
                where = f"{method} {path} as {role} for {purpose}"
                outcome = resp.json()
                diagnostics = (outcome.get("issue") or [{}])[0].get("diagnostics") if outcome.get("resourceType") == "OperationOutcome" else None
                table_refusal = access.refusal("family-view", role).outcome()["issue"][0]["diagnostics"]
                if not resp.headers.get("x-audit-event", "").startswith("AuditEvent/"):
                    problems.append(f"{where}: not audited ({resp.status_code})")
                if resp.status_code >= 500:
                    problems.append(f"{where}: {resp.status_code}")
                elif purpose not in rule.purposes:
                    if resp.status_code != 400:
                        problems.append(f"{where}: an unknown or missing purpose but {resp.status_code}")
                elif not rule.allows(role):
                    if resp.status_code != 403 or diagnostics != table_refusal:
                        problems.append(f"{where}: refused by the table but {resp.status_code}: {resp.text[:160]}")
                elif resp.status_code == 403 and diagnostics == table_refusal:
                    problems.append(f"{where}: allowed by the table but refused by it")
    assert not problems, "\n".join(problems)
    assert asked == 4 * len(ROLES) * len(purposes)
