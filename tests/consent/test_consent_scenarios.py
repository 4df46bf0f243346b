"""DESIGN.md scenarios 2 to 10, from FHIR records through labelling to the decision."""

from __future__ import annotations

import datetime as dt

import pytest

from consent import (
    LawfulBasis,
    Obligation,
    ObligationKind,
    Outcome,
    Purpose,
    data_items_for_resource,
    decide,
    label_resource,
)
from consent_testkit import (
    CONSENT_ACTION,
    FATHER,
    GP_FATHER,
    GP_PARTNER,
    HEALTH_VISITOR,
    HV_ORG,
    IG_OFFICER,
    LOCAL,
    MATERNITY_ORG,
    MIDWIFE,
    MOTHER,
    NHS_FATHER,
    NHS_YOUNG_FATHER,
    PARTNER,
    RELATED,
    SNOMED,
    UNCONNECTED,
    UNRELATED,
    category_class,
    coding,
    consent,
    hv_mental_health_consent,
    item,
    nhs_number_valid,
    ods_actor,
    purpose,
    refusal,
    request,
    subject,
)

SAFEGUARD = LawfulBasis("6(1)(e)", "9(2)(g)", "Sch 1 para 18", "overriding public interest (safeguarding a child)")
DIRECT = LawfulBasis("6(1)(e)", "9(2)(h)", "Sch 1 para 2", "implied consent (direct care)")
REVIEW = Obligation(ObligationKind.QUEUE_IG_REVIEW, target="ig-review-queue")


def condition(id: str, code: tuple[str, str], recorded: str = "2024-02-01") -> dict:
    return {
        "resourceType": "Condition",
        "id": id,
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_FATHER}},
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "recordedDate": recorded,
    }


def flag(id: str, code: tuple[str, str]) -> dict:
    return {"resourceType": "Flag", "id": id, "status": "active", "code": {"coding": [coding(*code)]},
            "period": {"start": "2023-09-01"}}


def only_item(resource: dict, source_org: str):
    items = data_items_for_resource(resource, source_org=source_org)
    assert len(items) == 1, items
    return items[0]


def test_synthetic_nhs_numbers_are_valid_and_start_999():
    from consent_testkit import NHS_INFANT, NHS_MOTHER, NHS_PARTNER

    for number in (NHS_INFANT, NHS_MOTHER, NHS_FATHER, NHS_PARTNER, NHS_YOUNG_FATHER):
        assert number.startswith("999") and nhs_number_valid(number)


# Scenario 2 -----------------------------------------------------------------


def test_scenario_2_gp_substance_misuse_withheld_for_direct_care_disclosed_for_safeguarding():
    record = condition("father-sud", (SNOMED, "66214007"))
    assert {c["code"] for c in label_resource(record)} >= {"ETH", "SUD", "substance-misuse"}
    sud = only_item(record, GP_FATHER)
    assert sud.category == "substance-misuse" and {"ETH", "SUD"} <= sud.security_labels

    # Linkage has joined him: the direct-care view shows him...
    shown = decide(request(about=FATHER, what=item("identity", source_org=MATERNITY_ORG)))
    assert shown.outcome is Outcome.PERMIT and shown.purpose_of_use == "TREAT"
    # ...but withholds the GP record, without saying what it is.
    withheld = decide(request(about=FATHER, what=sud))
    assert withheld.outcome is Outcome.DENY
    assert withheld.reason_code == "consent-required"
    assert "substance" not in withheld.reason.lower()
    assert withheld.lawful_basis is None and not withheld.obligations

    disclosed = decide(request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=sud))
    assert disclosed.outcome is Outcome.PERMIT
    assert disclosed.purpose_of_use == "THREAT"
    assert disclosed.lawful_basis == SAFEGUARD
    assert set(disclosed.obligations) == {
        REVIEW, Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=GP_FATHER)
    }


# Scenario 3 -----------------------------------------------------------------


def test_scenario_3_consent_shows_mental_health_but_not_substance_misuse():
    consents = (hv_mental_health_consent(),)
    mh = only_item(condition("father-dep", (SNOMED, "35489007")), GP_FATHER)
    sud = only_item(condition("father-sud", (SNOMED, "66214007")), GP_FATHER)

    shown = decide(request(about=FATHER, what=mh, consents=consents))
    assert shown.outcome is Outcome.PERMIT
    assert shown.consent_relied_on.reference == "Consent/father-mh-hv"
    assert shown.lawful_basis.article6 == "6(1)(e)" and shown.lawful_basis.article9 == "9(2)(h)"
    assert "explicit consent" in shown.lawful_basis.confidentiality

    still_withheld = decide(request(about=FATHER, what=sud, consents=consents))
    assert still_withheld.outcome is Outcome.DENY
    assert still_withheld.reason_code == "consent-required"


# Scenario 4 -----------------------------------------------------------------


def test_scenario_4_partner_domestic_abuse_flag():
    da = only_item(flag("partner-da", (LOCAL, "DA-PERPETRATOR")), GP_PARTNER)
    assert da.category == "domestic-abuse" and "SDV" in da.security_labels

    identity = decide(request(about=PARTNER, what=item("identity", source_org=HV_ORG)))
    assert identity.outcome is Outcome.PERMIT and identity.rule == "father-carer-identity-direct-care"

    direct = decide(request(about=PARTNER, what=da))
    assert direct.outcome is Outcome.DENY

    safeguarding = decide(request(purpose=Purpose.SAFEGUARDING, about=PARTNER, what=da))
    assert safeguarding.outcome is Outcome.PERMIT
    assert safeguarding.lawful_basis == SAFEGUARD
    assert Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=GP_PARTNER) in safeguarding.obligations
    assert REVIEW in safeguarding.obligations


# Scenario 5 -----------------------------------------------------------------


def test_scenario_5_refusal_withholds_for_direct_care_but_not_safeguarding():
    consents = (refusal(),)
    sud = item("substance-misuse")
    direct = decide(request(about=FATHER, what=sud, consents=consents))
    assert direct.outcome is Outcome.DENY and direct.reason_code == "consent-refused"

    safeguarding = decide(request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=sud, consents=consents))
    assert safeguarding.outcome is Outcome.PERMIT
    assert safeguarding.consent_overridden.reference == "Consent/father-refuses"
    assert safeguarding.lawful_basis.dpa2018_schedule1 == "Sch 1 para 18"
    audit = safeguarding.to_dict()
    assert audit["consent_overridden"]["decision"] == "deny"
    assert audit["lawful_basis"]["article9"] == "9(2)(g)"
    assert audit["policy_version"] == "2.0.0"
    assert {o["kind"] for o in audit["obligations"]} == {"queue-ig-review", "notify-data-controller"}


# Scenario 6 -----------------------------------------------------------------


@pytest.mark.parametrize("purpose_", list(Purpose))
@pytest.mark.parametrize("category", ["identity", "record", "substance-misuse"])
def test_scenario_6_no_relationship_is_refused_and_auditable(purpose_, category):
    decision = decide(request(UNCONNECTED, purpose_, FATHER, item(category), relationship=UNRELATED))
    assert decision.outcome is Outcome.DENY
    assert decision.reason_code == "no-relationship"
    record = decision.to_dict()
    assert record["outcome"] == "deny" and record["policy_version"] == "2.0.0"
    assert record["purpose_of_use"] == ("TREAT" if purpose_ is Purpose.DIRECT_CARE else "THREAT")


# Scenario 7 -----------------------------------------------------------------


def test_scenario_7_pre_birth_view():
    pregnancy = {
        "resourceType": "Condition", "id": "mother-pregnancy",
        "code": {"coding": [coding(SNOMED, "77386006")]},  # Pregnant (finding)
        "recordedDate": "2025-01-15",
    }
    preg_item = only_item(pregnancy, MATERNITY_ORG)
    assert preg_item.category == "record" and not preg_item.security_labels
    for what, about in (
        (preg_item, MOTHER),
        (item("identity", source_org=MATERNITY_ORG), MOTHER),
        (item("identity", source_org=MATERNITY_ORG), PARTNER),
        (item("relationship", source_org=MATERNITY_ORG), PARTNER),
    ):
        decision = decide(request(MIDWIFE, Purpose.DIRECT_CARE, about, what))
        assert decision.outcome is Outcome.PERMIT, (about, what.category, decision.reason)
        assert decision.lawful_basis == DIRECT


# Scenario 8 -----------------------------------------------------------------


def test_scenario_8_restricted_mother_never_shows_address_or_contact():
    for purpose_ in Purpose:
        identity = decide(request(purpose=purpose_, about=MOTHER, what=item("identity", labels={"R"})))
        assert identity.outcome is Outcome.PERMIT_WITH_REDACTION
        assert {"address", "telecom", "generalPractitioner"} <= set(identity.redacted_fields)
        contact = decide(request(purpose=purpose_, about=MOTHER, what=item("contact", labels={"R"})))
        assert contact.outcome is Outcome.DENY and contact.reason_code == "restricted"


# Scenario 9 -----------------------------------------------------------------


@pytest.mark.parametrize("purpose_", list(Purpose))
def test_scenario_9_ig_officer_gets_no_family_view(purpose_):
    decision = decide(request(IG_OFFICER, purpose_, MOTHER, item("identity"), relationship=RELATED))
    assert decision.outcome is Outcome.DENY
    assert "audit" in decision.reason.lower()


# Scenario 10 ----------------------------------------------------------------


def test_scenario_10_young_care_leaver_father_indicators_where_lawful():
    young_father = subject("father", NHS_YOUNG_FATHER)
    care_leaver = only_item({"resourceType": "Observation", "id": "yf-cl",
                             "code": {"coding": [coding(LOCAL, "CARE-LEAVER")]}}, GP_FATHER)
    young = only_item({"resourceType": "Observation", "id": "yf-yp",
                       "code": {"coding": [coding(LOCAL, "YOUNG-PARENT")]}}, GP_FATHER)
    assert (care_leaver.category, young.category) == ("care-leaver", "young-parent")

    # Direct care without his consent: both withheld.
    for indicator in (care_leaver, young):
        assert decide(request(about=young_father, what=indicator)).outcome is Outcome.DENY

    # With his consent naming the health visiting service, direct care, and these categories: shown.
    agreed = consent(
        "yf-consent",
        {"type": "permit", "actor": [ods_actor(HV_ORG)], "purpose": [purpose("TREAT")],
         "action": [{"coding": [coding(CONSENT_ACTION, "access")]}],
         "class": [category_class("care-leaver"), category_class("young-parent")]},
        patient_nhs=NHS_YOUNG_FATHER,
    )
    for indicator in (care_leaver, young):
        decision = decide(request(about=young_father, what=indicator, consents=(agreed,)))
        assert decision.outcome is Outcome.PERMIT
        # Not special category data: no Art 9 condition is claimed.
        assert decision.lawful_basis.article9 is None and decision.lawful_basis.article6 == "6(1)(e)"

    # Safeguarding: shown, reviewed, GP told.
    for indicator in (care_leaver, young):
        decision = decide(request(purpose=Purpose.SAFEGUARDING, about=young_father, what=indicator))
        assert decision.outcome is Outcome.PERMIT
        assert REVIEW in decision.obligations


def test_break_glass_is_audited_as_btg_and_reviewed():
    from consent_testkit import MASH

    decision = decide(request(MASH, Purpose.SAFEGUARDING, MOTHER, item("identity"), relationship=UNRELATED))
    assert decision.outcome is Outcome.PERMIT
    assert decision.purpose_of_use == "BTG"
    assert REVIEW in decision.obligations
    with_relationship = decide(request(MASH, Purpose.SAFEGUARDING, MOTHER, item("identity"), relationship=RELATED))
    assert with_relationship.purpose_of_use == "THREAT"
    assert REVIEW not in with_relationship.obligations


def test_health_visitor_without_relationship_cannot_break_the_glass():
    decision = decide(request(HEALTH_VISITOR, Purpose.SAFEGUARDING, FATHER, item("substance-misuse"),
                              relationship=UNRELATED))
    assert decision.outcome is Outcome.DENY and decision.reason_code == "no-relationship"


def test_decision_as_of_a_date_works():
    decision = decide(request(about=FATHER, what=item("mental-health"), consents=(hv_mental_health_consent(),),
                              as_of=dt.date(2025, 6, 1)))
    assert decision.outcome is Outcome.PERMIT


def test_an_item_no_organisation_holds_names_no_data_controller():
    """The young-parent indicator the gateway computes from a birth date is held by no source:
    a safeguarding disclosure of it is reviewed by IG, but there is no data controller to tell,
    so the decision names none and its reason does not say one will be told. A held record of
    the same kind still notifies its holder."""
    young_father = subject("father", NHS_YOUNG_FATHER)
    derived = item("young-parent", source_org=None, resource_type="Flag")
    decision = decide(request(purpose=Purpose.SAFEGUARDING, about=young_father, what=derived))
    assert decision.outcome is Outcome.PERMIT
    assert set(decision.obligations) == {REVIEW}
    assert "told" not in decision.reason and "reviewed" in decision.reason
    from consent.engine import decide_uncached

    assert decide_uncached(request(purpose=Purpose.SAFEGUARDING, about=young_father, what=derived)) == decision
    held = decide(request(purpose=Purpose.SAFEGUARDING, about=young_father, what=item("young-parent", source_org=GP_FATHER)))
    assert Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=GP_FATHER) in held.obligations and "told" in held.reason
