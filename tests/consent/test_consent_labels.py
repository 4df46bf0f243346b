"""Sensitivity labelling from record codes, through the value sets kept as data."""

from __future__ import annotations

import pytest
import yaml

from consent import categories_for_resource, label_resource, load_policy
from consent.labels import (
    CODE_LISTS,
    CODELIST_DIR,
    TERM_SETS,
    VALUE_SETS,
    VALUESET_DIR,
    YAML_VALUE_SETS,
    data_items_for_resource,
)
from consent.model import DATA_CATEGORY_SYSTEM, V3_ACT_CODE
from consent_testkit import GP_FATHER, LOCAL, SNOMED

HAND_KEPT = ["substance-misuse", "mental-health", "domestic-abuse", "violence", "childhood-adversity", "care-leaver", "young-parent"]
SENSITIVE = HAND_KEPT + ["sexual-health", "child-safeguarding"]


def condition(system: str, code: str, **extra) -> dict:
    return {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": system, "code": code}]}, **extra}


@pytest.mark.parametrize(
    "code,category,labels",
    [
        ((SNOMED, "66214007"), "substance-misuse", {"ETH", "SUD"}),
        ((SNOMED, "7200002"), "substance-misuse", {"ETH", "SUD"}),
        ((SNOMED, "58703003"), "mental-health", {"PSY"}),
        ((LOCAL, "DA-PERPETRATOR"), "domestic-abuse", {"SDV"}),
        ((SNOMED, "65108000"), "violence", {"VIO"}),
        ((LOCAL, "ACE"), "childhood-adversity", set()),
        ((LOCAL, "CARE-LEAVER"), "care-leaver", set()),
        ((LOCAL, "YOUNG-PARENT"), "young-parent", set()),
    ],
)
def test_codes_label_the_record(code, category, labels):
    resource = condition(*code)
    stamped = label_resource(resource)
    assert {c["code"] for c in stamped if c["system"] == V3_ACT_CODE} == labels
    assert {"system": DATA_CATEGORY_SYSTEM, "code": category} in stamped
    assert categories_for_resource(resource) == {category}
    for c in stamped:
        if c["system"] == V3_ACT_CODE:
            assert c["display"]


def test_unlisted_code_is_not_sensitive():
    resource = condition(SNOMED, "38341003")  # Hypertensive disorder
    assert label_resource(resource) == []
    assert categories_for_resource(resource) == {"record"}
    assert categories_for_resource({"resourceType": "Patient"}) == {"identity"}
    assert categories_for_resource({"resourceType": "CareTeam"}) == {"care-team"}


def test_codes_anywhere_in_the_record_count_and_two_categories_give_two_items():
    obs = {
        "resourceType": "Observation", "id": "o1", "effectiveDateTime": "2024-02-03T10:00:00Z",
        "code": {"coding": [{"system": SNOMED, "code": "66214007"}]},
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "35489007"}]},
    }
    assert categories_for_resource(obs) == {"substance-misuse", "mental-health"}
    items = data_items_for_resource(obs, source_org=GP_FATHER)
    assert [i.category for i in items] == ["mental-health", "substance-misuse"]
    assert all({"ETH", "SUD", "PSY"} <= i.security_labels for i in items)
    assert items[0].date.isoformat() == "2024-02-03" and items[0].reference == "Observation/o1"


def test_existing_labels_are_read_back_and_not_repeated():
    labelled = {"resourceType": "Condition", "meta": {"security": [{"system": V3_ACT_CODE, "code": "PSY"},
                                                                   {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}
    assert categories_for_resource(labelled) == {"mental-health"}
    assert label_resource(labelled) == [{"system": DATA_CATEGORY_SYSTEM, "code": "mental-health"}]
    (one,) = data_items_for_resource(labelled)
    assert {"PSY", "R"} <= one.security_labels


def test_label_output_is_sorted_and_stable():
    resource = condition(SNOMED, "66214007")
    assert label_resource(resource) == label_resource(dict(reversed(list(resource.items()))))


def test_every_value_set_file_is_complete_and_cited():
    """The hand-kept YAML value sets (local codes, and the categories no public list covers)
    and the shipped code lists together give every sensitive category its value set."""
    files = sorted(VALUESET_DIR.glob("*.yaml"))
    assert {f.stem for f in files} == set(HAND_KEPT)
    for path in files:
        data = yaml.safe_load(path.read_text())
        assert data["category"] == path.stem and data["version"]
        for entry in data["codes"]:
            assert entry["display"] and entry["source"], (path.name, entry)
            if entry["system"] == SNOMED:
                assert entry["code"].isdigit() and 6 <= len(entry["code"]) <= 18
    assert set(VALUE_SETS) == set(SENSITIVE)
    for code_list in CODE_LISTS.values():
        assert code_list.category in SENSITIVE
        assert (CODELIST_DIR / code_list.file).is_file() and (CODELIST_DIR / code_list.provenance).is_file()
        assert f"codelists/{code_list.file}" in VALUE_SETS[code_list.category].sources


def test_value_set_labels_agree_with_the_policy():
    """A policy category's labels are the union of the labels its value sets (hand-kept YAML,
    code lists, term sets) can give; and every value set is a sensitive category of the policy."""
    policy = load_policy()
    for category in SENSITIVE:
        assert policy.categories[category].sensitive, category
        assert policy.categories[category].value_set == category
        given = set(YAML_VALUE_SETS[category].labels) if category in YAML_VALUE_SETS else set()
        for code_list in CODE_LISTS.values():
            if code_list.category == category:
                given |= {label for labels in code_list.codes.values() for label in labels}
        for term_set in TERM_SETS.values():
            if term_set.category == category:
                given |= set(term_set.labels)
        assert set(policy.categories[category].labels) == given == set(VALUE_SETS[category].labels), category
    for name, spec in policy.categories.items():
        if spec.value_set:
            assert spec.value_set in VALUE_SETS, name
