"""The IG pages in Chromium (issue 17 item 7): a health visitor's safeguarding override of
scenario 2 and the MASH's break-glass view of scenario 5 (made through the practitioner pages)
reach the IG officer's review queue, oldest first and marked overdue; the review lifecycle is
worked through the form (an incomplete form refused with the error summary, needs follow-up
keeps the item queued, appropriate closes it, each review then found in the audit search); the
audit search filters and pages; the subject access report of the father (reached through his
own NHS number) prints the disclosure and downloads as CSV; the chain page verifies and shows
the last anchor; the notification page shows the delivery to the father's GP practice's
endpoint. axe-core runs on every page; the pages are photographed into docs/screenshots/."""
from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

import pytest

from app import cli
from app.demo.loader import load_demo
from app.demo.scenarios import GP_FATHERS, N
from app.settings import get_settings
from tests.conftest import LiveServer, make_settings, new_database_url, start_server
from tests.web.conftest import assert_accessible, find_by_nhs_number, screenshot, sign_in_demo

pytestmark = pytest.mark.browser
HV_JUSTIFICATION = "Bruising seen on the baby at the new birth visit"
MASH_JUSTIFICATION = "Referral from police: domestic incident at the address"


class _Receiver(BaseHTTPRequestHandler):
    """The father's GP practice's FHIR server: accepts every Communication."""
    received: list[bytes] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        _Receiver.received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory, key_path, sqlite_template, pg_template) -> Iterator[LiveServer]:
    """The demo families on a server whose reviews are overdue at once (0 days) and whose
    notifications to the fathers' GP practice go to a local receiver."""
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url, drop = new_database_url("sqlite", tmp_path_factory.mktemp("igweb"), sqlite_template, pg_template)
    settings = make_settings(url, key_path, ig_review_overdue_days=0, notification_poll_seconds=0.2,
                             notification_endpoints={GP_FATHERS.org: {"url": f"http://127.0.0.1:{receiver.server_port}/fhir"}})
    base, app, server, stop = start_server(settings)
    live = LiveServer(base, settings, app, server)
    load_demo(base, settings)
    yield live
    stop()
    drop()
    receiver.shutdown()


def _safeguarding_view(page, user: str, nhs: str, justification: str) -> None:
    sign_in_demo(page, user)
    find_by_nhs_number(page, nhs)
    page.get_by_role("button", name="Ask on a safeguarding basis").click()
    page.get_by_label("Safeguarding: a child may be at risk of harm").check()
    page.get_by_label("Why may the child be at risk?").fill(justification)
    page.get_by_role("button", name="View the family").click()
    assert page.get_by_test_id("override-tags").count() == 1
    page.context.clear_cookies()


@pytest.fixture(scope="module")
def overrides(browser, world):
    """A health visitor's safeguarding override, then the MASH's break-glass view."""
    context = browser.new_context(base_url=world.base_url)
    page = context.new_page()
    _safeguarding_view(page, "hv", N["s2_infant"], HV_JUSTIFICATION)
    _safeguarding_view(page, "mash", N["s5_infant"], MASH_JUSTIFICATION)
    context.close()
    return True


def _sign_in_ig(page) -> None:
    page.goto("/")
    page.locator("input[name=user][value=ig]").check()
    page.get_by_role("button", name=re.compile("Sign in as this demo user")).click()
    page.wait_for_url(re.compile(r"/governance/reviews$"))


def test_a_practitioner_is_refused_the_ig_pages(page, world):
    sign_in_demo(page, "hv")
    page.goto("/governance/reviews")
    assert page.get_by_role("heading", level=1).inner_text() == "You cannot use this page"
    assert "Only IG officers" in page.get_by_test_id("refusal-reason").inner_text()
    assert page.get_by_test_id("audit-ref").inner_text().startswith("AuditEvent/")
    assert_accessible(page)


def test_the_review_lifecycle_through_the_form(page, world, overrides):
    _sign_in_ig(page)
    items = page.get_by_test_id("queue-item")
    assert items.count() == 2
    first, second = items.nth(0).inner_text(), items.nth(1).inner_text()
    assert "demo:hv@" in first and "Safeguarding override" in first  # oldest first
    assert "demo:mash@" in second and "Break-glass" in second
    assert page.get_by_test_id("overdue").count() == 2  # overdue after 0 days
    assert_accessible(page)
    screenshot(page, "ig-review-queue")

    hv_event = items.nth(0).get_attribute("data-event")
    items.nth(0).get_by_role("link", name=re.compile("Review")).click()
    assert page.get_by_role("heading", level=1).inner_text() == "Review this disclosure"
    assert f"AuditEvent/{hv_event}" in page.get_by_test_id("reviewed-event").inner_text()
    page.get_by_role("button", name="Record review").click()  # nothing chosen, no note
    summary = page.locator(".nhsuk-error-summary")
    assert "Choose the outcome of your review" in summary.inner_text() and "Enter a note saying why" in summary.inner_text()
    assert page.title().startswith("Error:")
    assert_accessible(page)
    screenshot(page, "ig-review-form-error")
    summary.get_by_role("link", name="Enter a note saying why").click()
    assert page.evaluate("document.activeElement.id") == "note"

    page.get_by_label("Needs follow-up").check()
    page.get_by_label("Note").fill("Asked the health visiting lead for the visit notes")
    page.get_by_role("button", name="Record review").click()
    assert "recorded as needs follow-up" in page.get_by_test_id("review-recorded").inner_text()
    still = page.locator(f"[data-testid=queue-item][data-event='{hv_event}']")
    assert still.count() == 1 and "Last review: Needs follow-up" in still.inner_text()  # follow-up keeps it queued

    still.get_by_role("link", name=re.compile("Review")).click()
    assert "Needs follow-up: Asked the health visiting lead" in page.get_by_test_id("reviewed-event").inner_text()
    page.get_by_label("Appropriate", exact=True).check()
    page.get_by_label("Note").fill("Visit notes confirm the bruising; the view was proportionate")
    page.get_by_role("button", name="Record review").click()
    assert "recorded as appropriate" in page.get_by_test_id("review-recorded").inner_text()
    assert page.locator(f"[data-testid=queue-item][data-event='{hv_event}']").count() == 0
    assert page.get_by_test_id("queue-item").count() == 1
    assert_accessible(page)
    screenshot(page, "ig-review-recorded")

    # both reviews are on the chain, each naming the event reviewed, and found by the audit search
    page.goto("/governance/audit")
    page.get_by_label("Interaction").fill("ig-review")
    page.get_by_role("button", name="Search the audit").click()
    rows = page.get_by_test_id("audit-event")
    assert rows.count() == 2
    assert all(f"AuditEvent/{hv_event}" in rows.nth(i).inner_text() for i in range(2))
    page.get_by_label("Interaction").fill("family-view")
    page.get_by_role("button", name="Search the audit").click()
    reviewed = page.locator(f"[data-testid=audit-event][data-event='{hv_event}']")
    assert "Reviewed: appropriate" in reviewed.inner_text()  # the review appears on the event it reviews


def test_the_audit_search_filters_and_pages(page, world, overrides):
    _sign_in_ig(page)
    page.goto("/governance/audit")
    page.get_by_label("Interaction").fill("family-view")
    page.get_by_label("Purpose of use").fill("THREAT")
    page.get_by_label("NHS number of the person").fill(N["s2_father"])  # the father's own record, through linkage
    page.get_by_role("button", name="Search the audit").click()
    rows = page.get_by_test_id("audit-event")
    assert rows.count() == 1 and "demo:hv@" in rows.inner_text() and "THREAT" in rows.inner_text()
    assert_accessible(page)
    screenshot(page, "ig-audit-search")
    page.get_by_label("Outcome").select_option("4")  # a refused request: none for this person on a safeguarding basis
    page.get_by_role("button", name="Search the audit").click()
    page.get_by_test_id("no-events").wait_for(state="visible")  # the page the form submitted (is_visible() does not wait for it)

    page.goto("/governance/audit?subtype=&from=2000-01-01")
    showing = page.get_by_test_id("showing").first.inner_text()
    total = int(re.search(r"of (\d+)", showing).group(1))
    assert total > 20 and showing.startswith("Showing 1 to 20")
    first_page = page.get_by_test_id("audit-event").first.get_attribute("data-event")
    page.get_by_role("link", name=re.compile("Next")).first.click()
    assert page.get_by_test_id("showing").first.inner_text().startswith("Showing 21 to")
    assert page.get_by_test_id("audit-event").first.get_attribute("data-event") != first_page
    assert "from=2000-01-01" in page.url  # the filters carried to the next page
    page.get_by_role("link", name=re.compile("Previous")).first.click()
    assert page.get_by_test_id("audit-event").first.get_attribute("data-event") is not None

    page.goto("/governance/audit?to=not-a-date")
    assert "To date must be a real date" in page.locator(".nhsuk-error-summary").inner_text()
    assert_accessible(page)


def test_the_subject_access_report_of_the_father_prints_and_downloads(page, world, overrides):
    _sign_in_ig(page)
    page.goto("/governance/disclosures")
    page.get_by_label("NHS number").fill("999 000 2119")
    page.get_by_role("button", name="Produce the report").click()
    assert "not a valid NHS number" in page.locator(".nhsuk-error-summary").inner_text()
    assert_accessible(page)
    page.get_by_label("NHS number").fill(N["s2_father"])
    page.get_by_role("button", name="Produce the report").click()
    assert "999 000 2304" in page.get_by_test_id("report-heading").inner_text()
    rows = page.get_by_test_id("disclosure")
    override = next(rows.nth(i).inner_text() for i in range(rows.count()) if "Override" in rows.nth(i).inner_text())
    assert "Riverside Health Visiting Service" in override and "Substance" not in override  # categories, never the item
    assert HV_JUSTIFICATION not in page.content()  # the practitioner's free text may name others: left out
    assert_accessible(page)
    screenshot(page, "ig-subject-access-report")
    page.emulate_media(media="print")
    assert not page.get_by_test_id("disclosure-form").is_visible()  # the printed copy is the report alone
    page.emulate_media(media="screen")
    link = page.get_by_test_id("csv-link")
    r = page.request.get(link.get_attribute("href"))
    assert r.status == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text().splitlines()
    assert lines[0].startswith("date,recipient_organisation,") and len(lines) == rows.count() + 1
    assert any("Riverside Health Visiting Service" in line and ",yes," in line for line in lines[1:])


def test_the_chain_page_verifies_and_shows_the_last_anchor(page, world, overrides, tmp_path, monkeypatch):
    _sign_in_ig(page)
    page.goto("/governance/chain")
    assert "intact" in page.get_by_test_id("chain-verdict").inner_text()
    assert page.get_by_test_id("no-anchor").is_visible()
    monkeypatch.setenv("FAMILYVIEW_AUDIT_ANCHOR_KEY_PATH", str(tmp_path / "anchor-key.pem"))
    get_settings.cache_clear()
    try:
        assert cli.main(["audit", "anchor", "--database-url", world.settings.database_url, "--output", str(tmp_path / "anchor.jws")]) == 0
    finally:
        get_settings.cache_clear()
    page.reload()
    length = int(page.get_by_test_id("chain-length").inner_text())
    anchored = int(page.get_by_test_id("anchor-count").inner_text().split()[0])
    assert 0 < anchored < length  # the anchor itself and this page's own check came after
    assert len(page.get_by_test_id("chain-head").inner_text().strip()) == 64
    assert page.get_by_test_id("anchor-held").inner_text().startswith("Yes")
    assert str(tmp_path / "anchor.jws") in page.get_by_test_id("last-anchor").inner_text()
    assert_accessible(page)
    screenshot(page, "ig-audit-chain")


def test_the_notification_page_shows_delivery_to_the_fathers_practice(page, world, overrides):
    _sign_in_ig(page)
    deadline = time.monotonic() + 20
    while True:
        page.goto("/governance/notifications")
        rows = page.get_by_test_id("notification")
        if rows.count() and all(rows.nth(i).get_attribute("data-status") == "sent" for i in range(rows.count())):
            break
        assert time.monotonic() < deadline, page.get_by_test_id("notifications").inner_text()
        time.sleep(0.5)
    assert rows.count() >= 2 and _Receiver.received
    assert "Hill Street Practice" in rows.first.inner_text() and "Sent" in rows.first.inner_text()
    assert_accessible(page)
    screenshot(page, "ig-notifications")
    page.get_by_label("Delivery status").select_option("failed")
    page.get_by_role("button", name="Show").click()
    page.get_by_test_id("no-notifications").wait_for(state="visible")  # the page the form submitted (is_visible() does not wait for it)
