"""A frozen copy of consent/engine.py as it was before decisions were remembered (b150368).

The oracle for test_consent_fast_path: whatever the engine remembers, it must decide exactly
as this did. It is not used by the gateway. When the policy semantics change on purpose,
change them here too (or retire this file and keep the cached/uncached comparison).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from consent.fhir_consent import DENY, PERMIT, ConsentFinding, ConsentRecord, MatchContext, as_instant, combine
from consent.model import (
    REQUESTER_ROLES,
    ConsentRef,
    DataItem,
    DisclosureDecision,
    DisclosureRequest,
    LawfulBasis,
    Obligation,
    ObligationKind,
    Outcome,
    Purpose,
)
from consent.policies import Policy, Rule, default_policy

# Plain-English reasons, keyed by a stable reason code that the audit also records.
REASONS = {
    "unknown-role": "Withheld: your role is not one the gateway recognises.",
    "unknown-purpose": "Withheld: the purpose given is not one the gateway recognises.",
    "justification-required": (
        "Refused: a safeguarding request must say why it is needed. Give a justification and ask again."
    ),
    "no-relationship": (
        "Refused: your organisation has no recorded care relationship with this family, and there "
        "is no safeguarding route open to your role. This request has been recorded."
    ),
    "no-rule": "Withheld: no rule in the disclosure policy allows this (no rule).",
    "very-restricted": (
        "Withheld: this record is marked very restricted and is shown only for safeguarding."
    ),
    "restricted": "Withheld: this person's record is restricted, so contact details are not shown.",
    "consent-refused": "Withheld: this person has asked that this is not shared with you.",
    "consent-required": (
        "Withheld: this is a confidential record held by another organisation. It can be shared for "
        "direct care only with the person's consent for your organisation, this purpose and this "
        "kind of record, and none is in force. If a child may be at risk, make a safeguarding request "
        "with a justification."
    ),
    "permitted": "Shown for {purpose}: {basis}.",
    "permitted-consent": "Shown for direct care with the person's consent: {basis}.",
    "permitted-safeguarding": (
        "Shown for safeguarding on the justification given: {basis}. The disclosure will be reviewed "
        "by Information Governance and the organisation that holds the record told."
    ),
}


_DENY_CACHE: dict[tuple, DisclosureDecision] = {}


def _deny(
    policy: Policy, code: str, purpose_of_use: str, rule: Rule | None = None, reason: str | None = None,
    considered: tuple[str, ...] = (),
) -> DisclosureDecision:
    reason = reason or REASONS[code]
    key = (code, reason, policy.version, purpose_of_use, rule.id if rule else None, considered)
    decision = _DENY_CACHE.get(key)
    if decision is None:  # decisions are immutable, so identical refusals can be shared
        decision = DisclosureDecision(
            outcome=Outcome.DENY,
            reason=reason,
            reason_code=code,
            policy_version=policy.version,
            purpose_of_use=purpose_of_use,
            rule=rule.id if rule else None,
            consents_considered=considered,
        )
        if len(_DENY_CACHE) > 8192:
            _DENY_CACHE.clear()
        _DENY_CACHE[key] = decision
    return decision


def _records(consents: Iterable[object]) -> list[ConsentRecord]:
    return [c if isinstance(c, ConsentRecord) else ConsentRecord.from_fhir(c) for c in consents]


def consent_finding(
    request: DisclosureRequest, policy: Policy, item: DataItem | None = None
) -> tuple[ConsentFinding | None, tuple[str, ...]]:
    """What the subject's Consents, taken together, say about the request.

    Returns the governing finding (None when no Consent is in force and in scope) and a
    line per Consent for the audit: relied on, ignored and why.
    """
    if not request.consents:
        return None, ()
    item = item or request.item
    moment = as_instant(request.as_of)
    purpose = policy.purposes[_purpose(request.purpose).value]
    ctx = MatchContext(request.requester, item, purpose.consent_purposes, policy.consent_actions, moment)
    findings: list[ConsentFinding] = []
    considered: list[str] = []
    for record in _records(request.consents):
        if record.scopes and not (record.scopes & policy.consent_scopes):
            considered.append(f"{record.reference}: ignored (scope is not information sharing)")
            continue
        not_in_force = record.in_force(moment)
        if not_in_force:
            considered.append(f"{record.reference}: ignored ({not_in_force})")
            continue
        finding = record.evaluate(ctx)
        findings.append(finding)
        how = "addresses this" if finding.explicit else "does not address this; base policy"
        considered.append(f"{record.reference}: {finding.decision} at {finding.provision} ({how})")
    considered.sort()
    return combine(findings, policy.combine), tuple(considered)


def _purpose(value: object) -> Purpose:
    return value if value.__class__ is Purpose else Purpose(value)


_REASON_CACHE: dict[tuple[str, str, LawfulBasis], str] = {}


def _permit_reason(kind: str, purpose: Purpose, basis: LawfulBasis) -> str:
    key = (kind, purpose.value, basis)
    reason = _REASON_CACHE.get(key)
    if reason is None:
        reason = REASONS[kind].format(purpose=purpose.value.replace("-", " "), basis=basis)
        _REASON_CACHE[key] = reason
    return reason


def _ref(finding: ConsentFinding) -> ConsentRef:
    return ConsentRef(finding.consent.reference, finding.provision, finding.decision)


def decide(request: DisclosureRequest, policy: Policy | None = None) -> DisclosureDecision:
    """Decide one disclosure. Pure: the same request and policy always give the same answer."""
    policy = policy or default_policy()
    requester, item = request.requester, request.item
    try:
        purpose = _purpose(request.purpose)
    except ValueError:
        return _deny(policy, "unknown-purpose", "")
    purpose_value = purpose.value
    purpose_def = policy.purposes[purpose_value]
    purpose_of_use = purpose_def.purpose_of_use

    # 1. Roles that never see clinical data.
    never = policy.never.get(requester.role)
    if never is not None:
        return _deny(policy, "role-never-sees-clinical-data", purpose_of_use, reason=f"Refused: {never}")
    if requester.role not in REQUESTER_ROLES:
        return _deny(policy, "unknown-role", purpose_of_use)

    # 2. Safeguarding must say why.
    if purpose_def.justification_required and not (request.justification or "").strip():
        return _deny(policy, "justification-required", purpose_of_use)

    # 3. A legitimate relationship, or the break-glass route for safeguarding.
    break_glass = False
    if not request.relationship.holds:
        if requester.role not in purpose_def.break_glass_roles:
            return _deny(policy, "no-relationship", purpose_of_use)
        break_glass = True
        purpose_of_use = purpose_def.break_glass_purpose_of_use or purpose_of_use

    # 4. The policy rule for this cell of the table, or deny.
    rule = policy.rule_for(request.subject.family_role, item.category, purpose_value, requester.role)
    if rule is None:
        return _deny(policy, "no-rule", purpose_of_use)

    # 5. Confidentiality labels on the record.
    labels = item.security_labels
    obligations: set[Obligation] = set()
    redact: set[str] = set()
    if "V" in labels:
        if purpose_value not in policy.very_restricted_purposes:
            return _deny(policy, "very-restricted", purpose_of_use, rule)
        obligations.update(_obligation(kind, item) for kind in policy.very_restricted_obligations)
    if "R" in labels:
        if item.category in policy.restricted_withhold_categories:
            return _deny(policy, "restricted", purpose_of_use, rule)
        if not policy.categories[item.category].sensitive:
            redact.update(policy.restricted_redact_fields)

    # 6. The person's own Consents, as the rule says to use them.
    relied_on: ConsentRef | None = None
    overridden: ConsentRef | None = None
    considered: tuple[str, ...] = ()
    basis = rule.basis
    if rule.consent != "not-consulted":
        finding, considered = consent_finding(request, policy)
        refused = finding is not None and finding.explicit and finding.decision == DENY
        if rule.consent == "refusal-withholds" and refused:
            return _deny(policy, "consent-refused", purpose_of_use, rule, considered=considered)
        if rule.consent == "required":
            if refused:
                return _deny(policy, "consent-refused", purpose_of_use, rule, considered=considered)
            if not (
                finding is not None
                and finding.explicit
                and finding.decision == PERMIT
                and rule.consent_must_name <= finding.names
            ):
                return _deny(policy, "consent-required", purpose_of_use, rule, considered=considered)
            relied_on = _ref(finding)
            basis = dataclasses.replace(basis, confidentiality=f"{basis.confidentiality} ({relied_on.reference})")
        if rule.consent == "overridden" and refused:
            overridden = _ref(finding)

    # An identity record carries contact details: withhold them where contact would be withheld.
    if item.category == "identity":
        redact.update(_contact_fields_withheld(request, policy))

    # Obligations: the rule's own, and IG review of every break-glass disclosure.
    obligations.update(_obligation(kind, item) for kind in rule.obligations)
    if break_glass:
        obligations.add(_obligation(ObligationKind.QUEUE_IG_REVIEW, item))
    if redact:
        obligations.add(Obligation(ObligationKind.REDACT_FIELDS, tuple(sorted(redact))))

    category = policy.categories[item.category]
    if not category.article9_applies:
        basis = dataclasses.replace(basis, article9=None, dpa2018_schedule1=None)

    if relied_on is not None:
        reason = _permit_reason("permitted-consent", purpose, basis)
    elif purpose is Purpose.SAFEGUARDING and category.sensitive:
        reason = _permit_reason("permitted-safeguarding", purpose, basis)
    else:
        reason = _permit_reason("permitted", purpose, basis)
    if redact:
        reason += " Some details are not shown: " + ", ".join(sorted(redact)) + "."

    return DisclosureDecision(
        outcome=Outcome.PERMIT_WITH_REDACTION if redact else Outcome.PERMIT,
        reason=reason,
        reason_code="permitted-with-redaction" if redact else "permitted",
        policy_version=policy.version,
        purpose_of_use=purpose_of_use,
        lawful_basis=basis,
        consent_relied_on=relied_on,
        consent_overridden=overridden,
        obligations=frozenset(obligations),
        rule=rule.id,
        consents_considered=considered,
    )


def _obligation(kind: ObligationKind, item: DataItem) -> Obligation:
    if kind is ObligationKind.NOTIFY_DATA_CONTROLLER:
        return Obligation(kind, target=item.source_org)
    if kind is ObligationKind.QUEUE_IG_REVIEW:
        return Obligation(kind, target="ig-review-queue")
    return Obligation(kind)


def _contact_fields_withheld(request: DisclosureRequest, policy: Policy) -> set[str]:
    """The contact fields to strip from an identity record, when contact itself is withheld.

    Only a refusal or a restriction strips them; where the policy simply has no contact rule
    for this person, identity is shown as the identity rule allows.
    """
    contact = policy.categories.get("contact")
    if contact is None or not contact.fields:
        return set()
    rule = policy.rule_for(
        request.subject.family_role, "contact", _purpose(request.purpose).value, request.requester.role
    )
    if rule is None:
        return set()
    item = request.item
    if "R" in item.security_labels and "contact" in policy.restricted_withhold_categories:
        return set(contact.fields)
    if rule.consent in ("refusal-withholds", "required") and request.consents:
        contact_item = DataItem(
            "contact", item.resource_type, item.security_labels, item.source_org, item.date, item.reference, item.codes
        )
        finding, _ = consent_finding(request, policy, contact_item)
        if finding is not None and finding.explicit and finding.decision == DENY:
            return set(contact.fields)
    return set()


def explain_basis(basis: LawfulBasis | None) -> str:
    return str(basis) if basis else "-"
