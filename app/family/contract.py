"""The `$family-view` answer's vocabulary: every extension URL and every code the Bundle and its
OperationOutcome carry, in one place, so that the pages (and any client) read the same names the
plan writes. Constants only (no I/O, no imports above the canonical base); each extension and
code system is defined in `fhir_profiles/`, and `docs/family-view-content.md` says where each
piece of content sits in the Bundle. Additions only: the wire contract of DESIGN.md is fixed."""

from __future__ import annotations

from app.urls import CANONICAL_BASE

FV = CANONICAL_BASE
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SPINE_ERROR_SYSTEM = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

# ---------------------------------------------------------------- extensions on a member's entry
# (Patient, or RelatedPerson where the person has no patient record)

EXT_FAMILY_ROLE = f"{FV}/StructureDefinition/family-role"  # valueCode infant|mother|father|male-carer|other-carer
EXT_ASSURANCE = f"{FV}/StructureDefinition/linkage-assurance"  # valueCode level1..level4
EXT_INFERRED = f"{FV}/StructureDefinition/inferred-relationship"  # complex: inferred, assurance, basis
EXT_EDD = f"{FV}/StructureDefinition/expected-delivery-date"  # valueDate, on the unborn baby's entry

# Who recorded the member's relationship to the baby (or the mother), and when. One per
# relationship a source recorded; complex, sub-extensions by these names:
EXT_RELATIONSHIP_PROVENANCE = f"{FV}/StructureDefinition/relationship-provenance"
PROV_RELATIONSHIP = "relationship"  # valueCoding: the code as recorded (v3 RoleCode, UK Core role)
PROV_RECORDED_ON = "recordedOn"  # valueCode: infant | mother (whose record the relationship is on)
PROV_SOURCE = "source"  # valueReference: Organization (identifier = ODS code, display = its name)
PROV_RECORDED = "recorded"  # valueDateTime: when the source recorded it (period.start, else first received)
PROV_RECORD = "record"  # valueReference: the RelatedPerson that records it ("RelatedPerson/{id}")

# On each HumanName of a member's entry: which source recorded that name. Names of other records
# joined by linkage (maternity's "Jon Smyth" beside his GP's "Jonathan Smith") follow the entry's
# own names, each carrying this with linked = true. Complex, sub-extensions:
EXT_NAME_SOURCE = f"{FV}/StructureDefinition/name-source"
NAME_SOURCE_ORGANIZATION = "organization"  # valueReference: Organization (identifier ODS, display name)
NAME_SOURCE_RECORD = "record"  # valueReference: "Patient/{id}" or "RelatedPerson/{id}" holding the name
NAME_SOURCE_LINKED = "linked"  # valueBoolean: true = from another record of the person (an "other name")

# Organisations by name: every Reference naming an organisation by ODS code in a member's entry
# (generalPractitioner) and in the care entries gets Reference.display = the name the organisation
# gave itself in its Organization resource (left without display when no source described it).

# ---------------------------------------------------------------- the OperationOutcome's notices
# Issues beside the `suppressed` ones, each with details.coding from this code system.

NOTICE_SYSTEM = f"{FV}/CodeSystem/family-view-notice"
# A safeguarding view disclosed records that consent does not cover (severity warning, code
# informational). The same issue's details.coding adds the qualifiers that apply.
NOTICE_SAFEGUARDING_OVERRIDE = "safeguarding-override"
NOTICE_REFUSAL_OVERRIDDEN = "refusal-overridden"  # a recorded refusal (Consent deny) was overridden
NOTICE_BREAK_GLASS = "break-glass"  # no legitimate relationship: break-glass (PurposeOfUse BTG)
NOTICE_IG_REVIEW_QUEUED = "ig-review-queued"  # an Information Governance review is queued
NOTICE_HOLDER_NOTIFIED = "holder-notified"  # the organisations holding the records have been told
# No source known to the gateway records a father or a man in a caring role (severity
# information, code informational): ask the mother, and record him.
NOTICE_NO_FATHER_KNOWN = "no-father-or-male-carer-known"
# The mother's identifier found several babies under one (422, first issue code multiple-matches,
# Spine MULTIPLE_MATCHES): one issue per baby with this code, no personal detail, and
# diagnostics naming the instance to ask for ("Patient/{id}/$family-view").
NOTICE_CHOOSE_INFANT = "choose-infant"
NOTICES = (
    NOTICE_SAFEGUARDING_OVERRIDE,
    NOTICE_REFUSAL_OVERRIDDEN,
    NOTICE_BREAK_GLASS,
    NOTICE_IG_REVIEW_QUEUED,
    NOTICE_HOLDER_NOTIFIED,
    NOTICE_NO_FATHER_KNOWN,
    NOTICE_CHOOSE_INFANT,
)
SPINE_MULTIPLE_MATCHES = "MULTIPLE_MATCHES"

# ---------------------------------------------------------------- the legitimate relationship
# LegitimateRelationship.basis values the view can rest on (AuditEvent, and the pages' wording).
RELATIONSHIP_BASES = (
    "registered-gp",
    "episode-of-care",
    "care-team",
    "antenatal-contact",  # pre-birth: an Encounter with the mother whose serviceProvider is the requester's org
    "pregnancy-referral",  # pre-birth: an active ServiceRequest about the mother whose performer is the requester's org
)

# Care entries in the Bundle (the infant's; pre-birth the mother's): CareTeam and EpisodeOfCare
# as recorded (family members removed from CareTeam.participant), and the Practitioner and
# PractitionerRole resources they name. Decided as the `care-team` data category.
CARE_TYPES = ("CareTeam", "EpisodeOfCare", "Practitioner", "PractitionerRole")
