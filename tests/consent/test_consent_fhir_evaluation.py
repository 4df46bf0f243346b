"""FHIR R4 Consent evaluation: status, periods, base policy, nesting, and every match element."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from consent import ConsentRecord, Outcome, Purpose, consent_finding, decide, load_policy
from consent_testkit import (
    ACT_CODE,
    CONSENT_ACTION,
    FATHER,
    GP_FATHER,
    GP_PARTNER,
    HEALTH_VISITOR,
    HV_ORG,
    MIDWIFE,
    NOW,
    SNOMED,
    category_class,
    coding,
    consent,
    hv_mental_health_consent,
    item,
    label,
    ods_actor,
    purpose,
    ref_actor,
    request,
    requester,
    role_actor,
)

POLICY = load_policy()
MH = item("mental-health")
SUD = item("substance-misuse")


def mh_decision(*consents, who=HEALTH_VISITOR, what=MH, as_of=NOW, policy=None):
    return decide(request(who=who, about=FATHER, what=what, consents=tuple(consents), as_of=as_of), policy)


def permit_for_hv(**extra):
    """A permit naming the HV organisation, direct care and mental health, plus ``extra``."""
    provision = {
        "type": "permit",
        "actor": [ods_actor(HV_ORG)],
        "purpose": [purpose("TREAT")],
        "securityLabel": [label("PSY")],
    }
    provision.update(extra)
    return provision


# -- status and periods ------------------------------------------------------


def test_in_force_consent_is_relied_on():
    assert mh_decision(hv_mental_health_consent()).outcome is Outcome.PERMIT


@pytest.mark.parametrize("status", ["inactive", "draft", "proposed", "rejected", "entered-in-error"])
def test_consent_not_active_is_ignored(status):
    decision = mh_decision(hv_mental_health_consent(status=status))
    assert decision.outcome is Outcome.DENY and decision.reason_code == "consent-required"
    assert any(f"status {status}" in line for line in decision.consents_considered)


def test_expired_consent_is_ignored():
    expired = consent("expired", permit_for_hv(period={"start": "2022-01-01", "end": "2024-12-31"}))
    assert mh_decision(expired).outcome is Outcome.DENY
    # An expired refusal no longer withholds his contact details either.
    old_refusal = consent("old-refusal", {"type": "deny", "period": {"end": "2024-12-31"}})
    contact = decide(request(about=FATHER, what=item("contact"), consents=(old_refusal,)))
    assert contact.outcome is Outcome.PERMIT


def test_not_yet_active_consent_is_ignored():
    future = consent("future", permit_for_hv(period={"start": "2025-07-01"}))
    assert mh_decision(future).outcome is Outcome.DENY
    assert mh_decision(future, as_of=dt.datetime(2025, 7, 2, tzinfo=dt.timezone.utc)).outcome is Outcome.PERMIT


def test_period_end_with_date_precision_includes_the_whole_day():
    ends_today = consent("ends-today", permit_for_hv(period={"end": "2025-06-01"}))
    assert mh_decision(ends_today, as_of=dt.datetime(2025, 6, 1, 23, 59, tzinfo=dt.timezone.utc)).outcome is Outcome.PERMIT
    assert mh_decision(ends_today, as_of=dt.datetime(2025, 6, 2, 0, 1, tzinfo=dt.timezone.utc)).outcome is Outcome.DENY


def test_r5_style_consent_period_is_honoured():
    resource = hv_mental_health_consent()
    resource["period"] = {"end": "2025-01-01"}
    assert mh_decision(resource).outcome is Outcome.DENY


def test_nested_provision_period_limits_only_that_exception():
    tree = consent("nested-period", {
        "type": "deny",
        "provision": [permit_for_hv(period={"start": "2025-09-01"})],
    })
    assert mh_decision(tree).reason_code == "consent-refused"
    later = dt.datetime(2025, 10, 1, tzinfo=dt.timezone.utc)
    assert mh_decision(tree, as_of=later).outcome is Outcome.PERMIT


# -- base policy -------------------------------------------------------------


def test_optin_without_provisions_is_a_blanket_refusal():
    blanket = consent("blanket", None, policy_rule="OPTIN")
    assert mh_decision(blanket).reason_code == "consent-refused"
    contact = decide(request(about=FATHER, what=item("contact"), consents=(blanket,)))
    assert contact.reason_code == "consent-refused"


def test_optout_base_permit_is_not_enough_for_sensitive_records():
    # OPTOUT with one exception denying substance misuse: mental health falls to the base permit,
    # which names no actor, purpose or category, so it is not consent to share a sensitive record.
    optout = consent("optout", {"provision": [{"type": "deny", "securityLabel": [label("ETH")]}]}, policy_rule="OPTOUT")
    assert mh_decision(optout).reason_code == "consent-required"
    assert mh_decision(optout, what=SUD).reason_code == "consent-refused"
    contact = decide(request(about=FATHER, what=item("contact"), consents=(optout,)))
    assert contact.outcome is Outcome.PERMIT


def test_blanket_permit_names_nothing_so_is_not_enough_for_sensitive_records():
    blanket_permit = consent("blanket-permit", {"type": "permit"})
    assert mh_decision(blanket_permit).reason_code == "consent-required"


def test_unknown_policy_rule_is_read_as_opt_in():
    record = ConsentRecord.from_fhir(consent("odd", None, policy_rule="SOMETHING-ELSE"))
    assert record.base_decision == "deny"
    assert ConsentRecord.from_fhir(consent("none", None, policy_rule=None)).base_decision == "deny"
    assert ConsentRecord.from_fhir(consent("oo", None, policy_rule="OPTOUTE")).base_decision == "permit"


# -- nesting to any depth ----------------------------------------------------

PTSD = (SNOMED, "47505003")
THREE_LEVELS = consent("three-levels", {
    "type": "deny",  # level 1: nothing is shared...
    "provision": [{
        "type": "permit",  # level 2: ...except mental health to the HV service for direct care...
        "actor": [ods_actor(HV_ORG)],
        "purpose": [purpose("TREAT")],
        "securityLabel": [label("PSY")],
        "provision": [{
            "type": "deny",  # level 3: ...but never the PTSD record.
            "code": [{"coding": [coding(*PTSD)]}],
        }],
    }],
})


def _mh_with_code(code):
    from dataclasses import replace

    return replace(MH, codes=(code,))


@pytest.mark.parametrize(
    "who,what,outcome,provision",
    [
        (HEALTH_VISITOR, SUD, "deny", "Consent.provision"),
        (MIDWIFE, MH, "deny", "Consent.provision"),
        (HEALTH_VISITOR, MH, "permit", "Consent.provision.provision[0]"),
        (HEALTH_VISITOR, "ptsd", "deny", "Consent.provision.provision[0].provision[0]"),
    ],
    ids=["level1-deny-other-category", "level1-deny-other-actor", "level2-permit", "level3-deny"],
)
def test_three_level_nesting_each_level_decides(who, what, outcome, provision):
    what = _mh_with_code(PTSD) if what == "ptsd" else what
    req = request(who=who, about=FATHER, what=what, consents=(THREE_LEVELS,))
    finding, _ = consent_finding(req, POLICY)
    assert (finding.decision, finding.provision, finding.explicit) == (outcome, provision, True)
    decision = decide(req)
    assert decision.outcome is (Outcome.PERMIT if outcome == "permit" else Outcome.DENY)
    if outcome == "permit":
        assert decision.consent_relied_on.provision == provision


def test_fourth_level_exception_is_honoured():
    deep = consent("four-levels", {
        "type": "deny",
        "provision": [{
            **permit_for_hv(),
            "provision": [{
                "type": "deny",
                "dataPeriod": {"end": "2023-12-31"},
                "provision": [{"type": "permit", "code": [{"coding": [coding(*PTSD)]}]}],
            }],
        }],
    })
    old_ptsd = _mh_with_code(PTSD)
    from dataclasses import replace

    old_ptsd = replace(old_ptsd, date=dt.date(2020, 5, 1))
    old_other = replace(MH, date=dt.date(2020, 5, 1))
    assert mh_decision(deep, what=old_other).outcome is Outcome.DENY
    decision = mh_decision(deep, what=old_ptsd)
    assert decision.outcome is Outcome.PERMIT
    assert decision.consent_relied_on.provision == "Consent.provision.provision[0].provision[0].provision[0]"


def test_deny_wins_between_matching_siblings():
    siblings = consent("siblings", {
        "type": "deny",
        "provision": [permit_for_hv(), {"type": "deny", "actor": [ods_actor(HV_ORG)]}],
    })
    assert mh_decision(siblings).reason_code == "consent-refused"


# -- actor -------------------------------------------------------------------


def test_actor_by_identifier():
    assert mh_decision(consent("by-ods", permit_for_hv())).outcome is Outcome.PERMIT
    other = consent("other-ods", permit_for_hv(actor=[ods_actor("RZZ01")]))
    assert mh_decision(other).outcome is Outcome.DENY


def test_actor_by_reference():
    hv = requester("health-visitor", HV_ORG, references=("Organization/hv-service", "PractitionerRole/hv-42"))
    by_org_ref = consent("by-ref", permit_for_hv(actor=[ref_actor("Organization/hv-service")]))
    assert mh_decision(by_org_ref, who=hv).outcome is Outcome.PERMIT
    by_full_url = consent("by-url", permit_for_hv(actor=[ref_actor("https://fhir.example.nhs.uk/fhir/PractitionerRole/hv-42")]))
    assert mh_decision(by_full_url, who=hv).outcome is Outcome.PERMIT
    # the same reference does not name a requester who lacks it
    assert mh_decision(by_org_ref, who=HEALTH_VISITOR).outcome is Outcome.DENY


def test_actor_by_conditional_reference():
    conditional = consent("cond", permit_for_hv(actor=[{
        "role": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")]},
        "reference": {"reference": f"Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|{HV_ORG}"},
    }]))
    assert mh_decision(conditional).outcome is Outcome.PERMIT


def test_actor_with_requester_role():
    hv_only = consent("hv-role", permit_for_hv(actor=[role_actor("health-visitor", HV_ORG)]))
    assert mh_decision(hv_only).outcome is Outcome.PERMIT
    nursery_nurse_as_gp = requester("gp", HV_ORG)
    assert mh_decision(hv_only, who=nursery_nurse_as_gp).outcome is Outcome.DENY


def test_custodian_actor_constrains_the_source_of_the_data():
    from dataclasses import replace

    # "records my GP holds" (CST) shared with the HV (IRCP)
    from_my_gp = consent("from-gp", permit_for_hv(actor=[ods_actor(HV_ORG), ods_actor(GP_FATHER, role="CST")]))
    assert mh_decision(from_my_gp).outcome is Outcome.PERMIT
    elsewhere = replace(MH, source_org=GP_PARTNER)
    assert mh_decision(from_my_gp, what=elsewhere).outcome is Outcome.DENY


# -- action, purpose, class, code, securityLabel, dataPeriod, data -----------


def test_action_mismatch():
    correct_only = consent("correct", permit_for_hv(action=[{"coding": [coding(CONSENT_ACTION, "correct")]}]))
    assert mh_decision(correct_only).outcome is Outcome.DENY
    disclose = consent("disclose", permit_for_hv(action=[{"coding": [coding(CONSENT_ACTION, "disclose")]}]))
    assert mh_decision(disclose).outcome is Outcome.PERMIT


def test_purpose_mismatch():
    research = consent("research-purpose", permit_for_hv(purpose=[purpose("HRESCH")]))
    assert mh_decision(research).outcome is Outcome.DENY
    coordination = consent("coc", permit_for_hv(purpose=[purpose("COC")]))
    assert mh_decision(coordination).outcome is Outcome.PERMIT


def test_class_matching():
    conditions = consent("class-cond", permit_for_hv(securityLabel=None, **{"class": [coding("http://hl7.org/fhir/resource-types", "Condition")]}))
    conditions["provision"].pop("securityLabel")
    assert mh_decision(conditions).outcome is Outcome.PERMIT
    from dataclasses import replace

    assert mh_decision(conditions, what=replace(MH, resource_type="Observation")).outcome is Outcome.DENY
    by_category = consent("class-cat", {**permit_for_hv(), "class": [category_class("mental-health")]})
    by_category["provision"].pop("securityLabel")
    assert mh_decision(by_category).outcome is Outcome.PERMIT
    assert mh_decision(by_category, what=SUD).outcome is Outcome.DENY


def test_code_matching():
    depression = (SNOMED, "35489007")
    by_code = consent("by-code", {**permit_for_hv(), "code": [{"coding": [coding(*depression)]}]})
    by_code["provision"].pop("securityLabel")
    assert mh_decision(by_code).outcome is Outcome.PERMIT  # MH item carries the depression code
    assert mh_decision(by_code, what=_mh_with_code(PTSD)).outcome is Outcome.DENY


def test_security_label_matching_with_subsumption_and_confidentiality():
    from dataclasses import replace

    eth = consent("eth", permit_for_hv(securityLabel=[label("ETH")]))
    sud_only = replace(SUD, security_labels=frozenset({"SUD"}))
    assert mh_decision(eth, what=sud_only).outcome is Outcome.PERMIT  # ETH covers SUD
    assert mh_decision(eth).outcome is Outcome.DENY  # ETH does not cover PSY

    r_cover = consent("r", permit_for_hv(securityLabel=[coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")]))
    assert mh_decision(r_cover).outcome is Outcome.PERMIT  # unlabelled = N, and R covers N
    assert mh_decision(r_cover, what=replace(MH, security_labels=MH.security_labels | {"R"})).outcome is Outcome.PERMIT
    n_cover = consent("n", permit_for_hv(securityLabel=[coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "N")]))
    assert mh_decision(n_cover, what=replace(MH, security_labels=MH.security_labels | {"R"})).outcome is Outcome.DENY


def test_data_period_excludes_old_records():
    from dataclasses import replace

    recent_only = consent("recent", permit_for_hv(dataPeriod={"start": "2023-01-01"}))
    assert mh_decision(recent_only, what=replace(MH, date=dt.date(2024, 3, 1))).outcome is Outcome.PERMIT
    assert mh_decision(recent_only, what=replace(MH, date=dt.date(2019, 3, 1))).outcome is Outcome.DENY
    # An undated record cannot be shown to fall inside the permitted period.
    assert mh_decision(recent_only, what=replace(MH, date=None)).outcome is Outcome.DENY
    # ...but an undated record is caught by a deny limited to a period (doubt never opens access).
    deny_old = consent("deny-old", {**permit_for_hv(), "provision": [{"type": "deny", "dataPeriod": {"end": "2020-12-31"}}]})
    assert mh_decision(deny_old, what=replace(MH, date=None)).reason_code == "consent-refused"
    assert mh_decision(deny_old, what=replace(MH, date=dt.date(2024, 1, 1))).outcome is Outcome.PERMIT


def test_data_reference_matching():
    one_record = consent("one-record", permit_for_hv(data=[{"meaning": "instance", "reference": {"reference": "Condition/mental-health-1"}}]))
    assert mh_decision(one_record).outcome is Outcome.PERMIT
    from dataclasses import replace

    assert mh_decision(one_record, what=replace(MH, reference="Condition/other")).outcome is Outcome.DENY


def test_scope_other_than_privacy_is_ignored():
    research = hv_mental_health_consent(scope="research")
    decision = mh_decision(research)
    assert decision.outcome is Outcome.DENY
    assert any("scope" in line for line in decision.consents_considered)


# -- several Consents --------------------------------------------------------

OLDER_PERMIT = hv_mental_health_consent("older-permit", recorded="2024-01-10T09:00:00Z")
NEWER_DENY = consent("newer-deny", {"type": "deny", "securityLabel": [label("PSY")]}, recorded="2025-02-01T09:00:00Z")
OLDER_DENY = consent("older-deny", {"type": "deny", "securityLabel": [label("PSY")]}, recorded="2023-02-01T09:00:00Z")


def test_newer_consent_governs_in_either_order():
    for order in itertools.permutations([OLDER_PERMIT, NEWER_DENY]):
        decision = mh_decision(*order)
        assert decision.reason_code == "consent-refused"
    for order in itertools.permutations([OLDER_DENY, OLDER_PERMIT]):
        decision = mh_decision(*order)
        assert decision.outcome is Outcome.PERMIT
        assert decision.consent_relied_on.reference == "Consent/older-permit"


def test_newer_consent_that_does_not_address_the_request_does_not_displace_one_that_does():
    newer_unrelated = consent("newer-sud", {"type": "permit", "actor": [ods_actor(HV_ORG)], "purpose": [purpose("TREAT")],
                                            "securityLabel": [label("ETH")]}, recorded="2025-03-01T00:00:00Z")
    assert mh_decision(OLDER_PERMIT, newer_unrelated).outcome is Outcome.PERMIT


def test_deny_overrides_option():
    deny_overrides = POLICY.with_combine("deny-overrides")
    assert mh_decision(OLDER_DENY, OLDER_PERMIT).outcome is Outcome.PERMIT  # most recent: the permit
    decision = mh_decision(OLDER_DENY, OLDER_PERMIT, policy=deny_overrides)
    assert decision.reason_code == "consent-refused"


def test_same_moment_tie_is_resolved_towards_deny():
    same_time_deny = consent("tie-deny", {"type": "deny", "securityLabel": [label("PSY")]}, recorded="2024-01-10T09:00:00Z")
    for order in itertools.permutations([OLDER_PERMIT, same_time_deny]):
        assert mh_decision(*order).reason_code == "consent-refused"


# -- the adapter -------------------------------------------------------------


def test_adapter_accepts_fhir_resources_r4b_model():
    from fhir.resources.R4B.consent import Consent

    model = Consent.model_validate(hv_mental_health_consent())
    record = ConsentRecord.from_fhir(model)
    assert record == ConsentRecord.from_fhir(hv_mental_health_consent())
    assert mh_decision(model).outcome is Outcome.PERMIT
    assert mh_decision(record).outcome is Outcome.PERMIT


def test_adapter_rejects_other_resources():
    with pytest.raises(ValueError):
        ConsentRecord.from_fhir({"resourceType": "Patient", "id": "x"})
    with pytest.raises(TypeError):
        ConsentRecord.from_fhir(42)


def test_unsaved_consent_gets_a_stable_name():
    resource = hv_mental_health_consent()
    del resource["id"]
    first = ConsentRecord.from_fhir(resource).reference
    assert first.startswith("Consent/#sha256-") and first == ConsentRecord.from_fhir(dict(resource)).reference


def test_safeguarding_purpose_consent_codes():
    # A Consent permitting sharing for THREAT does not cover direct care.
    threat_only = consent("threat", permit_for_hv(purpose=[purpose("THREAT")]))
    assert mh_decision(threat_only).outcome is Outcome.DENY
    finding, _ = consent_finding(request(purpose=Purpose.SAFEGUARDING, about=FATHER, what=MH, consents=(threat_only,)), POLICY)
    assert finding.decision == "permit"


def test_policy_rule_system_is_act_code():
    assert consent("x")["policyRule"]["coding"][0]["system"] == ACT_CODE
