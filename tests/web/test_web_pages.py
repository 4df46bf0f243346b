"""The pages over plain HTTP (no browser): content negotiation at /, the session cookie's flags,
CSRF on every form, a tampered session, the demo sign-in only without a provider, the NHS
number check, the genogram's symbols and lines, and the shipped nhsuk-frontend matching npm's."""
from __future__ import annotations

import filecmp
import re
from pathlib import Path

import httpx
import pytest

from app.demo.scenarios import N
from app.web.genogram import GenoPerson, draw
from app.web.routes import nhs_number_problem
from app.web.session import COOKIE
from tests.conftest import make_settings, start_server

ROOT = Path(__file__).resolve().parents[2]


def _signed_in(live, user: str = "hv") -> httpx.Client:
    c = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"}, timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
    r = c.post("/sign-in/demo", data={"csrf_token": csrf, "user": user})
    assert r.status_code == 303 and r.headers["location"] == "/find"
    return c


def _csrf(c: httpx.Client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get("/find").text).group(1)


def test_slash_is_the_pages_for_a_browser_and_an_operation_outcome_for_an_api_client(live):
    r = httpx.get(f"{live.base_url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"
    r = httpx.get(f"{live.base_url}/", headers={"Accept": "application/fhir+json"})
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_the_session_cookie_is_httponly_samesite_and_secure_behind_https(live):
    c = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
    r = c.post("/sign-in/demo", data={"csrf_token": csrf, "user": "hv"})
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain http here
    behind_tls = httpx.get(f"{live.base_url}/sign-in", headers={"Accept": "text/html", "X-Forwarded-Proto": "https"})
    assert all("Secure" in h and "HttpOnly" in h for h in behind_tls.headers.get_list("set-cookie"))
    r = _signed_in(live).get("/find")
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_every_form_needs_its_csrf_token(live):
    anon = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"})
    anon.get("/sign-in")
    assert anon.post("/sign-in/demo", data={"user": "hv", "csrf_token": "forged"}).status_code == 400
    c = _signed_in(live)
    assert c.post("/find", data={"by": "nhs-number", "nhs_number": N["s1_infant"]}).status_code == 400
    assert c.post("/find", data={"by": "nhs-number", "nhs_number": N["s1_infant"], "csrf_token": "x" * 43}).status_code == 400
    assert c.post("/family/anything/ask", data={"purpose": "direct-care"}).status_code == 400
    r = c.post("/sign-out", data={})
    assert r.status_code == 400 and c.get("/find").status_code == 200  # still signed in


def test_a_tampered_session_is_no_session(live):
    c = _signed_in(live)
    value = c.cookies[COOKIE]
    body, mac = value.rsplit(".", 1)
    c.cookies.set(COOKIE, body[:-2] + "AA." + mac)
    r = c.get("/find")
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"


def test_signing_out_revokes_the_session_so_a_copied_cookie_is_refused(live):
    """The session is a signed cookie: signing out deletes it in the browser and revokes its id
    on the server, so a copy taken before (another tab, a shared machine, a stolen cookie)
    opens nothing afterwards; another session of the same user is not affected."""
    c, other = _signed_in(live), _signed_in(live)
    copied = c.cookies[COOKIE]
    assert c.post("/sign-out", data={"csrf_token": _csrf(c)}).status_code == 303
    thief = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"}, cookies={COOKIE: copied})
    r = thief.get("/find")
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"
    assert thief.post("/find", data={"by": "nhs-number", "nhs_number": N["s1_infant"]}).status_code == 303
    assert other.get("/find").status_code == 200


def test_no_demo_sign_in_where_a_provider_is_configured(database_url, key_path):
    settings = make_settings(database_url, key_path, oidc_discovery_url="http://127.0.0.1:9/.well-known/openid-configuration",
                             oidc_client_id="x", web_session_secret="s" * 32)
    base, app, server, stop = start_server(settings)
    try:
        c = httpx.Client(base_url=base, headers={"Accept": "text/html"})
        page = c.get("/sign-in").text
        assert "Demonstration sign-in" not in page and "Sign in with NHS Care Identity" in page
        assert 'name="csrf_token"' not in page
        assert c.post("/sign-in/demo", data={"csrf_token": "any", "user": "hv"}).status_code == 404
        assert COOKIE not in c.cookies
    finally:
        stop()


def test_a_family_view_from_a_page_is_audited_like_the_apis(live):
    from app.demo.loader import load_demo

    load_demo(live.base_url, live.settings)
    c = _signed_in(live)
    r = c.post("/find", data={"by": "nhs-number", "nhs_number": N["s1_infant"], "csrf_token": _csrf(c)})
    assert r.status_code == 200
    ref = re.search(r'data-testid="audit-ref">AuditEvent/([0-9a-f-]{36})<', r.text).group(1)
    ig = httpx.Client(base_url=live.fhir, headers={"Authorization": f"Bearer {live.token('ig-officer', 'X26')}"})
    event = ig.get(f"/AuditEvent/{ref}").json()
    assert event["agent"][0]["who"]["identifier"]["value"] == "demo:hv@RHV01"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"


@pytest.mark.parametrize("typed, problem", [
    ("", "Enter"), ("12345", "10 digits"), ("99900021AB", "10 digits"), ("9990002119", "not a valid"),
    ("999 000 2118", None), ("999-000-2118", None),
])
def test_the_nhs_number_is_checked_on_submit(typed, problem):
    found = nhs_number_problem(typed)
    assert (found is None) if problem is None else (problem in found)


def test_genogram_symbols_lines_and_text_alternatives():
    people = [GenoPerson("m1", "infant", "female", "Ada"), GenoPerson("m2", "mother", "female", "Bea"),
              GenoPerson("m3", "father", "male", "Cal", inferred=True, assurance="level2"),
              GenoPerson("m4", "male-carer", "male", "Dan"), GenoPerson("m5", "other-carer", None, "Eli")]
    svg = draw(people, title="Family", carer_lines={"m4": "household"})
    assert svg.count('data-symbol="square"') == 2 and svg.count('data-symbol="circle"') == 2 and 'data-symbol="diamond"' in svg
    assert 'data-line="parents" data-between="m3 m2" data-inferred="true"' in svg and 'stroke-dasharray="8 6"' in svg
    assert 'data-line="household" data-between="m2 m4"' in svg
    assert 'aria-label="Father Cal, male, linked by record linkage, not certain (assurance level2)"' in svg
    unborn = draw([GenoPerson("u", "infant", None, "Unborn baby", unborn=True)], title="t")
    assert 'data-symbol="triangle"' in unborn and "pregnancy" in unborn
    assert "<script" not in draw([GenoPerson("x", "father", "male", "<script>alert(1)</script>")], title="<t>")


def test_the_shipped_nhsuk_frontend_is_the_pinned_npm_build():
    dist = ROOT / "node_modules" / "nhsuk-frontend" / "dist" / "nhsuk"
    if not dist.exists():
        pytest.skip("node_modules not installed (npm ci)")
    shipped = ROOT / "app" / "web" / "static" / "nhsuk"
    assert filecmp.cmp(dist / "nhsuk-frontend.min.js", shipped / "nhsuk-frontend.min.js", shallow=False)
    css = (dist / "nhsuk-frontend.min.css").read_text().replace("url(/assets/images/", "url(/static/nhsuk/images/")
    assert css == (shipped / "nhsuk-frontend.min.css").read_text()
    assert "MIT" in (shipped / "LICENSE.txt").read_text()


def test_caseload_search_finds_only_the_requesters_own_caseload_and_is_audited(live):
    from app.demo.loader import load_demo
    from app.demo.scenarios import build_scenarios

    load_demo(live.base_url, live.settings)
    infant = next(p for s in build_scenarios() if s.number == 4 for _, b in s.bundles for p in (e["resource"] for e in b["entry"])
                  if p["resourceType"] == "Patient" and any(i.get("value") == N["s4_infant"] for i in p.get("identifier") or []))
    y, m, d = infant["birthDate"].split("-")
    form = {"by": "name", "family": infant["name"][0]["family"].upper(), "dob_day": d, "dob_month": m, "dob_year": y}
    hv = _signed_in(live, "hv")
    r = hv.post("/find", data={**form, "csrf_token": _csrf(hv)})
    assert r.status_code == 200 and N["s4_infant"][:3] + " " + N["s4_infant"][3:6] in r.text
    other = _signed_in(live, "unrelated")
    r = other.post("/find", data={**form, "csrf_token": _csrf(other)})
    assert r.status_code == 200 and 'data-testid="no-matches"' in r.text and N["s4_infant"][6:] not in r.text
    bad = hv.post("/find", data={**form, "dob_month": "13", "csrf_token": _csrf(hv)})
    assert bad.status_code == 400 and "real date of birth" in bad.text
    ig = httpx.Client(base_url=live.fhir, headers={"Authorization": f"Bearer {live.token('ig-officer', 'X26')}"})
    events = ig.get("/AuditEvent", params={"subtype": "caseload-search"}).json()["entry"]
    assert {e["resource"]["agent"][1]["who"]["identifier"]["value"] for e in events} == {"RHV01", "RZZ99"}
