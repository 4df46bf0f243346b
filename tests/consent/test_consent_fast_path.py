"""decide() remembers policy cells, Consent findings and finished decisions; it must decide
exactly as it does with nothing remembered (decide_uncached): same outcome, basis,
obligations, reason, Consent references and audit lines, for every request. (The engine
before memoisation was checked against these tests too, from a frozen copy, when the
memories were introduced; the policy-table and scenario tests pin the decisions themselves.)

The generated sessions reuse the same parsed Consent tuples across requesters, items,
purposes and moments on both sides of Consent period boundaries, since those are what the
memories are keyed by.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import (
    ConsentRecord,
    DataItem,
    DataSubject,
    DisclosureRequest,
    LegitimateRelationship,
    Outcome,
    Purpose,
    Requester,
    decide,
    load_policy,
)
from consent.engine import _CONSENT_SETS_KEPT, decide_uncached
from consent.model import FAMILY_ROLES, REQUESTER_ROLES
from consent.policies import policy_from_data, read_policy_file, BASELINE_POLICY_PATH
from consent_testkit import (
    CONSENT_ACTION,
    GP_FATHER,
    HV_ORG,
    MASH_ORG,
    MATERNITY_ORG,
    NOW,
    category_class,
    coding,
    consent,
    label,
    ods_actor,
    purpose,
    refusal,
    role_actor,
)

UTC = dt.timezone.utc
CATEGORIES = [
    "identity", "contact", "relationship", "care-team", "record", "substance-misuse", "mental-health",
    "domestic-abuse", "violence", "childhood-adversity", "care-leaver", "young-parent", "unheard-of",
]
LABELS = ["R", "V", "N", "ETH", "SUD", "PSY", "SDV", "VIO"]
ORGS = [HV_ORG, MATERNITY_ORG, GP_FATHER, MASH_ORG, "RXX99"]
PERIOD_EDGES = ["2023-01-01", "2024-01-01", "2024-06-30", "2025-06-01"]
#: Moments of decision on and either side of the period edges above (a period's end covers its whole day).
MOMENTS = [
    dt.datetime(2022, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2023, 1, 1, tzinfo=UTC),
    dt.datetime(2024, 1, 1, tzinfo=UTC),
    dt.datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2024, 7, 1, tzinfo=UTC),
    dt.datetime(2025, 6, 1, 9, tzinfo=UTC),
    dt.datetime(2025, 6, 2, tzinfo=UTC),
    dt.date(2024, 6, 30),
    dt.datetime(2024, 3, 1, 12),  # naive: read as UTC
]
POLICY = load_policy()
DENY_OVERRIDES = POLICY.with_combine("deny-overrides")


def same_decisions(req: DisclosureRequest, policy=POLICY) -> None:
    fast = decide(req, policy)
    reference = decide_uncached(req, policy)
    assert fast == reference, (req, fast, reference)
    assert fast.to_dict() == reference.to_dict()


# -- generated Consents with periods at every level -------------------------------------


def period() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.builds(lambda s, e: {k: v for k, v in (("start", s), ("end", e)) if v},
                  st.sampled_from([None, *PERIOD_EDGES]), st.sampled_from([None, *PERIOD_EDGES])),
    )


@st.composite
def provisions(draw, depth=0):
    provision: dict = {}
    if depth > 0 or draw(st.booleans()):
        provision["type"] = draw(st.sampled_from(["permit", "deny"]))
    when = draw(period())
    if when:
        provision["period"] = when
    if draw(st.booleans()):
        provision["actor"] = [draw(st.sampled_from([ods_actor(o) for o in ORGS] + [role_actor("health-visitor", HV_ORG)]))]
    if draw(st.booleans()):
        provision["purpose"] = [purpose(draw(st.sampled_from(["TREAT", "THREAT", "HRESCH"])))]
    if draw(st.booleans()):
        provision["securityLabel"] = [label(draw(st.sampled_from(["PSY", "ETH", "SDV", "VIO", "R", "N"])))]
    if draw(st.booleans()):
        provision["class"] = [category_class(draw(st.sampled_from(CATEGORIES)))]
    if draw(st.integers(0, 3)) == 0:
        provision["action"] = [{"coding": [coding(CONSENT_ACTION, draw(st.sampled_from(["access", "correct"])))]}]
    if draw(st.integers(0, 2)) == 0:
        provision["dataPeriod"] = {"start": draw(st.sampled_from(["2018-01-01", "2023-06-01"]))}
    if depth < 3 and draw(st.booleans()):
        provision["provision"] = draw(st.lists(provisions(depth=depth + 1), max_size=2))
    return provision


@st.composite
def consent_tuples(draw):
    out = []
    for i in range(draw(st.integers(0, 3))):
        raw = consent(
            f"c{i}",
            draw(st.one_of(st.none(), provisions())),
            status=draw(st.sampled_from(["active", "active", "active", "inactive"])),
            policy_rule=draw(st.sampled_from(["OPTIN", "OPTOUT", None])),
            recorded=draw(st.sampled_from(["2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"])),
            scope=draw(st.sampled_from(["patient-privacy", "patient-privacy", "research"])),
        )
        when = draw(period())
        if when:
            raw["period"] = when  # R5-style Consent.period
        out.append(ConsentRecord.from_fhir(raw))
    return tuple(out)


requesters = st.builds(
    Requester, role=st.sampled_from(sorted(REQUESTER_ROLES)), org=st.sampled_from(ORGS), user=st.just("u1"),
)
items = st.builds(
    DataItem,
    category=st.sampled_from(CATEGORIES),
    resource_type=st.sampled_from(["Patient", "Condition", "Flag", "Observation"]),
    security_labels=st.frozensets(st.sampled_from(LABELS), max_size=3),
    source_org=st.sampled_from(ORGS),
    date=st.one_of(st.none(), st.dates(dt.date(2015, 1, 1), dt.date(2025, 5, 1))),
    reference=st.sampled_from([None, "Condition/c1", "Patient/p1"]),
)


@st.composite
def sessions(draw):
    """A run of requests over a few shared Consent tuples, as a family view makes them."""
    pool = draw(st.lists(consent_tuples(), min_size=1, max_size=3))
    people = draw(st.lists(st.sampled_from(sorted(FAMILY_ROLES)), min_size=1, max_size=3))
    who = draw(st.lists(requesters, min_size=1, max_size=3))
    what = draw(st.lists(items, min_size=1, max_size=6))
    out = []
    for _ in range(draw(st.integers(1, 40))):
        out.append(DisclosureRequest(
            requester=draw(st.sampled_from(who)),
            purpose=draw(st.sampled_from([*Purpose, "direct-care", "research"])),
            subject=DataSubject("Patient/p1", draw(st.sampled_from(people))),
            item=draw(st.sampled_from(what)),
            relationship=LegitimateRelationship(draw(st.booleans())),
            justification=draw(st.sampled_from([None, "", "  ", "Strategy meeting"])),
            consents=draw(st.sampled_from(pool)),
            as_of=draw(st.sampled_from(MOMENTS)),
        ))
    return out


@settings(max_examples=300, deadline=None)
@given(sessions(), st.booleans())
def test_remembered_decisions_are_the_decisions(session, deny_overrides):
    policy = DENY_OVERRIDES if deny_overrides else POLICY
    for req in session:
        same_decisions(req, policy)


# -- a large deterministic sweep ----------------------------------------------------------


def test_a_thousands_strong_sweep_decides_as_before():
    rng = random.Random(20250601)
    family = [DataSubject(f"Patient/{r}", r) for r in sorted(FAMILY_ROLES)]
    shapes = [
        (),
        (ConsentRecord.from_fhir(refusal("r1")),),
        tuple(ConsentRecord.from_fhir(consent(f"p{i}", {
            "type": "permit", "period": {"start": "2024-01-01", "end": "2025-12-31"},
            "actor": [ods_actor(HV_ORG), ods_actor(MATERNITY_ORG)], "purpose": [purpose("TREAT")],
            "securityLabel": [label(lab)],
            "provision": [{"type": "deny", "dataPeriod": {"end": "2020-12-31"}},
                          {"type": "deny", "class": [category_class("contact")]}],
        }, recorded=f"202{i}-01-01T00:00:00Z")) for i, lab in enumerate(["PSY", "ETH", "SDV"])),
        (ConsentRecord.from_fhir(consent("old-refusal", {"type": "deny", "period": {"start": "2022-01-01", "end": "2023-01-01"}})),
         ConsentRecord.from_fhir(consent("opt-out", None, policy_rule="OPTOUT", recorded="2025-02-01T00:00:00Z"))),
    ]
    requesters_ = [Requester(role, org, "u") for role in sorted(REQUESTER_ROLES) for org in (HV_ORG, MATERNITY_ORG, MASH_ORG)]
    items_ = [
        DataItem(c, rt, frozenset(rng.sample(LABELS, rng.randint(0, 2))), rng.choice(ORGS),
                 rng.choice([None, dt.date(2019, 3, 1), dt.date(2024, 3, 1)]), f"{rt}/{i}")
        for i, (c, rt) in enumerate((c, rt) for c in CATEGORIES for rt in ("Patient", "Condition"))
    ]
    for _ in range(6000):
        req = DisclosureRequest(
            requester=rng.choice(requesters_), purpose=rng.choice(list(Purpose)), subject=rng.choice(family),
            item=rng.choice(items_), relationship=LegitimateRelationship(rng.random() < 0.8),
            justification=rng.choice([None, "Concern for infant"]), consents=rng.choice(shapes),
            as_of=rng.choice([NOW, None, dt.date(2023, 6, 1)]),
        )
        same_decisions(req, rng.choice([POLICY, DENY_OVERRIDES]))


# -- the memories themselves --------------------------------------------------------------


def test_the_same_parsed_consents_decide_by_the_moment_not_the_first_answer():
    father = DataSubject("Patient/father", "father")
    hv = Requester("health-visitor", HV_ORG, "hv")
    consents = (ConsentRecord.from_fhir(consent("ends", {
        "type": "permit", "period": {"start": "2024-01-01", "end": "2024-06-30"}, "actor": [ods_actor(HV_ORG)],
        "purpose": [purpose("TREAT")], "securityLabel": [label("PSY")]})),)
    mh = DataItem("mental-health", "Condition", frozenset({"PSY"}), GP_FATHER, dt.date(2024, 3, 1), "Condition/1")
    outcomes = []
    for moment in MOMENTS[2:5] + MOMENTS[2:5]:  # twice: the second pass is answered from memory
        req = DisclosureRequest(hv, Purpose.DIRECT_CARE, father, mh, LegitimateRelationship(True), None, consents, moment)
        outcomes.append(decide(req).outcome)
        same_decisions(req)
    assert outcomes == [Outcome.PERMIT, Outcome.PERMIT, Outcome.DENY] * 2


def test_consents_as_json_are_read_afresh_each_time():
    raw = consent("changing", {"type": "deny"})
    req = DisclosureRequest(Requester("health-visitor", HV_ORG), Purpose.DIRECT_CARE, DataSubject("Patient/m", "mother"),
                            DataItem("record", "Condition", source_org=GP_FATHER), LegitimateRelationship(True), None,
                            (raw,), NOW)
    assert decide(req).outcome is Outcome.DENY
    raw["status"] = "inactive"  # a dict can change between calls; a parsed ConsentRecord cannot
    assert decide(req).outcome is Outcome.PERMIT
    same_decisions(req)


def test_unhashable_parts_are_decided_the_long_way():
    item = DataItem("mental-health", "Condition", {"PSY"}, GP_FATHER, dt.date(2024, 3, 1), "Condition/1")  # a set
    consents = (ConsentRecord.from_fhir(consent("x", {"type": "permit", "actor": [ods_actor(HV_ORG)],
                                                       "securityLabel": [label("PSY")]})),)
    req = DisclosureRequest(Requester("health-visitor", HV_ORG), Purpose.DIRECT_CARE, DataSubject("Patient/f", "father"),
                            item, LegitimateRelationship(True), None, consents, NOW)
    assert decide(req) == decide_uncached(req)


def test_memories_are_bounded_and_per_policy():
    policy = policy_from_data(read_policy_file(BASELINE_POLICY_PATH))
    hv = Requester("health-visitor", HV_ORG)
    for i in range(_CONSENT_SETS_KEPT * 2 + 5):
        consents = (ConsentRecord.from_fhir(refusal(f"r{i}")),)
        decide(DisclosureRequest(hv, Purpose.DIRECT_CARE, DataSubject("Patient/m", "mother"),
                                 DataItem("record", "Condition", source_org=GP_FATHER), LegitimateRelationship(True),
                                 None, consents, NOW), policy)
    assert 0 < len(policy._memo["consent-sets"]) <= _CONSENT_SETS_KEPT
    assert policy.with_combine("deny-overrides")._memo == {}  # another policy, its own memory


@pytest.mark.parametrize("purpose_value", ["direct-care", Purpose.DIRECT_CARE])
def test_purpose_as_text_or_enum_decides_alike(purpose_value):
    req = DisclosureRequest(Requester("midwife", MATERNITY_ORG), purpose_value, DataSubject("Patient/m", "mother"),
                            DataItem("identity", "Patient", frozenset({"R"}), MATERNITY_ORG), LegitimateRelationship(True),
                            None, (), NOW)
    same_decisions(req)
