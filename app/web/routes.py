"""The pages: sign in, find a family, see it, ask on a safeguarding basis, sign out.

Thin handlers: read the form, call the same services as the API (the family view through
app.family.views.family_view, so consent, audit and notification are the API's), and render.
Every route declares its row of the access table ("web.pages", "web.assets"): the pages are
reached with the page session (app.web.session), not a bearer token, and a page that needs a
signed-in user sends everyone else to the sign-in page."""
from __future__ import annotations

import logging
import re
import secrets
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from app.auth.access import Access
from app.auth.cis2 import UnknownRole, map_claims
from app.auth.oidc import OidcError, pkce_pair
from app.auth.tokens import DEFAULT_SCOPES, Principal, Scope
from app.errors import FhirError, Issue, operation_outcome
from app.family.caseload import find_in_caseload
from app.family.graph import organisation_names
from app.family.service import FamilyViewRequest
from app.family.views import family_view
from app.fhir.http import FhirContext, FhirResponse
from app.identifiers import NHS_NUMBER_SYSTEM, is_valid_nhs_number
from app.linkage.queue import settle
from app.web import family_page, session as web_session
from app.web.audit import session_event
from app.web.demo_users import BY_KEY, DEMO_USERS, ROLE_PLAIN
from app.web.genogram import draw

log = logging.getLogger("familyview.web")
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
router = APIRouter(tags=["Pages"], include_in_schema=False, dependencies=[Depends(Access("web.pages"))])
assets = APIRouter(tags=["Pages"], include_in_schema=False, dependencies=[Depends(Access("web.assets"))])

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


def _uk_date(value: str | None) -> str:
    if not value:
        return "Not recorded"
    try:
        d = date.fromisoformat(str(value)[:10])
    except ValueError:
        return str(value)
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def _nhs_format(value: str | None) -> str:
    return f"{value[:3]} {value[3:6]} {value[6:]}" if value and len(value) == 10 else (value or "Not shown or not recorded")


_env.filters.update(uk_date=_uk_date, nhs_format=_nhs_format)
_env.globals.update(
    role_words=lambda r: ROLE_PLAIN.get(r, r),
    override_words=(("refusal-overridden", "Refusal overridden"), ("break-glass", "Break-glass"),
                    ("ig-review-queued", "IG review queued"), ("holder-notified", "Record holders told")),
    role_colour=lambda r: {"infant": "green", "mother": "purple", "father": "blue", "male-carer": "orange"}.get(r, "grey"),
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; font-src 'self' https://assets.nhs.uk; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    if "session" not in context:
        context["session"] = web_session.current(request)
    context.setdefault("errors", {})
    context.setdefault("form", {})
    html = _env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _to_sign_in(message: str | None = None) -> RedirectResponse:
    return RedirectResponse("/sign-in" + (f"?m={quote(message)}" if message else ""), status_code=303)


def _signed_in(request: Request) -> web_session.WebSession | None:
    return web_session.current(request)


def _bad_form(request: Request) -> HTMLResponse:
    return render(request, "refused.html", 400, heading="The form has expired", summary="Please try again",
                  reason="The page you sent was out of date or not from familyview, so nothing was done.", back="/")


async def _fields(request: Request) -> dict[str, str]:
    data = await request.form()
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


async def _form(request: Request, current: web_session.WebSession) -> dict[str, str] | None:
    """A signed-in form's fields, or None when its CSRF token is not this session's (every form has one)."""
    form = await _fields(request)
    return form if web_session.csrf_ok(current, form.get("csrf_token")) else None


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# ------------------------------------------------------------------ home, assets

@router.get("/")
def home(request: Request) -> Response:
    """Content negotiation: a browser gets the pages; an API client the pointer to /fhir."""
    if not _wants_html(request):
        return FhirResponse(operation_outcome([Issue("not-found", "The FHIR API is at /fhir (capabilities at /fhir/metadata); "
                                                     "the pages are at / for Accept: text/html", spine_code="RESOURCE_NOT_FOUND")]),
                            status_code=404)
    current = _signed_in(request)
    return RedirectResponse(start_page(current.principal.role) if current else "/sign-in", status_code=303)


def start_page(role: str) -> str:
    """Where a signed-in user starts: an IG officer at the review queue, everyone else at find."""
    return "/governance/reviews" if role == "ig-officer" else "/find"


@assets.get("/static/{asset:path}")
def static_asset(asset: str) -> Response:
    path = (STATIC / asset).resolve()
    if STATIC not in path.parents or not path.is_file():
        return Response("Not found", status_code=404, media_type="text/plain")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------ sign in and out

@router.get("/sign-in")
def sign_in(request: Request, m: str | None = None) -> Response:
    if current := _signed_in(request):
        return RedirectResponse(start_page(current.principal.role), status_code=303)
    settings = request.app.state.settings
    csrf = secrets.token_urlsafe(32)
    resp = render(request, "sign_in.html", session=None, csrf=csrf, demo=settings.demo_sign_in, demo_users=DEMO_USERS,
                  oidc=request.app.state.verifier.oidc().configured, message=m)
    web_session.start_flow(request, resp, {"csrf": csrf})
    return resp


def _org_name(request: Request, org: str, fallback: str | None = None) -> str:
    with request.app.state.db.session(readonly=True) as session:
        return organisation_names(session, [org]).get(org) or fallback or org


@router.post("/sign-in/demo")
async def sign_in_demo(request: Request) -> Response:
    settings = request.app.state.settings
    form = await _fields(request)  # before sign-in: the CSRF token is the sign-in flow's
    flow = web_session.signer(request).loads(request.cookies.get(web_session.FLOW_COOKIE)) or {}
    if not settings.demo_sign_in:
        return render(request, "refused.html", 404, session=None, heading="Page not found", summary="There is no demo sign-in here",
                      reason="This deployment signs in with NHS Care Identity.", back="/sign-in", back_text="Sign in")
    if not flow.get("csrf") or not secrets.compare_digest(str(flow["csrf"]), form.get("csrf_token", "")):
        return _bad_form(request)
    user = BY_KEY.get(form.get("user", ""))
    if user is None:
        resp = render(request, "sign_in.html", 400, session=None, csrf=flow["csrf"], demo=True, demo_users=DEMO_USERS,
                      oidc=request.app.state.verifier.oidc().configured, errors={"user": "Choose a demo user"})
        return resp
    principal = Principal(sub=f"demo:{user.key}@{user.org}", role=user.role, org=user.org,
                          service=settings.oidc_role_services.get(user.role),
                          scopes=tuple(s for s in (Scope.parse(t) for t in DEFAULT_SCOPES[user.role].split()) if s))
    return await run_in_threadpool(_signed_in_now, request, principal, user.name, _org_name(request, user.org, user.org_name), "demo")


def _signed_in_now(request: Request, principal: Principal, name: str, org_name: str, how: str) -> Response:
    resp = RedirectResponse(start_page(principal.role), status_code=303)
    sid = web_session.start(request, resp, principal, name=name, org_name=org_name, how=how)
    session_event(request.app.state.db, action="login", outcome="success", sub=principal.sub, role=principal.role,
                  org=principal.org, how=how, detail=f"signed in ({how}), session {sid[:8]}", request_id=_request_id(request))
    resp.delete_cookie(web_session.FLOW_COOKIE, path="/sign-in")
    return resp


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def _redirect_uri(request: Request) -> str:
    settings = request.app.state.settings
    return settings.oidc_redirect_url or str(request.url_for("sign_in_callback"))


@router.get("/sign-in/oidc")
def sign_in_oidc(request: Request) -> Response:
    client = request.app.state.verifier.oidc()
    if not client.configured:
        return render(request, "refused.html", 404, heading="Page not found", summary="No identity provider is configured",
                      reason="This deployment uses the demo sign-in.", back="/sign-in", back_text="Sign in")
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair()
    try:
        url = client.authorization_url(_redirect_uri(request), state, nonce, challenge)
    except OidcError as exc:
        return render(request, "refused.html", 502, heading="Sign-in is not available", summary="The identity provider did not answer",
                      reason=str(exc), back="/sign-in", back_text="Try again")
    resp = RedirectResponse(url, status_code=303)
    web_session.start_flow(request, resp, {"state": state, "nonce": nonce, "verifier": verifier})
    return resp


@router.get("/sign-in/callback", name="sign_in_callback")
def sign_in_callback(request: Request, code: str | None = None, state: str | None = None, error: str | None = None) -> Response:
    flow = web_session.signer(request).loads(request.cookies.get(web_session.FLOW_COOKIE)) or {}
    client = request.app.state.verifier.oidc()
    settings = request.app.state.settings

    def refused(reason: str, status: int, *, sub: str = "", role: str | None = None, org: str | None = None) -> Response:
        session_event(request.app.state.db, action="login", outcome="refused", sub=sub, role=role, org=org, how="oidc",
                      detail=f"sign-in refused: {reason}", request_id=_request_id(request))
        resp = render(request, "refused.html", status, session=None, heading="You cannot sign in to familyview",
                      summary="Sign-in refused", reason=reason, back="/sign-in", back_text="Sign in again")
        resp.delete_cookie(web_session.FLOW_COOKIE, path="/sign-in")
        return resp

    if not client.configured:
        return refused("No identity provider is configured.", 404)
    if error:
        return refused(f"The identity provider did not sign you in ({error[:60]}).", 401)
    if not code or not state or not flow.get("state") or not secrets.compare_digest(str(flow["state"]), state):
        return refused("This sign-in was not started here or has expired. Start again.", 400)
    try:
        claims = client.exchange(code, _redirect_uri(request), str(flow["verifier"]), str(flow["nonce"]))
    except OidcError as exc:
        return refused(str(exc), 401)
    try:
        principal = map_claims(claims, settings)
    except UnknownRole as exc:
        return refused(f"{exc}. Ask your Registration Authority for a role that uses familyview, or choose another role.", 403,
                       sub=str(claims.get("nhsid_useruid") or claims.get("sub") or ""))
    name = principal.claims.get("name") or principal.sub
    return _signed_in_now(request, principal, name, _org_name(request, principal.org), "oidc")


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    current = await run_in_threadpool(_signed_in, request)  # it may ask the database
    if current is None:
        return _to_sign_in()
    form = await _form(request, current)
    if form is None:
        return _bad_form(request)
    await run_in_threadpool(session_event, request.app.state.db, action="logout", outcome="success", sub=current.principal.sub,
                            role=current.principal.role, org=current.principal.org, how=current.how, detail="signed out",
                            request_id=_request_id(request))
    resp = _to_sign_in("You have signed out.")
    await run_in_threadpool(web_session.end, request, resp)
    return resp


# ------------------------------------------------------------------ find a family

@router.get("/find")
def find(request: Request) -> Response:
    if _signed_in(request) is None:
        return _to_sign_in()
    return render(request, "find.html")


def nhs_number_problem(raw: str) -> str | None:
    digits = re.sub(r"[\s-]", "", raw or "")
    if not digits:
        return "Enter the baby's or the mother's NHS number"
    if not digits.isdigit() or len(digits) != 10:
        return "NHS number must be 10 digits"
    if not is_valid_nhs_number(digits):
        return "This is not a valid NHS number: check the digits"
    return None


@router.post("/find")
async def find_submit(request: Request) -> Response:
    current = await run_in_threadpool(_signed_in, request)  # it may ask the database
    if current is None:
        return _to_sign_in()
    form = await _form(request, current)
    if form is None:
        return _bad_form(request)
    if form.get("by") == "name":
        return await run_in_threadpool(_find_by_name, request, current, form)
    problem = nhs_number_problem(form.get("nhs_number", ""))
    if problem:
        return render(request, "find.html", 400, errors={"nhs-number": problem}, form=form)
    digits = re.sub(r"[\s-]", "", form["nhs_number"])
    purpose = form.get("purpose") or "direct-care"
    if purpose not in ("direct-care", "safeguarding"):
        return render(request, "ask.html", 400, action="/find", hidden={"by": "nhs-number", "nhs_number": digits},
                      errors={"purpose": "Choose why you are asking"}, form=form)
    justification = form.get("justification", "").strip() if purpose == "safeguarding" else None
    req = FamilyViewRequest(purpose, justification, identifier=f"{NHS_NUMBER_SYSTEM}|{digits}")
    return await run_in_threadpool(_family, request, current, req, form, "purpose" in form)


@router.post("/find/ask")
async def find_ask(request: Request) -> Response:
    """The purpose chooser for a family found by NHS number (say, by the MASH, which has no
    relationship of its own and reaches a family only on a safeguarding basis)."""
    current = await run_in_threadpool(_signed_in, request)  # it may ask the database
    if current is None:
        return _to_sign_in()
    form = await _form(request, current)
    if form is None:
        return _bad_form(request)
    problem = nhs_number_problem(form.get("nhs_number", ""))
    if problem:
        return render(request, "find.html", 400, errors={"nhs-number": problem}, form=form)
    digits = re.sub(r"[\s-]", "", form["nhs_number"])
    return render(request, "ask.html", action="/find", hidden={"by": "nhs-number", "nhs_number": digits},
                  form={"purpose": "safeguarding"})


def _find_by_name(request: Request, current: web_session.WebSession, form: dict[str, str]) -> Response:
    errors = {}
    family = form.get("family", "").strip()
    if not family:
        errors["family"] = "Enter the last name"
    try:
        born = date(int(form.get("dob_year", "")), int(form.get("dob_month", "")), int(form.get("dob_day", "")))
        if born > date.today():
            errors["dob-day"] = "Date of birth must be today or in the past"
    except ValueError:
        errors["dob-day"] = "Enter a real date of birth, for example 15 3 2026"
    if errors:
        return render(request, "find.html", 400, errors=errors, form=form)
    db, settings = request.app.state.db, request.app.state.settings
    settle(db, settings)
    with db.session() as session:
        matches, event_id = find_in_caseload(session, current.principal, family=family, given=form.get("given") or None,
                                             birth_date=born, request_id=_request_id(request))
    return render(request, "results.html", matches=matches, audit_event=f"AuditEvent/{event_id}")


# ------------------------------------------------------------------ the family

def _view(request: Request, principal: Principal, req: FamilyViewRequest):
    state = request.app.state
    req.request_id = _request_id(request)
    ctx = FhirContext(principal, state.db, state.settings, state.settings.fhir_base(str(request.base_url)), state.ingest_hooks)
    return family_view(ctx, req)


def _family(request: Request, current: web_session.WebSession, req: FamilyViewRequest, form: dict[str, str] | None = None,
            ask_form: bool = False) -> Response:
    try:
        result = _view(request, current.principal, req)
    except FhirError as err:  # the audit could not be written: nothing is shown
        return render(request, "refused.html", err.status, heading="Try again later", summary="Nothing was shown",
                      reason=err.diagnostics)
    body = result.body
    if result.status == 200:
        page = family_page.read(body, result.audit_event_id)
        infant = page.infant
        subject_id = None
        if infant is not None:
            rid = infant.reference.split("/", 1)[-1]
            subject_id = rid[len("unborn-"):] if rid.startswith("unborn-") else rid
        title = infant.name if infant else "the baby"
        svg = draw(page.genogram_people(), title=f"Family tree of {title}: {len(page.people)} people", carer_lines=page.carer_lines())
        return render(request, "family.html", page=page, genogram=svg, title_name=title, subject_id=subject_id,
                      purpose=req.purpose)
    issue = (body.get("issue") or [{}])[0]
    message = issue.get("diagnostics") or "The request was refused"
    audit_ref = f"AuditEvent/{result.audit_event_id}" if result.audit_event_id else None
    if ask_form and result.status == 400:
        field = "justification" if "justification" in message else "purpose"
        text = "Enter why the child may be at risk: a safeguarding request needs a justification" if field == "justification" else message
        extra = {"action": "/find", "hidden": {"by": "nhs-number", "nhs_number": (form or {}).get("nhs_number", "")}} if req.res_id is None else {}
        return render(request, "ask.html", 400, subject_id=req.res_id, errors={field: text}, form=form or {},
                      audit_event=result.audit_event_id, **extra)
    if result.status == 403:
        return render(request, "refused.html", 403, heading="You cannot see this family", summary="No lawful route to this family",
                      reason=message, audit_event=audit_ref,
                      route="If you believe a child is at risk, contact your safeguarding lead or the multi-agency safeguarding hub (MASH), "
                            "or ask on a safeguarding basis with a justification.",
                      ask_nhs=re.sub(r"[\s-]", "", (form or {}).get("nhs_number", "")) if req.purpose != "safeguarding" and form else None)
    infants = family_page.choose_infant(body) if result.status == 422 else []
    if infants:
        return render(request, "choose.html", infants=infants)
    if result.status in (404, 422) and form is not None and "nhs_number" in form:
        text = ("No baby or mother with that NHS number is known to familyview" if result.status == 404 else
                "That NHS number is not of a baby under one, or of a mother with a baby under one or a current pregnancy")
        return render(request, "find.html", result.status, errors={"nhs-number": text}, form=form)
    return render(request, "refused.html", result.status, heading="The family cannot be shown", summary="Not shown",
                  reason=message, audit_event=audit_ref)


@router.get("/family/{patient_id}")
def family(request: Request, patient_id: str, purpose: str = "direct-care") -> Response:
    current = _signed_in(request)
    if current is None:
        return _to_sign_in()
    if purpose != "direct-care":  # a safeguarding view is asked for with the form (a justification, by POST)
        return RedirectResponse(f"/family/{quote(patient_id)}/ask", status_code=303)
    return _family(request, current, FamilyViewRequest("direct-care", None, res_id=patient_id))


@router.get("/family/{patient_id}/ask")
def ask(request: Request, patient_id: str) -> Response:
    if _signed_in(request) is None:
        return _to_sign_in()
    return render(request, "ask.html", subject_id=patient_id, form={"purpose": "safeguarding"})


@router.post("/family/{patient_id}/ask")
async def ask_submit(request: Request, patient_id: str) -> Response:
    current = await run_in_threadpool(_signed_in, request)  # it may ask the database
    if current is None:
        return _to_sign_in()
    form = await _form(request, current)
    if form is None:
        return _bad_form(request)
    purpose = form.get("purpose")
    if purpose not in ("direct-care", "safeguarding"):
        return render(request, "ask.html", 400, subject_id=patient_id, errors={"purpose": "Choose why you are asking"}, form=form)
    justification = form.get("justification", "").strip() if purpose == "safeguarding" else None
    # a safeguarding request without a justification still goes to the service, which refuses and audits it
    req = FamilyViewRequest(purpose, justification, res_id=patient_id)
    return await run_in_threadpool(_family, request, current, req, form, True)
