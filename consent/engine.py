"""The decision: may this requester see this item about this family member, and why.

The checks run in the order an IG officer would ask them, and the first that refuses
decides, so every refusal has exactly one plain reason:

1. roles that never see clinical data (IG officer, admin, source system);
2. safeguarding without a justification;
3. no legitimate relationship, unless the role may break the glass for safeguarding;
4. no policy rule for this subject, category, purpose and role ("no rule": fail closed);
5. confidentiality labels (V withheld except for safeguarding; R withholds contact);
6. the person's own Consents, as the rule says to use them.

Reasons are shown to practitioners, so they never say what a withheld record contains.

Speed without a second rule book: :func:`decide` runs these steps as three pure functions,
each of which can be remembered because its answer depends only on a small key:

* :func:`_plan` does checks 1 to 4 for a cell of the policy table (purpose, requester role,
  justification given, relationship held, subject role, category) and returns the refusal
  or the rule with everything the later steps need from the policy;
* :func:`consent_finding` reads the person's Consents; it is remembered per set of parsed
  Consents (:class:`_ConsentSet`), requester, purpose, item and stretch of time between
  two Consent period boundaries, so identity and contact share one reading;
* :func:`_finish` turns the rule, labels and Consent finding into the decision.

:func:`decide_uncached` runs the same steps with nothing remembered; the tests hold the
two to identical decisions. Every memory is bounded and lives on the Policy it was
computed from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from bisect import bisect_right
from typing import Any, Iterable

from .fhir_consent import DENY, PERMIT, ConsentFinding, ConsentRecord, MatchContext, _recency, as_instant, combine
from .model import (
    PERSON_CATEGORIES,
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
from .policies import Policy, Rule, default_policy

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
    "very-restricted": ("Withheld: this record is marked very restricted and is shown only for safeguarding."),
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
    "permitted-safeguarding-unheld": (
        "Shown for safeguarding on the justification given: {basis}. The disclosure will be reviewed "
        "by Information Governance."
    ),
    "permitted-safeguarding": (
        "Shown for safeguarding on the justification given: {basis}. The disclosure will be reviewed "
        "by Information Governance and the organisation that holds the record told."
    ),
}


_DENY_CACHE: dict[tuple[Any, ...], DisclosureDecision] = {}


def _deny(
    policy: Policy,
    code: str,
    purpose_of_use: str,
    rule: Rule | None = None,
    reason: str | None = None,
    considered: tuple[str, ...] = (),
    conflict: bool = False,
) -> DisclosureDecision:
    reason = reason or REASONS[code]
    key = (code, reason, policy.version, purpose_of_use, rule.id if rule else None, considered, conflict)
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
            consent_conflict=conflict,
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

    Who may speak for a record: a Consent governs the records held by the organisation that
    recorded it (:attr:`ConsentRecord.holder`). For a held record, only its holder's Consents
    count. For what is about the person rather than one record (identity, contact,
    relationship, and indicators the gateway derives), the Consents of every organisation that
    holds a record of the person count, each holder's read on its own, and a refusal from any
    of them withholds; Consents of different holders that disagree are marked as a conflict.
    """
    if not request.consents:
        return None, ()
    item = item or request.item
    moment = as_instant(request.as_of)
    purpose = policy.purposes[_purpose(request.purpose).value]
    ctx = MatchContext(request.requester, item, purpose.consent_purposes, policy.consent_actions, moment)
    about_person = item.category in PERSON_CATEGORIES or item.source_org is None
    holders = request.subject.record_holders
    by_holder: dict[str | None, list[ConsentFinding]] = {}
    considered: list[str] = []
    for record in _records(request.consents):
        if record.scopes and not (record.scopes & policy.consent_scopes):
            considered.append(f"{record.reference}: ignored (scope is not information sharing)")
            continue
        not_in_force = record.in_force(moment)
        if not_in_force:
            considered.append(f"{record.reference}: ignored ({not_in_force})")
            continue
        holder = record.holder
        if holder is not None:
            if about_person:
                if holders and holder not in holders:
                    considered.append(
                        f"{record.reference}: ignored (recorded by {holder}, which holds no record of this person)"
                    )
                    continue
            elif holder != item.source_org:
                considered.append(
                    f"{record.reference}: ignored (recorded by {holder}; the record is held by {item.source_org or 'no organisation'})"
                )
                continue
        finding = record.evaluate(ctx)
        by_holder.setdefault(holder, []).append(finding)
        how = "addresses this" if finding.explicit else "does not address this; base policy"
        considered.append(f"{record.reference}: {finding.decision} at {finding.provision} ({how})")
    if len(by_holder) <= 1:
        considered.sort()
        return combine(next(iter(by_holder.values()), []), policy.combine), tuple(considered)
    # Several holders: each holder's own Consents are read together; then a refusal from any
    # holder governs (it is that holder's record of the person being shared).
    governing_each = [f for f in (combine(found, policy.combine) for found in by_holder.values()) if f is not None]
    said = {f.decision for f in governing_each if f.explicit}
    refusals = [f for f in governing_each if f.explicit and f.decision == DENY]
    governing = max(refusals, key=_recency) if refusals else combine(governing_each, policy.combine)
    if len(said) > 1 and governing is not None:
        governing = governing._replace(conflict=True)
        considered.append(
            "conflict: Consents recorded by "
            + ", ".join(sorted(str(h) for h in by_holder if h))
            + f" disagree; {governing.consent.reference} ({governing.decision}) governs; queued for IG review"
        )
    considered.sort()
    return governing, tuple(considered)


def effective_category(request: DisclosureRequest, policy: Policy) -> str:
    """The category a decision is taken on. A record no code list or term placed ("record")
    about a father, male carer or other carer, held by an organisation other than the
    requester's, is "unclassified": his GP's other records are not the baby's direct care, so
    they are treated as confidential, never shown by default."""
    item = request.item
    if (
        item.category == "record"
        and policy.unclassified_category is not None
        and request.subject.family_role in policy.unclassified_subjects
        and item.source_org
        and item.source_org != request.requester.org
    ):
        return policy.unclassified_category
    return item.category


def _purpose(value: object) -> Purpose:
    return value if value.__class__ is Purpose else Purpose(value)


_REASON_CACHE: dict[tuple[str, str, LawfulBasis], str] = {}


def _permit_reason(kind: str, purpose: Purpose, basis: LawfulBasis) -> str:
    key = (kind, purpose.value, basis)
    reason = _REASON_CACHE.get(key)
    if reason is None:
        reason = REASONS[kind].format(purpose=purpose.value.replace("-", " "), basis=basis)
        if len(_REASON_CACHE) > 4096:
            _REASON_CACHE.clear()
        _REASON_CACHE[key] = reason
    return reason


def _ref(finding: ConsentFinding) -> ConsentRef:
    return ConsentRef(finding.consent.reference, finding.provision, finding.decision)


# ---------------------------------------------------------------------------
# Checks 1 to 5: the policy table, for one cell
# ---------------------------------------------------------------------------


class _Plan:
    """What the policy says for one cell of the table, once checks 1 to 4 have passed.

    Everything here comes from the policy alone; the request's labels, Consents and
    source organisation are applied by :func:`decide` and :func:`_finish`.
    """

    __slots__ = (
        "rule",
        "purpose",
        "purpose_of_use",
        "break_glass",
        "category",
        "consent",
        "very_restricted_refusal",
        "restricted_refusal",
        "contact_fields",
        "contact_restricted",
        "contact_consents",
        "uses_source_org",
        "finished",
    )

    def __init__(
        self,
        policy: Policy,
        rule: Rule,
        purpose: Purpose,
        purpose_of_use: str,
        break_glass: bool,
        family_role: str,
        category: str,
        role: str,
    ) -> None:
        self.rule = rule
        self.purpose = purpose
        self.purpose_of_use = purpose_of_use
        self.break_glass = break_glass
        self.category = policy.categories[category]
        self.consent = rule.consent
        # 5. Confidentiality labels: the refusal to give when the item carries V or R.
        self.very_restricted_refusal = (
            None
            if purpose.value in policy.very_restricted_purposes
            else _deny(policy, "very-restricted", purpose_of_use, rule)
        )
        self.restricted_refusal = (
            _deny(policy, "restricted", purpose_of_use, rule)
            if self.category.name in policy.restricted_withhold_categories
            else None
        )
        # An identity record carries contact details: how the contact rule would withhold them.
        self.contact_fields: tuple[str, ...] = ()
        self.contact_restricted = self.contact_consents = False
        contact = policy.categories.get("contact")
        if self.category.name == "identity" and contact is not None and contact.fields:
            contact_rule = policy.rule_for(family_role, "contact", purpose.value, role)
            if contact_rule is not None:
                self.contact_fields = contact.fields
                self.contact_restricted = "contact" in policy.restricted_withhold_categories
                self.contact_consents = contact_rule.consent in ("refusal-withholds", "required")
        self.uses_source_org = ObligationKind.NOTIFY_DATA_CONTROLLER in (
            *rule.obligations,
            *policy.very_restricted_obligations,
        )
        self.finished: dict[tuple[Any, ...], DisclosureDecision] = {}


def _plan(
    policy: Policy, purpose_value: object, role: str, justified: bool, holds: bool, family_role: str, category: str
) -> _Plan | DisclosureDecision:
    """Checks 1 to 4 for one cell: the refusal, or the plan for the rest of the decision."""
    try:
        purpose = _purpose(purpose_value)
    except ValueError:
        return _deny(policy, "unknown-purpose", "")
    purpose_def = policy.purposes[purpose.value]
    purpose_of_use = purpose_def.purpose_of_use

    # 1. Roles that never see clinical data.
    never = policy.never.get(role)
    if never is not None:
        return _deny(policy, "role-never-sees-clinical-data", purpose_of_use, reason=f"Refused: {never}")
    if role not in REQUESTER_ROLES:
        return _deny(policy, "unknown-role", purpose_of_use)

    # 2. Safeguarding must say why.
    if purpose_def.justification_required and not justified:
        return _deny(policy, "justification-required", purpose_of_use)

    # 3. A legitimate relationship, or the break-glass route for safeguarding.
    break_glass = False
    if not holds:
        if role not in purpose_def.break_glass_roles:
            return _deny(policy, "no-relationship", purpose_of_use)
        break_glass = True
        purpose_of_use = purpose_def.break_glass_purpose_of_use or purpose_of_use

    # 4. The policy rule for this cell of the table, or deny.
    rule = policy.rule_for(family_role, category, purpose.value, role)
    if rule is None:
        return _deny(policy, "no-rule", purpose_of_use)
    return _Plan(policy, rule, purpose, purpose_of_use, break_glass, family_role, category, role)


# ---------------------------------------------------------------------------
# Check 6: the person's Consents, remembered per parsed set
# ---------------------------------------------------------------------------


_ONE_MICROSECOND = _dt.timedelta(microseconds=1)


class _ConsentSet:
    """A tuple of parsed Consents and what they have been found to say.

    Evaluation depends on the moment of decision only through the Consents' own periods,
    so the moment is reduced to which stretch between two period boundaries it falls in.
    The tuple itself is held, so its id cannot be reused while the entry exists.
    """

    __slots__ = ("consents", "boundaries", "findings")

    def __init__(self, consents: tuple[ConsentRecord, ...]) -> None:
        self.consents = consents
        points: set[_dt.datetime] = set()
        for record in consents:
            for period in _periods(record):
                if period.start > _MIN_INSTANT:
                    points.add(period.start)  # in force from its start, inclusive
                if period.end < _MAX_INSTANT:
                    points.add(period.end + _ONE_MICROSECOND)  # and out of force just after its end
        self.boundaries = tuple(sorted(points))
        self.findings: dict[tuple[Any, ...], tuple[ConsentFinding | None, tuple[str, ...]]] = {}


def _periods(record: ConsentRecord) -> Iterable[Any]:
    if record.period is not None:
        yield record.period
    stack = [record.provision] if record.provision is not None else []
    while stack:
        node = stack.pop()
        if node.period is not None:
            yield node.period
        stack.extend(node.children)


_MIN_INSTANT = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
_MAX_INSTANT = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)
# Bounds on what is remembered (each memory is emptied when full, then refills with what is
# in use): at most ~65,000 Consent findings and ~100,000 finished decisions per policy.
_CONSENT_SETS_KEPT = 256  # parsed Consent tuples (about one per family member being viewed)
_FINDINGS_KEPT = 256  # findings per tuple: requester x purpose x item x stretch of time
_PLANS_KEPT = 4096  # table cells (the baseline policy has under 1,500 reachable ones)
_FINISHED_KEPT = 64  # decisions per cell: labels x source x Consent outcome


def _consent_set(policy: Policy, consents: tuple[Any, ...]) -> _ConsentSet | None:
    """The remembered set for this tuple of parsed Consents.

    None when the tuple holds raw JSON (dicts and models can change under us, so they are
    read afresh each time), and the first time a tuple is seen: a tuple used only once is
    not worth remembering, and the second sighting builds the set.
    """
    sets = policy._memo.get("consent-sets")
    if sets is None:
        sets = policy._memo["consent-sets"] = {}
    seen = sets.get(id(consents))
    if seen is not None:
        if seen.__class__ is _ConsentSet and seen.consents is consents:
            return seen
        if seen is consents:  # the second sighting
            try:
                entry = _ConsentSet(consents)
            except OverflowError:  # a period ending at the end of time without saying so
                return None
            sets[id(consents)] = entry
            return entry
    for record in consents:
        if record.__class__ is not ConsentRecord:
            return None
    if len(sets) >= _CONSENT_SETS_KEPT:
        sets.clear()
    sets[id(consents)] = consents  # held, so that its id is not reused while noted
    return None


def _finding(
    request: DisclosureRequest, policy: Policy, category: str | None, cached: bool
) -> tuple[ConsentFinding | None, tuple[str, ...]]:
    """:func:`consent_finding` for the request's item, or for its ``category`` part."""
    consents = request.consents
    if not consents:
        return None, ()
    item = request.item
    entry = _consent_set(policy, consents) if cached and consents.__class__ is tuple else None
    if entry is None:
        if category is not None:
            item = DataItem(
                category,
                item.resource_type,
                item.security_labels,
                item.source_org,
                item.date,
                item.reference,
                item.codes,
            )
        return consent_finding(request, policy, item)
    moment = as_instant(request.as_of)
    key = (
        request.requester,
        request.purpose,
        item,
        category,
        request.subject.record_holders,
        bisect_right(entry.boundaries, moment),
    )
    try:
        found = entry.findings.get(key)
    except TypeError:  # an unhashable part (labels given as a set): nothing to remember it by
        return _finding(request, policy, category, False)
    if found is None:
        if category is not None:
            item = DataItem(
                category,
                item.resource_type,
                item.security_labels,
                item.source_org,
                item.date,
                item.reference,
                item.codes,
            )
        found = consent_finding(request, policy, item)
        if len(entry.findings) >= _FINDINGS_KEPT:
            entry.findings.clear()
        entry.findings[key] = found
    return found


def _refused(finding: ConsentFinding | None) -> bool:
    return finding is not None and finding.explicit and finding.decision == DENY


# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------


def restricted_identity_fields(labels: Iterable[str], policy: Policy | None = None) -> tuple[str, ...]:
    """The fields of a person's demographic record (Patient, RelatedPerson) withheld wherever it
    is shown to anyone but the source that sent it, whatever the route: restricted (R) and very
    restricted (V) people's address, telecom and GP practice, as PDS withholds them. The same
    fields a permitted identity decision redacts (check 5 of :func:`decide`), for the reads
    that have no decision of their own (the plain REST API)."""
    found = set(labels)
    if "R" in found or "V" in found:
        return (policy or default_policy()).restricted_redact_fields
    return ()


def decide(request: DisclosureRequest, policy: Policy | None = None) -> DisclosureDecision:
    """Decide one disclosure. Pure: the same request and policy always give the same answer."""
    return _decide(request, policy or default_policy(), True)


def decide_uncached(request: DisclosureRequest, policy: Policy | None = None) -> DisclosureDecision:
    """The same decision with nothing remembered between calls: the reference for the tests
    and the benchmark. :func:`decide` must always agree with it."""
    return _decide(request, policy or default_policy(), False)


def _decide(request: DisclosureRequest, policy: Policy, cached: bool) -> DisclosureDecision:
    requester, item = request.requester, request.item
    justification = request.justification
    category = effective_category(request, policy)
    recategorised = category if category != item.category else None

    # Checks 1 to 4, for this cell of the policy table.
    cell = (
        request.purpose,
        requester.role,
        bool((justification or "").strip()),
        bool(request.relationship.holds),
        request.subject.family_role,
        category,
    )
    plan: _Plan | DisclosureDecision | None = None
    if cached:
        plans = policy._memo.get("plans")
        if plans is None:
            plans = policy._memo["plans"] = {}
        try:
            plan = plans.get(cell)
        except TypeError:  # an unhashable value where a code belongs: decide it the long way
            cached = False
        if plan is None:
            plan = _plan(policy, *cell)
            if cached:
                if len(plans) >= _PLANS_KEPT:
                    plans.clear()
                plans[cell] = plan
    else:
        plan = _plan(policy, *cell)
    if not isinstance(plan, _Plan):
        return plan  # a refusal

    # 5. Confidentiality labels on the record. V is shown only for safeguarding, and then, as
    # for R, without the person's address, telecom and GP practice.
    labels = item.security_labels
    very_restricted = "V" in labels
    if very_restricted and plan.very_restricted_refusal is not None:
        return plan.very_restricted_refusal
    restricted = "R" in labels or very_restricted
    if restricted and plan.restricted_refusal is not None:
        return plan.restricted_refusal

    # 6. The person's own Consents, as the rule says to use them.
    relied_on: ConsentRef | None = None
    overridden: ConsentRef | None = None
    considered: tuple[str, ...] = ()
    conflict = False
    mode = plan.consent
    if mode != "not-consulted":
        finding, considered = _finding(request, policy, recategorised, cached)
        conflict = finding is not None and finding.conflict
        refused = _refused(finding)
        if mode == "refusal-withholds" and refused:
            return _deny(
                policy, "consent-refused", plan.purpose_of_use, plan.rule, considered=considered, conflict=conflict
            )
        if mode == "required":
            if refused:
                return _deny(
                    policy, "consent-refused", plan.purpose_of_use, plan.rule, considered=considered, conflict=conflict
                )
            if not (
                finding is not None
                and finding.explicit
                and finding.decision == PERMIT
                and plan.rule.consent_must_name <= finding.names
            ):
                return _deny(
                    policy, "consent-required", plan.purpose_of_use, plan.rule, considered=considered, conflict=conflict
                )
            relied_on = _ref(finding)
        if mode == "overridden" and refused and finding is not None:
            overridden = _ref(finding)

    # An identity record carries contact details: withhold them where contact would be withheld.
    # Only a refusal or a restriction strips them; where the policy simply has no contact rule
    # for this person, identity is shown as the identity rule allows.
    contact_withheld = False
    if plan.contact_fields:
        if restricted and plan.contact_restricted:
            contact_withheld = True
        elif plan.contact_consents and request.consents:
            contact_finding = _finding(request, policy, "contact", cached)[0]
            contact_withheld = _refused(contact_finding)
            conflict = conflict or (contact_finding is not None and contact_finding.conflict)

    # R redacts wherever it is found (as before); V, shown only for safeguarding, redacts the
    # person's own demographics.
    pds_redaction = "R" in labels or (very_restricted and plan.category.name == "identity")
    source_org = item.source_org if plan.uses_source_org else None
    finishing = (
        very_restricted,
        pds_redaction,
        source_org,
        relied_on,
        overridden,
        considered,
        contact_withheld,
        conflict,
    )
    if not cached:
        return _finish(policy, plan, *finishing)
    decision = plan.finished.get(finishing)
    if decision is None:
        decision = _finish(policy, plan, *finishing)
        if len(plan.finished) >= _FINISHED_KEPT:
            plan.finished.clear()
        plan.finished[finishing] = decision
    return decision


def _finish(
    policy: Policy,
    plan: _Plan,
    very_restricted: bool,
    restricted: bool,
    source_org: str | None,
    relied_on: ConsentRef | None,
    overridden: ConsentRef | None,
    considered: tuple[str, ...],
    contact_withheld: bool,
    conflict: bool = False,
) -> DisclosureDecision:
    """The permit, with its basis, obligations, redactions and reason."""
    rule, category, purpose = plan.rule, plan.category, plan.purpose
    obligations: set[Obligation] = set()
    redact: set[str] = set()
    # A data controller is told only where there is one: an item no organisation holds (an
    # indicator the gateway derived, with no source_org) has nobody to notify.
    held = source_org is not None
    if very_restricted:
        obligations.update(
            _obligation(kind, source_org)
            for kind in policy.very_restricted_obligations
            if held or kind is not ObligationKind.NOTIFY_DATA_CONTROLLER
        )
    if restricted and not category.sensitive:
        redact.update(policy.restricted_redact_fields)
    if contact_withheld:
        redact.update(plan.contact_fields)

    basis = rule.basis
    if relied_on is not None:
        basis = dataclasses.replace(basis, confidentiality=f"{basis.confidentiality} ({relied_on.reference})")

    # Obligations: the rule's own, and IG review of every break-glass disclosure.
    obligations.update(
        _obligation(kind, source_org)
        for kind in rule.obligations
        if held or kind is not ObligationKind.NOTIFY_DATA_CONTROLLER
    )
    if plan.break_glass:
        obligations.add(_obligation(ObligationKind.QUEUE_IG_REVIEW, source_org))
    if redact:
        obligations.add(Obligation(ObligationKind.REDACT_FIELDS, tuple(sorted(redact))))

    if not category.article9_applies:
        basis = dataclasses.replace(basis, article9=None, dpa2018_schedule1=None)

    if relied_on is not None:
        reason = _permit_reason("permitted-consent", purpose, basis)
    elif purpose is Purpose.SAFEGUARDING and category.sensitive:
        told = any(o.kind is ObligationKind.NOTIFY_DATA_CONTROLLER for o in obligations)
        reason = _permit_reason("permitted-safeguarding" if told else "permitted-safeguarding-unheld", purpose, basis)
    else:
        reason = _permit_reason("permitted", purpose, basis)
    if redact:
        reason += " Some details are not shown: " + ", ".join(sorted(redact)) + "."

    return DisclosureDecision(
        outcome=Outcome.PERMIT_WITH_REDACTION if redact else Outcome.PERMIT,
        reason=reason,
        reason_code="permitted-with-redaction" if redact else "permitted",
        policy_version=policy.version,
        purpose_of_use=plan.purpose_of_use,
        lawful_basis=basis,
        consent_relied_on=relied_on,
        consent_overridden=overridden,
        obligations=frozenset(obligations),
        rule=rule.id,
        consents_considered=considered,
        consent_conflict=conflict,
    )


def _obligation(kind: ObligationKind, source_org: str | None) -> Obligation:
    if kind is ObligationKind.NOTIFY_DATA_CONTROLLER:
        return Obligation(kind, target=source_org)
    if kind is ObligationKind.QUEUE_IG_REVIEW:
        return Obligation(kind, target="ig-review-queue")
    return Obligation(kind)


def explain_basis(basis: LawfulBasis | None) -> str:
    return str(basis) if basis else "-"
