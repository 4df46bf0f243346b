"""The engine's inputs and outputs, as frozen typed values.

Everything a decision depends on is passed in explicitly, so that a decision can be
replayed from its audit record and tested without a database or a clock.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------

REQUESTER_ROLES = frozenset({"source-system", "midwife", "health-visitor", "gp", "mash", "ig-officer", "admin"})
FAMILY_ROLES = frozenset({"infant", "mother", "father", "male-carer", "other-carer"})
#: Categories about the person rather than one organisation's record: a Consent recorded by any
#: organisation that holds a record of the person speaks for them.
PERSON_CATEGORIES = frozenset({"identity", "contact", "relationship"})

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
# Local code systems of the gateway (declared in fhir_profiles/ by the profiles work).
FAMILYVIEW_BASE = "https://familyview.example.nhs.uk/fhir"
DATA_CATEGORY_SYSTEM = f"{FAMILYVIEW_BASE}/CodeSystem/data-category"
REQUESTER_ROLE_SYSTEM = f"{FAMILYVIEW_BASE}/CodeSystem/requester-role"


class Purpose(str, Enum):
    """Why the practitioner is asking; it decides which policy rows apply."""

    DIRECT_CARE = "direct-care"
    SAFEGUARDING = "safeguarding"


class Outcome(str, Enum):
    PERMIT = "permit"
    DENY = "deny"
    PERMIT_WITH_REDACTION = "permit-with-redaction"


class ObligationKind(str, Enum):
    """Things the caller must do when it acts on a decision."""

    REDACT_FIELDS = "redact-fields"
    QUEUE_IG_REVIEW = "queue-ig-review"
    NOTIFY_DATA_CONTROLLER = "notify-data-controller"


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requester:
    """The person (or system) asking, as the token describes them.

    ``references`` and ``identifiers`` let a Consent name the requester either by a
    FHIR reference (``Organization/123``, ``PractitionerRole/9``) or by a business
    identifier (ODS code, SDS user id).
    """

    role: str
    org: str  # ODS code of the requester's organisation
    user: str | None = None
    service: str | None = None  # e.g. health-visiting, maternity, general-practice
    references: tuple[str, ...] = ()
    identifiers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LegitimateRelationship:
    """Whether the requester's organisation has a care relationship with the family.

    ``how`` says which evidence established it: registered-gp, episode-of-care,
    care-team, or mash (the MASH holds an open referral for the family).
    """

    holds: bool
    how: str | None = None


@dataclass(frozen=True, slots=True)
class DataSubject:
    """The family member whose data this is, and their place in the family."""

    reference: str
    family_role: str  # infant | mother | father | male-carer | other-carer
    identifiers: tuple[tuple[str, str], ...] = ()
    # ODS codes of the organisations that hold any record of this person (their Patient or
    # RelatedPerson records, and the clinical records about them). A Consent recorded by an
    # organisation outside this set speaks for no record of theirs. Empty: not known.
    record_holders: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DataItem:
    """One thing that might be disclosed: a resource, or a part of one.

    The category comes from the security labels stamped at ingest
    (see :func:`consent.labels.categories_for_resource`), not from raw codes.
    """

    category: str
    resource_type: str | None = None
    security_labels: frozenset[str] = frozenset()
    source_org: str | None = None
    date: _dt.date | None = None
    reference: str | None = None
    codes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DisclosureRequest:
    """Everything one decision depends on.

    ``as_of`` is the moment the decision is taken (timezone-aware, or a date);
    it defaults to now so that callers need not pass a clock, and tests can.
    """

    requester: Requester
    purpose: Purpose
    subject: DataSubject
    item: DataItem
    relationship: LegitimateRelationship = LegitimateRelationship(False)
    justification: str | None = None
    consents: tuple[Any, ...] = ()  # ConsentRecord, or anything ConsentRecord.from_fhir takes
    as_of: _dt.datetime | _dt.date | None = None


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LawfulBasis:
    """The legal grounds a disclosure rests on, as an IG officer would write them.

    ``confidentiality`` says how the common-law duty of confidence is met
    (implied consent for direct care, explicit consent, or overriding public interest).
    """

    article6: str
    article9: str | None = None
    dpa2018_schedule1: str | None = None
    confidentiality: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "article6": self.article6,
            "article9": self.article9,
            "dpa2018_schedule1": self.dpa2018_schedule1,
            "confidentiality": self.confidentiality,
        }

    def __str__(self) -> str:
        parts = [f"UK GDPR Art {self.article6}"]
        if self.article9:
            parts.append(f"Art {self.article9}")
        if self.dpa2018_schedule1:
            parts.append(f"DPA 2018 {self.dpa2018_schedule1}")
        return " + ".join(parts)


@dataclass(frozen=True, slots=True)
class ConsentRef:
    """Which Consent (and which provision inside it) a decision relied on or overrode."""

    reference: str
    provision: str  # FHIRPath-like, e.g. "Consent.provision.provision[1]"
    decision: str  # "permit" | "deny": what that provision said

    def to_dict(self) -> dict[str, str]:
        return {"reference": self.reference, "provision": self.provision, "decision": self.decision}


@dataclass(frozen=True, slots=True)
class Obligation:
    """Something the caller must do with the data or about the disclosure."""

    kind: ObligationKind
    fields: tuple[str, ...] = ()
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "fields": list(self.fields), "target": self.target}


@dataclass(frozen=True, slots=True)
class DisclosureDecision:
    """The engine's answer, with everything the audit record needs."""

    outcome: Outcome
    reason: str
    policy_version: str
    purpose_of_use: str  # HL7 v3 PurposeOfUse: TREAT | THREAT | BTG
    lawful_basis: LawfulBasis | None = None
    consent_relied_on: ConsentRef | None = None
    consent_overridden: ConsentRef | None = None
    obligations: frozenset[Obligation] = frozenset()
    rule: str | None = None  # id of the policy rule applied; None when no rule
    reason_code: str = ""  # stable machine code, e.g. no-rule, consent-required
    consents_considered: tuple[str, ...] = field(default=())
    # Consents recorded by different organisations said different things about this request:
    # the decision stands (a refusal wins), and the view is flagged for IG review.
    consent_conflict: bool = False

    @property
    def permitted(self) -> bool:
        return self.outcome is not Outcome.DENY

    @property
    def redacted_fields(self) -> tuple[str, ...]:
        fields: set[str] = set()
        for obligation in self.obligations:
            if obligation.kind is ObligationKind.REDACT_FIELDS:
                fields.update(obligation.fields)
        return tuple(sorted(fields))

    def obligation(self, kind: ObligationKind) -> Obligation | None:
        for obligation in self.obligations:
            if obligation.kind is kind:
                return obligation
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record for the audit trail (obligations in a stable order)."""
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "purpose_of_use": self.purpose_of_use,
            "lawful_basis": self.lawful_basis.to_dict() if self.lawful_basis else None,
            "consent_relied_on": self.consent_relied_on.to_dict() if self.consent_relied_on else None,
            "consent_overridden": self.consent_overridden.to_dict() if self.consent_overridden else None,
            "obligations": [
                o.to_dict() for o in sorted(self.obligations, key=lambda o: (o.kind.value, o.fields, o.target or ""))
            ],
            "consents_considered": list(self.consents_considered),
        } | ({"consent_conflict": True} if self.consent_conflict else {})
