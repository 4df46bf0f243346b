"""The IG pages over plain HTTP (no browser): only the IG officer's role opens them (every other
role gets the standard refusal page, and the refusal is audited), the review form needs its
CSRF token and a complete form (nothing recorded otherwise), the subject access report checks
the NHS number, and every page access is audited as the API's are."""
from __future__ import annotations

import base64
import re

import httpx
import pytest

from app.demo.scenarios import IG_ORG
from app.web.demo_users import BY_KEY

PAGES = ("/governance/audit", "/governance/reviews", "/governance/disclosures", "/governance/chain", "/governance/notifications")


def _signed_in(live, user: str) -> httpx.Client:
    c = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"}, timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
    r = c.post("/sign-in/demo", data={"csrf_token": csrf, "user": user})
    assert r.status_code == 303
    return c


def _csrf(c: httpx.Client, path: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get(path).text).group(1)


def _audit(live, **params) -> list[dict]:
    ig = live.client("ig-officer", IG_ORG)
    r = ig.get("/AuditEvent", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    bundle = r.json()
    return [e["resource"] for e in bundle.get("entry") or []]


def _any_event_id(live) -> str:
    return _audit(live, subtype="login")[0]["id"]


def test_the_ig_officer_starts_at_the_review_queue_and_opens_every_ig_page(live):
    c = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"}, timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
    r = c.post("/sign-in/demo", data={"csrf_token": csrf, "user": "ig"})
    assert r.status_code == 303 and r.headers["location"] == "/governance/reviews"
    assert c.get("/").headers["location"] == "/governance/reviews"
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "Ian Grant" in r.text


@pytest.mark.parametrize("user", ["hv", "gp", "mash"])
def test_other_roles_are_refused_every_ig_page_with_the_standard_page_and_the_refusal_is_audited(live, user):
    c = _signed_in(live, user)
    for path in PAGES + ("/governance/disclosures.csv?nhs_number=9990000018", "/governance/reviews/anything"):
        r = c.get(path)
        assert r.status_code == 403, path
        assert "You cannot use this page" in r.text and "Only IG officers" in r.text
        assert re.search(r'data-testid="audit-ref">AuditEvent/[0-9a-f-]{36}<', r.text)
    r = c.post("/governance/reviews/anything", data={"csrf_token": _csrf(c, "/find"), "outcome": "appropriate", "note": "x"})
    assert r.status_code == 403
    refusals = _audit(live, subtype="ig-page", agent=f"demo:{user}@{BY_KEY[user].org}")
    assert len(refusals) == len(PAGES) + 3 and all(e["outcome"] == "4" and "Only IG officers" in e["outcomeDesc"] for e in refusals)


def test_signed_out_the_ig_pages_send_you_to_sign_in(live):
    anon = httpx.Client(base_url=live.base_url, headers={"Accept": "text/html"})
    for path in PAGES:
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/sign-in"


def test_a_review_needs_its_csrf_token_and_nothing_is_recorded_without_it(live):
    c = _signed_in(live, "ig")
    event_id = _any_event_id(live)
    before = len(_audit(live, subtype="ig-review"))
    for token in (None, "x" * 43):
        data = {"outcome": "appropriate", "note": "Checked with the safeguarding lead"} | ({"csrf_token": token} if token else {})
        r = c.post(f"/governance/reviews/{event_id}", data=data)
        assert r.status_code == 400 and "The form has expired" in r.text
    assert len(_audit(live, subtype="ig-review")) == before


def test_an_incomplete_review_shows_the_error_summary_and_records_nothing(live):
    c = _signed_in(live, "ig")
    event_id = _any_event_id(live)
    csrf = _csrf(c, f"/governance/reviews/{event_id}")
    r = c.post(f"/governance/reviews/{event_id}", data={"csrf_token": csrf, "note": "  "})
    assert r.status_code == 400
    assert "There is a problem" in r.text and "Choose the outcome of your review" in r.text and "Enter a note saying why" in r.text
    assert r.text.count('href="#outcome"') == 1 and 'id="outcome"' in r.text  # the summary's links reach the fields
    r = c.post(f"/governance/reviews/{event_id}", data={"csrf_token": csrf, "outcome": "brilliant", "note": "fine"})
    assert r.status_code == 400 and "Choose the outcome of your review" in r.text
    assert 'value="fine"' not in r.text and ">fine</textarea>" in r.text  # what was typed is kept
    assert not _audit(live, subtype="ig-review")


def test_reviewing_an_event_that_is_not_in_the_queue_is_refused_by_the_service(live):
    c = _signed_in(live, "ig")
    event_id = _any_event_id(live)
    r = c.post(f"/governance/reviews/{event_id}", data={"csrf_token": _csrf(c, "/governance/reviews"), "outcome": "appropriate", "note": "ok"})
    assert r.status_code == 409 and "not a safeguarding override or break-glass view" in r.text
    assert c.get("/governance/reviews/no-such-event").status_code == 404


def test_the_subject_access_report_checks_the_nhs_number(live):
    c = _signed_in(live, "ig")
    for bad, message in (("", "Enter the person&#39;s NHS number"), ("12345", "must be 10 digits"), ("9990002119", "not a valid NHS number")):
        r = c.get("/governance/disclosures", params={"nhs_number": bad})
        assert r.status_code == 400 and message in r.text and "There is a problem" in r.text
    before = len(_audit(live, subtype="disclosure-report"))
    r = c.get("/governance/disclosures", params={"nhs_number": "999 000 2118"})
    assert r.status_code == 200 and "No disclosure of this person's data is recorded" in r.text
    assert 'href="/governance/disclosures.csv?nhs_number=9990002118"' in r.text
    csv = c.get("/governance/disclosures.csv", params={"nhs_number": "9990002118"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("date,recipient_organisation,")
    assert len(_audit(live, subtype="disclosure-report")) == before + 2  # the page and the download, each audited
    assert c.get("/governance/disclosures.csv", params={"nhs_number": "123"}).status_code == 303


def test_audit_search_filters_validate_and_every_search_is_audited(live):
    c = _signed_in(live, "ig")
    r = c.get("/governance/audit", params={"from": "2026-13-01", "nhs_number": "12"})
    assert r.status_code == 400 and "From date must be a real date" in r.text and "NHS number must be 10 digits" in r.text
    before = len(_audit(live, subtype="search-type"))
    r = c.get("/governance/audit", params={"subtype": "login", "agent": "demo:ig@" + IG_ORG, "outcome": "0"})
    assert r.status_code == 200
    rows = re.findall(r'data-testid="audit-event"', r.text)
    assert rows and "<strong>login</strong>" in r.text and "<strong>search-type</strong>" not in r.text
    after = _audit(live, subtype="search-type")
    assert len(after) >= before + 1
    queries = [base64.b64decode(x["query"]).decode() for e in after for x in e.get("entity") or [] if x.get("query")]
    assert "AuditEvent?subtype=login&agent=demo:ig@" + IG_ORG + "&outcome=0&_count=20&_offset=0" in queries


def test_the_chain_page_verifies_and_is_audited(live):
    c = _signed_in(live, "ig")
    r = c.get("/governance/chain")
    assert r.status_code == 200 and "The audit chain is intact" in r.text and "No anchor has been made yet" in r.text
    assert _audit(live, subtype="audit-verify")


def test_notification_status_filter_is_checked(live):
    c = _signed_in(live, "ig")
    r = c.get("/governance/notifications", params={"status": "lost"})
    assert r.status_code == 400 and "Choose a status from the list" in r.text
    r = c.get("/governance/notifications", params={"status": "sent"})
    assert r.status_code == 200 and "No notifications with this status" in r.text
    assert _audit(live, subtype="notifications-read")
