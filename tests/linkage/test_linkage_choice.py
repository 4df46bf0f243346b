"""The pure middle of linking (``app.linkage.choice.choose``), without a database: where a record
belongs given the candidates the search found, scored as the service scores them.

The cases are the rules the service applied before the split (``LinkageService._link_one``):
the twin guard, NHS-number conflicts (the pair's and its person's), the household rule,
identifier slips, the level thresholds, birth orders, the admin's decisions, and staying,
moving and splitting. Pairs are scored with the shipped parameters (``load_params``), except
where a rule of the choice itself is under test, which uses candidates with a set label."""
from __future__ import annotations

import pytest

from app.linkage.choice import Candidate, Current, Member, choose, persons_to_check, score_candidate
from app.linkage.matching import LINK, NON_MATCH, POSSIBLE, MatchScore, PersonRecord, Thresholds, load_params
from tests.fhirdata import next_nhs

PARAMS = load_params()
GP = "https://gp.example.nhs.uk/Id/patient"
NEW = "Patient/new"


def rec(ref: str, given: str | None, *, family: str = "Brown", dob: str = "2001-05-06", sex: str = "male",
        postcode: str | None = "LS6 2AB", line: str | None = "12 Oak Road", nhs: str | None = None,
        verified: bool = False, ids: tuple[tuple[str, str], ...] = (), **extra) -> PersonRecord:
    return PersonRecord(ref, given_names=(given,) if given else (), family_names=(family,), birth_date=dob, sex=sex,
                        postcode=postcode, address_lines=(line,) if line else (), nhs_number=nhs, nhs_verified=verified,
                        other_ids=ids, **extra)


def scored(new: PersonRecord, other: PersonRecord, person: str, thresholds: Thresholds = Thresholds()) -> Candidate:
    return score_candidate(new, other.record_ref, person, other, PARAMS, thresholds)


def fixed(ref: str, person: str, label: str, level: str | None, weight: float = 10.0, p: float = 0.999) -> Candidate:
    """A candidate with a set label and level (for the choice's own rules)."""
    return Candidate(ref, person, rec(ref, "Oliver"), MatchScore(p, weight, 0.0, ()), label, level)


def summary(choice) -> tuple:
    return choice.action, choice.person_id, choice.assurance, choice.via.ref if choice.via else None


# ------------------------------------------------------------------ founding, joining, levels
def test_no_candidate_founds_a_new_person_at_level4():
    c = choose(NEW, rec(NEW, "Oliver"), [])
    assert (c.action, c.person_id, c.assurance, c.probability, c.matched_ref, c.how, c.via, c.review) == \
           ("create", None, "level4", 1.0, None, "auto", None, ())


def test_a_demographic_link_joins_at_level2():
    new = rec(NEW, "Jon", dob="1998-04-03", line=None)
    other = scored(new, rec("Patient/a", "John", dob="1998-03-04", line=None), "P")
    assert other.label == LINK
    c = choose(NEW, new, [other])
    assert summary(c) == ("join", "P", "level2", "Patient/a")
    assert (c.probability, c.matched_ref, c.how, c.review) == (other.score.probability, "Patient/a", "auto", ())


@pytest.mark.parametrize("verified, level", [(False, "level3"), (True, "level4")])
def test_the_same_nhs_number_joins_at_level3_and_verified_on_both_sides_at_level4(verified, level):
    nhs = next_nhs()
    new = rec(NEW, "Oliver", nhs=nhs, verified=verified)
    c = choose(NEW, new, [scored(new, rec("Patient/a", "Oliver", nhs=nhs, verified=verified), "P")],
               members={"P": [Member("Patient/a", nhs)]})
    assert summary(c) == ("join", "P", level, "Patient/a")


@pytest.mark.parametrize("thresholds, action, review_level", [
    (Thresholds(), "create", "level1"),                  # p 0.78: between possible (0.2) and link (0.95): review
    (Thresholds(link=0.75), "join", None),               # the link threshold below it: joined
    (Thresholds(possible=0.8), "create", None),          # the review threshold above it: neither
])
def test_the_probability_thresholds_decide_link_review_or_nothing(thresholds, action, review_level):
    new = rec(NEW, "Jon", dob="1998-04-03", postcode=None, line=None)
    other = scored(new, rec("Patient/a", "John", dob="1998-03-04", postcode=None, line=None), "P", thresholds)
    assert 0.75 < other.score.probability < 0.8
    c = choose(NEW, new, [other])
    assert c.action == action
    assert [x.level for x in c.review] == ([review_level] if review_level else [])


# ------------------------------------------------------------------ twin guard
def test_the_twin_guard_sends_plainly_different_given_names_to_review_and_can_be_turned_off():
    new = rec(NEW, "Oliver", ids=((GP, "MRN1"),))
    twin = rec("Patient/a", "Harry", ids=((GP, "MRN2"),))  # sequential numbers: registered together, not a slip
    guarded = scored(new, twin, "P")
    assert guarded.score.probability >= 0.95 and guarded.label == POSSIBLE and "twins" in guarded.reason
    c = choose(NEW, new, [guarded])
    assert c.action == "create" and c.review == (guarded,)
    c = choose(NEW, new, [scored(new, twin, "P", Thresholds(twin_guard=False))])
    assert summary(c) == ("join", "P", "level2", "Patient/a")


def test_the_same_nhs_number_lets_different_given_names_through_the_twin_guard():
    nhs = next_nhs()
    new = rec(NEW, "Oliver", nhs=nhs)
    c = choose(NEW, new, [scored(new, rec("Patient/a", "Harry", nhs=nhs), "P")], members={"P": [Member("Patient/a", nhs)]})
    assert summary(c) == ("join", "P", "level3", "Patient/a")


def test_one_of_a_multiple_birth_needs_exactly_the_same_given_name():
    new = rec(NEW, "Ella", sex="female", multiple_birth=True)
    other = scored(new, rec("Patient/a", "Ellie", sex="female"), "P")
    assert other.score.probability >= 0.95 and "multiple birth" in other.reason
    c = choose(NEW, new, [other])
    assert c.action == "create" and c.review == (other,)


def test_different_birth_orders_are_never_linked_and_reviewed_only_with_the_same_nhs_number():
    twin1, twin2 = rec(NEW, "Twin 1"), rec("Patient/a", "Twin 2")
    other = scored(twin1, twin2, "P")
    assert other.label == NON_MATCH and other.score.probability > 0.95
    assert choose(NEW, twin1, [other]).review == ()
    nhs = next_nhs()
    twin1, twin2 = rec(NEW, "Twin 1", nhs=nhs), rec("Patient/a", "Twin 2", nhs=nhs)
    c = choose(NEW, twin1, [scored(twin1, twin2, "P")])
    assert c.action == "create" and [x.reason for x in c.review] == [
        "the same NHS number on records that give different birth orders"]


def test_a_person_holding_another_birth_order_is_barred():
    new = rec(NEW, "Ella", sex="female", birth_order=1)
    other = scored(new, rec("Patient/a", "Ella", sex="female"), "P")
    assert other.label == LINK
    assert persons_to_check(new, [other], {}) == {"P"}
    barred = choose(NEW, new, [other], members={"P": [Member("Patient/a", None), Member("Patient/b", None, 2)]})
    assert barred.action == "create" and barred.review == (other,)  # the link pair not taken waits for review
    kept = choose(NEW, new, [other], members={"P": [Member("Patient/a", None), Member("Patient/b", None, 1)]})
    assert summary(kept) == ("join", "P", "level2", "Patient/a")
    # the record's own row (its old birth order) does not bar its person
    itself = choose(NEW, new, [other], members={"P": [Member("Patient/a", None), Member(NEW, None, 2)]})
    assert itself.action == "join"


# ------------------------------------------------------------------ identifier slips
@pytest.mark.parametrize("mine, theirs, joins", [
    ("AB12345", "AB12345", True),   # the same local number
    ("AB12345", "AB21345", True),   # adjacent transposition: one keying slip
    ("AB12345", "AB19345", True),   # one substitution before the last character
    ("MRN1", "MRN2", False),        # only the last character differs: sequential registration (twins)
])
def test_a_shared_local_number_allowing_one_keying_slip_lets_a_pair_through_the_twin_guard(mine, theirs, joins):
    new = rec(NEW, "Oliver", ids=((GP, mine),))
    c = choose(NEW, new, [scored(new, rec("Patient/a", "Harry", ids=((GP, theirs),)), "P")])
    assert (c.action == "join") is joins
    assert len(c.review) == (0 if joins else 1)


# ------------------------------------------------------------------ NHS-number conflicts
def test_conflicting_valid_nhs_numbers_are_never_auto_linked():
    new = rec(NEW, "Oliver", nhs=next_nhs(), line=None)
    other = scored(new, rec("Patient/a", "Oliver", nhs=next_nhs(), line=None), "P")
    assert other.score.probability >= 0.95 and other.reason == "conflicting valid NHS numbers"
    c = choose(NEW, new, [other])
    assert c.action == "create" and c.review == (other,)


def test_a_person_holding_another_valid_nhs_number_is_barred():
    mine, theirs = next_nhs(), next_nhs()
    new = rec(NEW, "Oliver", nhs=mine)
    other = scored(new, rec("Patient/a", "Oliver"), "P")  # no NHS number on the pair's other side
    assert other.label == LINK
    barred = choose(NEW, new, [other], members={"P": [Member("Patient/a", None), Member("Patient/b", theirs)]})
    assert barred.action == "create" and barred.review == (other,)
    same = choose(NEW, new, [other], members={"P": [Member("Patient/a", None), Member("Patient/b", mine)]})
    assert summary(same) == ("join", "P", "level2", "Patient/a")


def test_without_an_nhs_number_or_birth_order_the_persons_records_are_not_consulted():
    new = rec(NEW, "Oliver")
    other = scored(new, rec("Patient/a", "Oliver"), "P")
    assert persons_to_check(new, [other], {}) == set()
    c = choose(NEW, new, [other], members={"P": [Member("Patient/b", next_nhs(), 2)]})
    assert c.action == "join"


def test_a_record_whose_valid_nhs_number_changed_is_barred_from_its_own_person():
    old, now = next_nhs(), next_nhs()
    new = rec(NEW, "Oliver", nhs=now)
    co = scored(new, rec("Patient/a", "Oliver"), "P")
    current = Current("P", "auto", "level2", 0.999, "Patient/a", ("Patient/a",))
    split = choose(NEW, new, [co], current=current, members={"P": [Member(NEW, old), Member("Patient/a", None)]})
    assert (split.action, split.person_id, split.assurance) == ("split", None, "level4")
    assert split.review == (co,)
    stays = choose(NEW, new, [co], current=current, members={"P": [Member(NEW, None), Member("Patient/a", None)]})
    assert summary(stays) == ("stay", "P", "level2", "Patient/a")


def test_persons_to_check_leaves_out_pairs_an_admin_rejected():
    new = rec(NEW, "Oliver", nhs=next_nhs())
    a, b = fixed("Patient/a", "P", LINK, "level2"), fixed("Patient/b", "Q", LINK, "level2")
    poss = fixed("Patient/c", "R", POSSIBLE, "level1")
    assert persons_to_check(new, [a, b, poss], {"Patient/b": "no-match"}) == {"P"}


# ------------------------------------------------------------------ household
def test_a_newborn_and_her_mother_at_one_home_are_not_even_reviewed():
    baby = rec(NEW, "Baby", family="Smith", dob="2024-03-01", sex="female")
    mother = scored(baby, rec("Patient/a", "Emma", family="Smith", dob="1995-01-01", sex="female"), "P")
    assert mother.score.household and mother.label == NON_MATCH
    assert choose(NEW, baby, [mother]) == choose(NEW, baby, [])


def test_a_father_and_his_same_named_son_at_one_home_wait_for_review():
    son = rec(NEW, "John", family="Smith", dob="1995-02-03")
    father = scored(son, rec("Patient/a", "John", family="Smith", dob="1968-07-21"), "P")
    assert father.score.household and father.label == POSSIBLE
    c = choose(NEW, son, [father])
    assert c.action == "create" and c.review == (father,)


def test_one_person_recorded_twice_at_one_home_still_joins_on_the_household_score():
    new = rec(NEW, "Oliver")
    other = scored(new, rec("Patient/a", "Oliver"), "P")
    elsewhere = scored(rec(NEW, "Oliver", line=None), rec("Patient/a", "Oliver", line=None), "P")
    assert other.score.household and not elsewhere.score.household
    assert other.score.match_weight < elsewhere.score.match_weight  # the home is not counted again
    assert summary(choose(NEW, new, [other])) == ("join", "P", "level2", "Patient/a")


# ------------------------------------------------------------------ decisions
def test_a_no_match_decision_bars_the_whole_person_of_the_rejected_record():
    new = rec(NEW, "Oliver")
    a, b = fixed("Patient/a", "P", LINK, "level2"), fixed("Patient/b", "P", LINK, "level2", weight=20)
    c = choose(NEW, new, [a, b], decisions={"Patient/a": "no-match"}, person_of={"Patient/a": "P"})
    assert c.action == "create"
    assert c.review == (b,)  # the rejected pair is settled; the other pair was not taken


def test_a_match_decision_holds_a_record_in_its_person():
    new = rec(NEW, "Oliver")
    a = fixed("Patient/a", "P", NON_MATCH, None)
    current = Current("P", "auto", "level2", 0.99, "Patient/a", ("Patient/a",))
    c = choose(NEW, new, [a], current=current, decisions={"Patient/a": "match"}, person_of={"Patient/a": "P"})
    assert (c.action, c.person_id, c.assurance, c.probability, c.matched_ref, c.how, c.via) == \
           ("stay", "P", "level2", 1.0, "Patient/a", "auto", None)
    assert choose(NEW, new, [a], current=current).action == "split"


def test_a_manual_link_stays_at_its_own_level_whatever_else_matches():
    new = rec(NEW, "Oliver")
    other = fixed("Patient/x", "Q", LINK, "level3", weight=40)
    current = Current("P", "manual", "level2", 0.8, "Patient/a", ("Patient/a",))
    c = choose(NEW, new, [fixed("Patient/a", "P", NON_MATCH, None), other], current=current)
    assert (c.action, c.person_id, c.assurance, c.probability, c.matched_ref, c.how, c.via) == \
           ("stay", "P", "level2", 0.8, "Patient/a", "manual", None)
    assert c.review == (other,)


# ------------------------------------------------------------------ stay, move, split
def test_a_record_that_still_matches_its_person_stays_even_when_another_matches_better():
    current = Current("P", "auto", "level2", 0.99, "Patient/a", ("Patient/a",))
    a = fixed("Patient/a", "P", LINK, "level2", weight=8)
    x = fixed("Patient/x", "Q", LINK, "level3", weight=40)
    c = choose(NEW, rec(NEW, "Oliver"), [x, a], current=current)
    assert summary(c) == ("stay", "P", "level2", "Patient/a") and c.review == (x,)


def test_a_record_that_no_longer_matches_its_person_moves_or_splits():
    current = Current("P", "auto", "level2", 0.99, "Patient/a", ("Patient/a",))
    a = fixed("Patient/a", "P", POSSIBLE, "level1")
    x = fixed("Patient/x", "Q", LINK, "level2")
    moved = choose(NEW, rec(NEW, "Oliver"), [x, a], current=current)
    assert summary(moved) == ("move", "Q", "level2", "Patient/x") and moved.review == (a,)
    split = choose(NEW, rec(NEW, "Oliver"), [a], current=current)
    assert summary(split) == ("split", None, "level4", None) and split.review == (a,)


def test_a_record_alone_in_its_person_stays_there_unless_it_now_joins_another():
    alone = Current("P", "auto", "level4", 1.0, None, ())
    stay = choose(NEW, rec(NEW, "Oliver"), [fixed("Patient/x", "Q", POSSIBLE, "level1")], current=alone)
    assert (stay.action, stay.person_id, stay.assurance, stay.how) == ("stay", "P", "level4", "auto")
    move = choose(NEW, rec(NEW, "Oliver"), [fixed("Patient/x", "Q", LINK, "level3")], current=alone)
    assert summary(move) == ("move", "Q", "level3", "Patient/x")


# ------------------------------------------------------------------ which pair wins
def test_the_best_pair_is_the_highest_level_then_the_highest_weight_then_the_first_found():
    new = rec(NEW, "Oliver")
    heavy2 = fixed("Patient/a", "P", LINK, "level2", weight=30)
    light3 = fixed("Patient/b", "Q", LINK, "level3", weight=5)
    assert summary(choose(NEW, new, [heavy2, light3])) == ("join", "Q", "level3", "Patient/b")
    in_one = fixed("Patient/c", "Q", LINK, "level2", weight=50)
    assert choose(NEW, new, [in_one, light3]).via is light3  # within a person too
    first, second = fixed("Patient/d", "R", LINK, "level2", weight=9), fixed("Patient/e", "S", LINK, "level2", weight=9)
    assert choose(NEW, new, [first, second]).via is first
    assert choose(NEW, new, [second, first]).via is second


def test_review_holds_the_undecided_pairs_outside_the_chosen_person_in_the_order_found():
    new = rec(NEW, "Oliver")
    joined = fixed("Patient/a", "P", LINK, "level2", weight=30)
    same_person = fixed("Patient/b", "P", POSSIBLE, "level1")
    other_link = fixed("Patient/c", "Q", LINK, "level2", weight=10)
    possible = fixed("Patient/d", "R", POSSIBLE, "level1")
    nothing = fixed("Patient/e", "S", NON_MATCH, None)
    decided = fixed("Patient/f", "T", POSSIBLE, "level1")
    c = choose(NEW, new, [possible, joined, same_person, nothing, decided, other_link],
               decisions={"Patient/f": "no-match"}, person_of={"Patient/f": "T"})
    assert summary(c) == ("join", "P", "level2", "Patient/a")
    assert c.review == (possible, other_link)
