"""One test per row of the DESIGN.md "Consent and lawful basis" policy table.

Each case asserts the outcome, the lawful basis recorded and the obligations, so that a
change to the policy file that alters any of them fails here.
"""

from __future__ import annotations

import pytest

from consent import LawfulBasis, Obligation, ObligationKind, Outcome, Purpose, decide
from consent_testkit import (
    ADMIN,
    FATHER,
    GP,
    GP_FATHER,
    HEALTH_VISITOR,
    IG_OFFICER,
    INFANT,
    MASH,
    MIDWIFE,
    MOTHER,
    PARTNER,
    RELATED,
    SENSITIVE_CATEGORIES,
    SOURCE_SYSTEM,
    UNCONNECTED,
    UNRELATED,
    consent,
    hv_mental_health_consent,
    item,
    refusal,
    request,
)

DIRECT = LawfulBasis("6(1)(e)", "9(2)(h)", "Sch 1 para 2", "implied consent (direct care)")
SAFEGUARD = LawfulBasis("6(1)(e)", "9(2)(g)", "Sch 1 para 18", "overriding public interest (safeguarding a child)")
REVIEW = Obligation(ObligationKind.QUEUE_IG_REVIEW, target="ig-review-queue")
PDS_REDACTION = Obligation(ObligationKind.REDACT_FIELDS, ("address", "generalPractitioner", "telecom"))
CSC = "LAS01"  # children's social care, holder of the infant's safeguarding flag
CONTACT_REDACTION = Obligation(ObligationKind.REDACT_FIELDS, ("address", "telecom"))


def notify(ods: str = GP_FATHER) -> Obligation:
    return Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=ods)


def mother_refuses_contact():
    return consent(
        "mother-no-contact",
        {"type": "permit", "provision": [{"type": "deny", "class": [{"system": "https://familyview.example.nhs.uk/fhir/CodeSystem/data-category", "code": "contact"}]}]},
        patient_nhs="9990000026",
    )


# (case id, request, outcome, basis, obligations, reason code)
ROWS = [
    # Row 1: infant | identity, care team, records | direct care | legitimate relationship
    *[
        (f"row1-infant-{cat}-{who.role}", request(who, about=INFANT, what=item(cat, source_org="Y90003")),
         Outcome.PERMIT, DIRECT, set(), "permitted")
        for cat in ("identity", "care-team", "record")
        for who in (HEALTH_VISITOR, MIDWIFE, GP)
    ],
    # Row 1, rule infant-sensitive-direct-care: the infant's own records in a sensitive category
    # (a social care flag that the baby lives with domestic abuse) are the infant's records too
    *[
        (f"row1-infant-sensitive-{cat}-{who.role}", request(who, about=INFANT, what=item(cat, source_org=CSC)),
         Outcome.PERMIT, DIRECT if cat not in ("care-leaver", "young-parent") else LawfulBasis("6(1)(e)", None, None, DIRECT.confidentiality),
         set(), "permitted")
        for cat in SENSITIVE_CATEGORIES
        for who in (HEALTH_VISITOR, MIDWIFE, GP, MASH)
    ],
    ("row1-infant-sensitive-despite-refusal", request(about=INFANT, what=item("domestic-abuse", source_org=CSC), consents=(refusal("i", patient_nhs="9990000018"),)),
     Outcome.PERMIT, DIRECT, set(), "permitted"),
    # Extension rule infant-sensitive-safeguarding: and for safeguarding the infant, reviewed and the holder told
    *[
        (f"ext-infant-sensitive-safeguarding-{cat}-{who.role}", request(who, Purpose.SAFEGUARDING, INFANT, item(cat, source_org=CSC)),
         Outcome.PERMIT, SAFEGUARD if cat not in ("care-leaver", "young-parent") else LawfulBasis("6(1)(e)", None, None, SAFEGUARD.confidentiality),
         {REVIEW, notify(CSC)}, "permitted")
        for cat in SENSITIVE_CATEGORIES
        for who in (HEALTH_VISITOR, MIDWIFE, GP, MASH)
    ],
    ("ext-infant-sensitive-safeguarding-mash-break-glass",
     request(MASH, Purpose.SAFEGUARDING, INFANT, item("domestic-abuse", source_org=CSC), relationship=UNRELATED),
     Outcome.PERMIT, SAFEGUARD, {REVIEW, notify(CSC)}, "permitted"),
    # ...but never without a relationship or a route, nor without a justification, nor a V label for direct care
    *[
        (f"row7-infant-sensitive-unrelated-{who.role}-{purpose.value}", request(who, purpose, INFANT, item("domestic-abuse", source_org=CSC), relationship=UNRELATED),
         Outcome.DENY, None, set(), "no-relationship")
        for who in (UNCONNECTED, MIDWIFE, GP)
        for purpose in Purpose
    ],
    ("ext-infant-sensitive-no-justification", request(purpose=Purpose.SAFEGUARDING, about=INFANT, what=item("domestic-abuse", source_org=CSC), justification=" "),
     Outcome.DENY, None, set(), "justification-required"),
    ("row6-infant-sensitive-V-direct-care", request(about=INFANT, what=item("domestic-abuse", source_org=CSC, labels={"SDV", "V"})),
     Outcome.DENY, None, set(), "very-restricted"),
    # Extension rule infant-contact-direct-care: the baby's address is where care is given
    ("ext-infant-contact", request(about=INFANT, what=item("contact", source_org="Y90003")), Outcome.PERMIT, DIRECT, set(), "permitted"),
    # Row 2: mother | identity, contact | direct care | relationship, no Consent of hers denies it
    ("row2-mother-identity", request(about=MOTHER, what=item("identity")), Outcome.PERMIT, DIRECT, set(), "permitted"),
    ("row2-mother-contact", request(about=MOTHER, what=item("contact")), Outcome.PERMIT, DIRECT, set(), "permitted"),
    ("row2-mother-contact-refused", request(about=MOTHER, what=item("contact"), consents=(mother_refuses_contact(),)),
     Outcome.DENY, None, set(), "consent-refused"),
    ("row2-mother-identity-contact-refused", request(about=MOTHER, what=item("identity"), consents=(mother_refuses_contact(),)),
     Outcome.PERMIT_WITH_REDACTION, DIRECT, {CONTACT_REDACTION}, "permitted-with-redaction"),
    ("row2-mother-identity-refused-all", request(about=MOTHER, what=item("identity"), consents=(refusal("m", patient_nhs="9990000026"),)),
     Outcome.DENY, None, set(), "consent-refused"),
    # Row 3: father / male carer | identity, relationship, contact | direct care
    *[
        (f"row3-{who.family_role}-{cat}", request(about=who, what=item(cat)), Outcome.PERMIT, DIRECT, set(), "permitted")
        for who in (FATHER, PARTNER)
        for cat in ("identity", "relationship", "contact")
    ],
    ("row3-father-identity-despite-refusal", request(about=FATHER, what=item("relationship"), consents=(refusal(),)),
     Outcome.PERMIT, DIRECT, set(), "permitted"),
    ("row3-father-contact-refused", request(about=FATHER, what=item("contact"), consents=(refusal(),)),
     Outcome.DENY, None, set(), "consent-refused"),
    ("row3-father-identity-contact-refused", request(about=FATHER, what=item("identity"), consents=(refusal(),)),
     Outcome.PERMIT_WITH_REDACTION, DIRECT, {CONTACT_REDACTION}, "permitted-with-redaction"),
    # Row 4: father / male carer | GP-held sensitive | direct care | only with his Consent
    *[
        (f"row4-{who.family_role}-{cat}-no-consent", request(about=who, what=item(cat)),
         Outcome.DENY, None, set(), "consent-required")
        for who in (FATHER, PARTNER)
        for cat in SENSITIVE_CATEGORIES
    ],
    ("row4-father-mental-health-with-consent", request(about=FATHER, what=item("mental-health"), consents=(hv_mental_health_consent(),)),
     Outcome.PERMIT, LawfulBasis("6(1)(e)", "9(2)(h)", "Sch 1 para 2", "explicit consent (Consent/father-mh-hv)"), set(),
     "permitted"),
    ("row4-consent-wrong-actor", request(who=MIDWIFE, about=FATHER, what=item("mental-health"), consents=(hv_mental_health_consent(),)),
     Outcome.DENY, None, set(), "consent-required"),
    ("row4-consent-wrong-category", request(about=FATHER, what=item("substance-misuse"), consents=(hv_mental_health_consent(),)),
     Outcome.DENY, None, set(), "consent-required"),
    ("row4-consent-out-of-period", request(about=FATHER, what=item("mental-health"), consents=(hv_mental_health_consent(),),
                                           as_of=__import__("datetime").datetime(2026, 2, 1, tzinfo=__import__("datetime").timezone.utc)),
     Outcome.DENY, None, set(), "consent-required"),
    # Row 5: father / male carer | sensitive | safeguarding with justification | relationship or MASH
    *[
        (f"row5-{who.family_role}-{cat}", request(purpose=Purpose.SAFEGUARDING, about=who, what=item(cat)),
         Outcome.PERMIT,
         SAFEGUARD if cat not in ("care-leaver", "young-parent")
         else LawfulBasis("6(1)(e)", None, None, SAFEGUARD.confidentiality),
         {REVIEW, notify()}, "permitted")
        for who in (FATHER, PARTNER)
        for cat in SENSITIVE_CATEGORIES
    ],
    ("row5-against-refusal", request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=item("substance-misuse"), consents=(refusal(),)),
     Outcome.PERMIT, SAFEGUARD, {REVIEW, notify()}, "permitted"),
    ("row5-mash-without-relationship", request(MASH, Purpose.SAFEGUARDING, FATHER, item("domestic-abuse"), relationship=UNRELATED),
     Outcome.PERMIT, SAFEGUARD, {REVIEW, notify()}, "permitted"),
    ("row5-no-justification", request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=item("substance-misuse"), justification="  "),
     Outcome.DENY, None, set(), "justification-required"),
    # Row 6: anyone | R / V labelled records | any purpose
    ("row6-R-identity-direct-care", request(about=MOTHER, what=item("identity", labels={"R"})),
     Outcome.PERMIT_WITH_REDACTION, DIRECT, {PDS_REDACTION}, "permitted-with-redaction"),
    ("row6-R-identity-safeguarding", request(purpose=Purpose.SAFEGUARDING, about=MOTHER, what=item("identity", labels={"R"})),
     Outcome.PERMIT_WITH_REDACTION, SAFEGUARD, {PDS_REDACTION}, "permitted-with-redaction"),
    ("row6-R-contact", request(about=MOTHER, what=item("contact", labels={"R"})), Outcome.DENY, None, set(), "restricted"),
    ("row6-V-direct-care", request(about=INFANT, what=item("record", labels={"V"})), Outcome.DENY, None, set(), "very-restricted"),
    ("row6-V-safeguarding", request(purpose=Purpose.SAFEGUARDING, about=INFANT, what=item("record", labels={"V"})),
     Outcome.PERMIT, SAFEGUARD, {REVIEW}, "permitted"),
    # Row 7: anyone | anything | no legitimate relationship and not MASH/safeguarding -> deny
    *[
        (f"row7-unrelated-{who.role}-{purpose.value}", request(who, purpose, FATHER, item("identity"), relationship=UNRELATED),
         Outcome.DENY, None, set(), "no-relationship")
        for who in (UNCONNECTED, MIDWIFE, GP)
        for purpose in Purpose
    ],
    ("row7-mash-direct-care-unrelated", request(MASH, Purpose.DIRECT_CARE, INFANT, item("identity"), relationship=UNRELATED),
     Outcome.DENY, None, set(), "no-relationship"),
    # Row 8: ig-officer | clinical data | any | never
    *[
        (f"row8-{who.role}-{purpose.value}-{cat}", request(who, purpose, INFANT, item(cat), relationship=RELATED),
         Outcome.DENY, None, set(), "role-never-sees-clinical-data")
        for who in (IG_OFFICER, ADMIN, SOURCE_SYSTEM)
        for purpose in Purpose
        for cat in ("identity", "record", "substance-misuse")
    ],
]


@pytest.mark.parametrize(
    "req,outcome,basis,obligations,reason_code",
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_policy_table_row(req, outcome, basis, obligations, reason_code):
    decision = decide(req)
    assert decision.outcome is outcome, decision.reason
    assert decision.lawful_basis == basis
    assert set(decision.obligations) == obligations
    assert decision.reason_code == reason_code
    assert decision.policy_version == "2.0.0"
    assert decision.reason


def test_consent_relied_on_is_named_with_its_provision():
    decision = decide(request(about=FATHER, what=item("mental-health"), consents=(hv_mental_health_consent(),)))
    assert decision.consent_relied_on is not None
    assert decision.consent_relied_on.reference == "Consent/father-mh-hv"
    assert decision.consent_relied_on.provision == "Consent.provision"
    assert decision.consent_overridden is None


def test_refusal_overridden_for_safeguarding_is_recorded():
    decision = decide(
        request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=item("substance-misuse"), consents=(refusal(),))
    )
    assert decision.consent_relied_on is None
    assert decision.consent_overridden is not None
    assert decision.consent_overridden.reference == "Consent/father-refuses"
    assert decision.consent_overridden.decision == "deny"
    assert any("father-refuses" in line for line in decision.consents_considered)


def test_no_rule_is_denied_with_that_reason():
    # The infant's relationship (a RelatedPerson about the infant as someone's relative): no
    # rule names it for direct care, so it is denied.
    decision = decide(request(about=INFANT, what=item("relationship")))
    assert decision.outcome is Outcome.DENY
    assert decision.reason_code == "no-rule"
    assert "no rule" in decision.reason
    assert decision.rule is None
