"""Properties that must hold for every request, checked with hypothesis."""

from __future__ import annotations

import datetime as dt
import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from consent import (
    DataItem,
    DataSubject,
    DisclosureRequest,
    LegitimateRelationship,
    Outcome,
    Purpose,
    Requester,
    decide,
)
from consent.model import FAMILY_ROLES, REQUESTER_ROLES
from consent_testkit import (
    CONSENT_ACTION,
    GP_FATHER,
    HV_ORG,
    MASH_ORG,
    MATERNITY_ORG,
    category_class,
    coding,
    consent,
    label,
    ods_actor,
    purpose,
    role_actor,
)

CATEGORIES = [
    "identity", "contact", "relationship", "care-team", "record", "substance-misuse", "mental-health",
    "domestic-abuse", "violence", "childhood-adversity", "care-leaver", "young-parent", "unheard-of",
]
CLINICAL = set(CATEGORIES)  # an IG officer gets none of it
LABELS = ["R", "V", "N", "ETH", "SUD", "PSY", "SDV", "VIO"]
ORGS = [HV_ORG, MATERNITY_ORG, GP_FATHER, MASH_ORG, "RXX99"]

requesters = st.builds(
    Requester,
    role=st.sampled_from(sorted(REQUESTER_ROLES)),
    org=st.sampled_from(ORGS),
    user=st.just("u1"),
)
items = st.builds(
    DataItem,
    category=st.sampled_from(CATEGORIES),
    resource_type=st.sampled_from(["Patient", "Condition", "Flag", "Observation"]),
    security_labels=st.frozensets(st.sampled_from(LABELS), max_size=3),
    source_org=st.sampled_from(ORGS),
    date=st.one_of(st.none(), st.dates(dt.date(2015, 1, 1), dt.date(2025, 5, 1))),
    reference=st.just("Condition/c1"),
)
subjects = st.builds(DataSubject, reference=st.just("Patient/p1"), family_role=st.sampled_from(sorted(FAMILY_ROLES)))


@st.composite
def provisions(draw, depth=0):
    """A random provision tree (up to three levels) over the elements the engine matches."""
    provision: dict = {}
    if depth > 0 or draw(st.booleans()):
        provision["type"] = draw(st.sampled_from(["permit", "deny"]))
    if draw(st.booleans()):
        provision["actor"] = [draw(st.sampled_from([ods_actor(o) for o in ORGS] + [role_actor("health-visitor", HV_ORG)]))]
    if draw(st.booleans()):
        provision["purpose"] = [purpose(draw(st.sampled_from(["TREAT", "THREAT", "HRESCH"])))]
    if draw(st.booleans()):
        provision["securityLabel"] = [label(draw(st.sampled_from(["PSY", "ETH", "SDV", "VIO"])))]
    if draw(st.booleans()):
        provision["class"] = [category_class(draw(st.sampled_from(CATEGORIES)))]
    if draw(st.booleans()):
        provision["action"] = [{"coding": [coding(CONSENT_ACTION, draw(st.sampled_from(["access", "correct"])))]}]
    if draw(st.booleans()):
        provision["dataPeriod"] = {"start": draw(st.sampled_from(["2018-01-01", "2023-06-01"]))}
    if depth < 2 and draw(st.booleans()):
        provision["provision"] = draw(st.lists(provisions(depth=depth + 1), max_size=2))
    return provision


@st.composite
def consents(draw):
    n = draw(st.integers(0, 3))
    out = []
    for i in range(n):
        out.append(consent(
            f"c{i}",
            draw(st.one_of(st.none(), provisions())),
            status=draw(st.sampled_from(["active", "active", "inactive"])),
            policy_rule=draw(st.sampled_from(["OPTIN", "OPTOUT", None])),
            recorded=draw(st.sampled_from(["2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"])),
        ))
    return tuple(out)


requests = st.builds(
    DisclosureRequest,
    requester=requesters,
    purpose=st.sampled_from(list(Purpose)),
    subject=subjects,
    item=items,
    relationship=st.builds(LegitimateRelationship, holds=st.booleans(), how=st.sampled_from([None, "registered-gp", "mash"])),
    justification=st.one_of(st.none(), st.just(""), st.just("   "), st.just("Child protection concern raised at strategy meeting")),
    consents=consents(),
    as_of=st.just(dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)),
)

SETTINGS = settings(max_examples=250, deadline=None)


@SETTINGS
@given(requests)
def test_no_permit_without_relationship_except_the_safeguarding_route(req):
    decision = decide(req)
    if decision.permitted and not req.relationship.holds:
        assert req.purpose is Purpose.SAFEGUARDING
        assert req.requester.role == "mash"
        assert decision.purpose_of_use == "BTG"


@SETTINGS
@given(requests)
def test_safeguarding_never_permits_without_justification(req):
    decision = decide(req)
    if req.purpose is Purpose.SAFEGUARDING and not (req.justification or "").strip():
        assert decision.outcome is Outcome.DENY


@SETTINGS
@given(requests)
def test_ig_officer_never_gets_clinical_data(req):
    if req.requester.role != "ig-officer":
        req = DisclosureRequest(**{**{f: getattr(req, f) for f in req.__dataclass_fields__},
                                   "requester": Requester("ig-officer", req.requester.org)})
    assert req.item.category in CLINICAL
    assert decide(req).outcome is Outcome.DENY


@SETTINGS
@given(requests)
def test_every_permit_names_a_lawful_basis(req):
    decision = decide(req)
    if decision.permitted:
        assert decision.lawful_basis is not None
        assert decision.lawful_basis.article6.startswith("6(1)(")
        assert decision.rule is not None
        if decision.consent_relied_on is not None:
            assert decision.consent_relied_on.decision == "permit"


@SETTINGS
@given(requests)
def test_every_deny_has_a_reason(req):
    decision = decide(req)
    if decision.outcome is Outcome.DENY:
        assert decision.reason.strip() and decision.reason_code
        assert decision.lawful_basis is None and not decision.obligations
    assert decision.policy_version and decision.purpose_of_use in {"TREAT", "THREAT", "BTG"}


@SETTINGS
@given(requests)
def test_reasons_never_reveal_the_withheld_category(req):
    decision = decide(req)
    if decision.outcome is Outcome.DENY:
        for word in ("substance", "mental", "domestic", "violence", "care leaver", "adversity", "young"):
            assert word not in decision.reason.lower()


def _shuffled(value, rng):
    """The same JSON with every object's keys and every Consent list reordered."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@SETTINGS
@given(requests, st.randoms(use_true_random=False))
def test_decision_never_depends_on_dict_or_consent_ordering(req, rng):
    baseline = decide(req).to_dict()
    shuffled = [_shuffled(json.loads(json.dumps(c)), rng) for c in req.consents]
    rng.shuffle(shuffled)
    other = DisclosureRequest(**{**{f: getattr(req, f) for f in req.__dataclass_fields__}, "consents": tuple(shuffled)})
    assert decide(other).to_dict() == baseline


@SETTINGS
@given(requests)
def test_decisions_are_deterministic_and_serialisable(req):
    first, second = decide(req), decide(req)
    assert first == second
    json.dumps(first.to_dict())


@SETTINGS
@given(requests)
def test_redaction_only_with_a_permit_and_named_fields(req):
    decision = decide(req)
    if decision.outcome is Outcome.PERMIT_WITH_REDACTION:
        assert decision.redacted_fields
    else:
        assert not decision.redacted_fields


def test_shuffle_helper_really_reorders():
    rng = random.Random(1)
    value = {f"k{i}": i for i in range(10)}
    assert list(_shuffled(value, rng)) != list(value)
