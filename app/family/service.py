"""The infant-family view, orchestrated: read the request, find the family in the store, have
every item decided (:mod:`app.family.plan`), render it (:mod:`app.family.render`), tell the
data controllers and audit it, in one transaction.

No audit, no disclosure: the AuditEvent is written in the same transaction that read the
family, and the view is returned only after that transaction commits."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from consent import DataItem, DisclosureDecision, LegitimateRelationship, Purpose, Requester, load_policy
from sqlalchemy.orm import Session

from app.audit import service as audit_store
from app.audit.events import OUTCOME_MINOR_FAILURE, OUTCOME_SUCCESS, AuditItem, FamilyViewAudit, basis_text
from app.auth import access
from app.ops import metrics
from app.ops.refusals import RefusalCoalescer
from app.auth.tokens import Principal
from app.db import plan_once_per_statement
from app.errors import FhirError, Issue
from app.family import contract, render
from app.family.graph import assemble, find_subject, infants_of_mother, is_infant, organisation_names, ods_codes_of, route_people
from app.family.members import FamilyGraph, FamilyMember
from app.family.plan import FV, Asker, contributing_records, plan_view
from app.family.relationship import legitimate_relationship, relationship_with_any

ROUTE_REFUSALS = ("no-relationship", "role-never-sees-clinical-data", "unknown-role", "justification-required")
PURPOSES = {"direct-care": Purpose.DIRECT_CARE, "safeguarding": Purpose.SAFEGUARDING}
_POLICY = None


def policy():
    global _POLICY
    if _POLICY is None:
        _POLICY = load_policy()
    return _POLICY


@dataclass
class FamilyViewRequest:
    purpose: str | None
    justification: str | None
    res_id: str | None = None
    identifier: str | None = None
    request_id: str = ""
    problem: FhirError | None = None  # found while reading the request (a repeated parameter, a bad body): refused, audited

    @property
    def query(self) -> str:
        target = f"Patient/{self.res_id}" if self.res_id else f"Patient?identifier={self.identifier}"
        return f"{target}/$family-view?purpose={self.purpose}"


@dataclass
class FamilyViewResult:
    status: int
    body: dict[str, Any]
    audit_event_id: str | None


class FamilyViewService:
    def __init__(self, session: Session, principal: Principal, *, notify, refusals: RefusalCoalescer | None = None):
        self.session = session
        self.refusals = refusals  # a refused request is audited through it: a flood is coalesced per client and minute
        self.principal = principal
        self.notify = notify  # callable(session, target_ods, communication) storing a notification
        self.requester = Requester(role=principal.role, org=principal.org, user=principal.sub, service=principal.service)

    # ------------------------------------------------------------ entry point

    def run(self, req: FamilyViewRequest, today: date | None = None) -> FamilyViewResult:
        today = today or date.today()
        audit = FamilyViewAudit(
            principal=self.principal, purpose=req.purpose, justification=req.justification,
            # a valid purpose is audited as given even when the request is refused before a decision
            purpose_of_use=policy().purposes[PURPOSES[req.purpose].value].purpose_of_use if req.purpose in PURPOSES else None,
            query=req.query, outcome=OUTCOME_SUCCESS, outcome_desc="", request_id=req.request_id,
            policy_version=policy().version,
        )
        try:
            bundle = self._view(req, today, audit)
            status = 200
        except FhirError as err:
            status, bundle = err.status, err.outcome()
            audit.outcome = OUTCOME_MINOR_FAILURE
            audit.outcome_desc = f"{err.status}: {err.diagnostics}"
            audit.items = [i for i in audit.items if not i.disclosed]
        if status >= 400 and self.refusals is not None:
            event_id = self.refusals.admit(self.session, audit)
        else:
            audit_store.append(self.session, audit.to_fhir(), audit.columns(), audit.index())
            event_id = audit.event_id
        metrics.record_decisions(i.decision for i in audit.items)
        return FamilyViewResult(status, bundle, event_id)

    # ------------------------------------------------------------ the view

    def _view(self, req: FamilyViewRequest, today: date, audit: FamilyViewAudit) -> dict[str, Any]:
        if req.problem is not None:
            raise req.problem
        if req.res_id is None and not req.identifier:
            raise FhirError(400, "required", "Give the infant as Patient/{id}/$family-view or ?identifier=system|value", expression="identifier", spine_code="MISSING_VALUE")
        plan_once_per_statement(self.session.connection())
        try:
            subject = find_subject(self.session, res_id=req.res_id, identifier=req.identifier)
        except FhirError as err:
            if err.status != 404:
                raise
            subject, unknown = None, err
        else:
            audit.subjects.append((subject.ref, "requested", [subject.nhs_number] if subject.nhs_number else []))
        purpose = PURPOSES.get(req.purpose or "")
        if purpose is None:
            raise FhirError(400, "required" if not req.purpose else "value", "purpose must be direct-care or safeguarding", expression="purpose", spine_code="MISSING_VALUE" if not req.purpose else "INVALID_VALUE")
        if purpose is Purpose.SAFEGUARDING and not (req.justification or "").strip():
            raise FhirError(400, "required", "A safeguarding request needs a justification (why the child may be at risk)", expression="justification", spine_code="MISSING_VALUE")
        if access.refused("family-view", self.principal.role):  # the policy's `never` roles, from the access table
            raise access.refusal("family-view", self.principal.role)
        scope_problem = access.scope_refusal("family-view", self.principal)  # a role's SMART scopes must cover the view
        if scope_problem is not None:
            raise scope_problem
        if subject is None:
            # not found or not yours, one answer: without a lawful route to the family asked for,
            # an unknown infant gets the same 403 as a known one (a 404 would tell an unrelated
            # practitioner who is held); with a route (safeguarding), the 404
            self._refuse_without_route(FamilyMember(role="infant", unborn=True), "Patient", purpose, req,
                                       LegitimateRelationship(False, None), audit)
            raise unknown
        if not is_infant(subject, today):
            # the route first: whether she is pregnant (a 422 or a pre-birth view) is told only
            # to a requester with a relationship or a lawful route; everyone else gets the same 403
            route = relationship_with_any(self.principal, route_people(self.session, subject, today))
            self._refuse_without_route(FamilyMember(role="infant", unborn=True), subject.ref, purpose, req, route, audit)
            # the mother's number opens her baby's view (several babies: which one, asked back)
            babies = infants_of_mother(self.session, subject, today)
            audit.subjects += [(b.ref, "infant", [b.nhs_number] if b.nhs_number else []) for b in babies]
            if len(babies) > 1:
                raise _choose_infant(babies)
            if babies:
                subject = babies[0]
        graph = assemble(self.session, subject, today)
        relationship = legitimate_relationship(self.principal, graph)
        # every record of a member is named (subject access by any of them finds this request),
        # the member's key record first with the NHS numbers
        audit.subjects = [
            subject for m in graph.members for subject in
            [(m.key, m.role, [n for n in {r.nhs_number for r in m.records} if n])]
            + [(r.ref, m.role, []) for r in (contributing_records(m)[1:] if m.records else [])]
        ]
        return self._disclose(graph, purpose, (req.justification or "").strip() or None, relationship, today, audit)

    def _refuse_without_route(self, key: FamilyMember, asked_for: str, purpose: Purpose, req: FamilyViewRequest,
                              relationship: LegitimateRelationship, audit: FamilyViewAudit) -> DisclosureDecision:
        """The view's first item, the key person's identity, decides whether there is any lawful
        route to the family; without one the answer is one 403, whoever was asked for."""
        justification = (req.justification or "").strip() or None
        identity = self._asker(purpose, justification, relationship).decide(
            key, (), DataItem("identity", "Patient", frozenset(), None, reference=key.key))
        audit.purpose_of_use = identity.purpose_of_use
        if not identity.permitted and identity.reason_code in ROUTE_REFUSALS:
            audit.items.append(AuditItem(asked_for, asked_for, "identity", identity.to_dict(), False))
            raise FhirError(403, "forbidden", f"No lawful route to this family: {identity.reason}", spine_code="ACCESS_DENIED")
        return identity

    def _asker(self, purpose: Purpose, justification: str | None, relationship: LegitimateRelationship) -> Asker:
        return Asker(self.requester, purpose, justification, relationship, policy())

    def _disclose(self, graph: FamilyGraph, purpose: Purpose, justification: str | None, relationship: LegitimateRelationship,
                  today: date, audit: FamilyViewAudit) -> dict[str, Any]:
        holders = organisation_names(self.session, ods_codes_of(graph))
        plan = plan_view(graph, self._asker(purpose, justification, relationship), today, holders)
        audit.purpose_of_use = plan.purpose_of_use
        audit.items += [_audited(i) for i in plan.items]
        if plan.refusal is not None:
            raise FhirError(403, "forbidden", f"No lawful route to this family: {plan.refusal.reason}", spine_code="ACCESS_DENIED")
        audit.review_required = plan.review_required
        bases = sorted({basis_text(i.decision["lawful_basis"]) for i in audit.items if i.disclosed and i.decision.get("lawful_basis")})
        audit.outcome_desc = f"{len([i for i in audit.items if i.disclosed])} items disclosed, {len([i for i in audit.items if not i.disclosed])} withheld; basis: {'; '.join(bases) or 'none'}"
        audit.items += [_audited(i) for i in plan.merged]  # named for subject access; the counts above are of the items decided
        for target, refs in sorted(plan.notifications.items()):
            self.notify(self.session, target, self._notification(target, refs, audit))
        return render.bundle(plan, audit.event_id, graph.mode)

    def _notification(self, target: str, refs: list[str], audit: FamilyViewAudit) -> dict[str, Any]:
        return {
            "resourceType": "Communication",
            "status": "preparation",
            "category": [{"coding": [{"system": f"{FV}/CodeSystem/notification", "code": "safeguarding-disclosure"}]}],
            "priority": "urgent",
            "recipient": [{"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": target}}],
            "sender": {"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": self.principal.org}},
            "sent": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "about": [{"reference": f"AuditEvent/{audit.event_id}"}] + [{"reference": r} for r in sorted(set(refs))],
            "payload": [{"contentString": (
                f"Records you hold were disclosed for safeguarding a child by {self.principal.role} of {self.principal.org} "
                f"(purposeOfUse {audit.purpose_of_use}), without the person's consent as the basis. "
                f"Justification given: {audit.justification}. See AuditEvent/{audit.event_id}; an IG review has been queued."
            )}],
        }


def _choose_infant(babies: list) -> FhirError:
    """Several babies under one are recorded as the mother's (twins): the view is per baby, so the
    answer names each baby's instance to ask for, and nothing about them (no name, sex or date)."""
    n = len(babies)
    issues = [Issue("multiple-matches", f"{n} babies under one are recorded as this mother's: ask for each baby's view "
                    "by the baby's NHS number or Patient/{id}/$family-view", severity="error",
                    spine_code=contract.SPINE_MULTIPLE_MATCHES, expression=["identifier"])]
    issues += [Issue("informational", f"Patient/{b.res_id}/$family-view", severity="information", spine_code="INFORMATIONAL",
                     coding=[{"system": contract.NOTICE_SYSTEM, "code": contract.NOTICE_CHOOSE_INFANT, "display": f"Baby {i} of {n}"}])
               for i, b in enumerate(babies, 1)]
    return FhirError(422, "multiple-matches", issues[0].diagnostics, issues=issues)


def _audited(item) -> AuditItem:
    return AuditItem(item.reference, item.subject, item.category, item.decision.to_dict(), item.disclosed)
