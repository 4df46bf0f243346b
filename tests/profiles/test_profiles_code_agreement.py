"""The FamilyView StructureDefinitions say exactly what app/fhir/validation.py enforces.

Three sources are compared, so that neither the documentation nor the code can drift:
the profiles' differentials, the tables in app/fhir/validation.py, and the R4 specification
as the R4B models of fhir.resources carry it (enum_values of every code element)."""
from __future__ import annotations

import json
import random
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

from app.fhir import validation as v
from app.fhir.indexing import NHS_NUMBER_SYSTEM, ODS_SYSTEM

ROOT = Path(__file__).resolve().parents[2] / "fhir_profiles"
PROFILED = ("Patient", "RelatedPerson", "Consent", "MedicationStatement", "MedicationRequest")
INVARIANTS = {"fv-nhs-1", "fv-ods-1", "fv-conf-1"}
# The Consent provision rules are private to validation.py; read them if they are there.
CONSENT_PROVISION: dict[str, set[str]] = getattr(v, "_CONSENT_PROVISION", {})
CONFIDENTIALITY_CODES: set[str] = getattr(v, "_CONFIDENTIALITY_CODES", {"U", "L", "M", "N", "R", "V"})


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def profile(rt: str) -> dict[str, Any]:
    return load(ROOT / f"StructureDefinition-FamilyView-{rt}.json")


# ---------------------------------------------------------------- the R4 element tree


def _model_of(annotation: Any) -> Any:
    t = annotation
    while typing.get_args(t):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if hasattr(t, "get_model_klass"):
        t = t.get_model_klass()
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def spec_code_elements(rt: str) -> dict[str, list[str]]:
    """Every element of resource type `rt` (through its datatypes, each datatype once per
    branch) whose code is drawn from a value set the R4 specification enumerates."""
    out: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], path: str, seen: frozenset[str]) -> None:
        for name, field in model.model_fields.items():
            alias = field.alias or name
            if alias.startswith("_") or alias in {"extension", "modifierExtension", "contained", "id", "resourceType"}:
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if extra.get("enum_values"):
                out[f"{path}.{alias}"] = list(extra["enum_values"])
            sub = _model_of(field.annotation)
            if sub is not None and sub.__name__ not in seen:
                walk(sub, f"{path}.{alias}", seen | {sub.__name__})

    walk(get_fhir_model_class(rt), rt, frozenset())
    return out


def enforced_codes(rt: str, path: str) -> set[str] | None:
    """The codes validation.py accepts at `path` (as the tree names it), or None if it does not check it."""
    rel = path.split(".", 1)[1]
    if rel in v.REQUIRED_CODES.get(rt, {}):
        return set(v.REQUIRED_CODES[rt][rel])
    if rt == "Consent" and rel.startswith("provision.") and rel.removeprefix("provision.") in CONSENT_PROVISION:
        return set(CONSENT_PROVISION[rel.removeprefix("provision.")])
    for (element, attr), allowed in v.DATATYPE_CODES.items():
        if ("." + path).endswith(f".{element}.{attr}"):
            return set(allowed)
    return None


def profile_required_bindings(rt: str) -> dict[str, dict[str, Any]]:
    return {
        e["path"]: e["binding"]
        for e in profile(rt)["differential"]["element"]
        if e.get("binding", {}).get("strength") == "required"
    }


def same_codes(allowed: set[str], spec: list[str]) -> bool:
    """fhir.resources ends an abridged list (codes of a hierarchy) with '+': then the listed ones must be allowed."""
    if "+" in spec:
        return set(spec) - {"+"} <= set(allowed)
    return set(allowed) == set(spec)


def documented_codes(binding: dict[str, Any]) -> set[str]:
    m = re.match(r"Required: ([^.]+)\.", binding["description"])
    assert m, binding
    return {c.strip() for c in m.group(1).split("|")}


# ---------------------------------------------------------------- required bindings


@pytest.mark.parametrize("rt", PROFILED)
def test_profile_lists_exactly_the_elements_validation_enforces(rt):
    enforced = {p for p in spec_code_elements(rt) if enforced_codes(rt, p) is not None}
    assert set(profile_required_bindings(rt)) == enforced


@pytest.mark.parametrize("rt", PROFILED)
def test_profile_codes_equal_validation_codes_equal_the_spec(rt):
    spec = spec_code_elements(rt)
    for path, binding in profile_required_bindings(rt).items():
        code = enforced_codes(rt, path)
        assert documented_codes(binding) == code and same_codes(code, spec[path]), path
        assert binding["valueSet"].startswith("http://hl7.org/fhir/ValueSet/") and binding["valueSet"].endswith("|4.0.1")


@pytest.mark.parametrize("rt", PROFILED)
def test_one_value_set_per_code_list(rt):
    by_vs: dict[str, set[frozenset[str]]] = {}
    for binding in profile_required_bindings(rt).values():
        by_vs.setdefault(binding["valueSet"], set()).add(frozenset(documented_codes(binding)))
    assert all(len(s) == 1 for s in by_vs.values()), by_vs


@pytest.mark.parametrize("rt", sorted(v.REQUIRED_CODES))
def test_validation_tables_name_real_elements_with_the_spec_codes(rt):
    """A typo in REQUIRED_CODES would silently check nothing; a wrong code list would refuse valid FHIR."""
    spec = spec_code_elements(rt)
    for rel, allowed in v.REQUIRED_CODES[rt].items():
        assert f"{rt}.{rel}" in spec, f"{rt}.{rel} is not a coded element of R4 {rt}"
        assert same_codes(allowed, spec[f"{rt}.{rel}"]), f"{rt}.{rel}"


def test_datatype_and_consent_tables_match_the_spec():
    for (element, attr), allowed in v.DATATYPE_CODES.items():
        hits = [codes for rt in v.REQUIRED_CODES for p, codes in spec_code_elements(rt).items() if p.endswith(f".{element}.{attr}")]
        assert hits, (element, attr)
        assert all(same_codes(allowed, h) for h in hits), (element, attr)
    spec = spec_code_elements("Consent")
    for rel, allowed in CONSENT_PROVISION.items():
        assert same_codes(allowed, spec[f"Consent.provision.{rel}"])


@pytest.mark.parametrize("rt", PROFILED)
def test_every_required_code_of_a_profiled_type_is_enforced(rt):
    missing = [p for p in spec_code_elements(rt) if enforced_codes(rt, p) is None]
    assert not missing, missing


# ---------------------------------------------------------------- invariants


def root_constraints(rt: str) -> dict[str, dict[str, Any]]:
    root = profile(rt)["differential"]["element"][0]
    assert root["path"] == rt
    return {c["key"]: c for c in root["constraint"]}


@pytest.mark.parametrize("rt", PROFILED)
def test_profile_invariants_are_the_validation_rules(rt):
    cons = root_constraints(rt)
    assert set(cons) == INVARIANTS
    sd_url = profile(rt)["url"]
    for c in cons.values():
        assert c["severity"] == "error" and c["source"] == sd_url and c["human"] and c["expression"]
    assert f"'{NHS_NUMBER_SYSTEM}'" in cons["fv-nhs-1"]["expression"]
    assert "422" in cons["fv-nhs-1"]["requirements"] and "INVALID_NHS_NUMBER" in cons["fv-nhs-1"]["requirements"]
    assert f"'{ODS_SYSTEM}'" in cons["fv-ods-1"]["expression"]
    assert f"matches('{v.ODS_CODE_RE.pattern}')" in cons["fv-ods-1"]["expression"]
    assert "422" in cons["fv-ods-1"]["requirements"]
    assert f"'{v.CONFIDENTIALITY_SYSTEM}'" in cons["fv-conf-1"]["expression"]
    in_list = re.search(r"code in \(([^)]*)\)", cons["fv-conf-1"]["expression"]).group(1)
    assert {c.strip().strip("'") for c in in_list.split("|")} == set(CONFIDENTIALITY_CODES)
    assert "400" in cons["fv-conf-1"]["requirements"]


@pytest.mark.parametrize("rt", PROFILED)
def test_conditions_name_declared_invariants(rt):
    keys = set(root_constraints(rt))
    for e in profile(rt)["differential"]["element"]:
        assert set(e.get("condition", [])) <= keys, e["id"]


@pytest.mark.parametrize("rt", PROFILED)
def test_invariants_are_the_same_in_every_profile(rt):
    expressions = {k: c["expression"] for k, c in root_constraints(rt).items()}
    assert expressions == {k: c["expression"] for k, c in root_constraints("Patient").items()}


def test_confidentiality_codes_are_v3_confidentiality():
    assert set(CONFIDENTIALITY_CODES) == {"U", "L", "M", "N", "R", "V"}
    assert v.CONFIDENTIALITY_SYSTEM == "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


# ---------------------------------------------------------------- FHIRPath, evaluated (needs fhirpathpy)


def _fhirpath():
    return pytest.importorskip("fhirpathpy", reason="fhirpathpy is not installed: FHIRPath invariants are not evaluated")


def _patient_with(system: str, value: str, key: str = "value") -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": system, key: value}]}


def test_fv_nhs_1_agrees_with_is_valid_nhs_number():
    fp = _fhirpath()
    check = fp.compile(root_constraints("Patient")["fv-nhs-1"]["expression"])
    rng = random.Random(20261126)
    samples = ["9990000018", "9990000026", "9990000034", "9990000019", "999000002", "99900000181", "999000001X", "0000000000", "4010232137"]
    samples += [f"{rng.randrange(10**10):010d}" for _ in range(150)]
    samples += [f"999{n:06d}{d}" for n in range(20) for d in range(10)]
    for s in samples:
        assert check(_patient_with(NHS_NUMBER_SYSTEM, s)) == [v.is_valid_nhs_number(s)], s


def test_fv_ods_1_agrees_with_is_valid_ods_code():
    fp = _fhirpath()
    expr = root_constraints("Patient")["fv-ods-1"]["expression"]
    for s in ["A99001", "RHV01", "X26", "AB", "a99001", "A99-001", "ABCDEFGHIJ", "ABCDEFGHIJK", "Y0 123", ""]:
        res = {"resourceType": "Patient", "generalPractitioner": [{"identifier": {"system": ODS_SYSTEM, "value": s}}]}
        assert fp.evaluate(res, expr) == [v.is_valid_ods_code(s)], s


def test_fv_conf_1_agrees_with_validation():
    fp = _fhirpath()
    expr = root_constraints("Patient")["fv-conf-1"]["expression"]
    for code in ["U", "L", "M", "N", "R", "V", "X", "r", "RESTRICTED", "ETH"]:
        res = {"resourceType": "Patient", "meta": {"security": [{"system": v.CONFIDENTIALITY_SYSTEM, "code": code}]}}
        assert fp.evaluate(res, expr) == [code in CONFIDENTIALITY_CODES], code


def test_invariants_hold_on_valid_examples_and_fail_as_the_invalid_ones_say():
    fp = _fhirpath()
    cons = {k: fp.compile(c["expression"]) for k, c in root_constraints("Patient").items()}
    for path in sorted((ROOT / "examples").rglob("*.json")):
        if path.name.endswith(".outcome.json"):
            continue
        data = load(path)
        results = {k: check(data) for k, check in cons.items()}
        if "invalid" not in path.parts:
            assert all(r == [True] for r in results.values()), (path.name, results)
            continue
        diag = load(path.with_name(path.stem + ".outcome.json"))["issue"][0]["diagnostics"]
        broken = {k for k in cons if diag.startswith(k + ":")}
        assert {k for k, r in results.items() if r != [True]} == broken, (path.name, results)


# ---------------------------------------------------------------- defects found and fixed in validation.py


def test_nhs_numbers_are_ascii_digits_only():
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in "9990000018")
    assert not v.is_valid_nhs_number(arabic_indic)
