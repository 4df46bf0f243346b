"""fhir_profiles/: every file is valid FHIR, every canonical resolves, the terminology says what
DESIGN.md says, and every example is accepted or rejected by the gateway's own validation exactly
as the example claims."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from fhir.resources.R4B import get_fhir_model_class

from app.errors import FhirError
from app.fhir.validation import is_valid_nhs_number, validate_resource, validate_structure

ROOT = Path(__file__).resolve().parents[2] / "fhir_profiles"
BASE = "https://familyview.example.nhs.uk/fhir"
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
UKCORE_ROLE = "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdditionalPersonRelationshipRole"
NHS = "https://fhir.nhs.uk/Id/nhs-number"

# DESIGN.md, "Wire contract" and "The family"
DESIGN_FAMILY_ROLES = {"infant", "mother", "father", "male-carer", "other-carer"}
DESIGN_MOTHER = {"MTH", "NMTH", "GESTM"}
DESIGN_FATHER = {"FTH", "NFTH", "NFTHF", "STPFTH", "FTHFOST", "ADOPTF", "PRN", "NPRN"}
DESIGN_MALE_CARER = {"SIGOTHR", "DOMPART", "HUSB", "SPS", "FMRSPS", "FAMMEMB", "ROOM"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


ALL_JSON = sorted(ROOT.rglob("*.json"))
CONFORMANCE = sorted(p for p in ROOT.glob("*.json"))
VALID_EXAMPLES = sorted(EXAMPLES.glob("*.json"))
INVALID_EXAMPLES = sorted(p for p in INVALID.rglob("*.json") if not p.name.endswith(".outcome.json"))
OUTCOMES = sorted(INVALID.rglob("*.outcome.json"))


def by_canonical() -> dict[str, dict[str, Any]]:
    return {load(p)["url"]: load(p) for p in CONFORMANCE}


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_the_profile_folder_is_not_empty():
    assert len(CONFORMANCE) >= 14 and VALID_EXAMPLES and INVALID_EXAMPLES


@pytest.mark.parametrize("path", ALL_JSON, ids=rel)
def test_every_json_file_is_a_valid_r4b_resource(path):
    data = load(path)
    model = get_fhir_model_class(data["resourceType"])
    model.model_validate(data)


@pytest.mark.parametrize("path", CONFORMANCE, ids=rel)
def test_conformance_resources_are_named_by_their_canonical(path):
    data = load(path)
    rt, rid = data["resourceType"], data["id"]
    assert path.name == f"{rt}-{rid}.json"
    assert data["url"] == f"{BASE}/{rt}/{rid}"
    assert data.get("version") and data.get("status") in {"draft", "active"}
    assert data.get("description") and data.get("publisher")
    assert re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,254}", data["name"]), "name must be computer-friendly"


def _canonicals(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and v.startswith(BASE + "/") and k not in {"url"}:
                yield v
            else:
                yield from _canonicals(v)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, str) and v.startswith(BASE + "/"):
                yield v
            else:
                yield from _canonicals(v)


@pytest.mark.parametrize("path", ALL_JSON, ids=rel)
def test_every_familyview_canonical_resolves_to_a_file_here(path):
    known = set(by_canonical())
    for url in _canonicals(load(path)):
        assert url.split("|")[0] in known, f"{rel(path)} refers to {url}, which fhir_profiles/ does not define"


# ---------------------------------------------------------------- terminology


def test_family_role_codesystem_has_exactly_the_design_codes():
    cs = load(ROOT / "CodeSystem-family-role.json")
    codes = [c["code"] for c in cs["concept"]]
    assert set(codes) == DESIGN_FAMILY_ROLES and len(codes) == len(set(codes))
    assert cs["content"] == "complete" and cs["count"] == len(codes) and cs["caseSensitive"] is True
    assert all(c.get("display") and c.get("definition") for c in cs["concept"])
    vs = load(ROOT / "ValueSet-family-role.json")
    assert vs["compose"]["include"] == [{"system": cs["url"]}]
    assert cs["valueSet"] == vs["url"]


def test_family_role_codes_match_the_consent_engine():
    model = pytest.importorskip("consent.model")
    assert set(model.FAMILY_ROLES) == DESIGN_FAMILY_ROLES


def test_family_role_extension_binds_the_value_set():
    sd = load(ROOT / "StructureDefinition-family-role.json")
    assert sd["url"] == f"{BASE}/StructureDefinition/family-role"
    assert sd["type"] == "Extension" and sd["kind"] == "complex-type"
    assert {c["expression"] for c in sd["context"]} == {"Patient", "RelatedPerson"}
    els = {e["id"]: e for e in sd["differential"]["element"]}
    assert els["Extension.url"]["fixedUri"] == sd["url"]
    value = els["Extension.value[x]"]
    assert value["type"] == [{"code": "code"}] and value["min"] == 1
    assert value["binding"] == {"strength": "required", "valueSet": f"{BASE}/ValueSet/family-role"}


def test_linkage_assurance_extension_is_level1_to_level4():
    sd = load(ROOT / "StructureDefinition-linkage-assurance.json")
    value = {e["id"]: e for e in sd["differential"]["element"]}["Extension.value[x]"]
    assert value["type"] == [{"code": "code"}]
    assert value["binding"]["strength"] == "required"
    assert value["binding"]["valueSet"].startswith("http://hl7.org/fhir/ValueSet/identity-assuranceLevel")
    # the same codes as Person.link.assurance, which linkage exposes
    person_link = get_fhir_model_class("PersonLink")
    assert person_link.model_fields["assurance"].json_schema_extra["enum_values"] == ["level1", "level2", "level3", "level4"]


def test_inferred_relationship_extension_has_boolean_and_assurance():
    sd = load(ROOT / "StructureDefinition-inferred-relationship.json")
    els = {e["id"]: e for e in sd["differential"]["element"]}
    assert els["Extension.value[x]"]["max"] == "0"
    assert els["Extension.extension:inferred"]["min"] == 1
    assert els["Extension.extension:inferred.value[x]"]["type"] == [{"code": "boolean"}]
    assert els["Extension.extension:assurance.value[x]"]["binding"]["valueSet"].startswith("http://hl7.org/fhir/ValueSet/identity-assuranceLevel")
    assert els["Extension.extension:inferred.url"]["fixedUri"] == "inferred"
    assert els["Extension.extension:assurance.url"]["fixedUri"] == "assurance"


def _vs_codes(vs: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(inc["system"], c["code"]): c.get("display", "") for inc in vs["compose"]["include"] if "system" in inc for c in inc.get("concept", [])}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mother-relationship", {(V3_ROLE, c) for c in DESIGN_MOTHER}),
        ("father-relationship", {(V3_ROLE, c) for c in DESIGN_FATHER}),
        ("male-carer-relationship", {(V3_ROLE, c) for c in DESIGN_MALE_CARER} | {(UKCORE_ROLE, "Carer")}),
    ],
)
def test_relationship_value_sets_group_codes_as_design_does(name, expected):
    codes = _vs_codes(load(ROOT / f"ValueSet-{name}.json"))
    assert set(codes) == expected
    assert all(codes.values()), "every code carries its display"


def test_relationship_value_sets_are_disjoint_and_unioned():
    sets = [set(_vs_codes(load(ROOT / f"ValueSet-{n}-relationship.json"))) for n in ("mother", "father", "male-carer")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    union = load(ROOT / "ValueSet-family-relationship.json")
    included = {u for inc in union["compose"]["include"] for u in inc.get("valueSet", [])}
    assert included == {f"{BASE}/ValueSet/{n}-relationship" for n in ("mother", "father", "male-carer")}
    rp = load(ROOT / "StructureDefinition-FamilyView-RelatedPerson.json")
    rel_el = {e["id"]: e for e in rp["differential"]["element"]}["RelatedPerson.relationship"]
    assert rel_el["binding"]["valueSet"] == union["url"]


# ---------------------------------------------------------------- $family-view


def test_family_view_operation_definition_matches_the_wire_contract():
    od = load(ROOT / "OperationDefinition-family-view.json")
    assert od["code"] == "family-view" and od["resource"] == ["Patient"] and od["kind"] == "operation"
    assert (od["system"], od["type"], od["instance"], od["affectsState"]) == (False, True, True, False)
    params = {(p["name"], p["use"]): p for p in od["parameter"]}
    assert set(params) == {("identifier", "in"), ("purpose", "in"), ("justification", "in"), ("return", "out")}
    ident, purpose = params["identifier", "in"], params["purpose", "in"]
    just, ret = params["justification", "in"], params["return", "out"]
    assert (ident["min"], ident["max"], ident["searchType"]) == (0, "1", "token")
    assert NHS in ident["documentation"]
    assert (purpose["min"], purpose["max"], purpose["type"]) == (1, "1", "code")
    assert purpose["binding"]["strength"] == "required"
    cs = load(ROOT / "CodeSystem-family-view-purpose.json")
    assert purpose["binding"]["valueSet"] == cs["valueSet"]
    assert {c["code"] for c in cs["concept"]} == {"direct-care", "safeguarding"}
    pou = {c["code"]: c["property"][0]["valueCode"] for c in cs["concept"]}
    assert pou == {"direct-care": "TREAT", "safeguarding": "THREAT"}
    assert (just["min"], just["max"], just["type"]) == (0, "1", "string")
    assert "safeguarding" in just["documentation"] and "400" in just["documentation"]
    assert (ret["min"], ret["max"], ret["type"]) == (1, "1", "Bundle")
    assert "collection" in ret["documentation"] and "suppressed" in ret["documentation"]
    assert f"{BASE}/StructureDefinition/family-role" in ret["documentation"]
    for needle in ("400", "403", "404", "X-Audit-Event: AuditEvent/", "BTG", "X-Request-ID"):
        assert needle in od["comment"], needle


# ---------------------------------------------------------------- profiles, structurally


PROFILES = {
    "Patient": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient",
    "RelatedPerson": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-RelatedPerson",
    "Consent": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Consent",
    "MedicationStatement": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-MedicationStatement",
    "MedicationRequest": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-MedicationRequest",
}


@pytest.mark.parametrize("rt", sorted(PROFILES))
def test_profiles_constrain_uk_core(rt):
    sd = load(ROOT / f"StructureDefinition-FamilyView-{rt}.json")
    assert (sd["type"], sd["baseDefinition"], sd["derivation"], sd["kind"], sd["fhirVersion"]) == (
        rt, PROFILES[rt], "constraint", "resource", "4.0.1")
    ids = [e["id"] for e in sd["differential"]["element"]]
    assert len(ids) == len(set(ids)), "element ids are unique"
    for e in sd["differential"]["element"]:
        assert re.sub(r":[^.]+", "", e["id"]) == e["path"]
        assert e["path"] == rt or e["path"].startswith(rt + ".")


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=rel)
def test_valid_examples_pass_the_gateway_validation(path):
    data = load(path)
    assert validate_resource(data) is data
    for profile in data["meta"]["profile"]:
        sd = by_canonical()[profile]
        assert sd["type"] == data["resourceType"]


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=rel)
def test_valid_examples_use_synthetic_nhs_numbers(path):
    text = path.read_text()
    data = load(path)
    numbers = re.findall(r'"system": "' + re.escape(NHS) + r'",\s*"value": "(\d+)"', text)
    assert numbers or data["resourceType"] not in {"Patient"}
    for n in numbers:
        assert n.startswith("999") and is_valid_nhs_number(n)


def test_example_consent_has_the_described_shape():
    c = load(EXAMPLES / "Consent-example-father-mental-health.json")
    assert c["status"] == "active" and c["policyRule"]["coding"][0]["code"] == "OPTIN"
    permit = c["provision"]["provision"][0]
    assert permit["type"] == "permit"
    assert permit["purpose"][0]["code"] == "TREAT"
    assert permit["securityLabel"][0]["code"] == "PSY"
    actor = permit["actor"][0]["reference"]["identifier"]
    assert actor["system"] == "https://fhir.nhs.uk/Id/ods-organization-code"
    assert permit["provision"][0]["type"] == "deny"


def test_example_related_person_is_a_father():
    rp = load(EXAMPLES / "RelatedPerson-example-father.json")
    assert rp["relationship"][0]["coding"][0] == {"system": V3_ROLE, "code": "FTH", "display": "father"}
    assert rp["gender"] == "male"


def test_every_invalid_example_has_its_expected_outcome():
    examples = {p.with_suffix("") for p in INVALID_EXAMPLES}
    outcomes = {p.with_name(p.name.removesuffix(".outcome.json")) for p in OUTCOMES}
    assert examples == outcomes
    assert {p.parent.name for p in INVALID_EXAMPLES} <= {"400", "422"}


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=rel)
def test_invalid_examples_are_rejected_as_their_outcome_says(path):
    """examples/invalid/<HTTP status>/<name>.json is rejected with that status and the first
    issue of <name>.outcome.json (issue code, Spine code, expression)."""
    data = load(path)
    expected = load(path.with_name(path.stem + ".outcome.json"))["issue"][0]
    validate_structure(data)  # well-formed FHIR: each breaks one business rule, not the structure
    with pytest.raises(FhirError) as err:
        validate_resource(data)
    assert err.value.status == int(path.parent.name)
    issue = err.value.issues[0]
    assert issue.expression == expected["expression"]
    assert issue.code == expected["code"]
    assert issue.to_fhir()["details"]["coding"][0]["code"] == expected["details"]["coding"][0]["code"]
    assert issue.to_fhir()["details"]["coding"][0]["system"] == expected["details"]["coding"][0]["system"]


def test_invalid_examples_cover_each_rule():
    seen = set()
    for path in INVALID_EXAMPLES:
        issue = load(path.with_name(path.stem + ".outcome.json"))["issue"][0]
        seen.add((path.parent.name, issue["details"]["coding"][0]["code"], issue["expression"][0].rsplit(".", 1)[-1]))
    assert ("422", "INVALID_NHS_NUMBER", "value") in seen
    assert ("422", "INVALID_VALUE", "value") in seen  # ODS
    assert ("400", "INVALID_CODE_VALUE", "gender") in seen
    assert ("400", "INVALID_CODE_VALUE", "code") in seen  # confidentiality


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=rel)
def test_each_invalid_example_differs_from_a_valid_one_in_one_value(path):
    """The invalid examples are copies of the valid ones with exactly one value changed."""
    bad = load(path)

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, f"{prefix}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from leaves(v, f"{prefix}[{i}]")
        else:
            yield prefix, node

    bad_leaves = dict(leaves(bad))
    best = min(
        (
            {k for k in set(bad_leaves) | set(good) if bad_leaves.get(k) != good.get(k)}
            for good in (dict(leaves(load(v))) for v in VALID_EXAMPLES if load(v)["resourceType"] == bad["resourceType"])
        ),
        key=len,
    )
    assert best - {".id"} and len(best - {".id"}) == 1, best


@pytest.mark.parametrize(
    "category, labels, recorded, expected",
    [
        ("mental-health", {"PSY"}, "2026-01-05", "permit"),  # the nested permit
        ("mental-health", {"PSY"}, "2018-01-05", "deny"),  # the deny nested inside it
        ("substance-misuse", {"ETH", "SUD"}, "2026-01-05", "deny"),  # not covered (scenario 3)
    ],
)
def test_example_consent_means_what_the_readme_says(category, labels, recorded, expected):
    import datetime as dt

    engine = pytest.importorskip("consent.engine")
    m = pytest.importorskip("consent.model")
    consent = load(EXAMPLES / "Consent-example-father-mental-health.json")
    request = m.DisclosureRequest(
        requester=m.Requester(role="health-visitor", org="RHV01", service="health-visiting"),
        purpose=m.Purpose.DIRECT_CARE,
        subject=m.DataSubject(reference="Patient/example-father", family_role="father", identifiers=((NHS, "9990000026"),)),
        item=m.DataItem(category=category, resource_type="Condition", security_labels=frozenset(labels),
                        source_org="A99001", date=dt.date.fromisoformat(recorded)),
        relationship=m.LegitimateRelationship(True, "episode-of-care"),
        consents=(consent,),
        as_of=dt.datetime(2026, 11, 26, 12, tzinfo=dt.timezone.utc),
    )
    assert engine.decide(request).outcome.value == expected
