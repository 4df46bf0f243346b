"""Issue 14's decisions, as properties over the whole policy: sensitive and unclassified records
of the family's adults are kept from direct care without consent and reached by safeguarding
with both obligations; a valid safeguarding request never meets "no rule"; Consent is read as
R4 defines it (a blanket permit covers every category, a nested deny withholds only what it
names); and a Consent speaks only for the records of the organisation that recorded it."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import (
    ConsentRecord,
    DataSubject,
    LegitimateRelationship,
    Obligation,
    ObligationKind,
    Outcome,
    Purpose,
    decide,
    load_policy,
)
from consent.engine import effective_category
from consent.model import FAMILY_ROLES
from consent.policies import BASELINE_POLICY_PATH, policy_from_data, read_policy_file
from consent_testkit import (
    GP_FATHER,
    HEALTH_VISITOR,
    HV_ORG,
    MASH,
    MATERNITY_ORG,
    MIDWIFE,
    NHS_FATHER,
    GP,
    UNRELATED,
    category_class,
    consent,
    item,
    label,
    ods_actor,
    purpose,
    refusal,
    request,
)

POLICY = load_policy()
UNCLASSIFIED = POLICY.unclassified_category
SENSITIVE = sorted(c for c, d in POLICY.categories.items() if d.sensitive and c != UNCLASSIFIED)
ADULTS = ["mother", "father", "male-carer", "other-carer"]
MEN_AND_CARERS = sorted(POLICY.unclassified_subjects)
CARE_ROLES = [HEALTH_VISITOR, MIDWIFE, GP]
HOLDERS = [GP_FATHER, "Y90002", "LAS01", "RXX77"]  # organisations other than every requester's
REVIEW = Obligation(ObligationKind.QUEUE_IG_REVIEW, target="ig-review-queue")


def who(role: str) -> DataSubject:
    return DataSubject(f"Patient/{role}", role)


def blanket_permit(actor: str = HV_ORG, id: str = "blanket", **kw) -> dict:
    """R4: a permit that names the recipient and the purpose, and no data, covers every category."""
    return consent(id, {"type": "permit", "actor": [ods_actor(actor)], "purpose": [purpose("TREAT")]}, **kw)


def not_for_this_requester() -> st.SearchStrategy[tuple]:
    """Consents that give this requester nothing: none, a refusal, a permit for another organisation."""
    return st.sampled_from([(), (refusal(),), (blanket_permit(actor="RXX99", id="other-org"),)])


# ---------------------------------------------------------------- the fail safe and safeguarding


@settings(max_examples=300, deadline=None)
@given(
    subject=st.sampled_from(ADULTS), category=st.sampled_from(SENSITIVE), requester=st.sampled_from(CARE_ROLES),
    holder=st.sampled_from(HOLDERS), consents=not_for_this_requester(),
)
def test_an_adults_sensitive_record_is_withheld_from_direct_care_and_reached_by_safeguarding(subject, category, requester, holder, consents):
    what = item(category, source_org=holder)
    care = decide(request(requester, Purpose.DIRECT_CARE, who(subject), what, consents=consents))
    assert care.outcome is Outcome.DENY and care.reason_code in ("consent-required", "consent-refused")
    guard = decide(request(requester, Purpose.SAFEGUARDING, who(subject), what, consents=consents))
    assert guard.permitted, guard.reason
    assert {REVIEW, Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=holder)} <= set(guard.obligations)
    assert guard.lawful_basis.dpa2018_schedule1 == "Sch 1 para 18" or not POLICY.categories[category].article9_applies
    if consents and consents[0]["id"] == "father-refuses":
        assert guard.consent_overridden is not None  # the refusal is recorded as overridden


@settings(max_examples=300, deadline=None)
@given(
    subject=st.sampled_from(MEN_AND_CARERS), requester=st.sampled_from(CARE_ROLES), holder=st.sampled_from(HOLDERS),
    consents=not_for_this_requester(), rtype=st.sampled_from(["Condition", "Observation", "Flag", "MedicationStatement"]),
)
def test_an_unclassified_record_of_a_father_or_carer_held_elsewhere_is_confidential(subject, requester, holder, consents, rtype):
    what = item("record", source_org=holder, resource_type=rtype)
    care_request = request(requester, Purpose.DIRECT_CARE, who(subject), what, consents=consents)
    assert effective_category(care_request, POLICY) == "unclassified"
    care = decide(care_request)
    assert care.outcome is Outcome.DENY and care.reason_code in ("consent-required", "consent-refused")
    guard = decide(request(requester, Purpose.SAFEGUARDING, who(subject), what, consents=consents))
    assert guard.permitted and guard.rule == "father-carer-records-safeguarding"
    assert {REVIEW, Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=holder)} <= set(guard.obligations)
    # the MASH breaking the glass reaches it too, with the same obligations, as BTG
    glass = decide(request(MASH, Purpose.SAFEGUARDING, who(subject), what, relationship=UNRELATED, consents=consents))
    assert glass.permitted and glass.purpose_of_use == "BTG"
    assert {REVIEW, Obligation(ObligationKind.NOTIFY_DATA_CONTROLLER, target=holder)} <= set(glass.obligations)


def test_the_mothers_ordinary_records_keep_their_direct_care_rule_and_her_own_organisations_are_not_unclassified():
    mothers = decide(request(HEALTH_VISITOR, about=who("mother"), what=item("record", source_org=MATERNITY_ORG)))
    assert mothers.permitted and mothers.rule == "mother-care-direct-care"
    # the health visitor's own note about the father is no disclosure to another controller
    own = request(HEALTH_VISITOR, about=who("father"), what=item("record", source_org=HV_ORG))
    assert effective_category(own, POLICY) == "record"
    assert decide(own).permitted and decide(own).rule == "father-carer-own-record-direct-care"
    # a record no organisation holds (derived by the gateway) is not "held elsewhere"
    derived = request(HEALTH_VISITOR, about=who("father"), what=item("record", source_org=None))
    assert effective_category(derived, POLICY) == "record"


@pytest.mark.parametrize("requester", [HEALTH_VISITOR, MIDWIFE, GP, MASH], ids=lambda r: r.role)
@pytest.mark.parametrize("subject", sorted(FAMILY_ROLES))
def test_a_valid_safeguarding_request_never_meets_no_rule(requester, subject):
    """Every category of the policy (identity to unclassified), every family member, every care
    role (the MASH also without a relationship, breaking the glass), held here or elsewhere."""
    for category in POLICY.categories:
        for holder in (requester.org, GP_FATHER, None):
            for relationship in ((LegitimateRelationship(True, "care-team"), UNRELATED) if requester is MASH else (LegitimateRelationship(True, "care-team"),)):
                d = decide(request(requester, Purpose.SAFEGUARDING, who(subject), item(category, source_org=holder), relationship=relationship))
                assert d.reason_code != "no-rule", (subject, category, holder, relationship)
                assert d.permitted, (subject, category, holder, d.reason)


# ---------------------------------------------------------------- Consent as R4 defines it


@pytest.mark.parametrize("category", SENSITIVE + ["record"])
@pytest.mark.parametrize("subject", MEN_AND_CARERS)
def test_a_blanket_permit_covers_every_category(subject, category):
    d = decide(request(HEALTH_VISITOR, about=who(subject), what=item(category, source_org=GP_FATHER), consents=(blanket_permit(),)))
    assert d.permitted, d.reason
    assert d.consent_relied_on is not None and d.consent_relied_on.reference == "Consent/blanket"
    assert d.lawful_basis.confidentiality.startswith("explicit consent")


@pytest.mark.parametrize("category", SENSITIVE + ["record"])
def test_a_nested_deny_withholds_only_what_it_names(category):
    """The issue's case: health visiting may see everything for direct care except substance
    misuse (ETH). Depression is shown; the drug and alcohol records are not."""
    nested = consent("nested", {
        "type": "permit", "actor": [ods_actor(HV_ORG)], "purpose": [purpose("TREAT")],
        "provision": [{"type": "deny", "securityLabel": [label("ETH")]}],
    })
    d = decide(request(HEALTH_VISITOR, about=who("father"), what=item(category, source_org=GP_FATHER), consents=(nested,)))
    if category == "substance-misuse":
        assert d.outcome is Outcome.DENY and d.reason_code == "consent-refused"
        assert d.consent_relied_on is None
    else:
        assert d.permitted and d.consent_relied_on.provision == "Consent.provision", (category, d.reason)


def test_a_nested_deny_by_category_class_withholds_unclassified_records_only():
    nested = consent("nested-class", {
        "type": "permit", "actor": [ods_actor(HV_ORG)], "purpose": [purpose("TREAT")],
        "provision": [{"type": "deny", "class": [category_class("unclassified")]}],
    })
    assert decide(request(HEALTH_VISITOR, what=item("mental-health"), consents=(nested,))).permitted
    assert not decide(request(HEALTH_VISITOR, what=item("record"), consents=(nested,))).permitted


def test_a_permit_that_names_no_actor_or_no_purpose_is_not_enough_for_sensitive_records():
    no_actor = consent("no-actor", {"type": "permit", "purpose": [purpose("TREAT")]})
    no_purpose = consent("no-purpose", {"type": "permit", "actor": [ods_actor(HV_ORG)]})
    for c in (no_actor, no_purpose):
        d = decide(request(HEALTH_VISITOR, what=item("mental-health"), consents=(c,)))
        assert d.outcome is Outcome.DENY and d.reason_code == "consent-required"


def test_a_site_may_require_the_consent_to_name_the_category():
    """The documented option: `consent_must_name: [actor, purpose, category]`."""
    data = read_policy_file(BASELINE_POLICY_PATH)
    strict = copy.deepcopy(data)
    for rule in strict["rules"]:
        if rule.get("consent") == "required":
            rule["consent_must_name"] = ["actor", "purpose", "category"]
    strict_policy = policy_from_data(strict, source="strict")
    req = request(HEALTH_VISITOR, what=item("mental-health"), consents=(blanket_permit(),))
    assert decide(req).permitted
    assert decide(req, strict_policy).reason_code == "consent-required"
    naming = consent("naming", {"type": "permit", "actor": [ods_actor(HV_ORG)], "purpose": [purpose("TREAT")], "securityLabel": [label("PSY")]})
    assert decide(request(HEALTH_VISITOR, what=item("mental-health"), consents=(naming,)), strict_policy).permitted


# ---------------------------------------------------------------- who may speak for a person's consent


def held_by(resource: dict, holder: str | None) -> ConsentRecord:
    return ConsentRecord.from_fhir(resource, holder=holder)


FATHER_HELD = DataSubject("Patient/father", "father", record_holders=frozenset({GP_FATHER, MATERNITY_ORG}))


def test_a_consent_from_another_organisation_does_not_open_the_gp_record():
    """The maternity system records a blanket permit for the father; his GP's record stays withheld:
    the maternity unit does not hold it, so its Consent does not speak for it."""
    maternity_permit = held_by(blanket_permit(id="maternity-permit"), MATERNITY_ORG)
    for category in ("mental-health", "record"):
        d = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item(category, source_org=GP_FATHER), consents=(maternity_permit,)))
        assert d.outcome is Outcome.DENY and d.reason_code == "consent-required"
        assert any("maternity-permit: ignored (recorded by RMT01; the record is held by Y90001)" in line for line in d.consents_considered)
    # the same Consent recorded by the GP does
    gp_permit = held_by(blanket_permit(id="gp-permit"), GP_FATHER)
    assert decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("mental-health", source_org=GP_FATHER), consents=(gp_permit,))).permitted


def test_a_refusal_about_contact_by_any_holder_withholds_it_and_a_conflict_goes_to_review():
    """Scenario 5 as found: he refused through his GP; later the maternity system posted a permit.
    The newer permit does not lift the GP-recorded refusal of his contact details."""
    gp_refusal = held_by(refusal(recorded="2024-01-01T00:00:00Z"), GP_FATHER)
    maternity_permit = held_by(blanket_permit(id="maternity-permit", recorded="2024-06-01T00:00:00Z"), MATERNITY_ORG)
    for order in ((gp_refusal, maternity_permit), (maternity_permit, gp_refusal)):
        contact = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("contact"), consents=order))
        assert contact.outcome is Outcome.DENY and contact.reason_code == "consent-refused"
        assert contact.consent_conflict and any(line.startswith("conflict:") for line in contact.consents_considered)
        assert contact.to_dict()["consent_conflict"] is True
        identity = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("identity"), consents=order))
        assert identity.permitted and set(identity.redacted_fields) == {"address", "telecom"} and identity.consent_conflict


def test_a_consent_from_an_organisation_holding_nothing_of_the_person_is_ignored():
    stranger = held_by(refusal(id="stranger-refusal"), "RXX77")
    d = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("contact"), consents=(stranger,)))
    assert d.permitted
    assert any("holds no record of this person" in line for line in d.consents_considered)


def test_one_holders_consents_are_read_together_as_before():
    """Within one holder the newest Consent in force governs (the policy's combine rule)."""
    old_refusal = held_by(refusal(recorded="2023-01-01T00:00:00Z"), GP_FATHER)
    new_permit = held_by(blanket_permit(id="newer", recorded="2024-06-01T00:00:00Z"), GP_FATHER)
    d = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("mental-health", source_org=GP_FATHER), consents=(old_refusal, new_permit)))
    assert d.permitted and d.consent_relied_on.reference == "Consent/newer" and not d.consent_conflict


def test_a_consent_without_a_known_recorder_still_governs():
    """A Consent passed without its recorder (read from JSON by a caller that does not know it)
    governs as before; the gateway always passes the recorder."""
    d = decide(request(HEALTH_VISITOR, about=FATHER_HELD, what=item("mental-health", source_org=GP_FATHER), consents=(blanket_permit(),)))
    assert d.permitted


# ---------------------------------------------------------------- very restricted under safeguarding


def test_very_restricted_identity_under_safeguarding_drops_address_telecom_and_gp():
    v = frozenset({"V"})
    care = decide(request(HEALTH_VISITOR, about=who("father"), what=item("identity", labels=v)))
    assert care.outcome is Outcome.DENY and care.reason_code == "very-restricted"
    guard = decide(request(HEALTH_VISITOR, Purpose.SAFEGUARDING, who("father"), item("identity", labels=v)))
    assert guard.permitted and set(guard.redacted_fields) == {"address", "telecom", "generalPractitioner"}
    contact = decide(request(HEALTH_VISITOR, Purpose.SAFEGUARDING, who("father"), item("contact", labels=v)))
    assert contact.outcome is Outcome.DENY

    assert NHS_FATHER not in guard.reason and NHS_FATHER not in contact.reason


# ---------------------------------------------------------------- the REST reads' redaction


@pytest.mark.parametrize("labels", [set(), {"N"}, {"R"}, {"V"}, {"R", "V"}, {"R", "PSY"}])
@pytest.mark.parametrize("role", ["mother", "father", "male-carer"])
def test_rest_redaction_is_what_a_permitted_identity_decision_redacts(labels, role):
    """restricted_identity_fields (the plain REST reads of a person by anyone but their
    source) withholds what the engine's identity decision withholds for the same labels,
    where one is permitted (safeguarding reaches everyone, V included)."""
    from consent.engine import restricted_identity_fields

    decision = decide(request(HEALTH_VISITOR, Purpose.SAFEGUARDING, who(role), item("identity", labels=frozenset(labels))))
    assert decision.permitted
    assert set(restricted_identity_fields(labels)) == set(decision.redacted_fields) & {"address", "telecom", "generalPractitioner"}
    assert set(restricted_identity_fields(labels)) == ({"address", "telecom", "generalPractitioner"} if labels & {"R", "V"} else set())
