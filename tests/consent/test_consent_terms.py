"""The term backstop: free text, local codes and displays place a record when no code does,
and the false friends (ST depression, bipolar diathermy, alcohol swabs...) do not."""

from __future__ import annotations

import pytest
import yaml

from consent import categories_for_resource, label_resource, load_policy
from consent.classification import explain_classification
from consent.labels import TERM_SETS, TERMS_PATH, TERMS_VERSION, data_items_for_resource, match_terms, normalise_text
from consent.model import DATA_CATEGORY_SYSTEM, V3_ACT_CODE

SNOMED = "http://snomed.info/sct"
PRACTICE_LOCAL = "https://practice.example.nhs.uk/CodeSystem/local-codes"


def text_only(text: str, kind: str = "Condition") -> dict:
    return {"resourceType": kind, "id": "t1", "code": {"text": text}}


def acts(resource: dict) -> set[str]:
    return {c["code"] for c in label_resource(resource) if c["system"] == V3_ACT_CODE}


POSITIVES = [
    ("Known to community drug and alcohol team", "substance-misuse", {"ETH", "SUD"}),
    ("On methadone script", "substance-misuse", {"ETH", "SUD"}),
    ("Heroin user", "substance-misuse", {"ETH", "SUD"}),
    ("Cocaine use", "substance-misuse", {"ETH", "SUD"}),
    ("Alcohol dependence", "substance-misuse", {"ETH", "SUD"}),
    ("Subutex 8mg sublingual", "substance-misuse", {"ETH", "SUD"}),
    ("Drinks above recommended limits; alcohol excess", "substance-misuse", {"ETH", "SUD"}),
    ("Low mood", "mental-health", {"PSY"}),
    ("Schizophrenia", "mental-health", {"PSY"}),
    ("Sectioned under the Mental Health Act", "mental-health", {"PSY"}),
    ("Self harm", "mental-health", {"PSY"}),
    ("SELF-HARM", "mental-health", {"PSY"}),
    ("Overdose", "mental-health", {"PSY"}),
    ("Overdose of insulin", "mental-health", {"PSY"}),  # decided: counts (see terms.yaml)
    ("Postnatal depression", "mental-health", {"PSY"}),
    ("Suicidal thoughts", "mental-health", {"PSY"}),
    ("Domestic violence", "domestic-abuse", {"SDV"}),
    ("IDVA referral", "domestic-abuse", {"SDV"}),
    ("MARAC", "domestic-abuse", {"SDV"}),
    ("Discussed at MARAC 3/5/24", "domestic-abuse", {"SDV"}),
    ("Perpetrator of domestic abuse", "domestic-abuse", {"SDV"}),
    ("Assault", "violence", {"VIO"}),
    ("Assaulted by stranger", "violence", {"VIO"}),
    ("Child protection plan", "child-safeguarding", set()),
    ("Looked after child", "child-safeguarding", set()),
    ("Section 47 enquiry", "child-safeguarding", set()),
    ("HIV positive", "sexual-health", {"HIV"}),
    ("On PrEP: pre-exposure prophylaxis", "sexual-health", {"HIV"}),
    ("Chlamydia", "sexual-health", {"STD"}),
    ("Gonorrhoea", "sexual-health", {"STD"}),
    ("Care leaver", "care-leaver", set()),
    ("Teenage parent", "young-parent", set()),
    ("Adverse childhood experiences", "childhood-adversity", set()),
]


@pytest.mark.parametrize("text,category,labels", POSITIVES, ids=[p[0] for p in POSITIVES])
def test_text_alone_places_the_record(text, category, labels):
    resource = text_only(text)
    assert categories_for_resource(resource) == {category}
    assert acts(resource) == labels
    assert {"system": DATA_CATEGORY_SYSTEM, "code": category} in label_resource(resource)


FALSE_FRIENDS = [
    "Depression of ST segment",
    "ST depression",
    "ST segment depression on exercise ECG",
    "Depressed skull fracture",
    "Respiratory depression after opioid analgesia",
    "Drug allergy",
    "Drug interaction",
    "Medication review",
    "Drug monitoring",
    "Alcohol hand gel",
    "Alcohol swab",
    "Alcohol intake within recommended limits",
    "Non-drinker",
    "Non-alcoholic fatty liver disease",
    "Bipolar diathermy",
    "Herpes zoster",
    "Shingles",
    "Domestic travel",
    "Assault course",
    "Mental nerve block",
    "Hepatitis B vaccination",
    "Smoking cessation",
    "Nicotine addiction",
    "Opioid analgesic for back pain",
    "Codeine 30mg tablets",
    "Buprenorphine 5micrograms/hour transdermal patches",
    "Methylated spirit",
    "Chlamydia pneumoniae infection",
    "Hearing aids",
    "Lithium battery ingestion",
    "Mashed potato diet",
    "Depressed anterior fontanelle",
    "Baby has drunk 60ml of formula",
    "Substance use: none",
    "No safeguarding concerns",
]


@pytest.mark.parametrize("text", FALSE_FRIENDS)
def test_false_friends_do_not_count(text):
    resource = text_only(text)
    assert label_resource(resource) == []
    assert categories_for_resource(resource) == {"record"}


def test_a_false_friend_is_cut_out_but_a_real_mention_beside_it_still_counts():
    assert categories_for_resource(text_only("ST depression on ECG; known depression")) == {"mental-health"}
    (hit,) = match_terms("ST depression on ECG; known depression")
    assert hit.phrase == "depression" and hit.removed == ("st depression",)
    assert categories_for_resource(text_only("Assault course injury; assaulted last week")) == {"violence"}
    assert categories_for_resource(text_only("No safeguarding concerns now; child protection plan ended 2023")) == {"child-safeguarding"}


def test_domestic_violence_is_domestic_abuse_not_also_violence():
    resource = text_only("Victim of domestic violence")
    assert categories_for_resource(resource) == {"domestic-abuse"}
    assert acts(resource) == {"SDV"}


def test_hiv_and_sti_words_get_their_own_label():
    assert acts(text_only("HIV positive")) == {"HIV"}
    assert acts(text_only("Chlamydia trachomatis infection")) == {"STD"}
    assert acts(text_only("HIV and syphilis screen positive")) == {"HIV", "STD"}


def test_text_in_a_coding_display_counts():
    unlisted = {"resourceType": "Condition", "id": "c1",
                "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Heroin user"}]}}
    assert categories_for_resource(unlisted) == {"substance-misuse"}


def test_a_local_code_with_a_display_counts():
    local = {"resourceType": "Flag", "id": "f1", "status": "active",
             "code": {"coding": [{"system": PRACTICE_LOCAL, "code": "XaB12", "display": "IDVA referral made"}]}}
    assert categories_for_resource(local) == {"domestic-abuse"}
    assert acts(local) == {"SDV"}
    no_system = {"resourceType": "Flag", "id": "f2", "code": {"coding": [{"code": "X1", "display": "MARAC"}]}}
    assert categories_for_resource(no_system) == {"domestic-abuse"}


def test_notes_dosage_and_medicines_are_read():
    obs = {"resourceType": "Observation", "id": "o1", "code": {"coding": [{"system": SNOMED, "code": "27113001", "display": "Body weight"}]},
           "note": [{"text": "Weighed today."}, {"text": "Disclosed cocaine use at weekends."}]}
    assert categories_for_resource(obs) == {"substance-misuse"}
    med = {"resourceType": "MedicationStatement", "id": "m1", "status": "active",
           "medicationCodeableConcept": {"text": "Subutex 8mg sublingual tablets"}}
    assert categories_for_resource(med) == {"substance-misuse"}
    req = {"resourceType": "MedicationRequest", "id": "m2", "status": "active", "intent": "order",
           "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": "99999911000001100", "display": "Olanzapine 5mg tablets"}]},
           "dosageInstruction": [{"text": "One at night"}]}
    assert categories_for_resource(req) == {"mental-health"}
    string_value = {"resourceType": "Observation", "id": "o2", "code": {"text": "Social history"}, "valueString": "Heroin user, on methadone"}
    assert categories_for_resource(string_value) == {"substance-misuse"}


def test_codes_and_terms_are_a_union():
    both = {"resourceType": "Condition", "id": "c1",
            "code": {"coding": [{"system": SNOMED, "code": "35489007"}], "text": "Depression"},
            "note": [{"text": "Partner reports heroin use"}]}
    assert categories_for_resource(both) == {"mental-health", "substance-misuse"}
    items = data_items_for_resource(both, source_org="Y90001")
    assert [i.category for i in items] == ["mental-health", "substance-misuse"]
    assert all({"PSY", "ETH", "SUD"} <= i.security_labels for i in items)


def test_names_addresses_references_and_label_displays_are_not_read():
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"text": "Crystal Heroin", "family": "Heroin"}],
               "address": [{"text": "1 Methadone Street"}]}
    assert categories_for_resource(patient) == {"identity"}
    by_reference = {"resourceType": "MedicationStatement", "id": "m1", "status": "active",
                    "medicationReference": {"reference": "Medication/x", "display": "Methadone"}}
    assert label_resource(by_reference) == []
    consent = {"resourceType": "Consent", "id": "k1", "status": "active", "provision": {
        "securityLabel": [{"system": V3_ACT_CODE, "code": "PSY", "display": "psychiatry information sensitivity"}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT", "display": "treatment"}]}}
    assert label_resource(consent) == []
    labelled = {"resourceType": "Condition", "id": "c1", "code": {"text": "Hypertension"},
                "meta": {"tag": [{"system": "https://example.org/tags", "code": "x", "display": "substance misuse audit"}]}}
    assert label_resource(labelled) == []


def test_normalisation_matches_punctuation_and_case_alike():
    assert normalise_text("  Self‑Harm (deliberate)!  ") == "self harm deliberate"
    for text in ("self-harm", "Self Harm", "SELF  HARM", "self_harm", "Clare's Law disclosure"):
        assert match_terms(text), text
    assert not match_terms("selfharm-ish")  # word boundaries: no match inside a word


def test_the_explanation_names_the_phrase_the_false_friend_and_the_versions():
    got = explain_classification("ST depression; low mood")
    (term,) = got["matches"]
    assert term["phrase"] == "low mood" and term["false_friends_removed"] == ["st depression"]
    assert term["version"] == TERMS_VERSION and got["categories"] == ["mental-health"] and got["labels"] == ["PSY"]
    friend = explain_classification("Bipolar diathermy")
    assert not friend["classified"] and friend["false_friends"][0]["false_friends_removed"] == ["bipolar diathermy"]


def test_the_term_file_is_versioned_and_agrees_with_the_policy():
    data = yaml.safe_load(TERMS_PATH.read_text(encoding="utf-8"))
    assert data["version"] == TERMS_VERSION
    policy = load_policy()
    assert {ts.category for ts in TERM_SETS.values()} == {c for c, spec in policy.categories.items() if spec.value_set}
    for ts in TERM_SETS.values():
        assert set(ts.labels) <= set(policy.categories[ts.category].labels), ts.id
        assert len(ts.terms) == len(set(ts.terms)), ts.id
        for term in ts.terms:  # every term matches its own words, so none is dead
            assert ts.pattern.search(normalise_text(term.replace("*", ""))), (ts.id, term)
    assert {ts.id for ts in TERM_SETS.values() if ts.category == "sexual-health"} == {"hiv", "sti"}
