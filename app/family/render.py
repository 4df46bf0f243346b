"""The family view as FHIR: a plan (:mod:`app.family.plan`) rendered as the wire contract's
Bundle of type collection, with one OperationOutcome whose suppressed issues say what was
withheld about whom, which organisation holds it and how to ask, never what it is."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from app.errors import SPINE_ERROR_SYSTEM
from app.family import contract
from app.family.contract import FV
from app.family.plan import DATA_CATEGORY, Override, ViewPlan, Withheld

FAMILY_ROLE_SYSTEM = f"{FV}/CodeSystem/family-role"
ACCESS_DENIED = {"system": SPINE_ERROR_SYSTEM, "code": "ACCESS_DENIED", "display": "Access Denied"}
NOTHING_WITHHELD = {
    "severity": "information",
    "code": "informational",
    "diagnostics": "Nothing known to this gateway about this family was withheld from you.",
}
# What a practitioner is told about a withheld record, by the decision's reason code: the same
# words whatever the record is (the engine's own reasons are written for the audit and the IG team).
RECORD_REASONS = {
    "consent-required": (
        "Withheld: a confidential record held by another organisation. It is shared for direct care "
        "only with the person's consent for your organisation and this purpose, and none is in force."
    ),
    "consent-refused": "Withheld: this person has asked that it is not shared with you.",
    "very-restricted": "Withheld: this person's record is very restricted and is shown only for safeguarding.",
    "restricted": "Withheld: this person's record is restricted.",
    "no-rule": "Withheld: no rule in the disclosure policy allows this (no rule).",
}


def issue(w: Withheld) -> dict[str, Any]:
    """One suppressed issue. A withheld record is said only to exist: whose it is, which
    organisation holds it (by name and ODS code) and how to ask; never its category, kind,
    code, display or text (those go to the audit only). Withheld identity or contact details
    are named by data category; a member withheld whole has no entry to point at, so the issue
    has no expression and names the member by family-role code."""
    if w.kind == "record":
        if w.holder:
            org = f"{w.holder_name} (ODS {w.holder})" if w.holder_name else f"the organisation with ODS code {w.holder}"
            route = f"To ask for it, contact {org}; if a child may be at risk, make a safeguarding request with a justification."
        else:
            org, route = (
                "familyview (derived from recorded details)",
                "If a child may be at risk, make a safeguarding request with a justification.",
            )
        return {
            "severity": "information",
            "code": "suppressed",
            "details": {
                "coding": [ACCESS_DENIED, {"system": FAMILY_ROLE_SYSTEM, "code": w.role}],
                "text": f"A confidential record about the {w.who}, held by {org}, was withheld",
            },
            "diagnostics": f"{RECORD_REASONS.get(w.decision.reason_code, 'Withheld.')} {route}",
            "expression": [f"Bundle.entry[{w.entry}].resource"],
        }
    out: dict[str, Any] = {
        "severity": "information",
        "code": "suppressed",
        "details": {
            "coding": [
                {"system": DATA_CATEGORY, "code": w.category},
                ACCESS_DENIED,
                {"system": FAMILY_ROLE_SYSTEM, "code": w.role},
            ],
            "text": f"{w.what} about the {w.who} withheld",
        },
        "diagnostics": w.reason or w.decision.reason,
    }
    if w.entry is not None:
        out["expression"] = [f"Bundle.entry[{w.entry}].resource"]
    return out


def _notice(code: str, display: str) -> dict[str, str]:
    return {"system": contract.NOTICE_SYSTEM, "code": code, "display": display}


def override_issue(o: Override) -> dict[str, Any]:
    """The safeguarding view's statement about itself: what it overrode or relied on, the IG
    review queued and the holders told (by name), in words a practitioner reads."""
    coding = [_notice(contract.NOTICE_SAFEGUARDING_OVERRIDE, "Disclosed on a safeguarding basis")]
    said = ["This view was given for safeguarding: it discloses records that consent does not cover"]
    if o.refusal_overridden:
        coding.append(_notice(contract.NOTICE_REFUSAL_OVERRIDDEN, "A refusal was overridden"))
        said.append("it overrode a person's recorded refusal to share")
    if o.break_glass:
        coding.append(_notice(contract.NOTICE_BREAK_GLASS, "Break-glass"))
        said.append("your organisation has no care relationship with this family, so it relied on break-glass")
    text = "; ".join(said) + "."
    if o.review_queued:
        coding.append(_notice(contract.NOTICE_IG_REVIEW_QUEUED, "IG review queued"))
        text += " An Information Governance review of this disclosure has been queued."
    if o.holders_told:
        coding.append(_notice(contract.NOTICE_HOLDER_NOTIFIED, "Record holder told"))
        names = ", ".join(f"{name} (ODS {ods})" if name else f"ODS {ods}" for ods, name in o.holders_told)
        text += f" The organisations holding the records have been told: {names}."
    return {
        "severity": "warning",
        "code": "informational",
        "details": {"coding": coding, "text": text},
        "diagnostics": "Your justification, this disclosure and its lawful basis are recorded in the audit (see X-Audit-Event).",
    }


NO_FATHER_KNOWN = {
    "severity": "information",
    "code": "informational",
    "details": {
        "coding": [_notice(contract.NOTICE_NO_FATHER_KNOWN, "No father or male carer known")],
        "text": "No father or man in a caring role is recorded for this baby by any service known to familyview.",
    },
    "diagnostics": (
        "Ask the mother who the baby's father is and whether any other man lives with them or cares for the baby, "
        "and record him (a RelatedPerson on the baby's or the mother's record, with his NHS number if known)."
    ),
}


def bundle(plan: ViewPlan, bundle_id: str, mode: str) -> dict[str, Any]:
    """The collection Bundle: the people, their records as shown, their care team and named
    professionals, and the OperationOutcome (what was withheld, and the view's notices)."""
    now = datetime.now(timezone.utc)
    entries = [{"fullUrl": f"urn:familyview:{key}", "resource": resource} for key, resource in plan.people]
    entries += [{"fullUrl": f"urn:familyview:{ref}", "resource": resource} for ref, resource in plan.records]
    entries += [{"fullUrl": f"urn:familyview:{ref}", "resource": resource} for ref, resource in plan.care]
    issues = [issue(w) for w in plan.withheld] or [NOTHING_WITHHELD]
    if plan.override is not None:
        issues.insert(0, override_issue(plan.override))
    if plan.no_father_known:
        issues.append(NO_FATHER_KNOWN)
    outcome = {"resourceType": "OperationOutcome", "issue": issues}
    entries.append({"fullUrl": "urn:familyview:outcome", "resource": outcome})
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {
            "lastUpdated": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "tag": [{"system": f"{FV}/CodeSystem/family-view-mode", "code": mode}],
        },
        "type": "collection",
        "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "entry": entries,
    }
