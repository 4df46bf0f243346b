"""Sign-in by OpenID Connect against a real local provider (tests/web/oidc_provider.py: RS256
tokens with CIS2-shaped claims), in the browser; and the same claim mapping for bearer tokens on
the API. A role the mapping does not know is refused, and audited."""
from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
import uvicorn

from app.demo.loader import load_demo
from app.demo.scenarios import N
from tests.conftest import LiveServer, free_port, make_settings, new_database_url, start_server
from tests.web import oidc_provider as idp
from tests.web.conftest import assert_accessible, find_by_nhs_number, screenshot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def provider():
    port = free_port()
    holder = {"issuer": f"http://127.0.0.1:{port}"}
    app = idp.build(holder)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield holder["issuer"], app
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def oidc_world(provider, tmp_path_factory, key_path, sqlite_template, pg_template):
    issuer, _ = provider
    url, drop = new_database_url("sqlite", tmp_path_factory.mktemp("oidc"), sqlite_template, pg_template)
    settings = make_settings(url, key_path, oidc_discovery_url=f"{issuer}/.well-known/openid-configuration",
                             oidc_client_id=idp.CLIENT_ID, oidc_client_secret=idp.CLIENT_SECRET,
                             oidc_role_map=idp.ROLE_MAP, web_session_secret="test-session-secret-0123456789")
    base, app, server, stop = start_server(settings)
    live = LiveServer(base, settings, app, server)
    load_demo(base, settings)  # source systems still post with the local key's tokens
    yield live
    stop()
    drop()


@pytest.fixture
def oidc_page(browser, oidc_world):
    context = browser.new_context(base_url=oidc_world.base_url, bypass_csp=True)
    page = context.new_page()
    yield page
    context.close()


def _sign_in(page, user: idp.TestUser) -> None:
    page.goto("/")
    page.get_by_role("button", name="Sign in with NHS Care Identity").click()
    page.get_by_role("link", name=re.compile(re.escape(user.name))).click()
    page.wait_for_load_state()


def test_oidc_sign_in_maps_cis2_claims_to_role_and_organisation(oidc_page):
    page = oidc_page
    page.goto("/")
    assert not page.get_by_role("heading", name="Demonstration sign-in").count()  # no demo sign-in beside a provider
    assert_accessible(page)
    screenshot(page, "sign-in-oidc")
    _sign_in(page, idp.USERS["hv"])
    assert page.url.endswith("/find")
    header = page.get_by_test_id("signed-in-user").inner_text()
    assert "Helen Vaughan" in header and "health visitor" in header and "RHV01" in header
    assert "Demo" not in header
    cookie = next(c for c in page.context.cookies() if c["name"] == "familyview_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    find_by_nhs_number(page, N["s2_infant"])
    assert "Jonathan Smith" in page.locator("section[data-role=father] h2").inner_text()


def test_an_unknown_cis2_role_is_refused_and_audited(oidc_page, oidc_world):
    _sign_in(oidc_page, idp.USERS["unknown"])
    assert oidc_page.get_by_role("heading", level=1).inner_text() == "You cannot sign in to familyview"
    assert "R8008" in oidc_page.get_by_test_id("refusal-reason").inner_text()
    assert not any(c["name"] == "familyview_session" for c in oidc_page.context.cookies())
    assert_accessible(oidc_page)
    ig = httpx.Client(base_url=oidc_world.fhir, headers={"Authorization": f"Bearer {oidc_world.token('ig-officer', 'X26')}"})
    events = ig.get("/AuditEvent", params={"subtype": "login", "outcome": "4"}).json()
    assert any("R8008" in e["resource"]["outcomeDesc"] for e in events.get("entry", []))


def test_a_forged_or_replayed_callback_is_refused(oidc_world):
    c = httpx.Client(base_url=oidc_world.base_url, headers={"Accept": "text/html"})
    r = c.get("/sign-in/callback", params={"code": "made-up", "state": "made-up"})
    assert r.status_code == 400 and "familyview_session" not in r.cookies


def _token_for(provider_app, user: idp.TestUser) -> str:
    return provider_app.state.sign({**idp.claims_for(user), "jti": "t-1"})


def test_cis2_bearer_tokens_on_the_api_use_the_same_mapping(provider, oidc_world):
    _, app = provider
    api = httpx.Client(base_url=oidc_world.fhir, timeout=30)
    params = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{N['s2_infant']}", "purpose": "direct-care"}
    ok = api.get("/Patient/$family-view", params=params, headers={"Authorization": f"Bearer {_token_for(app, idp.USERS['hv'])}"})
    assert ok.status_code == 200, ok.text
    refused = api.get("/Patient/$family-view", params=params,
                      headers={"Authorization": f"Bearer {_token_for(app, idp.USERS['unknown'])}"})
    assert refused.status_code == 401 and "R8008" in refused.text
    # a token the provider did not sign is not accepted
    forged = _token_for(app, idp.USERS["hv"])[:-4] + "AAAA"
    assert api.get("/Patient/$family-view", params=params, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
