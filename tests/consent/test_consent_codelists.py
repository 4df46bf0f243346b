"""The UK code lists shipped as data: every code places its record, with the labels of the
list it came from, and the shipped files are what the build script makes of the sources."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from consent import categories_for_resource, label_resource, load_policy
from consent.labels import (
    ACT_CODE_DISPLAY,
    CATEGORY_BY_LABEL,
    CODE_LISTS,
    CODELIST_DIR,
    CODELISTS_VERSION,
    DMD_SYSTEM,
    SNOMED_SYSTEM,
    TERM_SETS,
    VALUE_SETS,
    YAML_VALUE_SETS,
    classify_coding,
    data_items_for_resource,
    load_code_lists,
)
from consent.model import DATA_CATEGORY_SYSTEM, V3_ACT_CODE

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "codelists"
MANIFEST = yaml.safe_load((CODELIST_DIR / "manifest.yaml").read_text(encoding="utf-8"))

#: The mapping the issue asks for: list file -> (category, labels, systems).
EXPECTED = {
    "substance-misuse.csv": ("substance-misuse", ["ETH", "SUD"], [SNOMED_SYSTEM]),
    "opioid-substitution.csv": ("substance-misuse", ["ETH", "SUD"], [DMD_SYSTEM, SNOMED_SYSTEM]),
    "mental-health.csv": ("mental-health", ["PSY"], [SNOMED_SYSTEM]),
    "antipsychotics-lithium.csv": ("mental-health", ["PSY"], [DMD_SYSTEM, SNOMED_SYSTEM]),
    "antidepressants.csv": ("mental-health", ["PSY"], [DMD_SYSTEM, SNOMED_SYSTEM]),
    "domestic-abuse.csv": ("domestic-abuse", ["SDV"], [SNOMED_SYSTEM]),
    "violence.csv": ("violence", ["VIO"], [SNOMED_SYSTEM]),
    "safeguarding.csv": ("child-safeguarding", [], [SNOMED_SYSTEM]),
    "sexual-health-hiv.csv": ("sexual-health", ["HIV", "STD"], [SNOMED_SYSTEM]),
    "hiv-antiretrovirals.csv": ("sexual-health", ["HIV"], [DMD_SYSTEM, SNOMED_SYSTEM]),
}


def rows(file: str) -> list[dict[str, str]]:
    with open(CODELIST_DIR / file, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def expected_labels(file: str, row: dict[str, str]) -> set[str]:
    """Labels as the issue states them, worked out here independently of the loader."""
    if file == "sexual-health-hiv.csv":
        got = set()
        if "hiv" in row["source"].lower():
            got.add("HIV")
        if "genital-tract-infections" in row["source"]:
            got.add("STD")
        assert got, row  # every code of the list comes from an HIV or an STI source
        return got
    return set(EXPECTED[file][1])


def record(system: str, code: str, medicine: bool) -> dict:
    if medicine:
        return {"resourceType": "MedicationStatement", "id": "m1", "status": "active",
                "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]}}
    return {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": system, "code": code}]}}


#: Codes in more than one place (a list and another list or a YAML value set) may carry more labels.
_OWNERS: dict[str, int] = {}
for _entry in MANIFEST["lists"]:
    for _row in rows(_entry["file"]):
        _OWNERS[_row["code"]] = _OWNERS.get(_row["code"], 0) + 1
for _vs in YAML_VALUE_SETS.values():
    for _system, _code in _vs.codes:
        _OWNERS[_code] = _OWNERS.get(_code, 0) + 1


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_every_code_of_every_list_places_its_record(file):
    category, _labels, systems = EXPECTED[file]
    medicine = DMD_SYSTEM in systems
    listed = rows(file)
    assert listed
    for row in listed:
        want = expected_labels(file, row)
        for system in systems:
            resource = record(system, row["code"], medicine)
            stamped = label_resource(resource)
            acts = {c["code"] for c in stamped if c["system"] == V3_ACT_CODE}
            cats = {c["code"] for c in stamped if c["system"] == DATA_CATEGORY_SYSTEM}
            assert category in cats, (file, system, row["code"], row["term"])
            if _OWNERS[row["code"]] == 1:
                assert acts == want and cats == {category}, (file, row["code"], row["term"], acts)
            else:
                assert want <= acts, (file, row["code"], row["term"], acts)
    if not medicine:  # a condition list's codes are SNOMED CT, not dm+d
        assert classify_coding(DMD_SYSTEM, listed[0]["code"]) == classify_coding("https://example.org/other", "x")


@pytest.mark.parametrize(
    "code,term",
    [("75544000", "opioid dependence"), ("66590003", "alcohol dependence"), ("85005007", "cannabis dependence")],
)
def test_dependence_codes_are_substance_misuse(code, term):
    resource = record(SNOMED_SYSTEM, code, medicine=False)
    stamped = label_resource(resource)
    assert {c["code"] for c in stamped if c["system"] == V3_ACT_CODE} == {"ETH", "SUD"}, term
    assert categories_for_resource(resource) == {"substance-misuse"}
    assert all(c.get("display") for c in stamped if c["system"] == V3_ACT_CODE)


def test_a_methadone_dmd_code_is_substance_misuse_under_both_systems():
    methadone = next(r for r in rows("opioid-substitution.csv") if r["term"].startswith("Methadone 1mg/ml oral solution"))
    for system in (DMD_SYSTEM, SNOMED_SYSTEM):
        for kind in ("MedicationStatement", "MedicationRequest"):
            resource = {"resourceType": kind, "id": "m1",
                        "medicationCodeableConcept": {"coding": [{"system": system, "code": methadone["code"]}]}}
            assert categories_for_resource(resource) == {"substance-misuse"}, (system, kind)
            (item,) = data_items_for_resource(resource, source_org="Y90001")
            assert {"ETH", "SUD"} <= item.security_labels and item.reference == f"{kind}/m1"


def test_hiv_and_sti_codes_get_their_own_label():
    hiv = record(SNOMED_SYSTEM, "86406008", medicine=False)  # Human immunodeficiency virus infection
    sti = record(SNOMED_SYSTEM, "105629000", medicine=False)  # Chlamydial infection
    arv = next(r for r in rows("hiv-antiretrovirals.csv"))
    art = record(DMD_SYSTEM, arv["code"], medicine=True)
    for resource, want in ((hiv, {"HIV"}), (sti, {"STD"}), (art, {"HIV"})):
        stamped = label_resource(resource)
        assert {c["code"] for c in stamped if c["system"] == V3_ACT_CODE} == want
        assert {"system": DATA_CATEGORY_SYSTEM, "code": "sexual-health"} in stamped
    both = {"resourceType": "Condition", "id": "c2", "code": {"coding": [
        {"system": SNOMED_SYSTEM, "code": "86406008"}, {"system": SNOMED_SYSTEM, "code": "105629000"}]}}
    assert {c["code"] for c in label_resource(both) if c["system"] == V3_ACT_CODE} == {"HIV", "STD"}
    assert CATEGORY_BY_LABEL["HIV"] == CATEGORY_BY_LABEL["STD"] == "sexual-health"
    assert ACT_CODE_DISPLAY["HIV"] == "HIV/AIDS information sensitivity"
    assert ACT_CODE_DISPLAY["STD"] == "sexually transmitted disease information sensitivity"


def test_labels_already_on_a_record_bring_only_what_they_imply():
    hiv_labelled = {"resourceType": "Condition", "meta": {"security": [{"system": V3_ACT_CODE, "code": "HIV"}]}}
    assert categories_for_resource(hiv_labelled) == {"sexual-health"}
    assert label_resource(hiv_labelled) == [{"system": DATA_CATEGORY_SYSTEM, "code": "sexual-health"}]  # no STD
    eth_only = {"resourceType": "Condition", "meta": {"security": [{"system": V3_ACT_CODE, "code": "ETH"}]}}
    assert {c["code"] for c in label_resource(eth_only)} == {"SUD", "substance-misuse"}
    category_only = {"resourceType": "Condition", "meta": {"security": [{"system": DATA_CATEGORY_SYSTEM, "code": "sexual-health"}]}}
    assert {c["code"] for c in label_resource(category_only)} == {"HIV", "STD"}  # which one is unknown: both


def test_manifest_matches_the_shipped_files_and_the_issue():
    assert MANIFEST["version"] == CODELISTS_VERSION
    assert MANIFEST["version"].startswith(MANIFEST["snapshot_dates"]["latest"] + "+")
    assert {e["file"] for e in MANIFEST["lists"]} == set(EXPECTED)
    for entry in MANIFEST["lists"]:
        data = (CODELIST_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert len(rows(entry["file"])) == entry["codes"], entry["file"]
        assert data.startswith(b"code,term,source\n") and b"\r" not in data
        category, labels, systems = EXPECTED[entry["file"]]
        assert (entry["category"], entry["labels"], entry["systems"]) == (category, labels, systems), entry["file"]
        assert CODE_LISTS[entry["id"]].sha256 == entry["sha256"]
        assert (CODELIST_DIR / entry["provenance"]).is_file()
    for name, digest in MANIFEST["provenance"].items():
        assert hashlib.sha256((CODELIST_DIR / name).read_bytes()).hexdigest() == digest
    sexual = next(e for e in MANIFEST["lists"] if e["file"] == "sexual-health-hiv.csv")
    assert sum(sexual["codes_by_label"].values()) >= sexual["codes"] and set(sexual["codes_by_label"]) == {"HIV", "STD"}


def test_every_label_used_is_a_known_act_code():
    used = {label for vs in VALUE_SETS.values() for label in vs.labels}
    used |= {label for cl in CODE_LISTS.values() for labels in cl.codes.values() for label in labels}
    used |= {label for ts in TERM_SETS.values() for label in ts.labels}
    used |= {label for e in MANIFEST["lists"] for label in e["labels"]}
    used |= {label for e in MANIFEST["lists"] for rule in e.get("label_rules", ()) for label in rule["labels"]}
    assert used == {"ETH", "SUD", "PSY", "SDV", "VIO", "HIV", "STD"}
    assert used <= set(ACT_CODE_DISPLAY)
    policy_labels = {label for c in load_policy().categories.values() for label in c.labels}
    assert used == policy_labels


def test_a_hand_edited_list_is_refused(tmp_path):
    copy = tmp_path / "codelists"
    shutil.copytree(CODELIST_DIR, copy)
    target = copy / "violence.csv"
    target.write_bytes(target.read_bytes().replace(b"\n", b"\n999999999,Invented,nowhere\n", 1))
    with pytest.raises(ValueError, match="sha256"):
        load_code_lists(copy)
    version, lists = load_code_lists(CODELIST_DIR)
    assert version == CODELISTS_VERSION and set(lists) == set(CODE_LISTS)


def _build_module():
    spec = importlib.util.spec_from_file_location("build_valuesets", REPO / "scripts" / "build_valuesets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/codelists is not here (a user's clone): nothing to compare with")
def test_shipped_files_are_what_the_build_script_makes(tmp_path):
    build = _build_module()
    out = tmp_path / "out"
    build.build(SHARED, out)
    shipped = {p.name: p.read_bytes() for p in CODELIST_DIR.iterdir() if p.is_file()}
    built = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(shipped) == set(built)
    for name in sorted(built):
        assert shipped[name] == built[name], f"{name} differs: rerun scripts/build_valuesets.py"
    again = tmp_path / "again"
    build.build(SHARED, again)
    assert {p.name: p.read_bytes() for p in again.iterdir()} == built  # deterministic
    for entry in MANIFEST["lists"]:  # rows unchanged from the source, bar line endings
        source = (SHARED / entry["source_file"]).read_bytes()
        assert hashlib.sha256(source).hexdigest() == entry["source_sha256"]
        assert source.replace(b"\r\n", b"\n") == shipped[entry["file"]]


def test_the_build_script_refuses_a_broken_list(tmp_path):
    build = _build_module()
    source = tmp_path / "src"
    (source / "medicines").mkdir(parents=True)
    for path, _id, *_rest in build.LISTS:
        (source / path).write_text("code,term,source\n123456789,A synthetic term,synthetic\n")
    for path, _name in build.PROVENANCE_FILES:
        (source / path).write_text("Synthetic provenance, 2024-01-02\n")
    manifest = build.build(source, tmp_path / "ok")
    assert manifest["snapshot_dates"] == {"earliest": "2024-01-02", "latest": "2024-01-02"}
    (source / "violence.csv").write_text("code,term\n123456789,Assault\n")
    with pytest.raises(build.BuildError, match="header"):
        build.build(source, tmp_path / "bad")
    (source / "violence.csv").write_text("code,term,source\nABC,Assault,synthetic\n")
    with pytest.raises(build.BuildError, match="not a SNOMED"):
        build.build(source, tmp_path / "bad")
