"""`familyview classify` as an IG officer uses it: how a code or a text is classified, and why."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app import cli
from consent.labels import CODELISTS_VERSION, TERMS_VERSION

FAMILYVIEW = Path(sys.executable).parent / "familyview"


def run(capsys, *argv: str) -> str:
    assert cli.main(["classify", *argv]) == 0
    return capsys.readouterr().out


def test_a_snomed_code_names_its_list_version_category_and_labels():
    # The installed command, as an IG officer types it.
    out = subprocess.run([str(FAMILYVIEW), "classify", "75544000"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "substance-misuse.csv" in out and "Opioid dependence" in out
    assert CODELISTS_VERSION in out
    assert "classified: substance-misuse; labels ETH, SUD" in out


def test_a_dmd_code_matches_under_both_systems(capsys):
    out = run(capsys, "36120711000001104")
    assert "opioid-substitution.csv" in out and "Methadone 1mg/ml oral solution" in out
    assert "http://snomed.info/sct and https://dmd.nhs.uk" in out
    assert "classified: substance-misuse; labels ETH, SUD" in out


def test_system_and_code_and_a_local_code(capsys):
    out = run(capsys, "http://snomed.info/sct|105629000")
    assert "sexual-health-hiv.csv" in out and "classified: sexual-health; labels STD" in out
    out = run(capsys, "MARAC")
    assert "domestic-abuse.yaml" in out and "term 'marac'" in out and "classified: domestic-abuse; labels SDV" in out


def test_free_text_names_the_term_and_the_term_file_version(capsys):
    out = run(capsys, "Known to community drug and alcohol team")
    assert "term 'drug and alcohol'" in out and "terms.yaml" in out and f"version {TERMS_VERSION}" in out
    assert "classified: substance-misuse; labels ETH, SUD" in out
    out = run(capsys, "Heroin", "user")  # several words are one text
    assert "'Heroin user' read as text" in out and "term 'heroin'" in out


def test_a_false_friend_is_unclassified_and_says_what_unclassified_means(capsys):
    out = run(capsys, "Depressed skull fracture")
    assert "false friend 'depressed skull fracture'" in out
    assert "\nunclassified\n" in out
    assert "father, male carer or other carer" in out and "another organisation" in out and "confidential" in out
    out = run(capsys, "38341003")  # hypertensive disorder: in no list
    assert "\nunclassified\n" in out


def test_json_output(capsys):
    got = json.loads(run(capsys, "--json", "ST depression; low mood"))
    assert got["classified"] and got["categories"] == ["mental-health"] and got["labels"] == ["PSY"]
    assert got["matches"][0]["false_friends_removed"] == ["st depression"]


def test_nothing_to_classify_is_an_error(capsys):
    assert cli.main(["classify", "  "]) == 2
    assert "nothing to classify" in capsys.readouterr().out
