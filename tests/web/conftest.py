"""The pages in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser), against the app on a real uvicorn server with the ten demo families loaded through the
HTTP ingest path; axe-core (npm) run inside each page."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from app.demo.loader import load_demo
from tests.conftest import LiveServer, make_settings, new_database_url, start_server

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
REQUIRE = os.environ.get("FAMILYVIEW_REQUIRE_BROWSER") == "1"


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    if REQUIRE:
        pytest.fail(f"{what} (FAMILYVIEW_REQUIRE_BROWSER=1): run under scripts/with-browser.sh")
    pytest.skip(f"{what}: the browser tests run under `make test` (scripts/with-browser.sh)")


@pytest.fixture(scope="session")
def browser():
    _need(os.path.exists(CHROMIUM), "Debian's chromium is not installed")
    _need(AXE.exists(), "axe-core is not installed (npm ci)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, key_path, sqlite_template, pg_template) -> Iterator[LiveServer]:
    """One server with the demo families (SQLite: the pages add no database code of their own;
    the services they call are tested on both databases)."""
    url, drop = new_database_url("sqlite", tmp_path_factory.mktemp("web"), sqlite_template, pg_template)
    settings = make_settings(url, key_path)
    base, app, server, stop = start_server(settings)
    live = LiveServer(base, settings, app, server)
    load_demo(base, settings)
    yield live
    stop()
    drop()


@pytest.fixture
def page(browser, world):
    # bypass_csp: the pages' Content-Security-Policy allows only their own scripts; axe is injected by the test
    context = browser.new_context(base_url=world.base_url, bypass_csp=True, viewport={"width": 1100, "height": 900})
    p = context.new_page()
    yield p
    context.close()


def axe(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.0-2.2 A/AA rules)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice']}})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"] if v["impact"] in ("serious", "critical")
    ]


def assert_accessible(page) -> None:
    problems = axe(page)
    assert not problems, f"axe-core: serious/critical violations on {page.url}: {problems}"


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in_demo(page, user: str) -> None:
    page.goto("/")
    page.locator(f"input[name=user][value={user}]").check()
    page.get_by_role("button", name=re.compile("Sign in as this demo user")).click()
    page.wait_for_url(re.compile(r"/find$"))


def find_by_nhs_number(page, nhs: str) -> None:
    page.goto("/find")
    page.get_by_label("NHS number").fill(nhs)
    page.get_by_role("button", name="Find family").click()
    page.wait_for_load_state()
