"""The IG officer's pages: audit search, the review queue and its review form, the subject
access report (printable, with its CSV), the chain status and last anchor, and notification
delivery status.

Thin handlers over the same service functions as the IG API (app.audit.views.search_audit,
app.ig.reviews, app.ig.disclosure, app.ig.notifications, app.audit.anchor), each of which
audits the access in its own transaction, so a page view is recorded exactly as the API call
would be. Each page is allowed by the same row of the access table as its API route; anyone
else gets the standard refusal page (and the refusal is audited)."""
from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.audit import anchor, balp
from app.audit.views import search_audit
from app.auth import access
from app.auth.access import Access
from app.errors import FhirError
from app.family.graph import organisation_names
from app.fhir.search import SearchLimits
from app.identifiers import is_valid_nhs_number
from app.ig import disclosure, notifications, reviews
from app.web import session as web_session
from app.web.routes import _bad_form, _form, _request_id, _to_sign_in, render

router = APIRouter(prefix="/governance", tags=["Pages"], include_in_schema=False, dependencies=[Depends(Access("web.pages"))])
PAGE_SIZE = 20
ENTITIES_SHOWN = 4
HOME = "/governance/reviews"
FILTERS = ("type", "subtype", "agent", "entity", "nhs_number", "from", "to", "purpose", "outcome")
OUTCOME_WORDS = {"0": "Success", "4": "Minor failure (refused)", "8": "Serious failure", "12": "Major failure"}
PURPOSE_WORDS = {"TREAT": "Direct care (TREAT)", "THREAT": "Safeguarding (THREAT)", "BTG": "Break-glass (BTG)"}
REVIEW_WORDS = {"appropriate": "Appropriate", "inappropriate": "Inappropriate", "needs-follow-up": "Needs follow-up"}
NOTIFICATION_WORDS = {"pending": "Pending", "sent": "Sent", "failed": "Failed", "awaiting-pickup": "Awaiting pick-up"}


def _ig(request: Request, operation: str, what: str) -> web_session.WebSession | Response:
    """The signed-in IG officer, or the response for anyone else (sign in, or refused and audited)."""
    current = web_session.current(request)
    if current is None:
        return _to_sign_in()
    if access.allowed(operation, current.principal.role):
        return current
    reason = access.rule(operation).refusal.format(role=current.principal.role, what=what)
    event = balp.AccessEvent(current.principal, "ig-page", action="R", query=request.url.path,
                             request_id=_request_id(request)).refused(403, f"{what}: {reason}")
    with request.app.state.db.session() as session:
        event_id = balp.record(session, event)
    return render(request, "refused.html", 403, heading="You cannot use this page", summary="Information Governance only",
                  reason=reason, audit_event=f"AuditEvent/{event_id}", back="/", back_text="Go to your start page")


def _page_number(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() and 0 < int(raw) < 10_000 else 1


def _pager(path: str, query: dict[str, str], page: int, total: int) -> dict[str, Any]:
    last = max(1, -(-total // PAGE_SIZE))

    def link(n: int) -> str:
        return f"{path}?{urlencode({**{k: v for k, v in query.items() if v}, 'page': n})}"

    return {"page": page, "last": last, "total": total, "first_shown": (page - 1) * PAGE_SIZE + 1 if total else 0,
            "last_shown": min(page * PAGE_SIZE, total),
            "previous": link(page - 1) if page > 1 else None, "next": link(page + 1) if page < last else None}


def _digits(raw: str) -> str:
    return re.sub(r"[\s-]", "", raw or "")


def _nhs_problem(raw: str, *, required: bool) -> str | None:
    digits = _digits(raw)
    if not digits:
        return "Enter the person's NHS number" if required else None
    if not digits.isdigit() or len(digits) != 10:
        return "NHS number must be 10 digits"
    if not is_valid_nhs_number(digits):
        return "This is not a valid NHS number: check the digits"
    return None


def _date_problem(raw: str) -> str | None:
    try:
        date.fromisoformat(raw)
    except ValueError:
        return "must be a real date, for example 2026-12-01"
    return None


@router.get("")
def home(request: Request) -> Response:
    return RedirectResponse(HOME, status_code=303)


# ------------------------------------------------------------------ audit search

@router.get("/audit")
def audit_search(request: Request) -> Response:
    current = _ig(request, "audit.read", "audit search")
    if not isinstance(current, web_session.WebSession):
        return current
    form = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    page = _page_number(request.query_params.get("page"))
    errors: dict[str, str] = {}
    if problem := _nhs_problem(form["nhs_number"], required=False):
        errors["nhs_number"] = problem
    for name, label in (("from", "From"), ("to", "To")):
        if form[name] and (problem := _date_problem(form[name])):
            errors[name] = f"{label} date {problem}"
    if form["outcome"] and form["outcome"] not in OUTCOME_WORDS:
        errors["outcome"] = "Choose an outcome from the list"
    if errors:
        return render(request, "ig/audit.html", 400, errors=errors, form=form, events=None, outcomes=OUTCOME_WORDS)
    params = [(k, form[k]) for k in ("type", "subtype", "agent", "entity", "purpose", "outcome") if form[k]]
    if form["nhs_number"]:
        params.append(("patient", _digits(form["nhs_number"])))
    params += [("date", f"ge{form['from']}")] if form["from"] else []
    params += [("date", f"le{form['to']}")] if form["to"] else []
    params += [("_count", str(PAGE_SIZE)), ("_offset", str((page - 1) * PAGE_SIZE))]
    try:
        with request.app.state.db.session() as session:
            _, total, events = search_audit(session, current.principal, params, SearchLimits.of(request.app.state.settings),
                                            request_id=_request_id(request))
    except FhirError as err:
        if err.status >= 500:
            raise
        return render(request, "ig/audit.html", 400, errors={"type": err.diagnostics}, form=form, events=None, outcomes=OUTCOME_WORDS)
    return render(request, "ig/audit.html", form=form, events=[_event_row(e) for e in events], outcomes=OUTCOME_WORDS,
                  pager=_pager("/governance/audit", form, page, total), searched=any(form.values()))


def _event_row(e: dict[str, Any]) -> dict[str, Any]:
    """What the audit table shows of one AuditEvent."""
    user = next((a for a in e.get("agent") or [] if a.get("requestor")), {})
    org = next((a for a in e.get("agent") or [] if not a.get("requestor")), {})
    subtype = next((c.get("code") for c in e.get("subtype") or [] if c.get("system") == balp.SUBTYPE_SYSTEM),
                   (e.get("subtype") or [{}])[-1].get("code"))
    review = next(({x["url"]: next(v for k, v in x.items() if k.startswith("value")) for x in ext.get("extension") or []}
                   for ext in e.get("extension") or [] if ext.get("url") == reviews.EXT_REVIEW), None)
    refs: list[str] = []  # what was acted on (role 4) before whose data it was (role 1); one line per record
    for x in sorted(e.get("entity") or [], key=lambda x: (x.get("role") or {}).get("code") != "4"):
        ref = ((x.get("what") or {}).get("reference") or "").split("#", 1)[0]
        if ref and ref not in refs:
            refs.append(ref)
    return {
        "id": e.get("id"), "recorded": e.get("recorded", ""), "type": (e.get("type") or {}).get("code", ""), "subtype": subtype or "",
        "agent": ((user.get("who") or {}).get("identifier") or {}).get("value", ""),
        "role": next((c.get("code") for r in user.get("role") or [] for c in r.get("coding") or []), ""),
        "org": ((org.get("who") or {}).get("identifier") or {}).get("value", ""),
        "outcome": e.get("outcome", ""), "outcome_words": OUTCOME_WORDS.get(e.get("outcome", ""), e.get("outcome", "")),
        "description": e.get("outcomeDesc", ""),
        "purpose": next((c.get("code") for p in e.get("purposeOfEvent") or [] for c in p.get("coding") or []), ""),
        "entities": refs[:ENTITIES_SHOWN], "more_entities": max(0, len(refs) - ENTITIES_SHOWN),
        "review": review,
    }


# ------------------------------------------------------------------ the review queue and form

@router.get("/reviews")
def review_queue(request: Request) -> Response:
    current = _ig(request, "ig.review", "review queue")
    if not isinstance(current, web_session.WebSession):
        return current
    page = _page_number(request.query_params.get("page"))
    overdue_days = request.app.state.settings.ig_review_overdue_days
    with request.app.state.db.session() as session:
        total, items = reviews.read_queue(session, current.principal, overdue_days=overdue_days, offset=(page - 1) * PAGE_SIZE,
                                          count=PAGE_SIZE, request_id=_request_id(request))
        names = organisation_names(session, {i.agent_org for i in items})
    return render(request, "ig/reviews.html", items=items, names=names, overdue_days=overdue_days, review_words=REVIEW_WORDS,
                  pager=_pager("/governance/reviews", {}, page, total), done=request.query_params.get("done"))


def _queued_event(request: Request, current: web_session.WebSession, event_id: str) -> dict[str, Any] | None:
    with request.app.state.db.session() as session:
        _, _, found = search_audit(session, current.principal, [("_id", event_id)], SearchLimits.of(request.app.state.settings),
                                   request_id=_request_id(request))
        row = _event_row(found[0]) if found else None
        if row is not None:
            row["org_name"] = organisation_names(session, [row["org"]]).get(row["org"])
    return row


def _review_form(request: Request, current: web_session.WebSession, event_id: str, status: int = 200,
                 errors: dict[str, str] | None = None, form: dict[str, str] | None = None) -> Response:
    event = _queued_event(request, current, event_id)
    if event is None:
        return render(request, "refused.html", 404, heading="Audit event not found", summary="Nothing to review",
                      reason=f"AuditEvent/{event_id} is not known.", back=HOME, back_text="Back to the review queue")
    return render(request, "ig/review.html", status, event=event, errors=errors or {}, form=form or {}, outcomes=REVIEW_WORDS)


@router.get("/reviews/{event_id}")
def review_form(request: Request, event_id: str) -> Response:
    current = _ig(request, "ig.review", "review form")
    if not isinstance(current, web_session.WebSession):
        return current
    return _review_form(request, current, event_id)


@router.post("/reviews/{event_id}")
async def review_submit(request: Request, event_id: str) -> Response:
    current = await run_in_threadpool(_ig, request, "ig.review", "review form")  # it may ask and write the database
    if not isinstance(current, web_session.WebSession):
        return current
    form = await _form(request, current)
    if form is None:
        return _bad_form(request)
    errors = {}
    if form.get("outcome") not in reviews.OUTCOMES:
        errors["outcome"] = "Choose the outcome of your review"
    if not form.get("note", "").strip():
        errors["note"] = "Enter a note saying why"
    if errors:
        return await run_in_threadpool(_review_form, request, current, event_id, 400, errors, form)

    def work() -> Response:
        try:
            with request.app.state.db.session() as session:
                reviews.record_review(session, current.principal, event_id, form["outcome"], form["note"], request_id=_request_id(request))
        except FhirError as err:
            if err.status >= 500:
                raise
            return render(request, "refused.html", err.status, heading="The review was not recorded", summary="Nothing was changed",
                          reason=err.diagnostics, back=HOME, back_text="Back to the review queue")
        return RedirectResponse(f"{HOME}?{urlencode({'done': event_id, 'outcome': form['outcome']})}", status_code=303)

    return await run_in_threadpool(work)


# ------------------------------------------------------------------ subject access

def _report(request: Request, current: web_session.WebSession, nhs_number: str) -> disclosure.DisclosureReport:
    with request.app.state.db.session() as session:
        return disclosure.read_report(session, current.principal, nhs_number, request_id=_request_id(request))


@router.get("/disclosures")
def subject_access(request: Request, nhs_number: str | None = None) -> Response:
    current = _ig(request, "ig.disclosure-report", "subject access report")
    if not isinstance(current, web_session.WebSession):
        return current
    form = {"nhs_number": nhs_number or ""}
    if nhs_number is None:
        return render(request, "ig/disclosures.html", form=form, report=None)
    if problem := _nhs_problem(nhs_number, required=True):
        return render(request, "ig/disclosures.html", 400, errors={"nhs_number": problem}, form=form, report=None)
    digits = _digits(nhs_number)
    report = _report(request, current, digits)
    now = datetime.now(timezone.utc)
    return render(request, "ig/disclosures.html", form=form, report=report, nhs_number=digits, review_words=REVIEW_WORDS,
                  now_text=f"{now:%Y-%m-%d %H:%M} UTC",
                  csv_link=f"/governance/disclosures.csv?{urlencode({'nhs_number': digits})}")


@router.get("/disclosures.csv")
def subject_access_csv(request: Request, nhs_number: str = "") -> Response:
    current = _ig(request, "ig.disclosure-report", "subject access report")
    if not isinstance(current, web_session.WebSession):
        return current
    if _nhs_problem(nhs_number, required=True):
        return RedirectResponse(f"/governance/disclosures?{urlencode({'nhs_number': nhs_number})}", status_code=303)
    digits = _digits(nhs_number)
    return Response(disclosure.to_csv(_report(request, current, digits)), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="disclosure-report-{digits}.csv"', "Cache-Control": "no-store"})


# ------------------------------------------------------------------ chain status, notifications

@router.get("/chain")
def chain(request: Request) -> Response:
    current = _ig(request, "audit.read", "audit chain status")
    if not isinstance(current, web_session.WebSession):
        return current
    found = anchor.chain_status(request.app.state.db, current.principal, request_id=_request_id(request))
    return render(request, "ig/chain.html", chain=found)


@router.get("/notifications")
def notification_status(request: Request, status: str = "") -> Response:
    current = _ig(request, "ig.notifications", "notification delivery status")
    if not isinstance(current, web_session.WebSession):
        return current
    page = _page_number(request.query_params.get("page"))
    if status and status not in notifications.STATUSES:
        return render(request, "ig/notifications.html", 400, errors={"status": "Choose a status from the list"}, form={"status": status},
                      found=[], names={}, words=NOTIFICATION_WORDS, pager=_pager("/governance/notifications", {}, 1, 0))
    with request.app.state.db.session() as session:
        total, found = notifications.read_notifications(session, current.principal, status=status or None, offset=(page - 1) * PAGE_SIZE,
                                                        count=PAGE_SIZE, query=str(request.url.query), request_id=_request_id(request))
        names = organisation_names(session, {n.target_org for n in found})
    return render(request, "ig/notifications.html", found=found, names=names, words=NOTIFICATION_WORDS, form={"status": status},
                  pager=_pager("/governance/notifications", {"status": status}, page, total))
