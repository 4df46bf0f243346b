"""The validator's quick answers never pass what its walks refuse. A fine resource is told fine by
one serialisation (shape) and one walk by compiled per-type plans (JSON types, business rules,
required codes); only when either is unsure do the walks that name the problem run. Here
thousands of resources, each the examples with a few values changed at random (nulls, control
characters, wrong JSON types, bad codes, NHS and ODS numbers, over-long strings, nested arrays),
are put to both: whenever the walks find a problem, the quick answer must not have said fine.
The typed walk also hands ingest the references it met, which must be those _references finds."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

from app.errors import FhirError
from app.fhir import validation as v
from app.fhir.indexing import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from app.ingest.service import _references

EXAMPLES = Path(__file__).resolve().parents[2] / "fhir_profiles" / "examples"
SMALL = v.ResourceLimits(string_length=200, name_length=200, identifiers=20, repeats=5)
VALUES: list[Any] = [
    None, "", "\x00", "a\x1fb", "x" * 300, True, False, 0, 1, 1.5, {"a": 1}, [1], [None], [], {}, "yes", "9990000000", "A1",
    NHS_NUMBER_SYSTEM, ODS_SYSTEM, v.CONFIDENTIALITY_SYSTEM, "Q", "R", "#", "#x", "mobile", "male", "final", "bogus", "a\\b",
    "\t\n", ["bogus"], ["male"], [{"type": "bogus"}], [[{"system": ODS_SYSTEM, "value": "a"}]],
]
KEYS = ["use", "system", "value", "code", "status", "gender", "text", "identifier", "coding", "name", "telecom", "_birthDate",
        "contained", "reference", "extension", "valueBoolean", "active", "link", "type"]


def _examples(valid_only: bool = False) -> list[dict[str, Any]]:
    """The example resources (the invalid ones too, unless `valid_only`)."""
    found = []
    for path in sorted(EXAMPLES.glob("*.json") if valid_only else EXAMPLES.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("resourceType") in v.WRITABLE_TYPES:
            found.append(data)
    return found


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict):
        out.append(node)
        for value in node.values():
            _containers(value, out)
    elif isinstance(node, list):
        out.append(node)
        for value in node:
            _containers(value, out)
    return out


def _mutated(rnd: random.Random, examples: list[dict[str, Any]]) -> dict[str, Any]:
    resource = copy.deepcopy(rnd.choice(examples))
    for _ in range(rnd.randint(1, 3)):
        node = rnd.choice(_containers(resource, []))
        value = copy.deepcopy(rnd.choice(VALUES))
        if isinstance(node, dict):
            key = rnd.choice(list(node)) if node and rnd.random() < 0.6 else rnd.choice(KEYS)
            node[key] = value
        elif node:
            node[rnd.randrange(len(node))] = value
        else:
            node.append(value)
    return resource


def _required_codes_broken(resource: dict[str, Any], res_type: str) -> bool:
    try:
        return any(value not in allowed for path, allowed in v.REQUIRED_CODES.get(res_type, {}).items()
                   for _, value in v._iter_paths(resource, path, res_type))
    except TypeError:  # an unhashable value: the walk fails on it, so the quick answer must not say fine
        return True


def test_the_quick_answers_never_pass_what_the_walks_refuse():
    examples = _examples()
    assert examples
    rnd = random.Random(20261207)
    compared = 0
    for _ in range(3000):
        resource = _mutated(rnd, examples)
        res_type = resource.get("resourceType")
        if not isinstance(res_type, str) or res_type not in v.WRITABLE_TYPES:
            continue
        for limits in (v.DEFAULT_LIMITS, SMALL):
            shape_fine, local_refs = v._serialised(resource, limits)
            assert not shape_fine or v._json_shape_ok(resource, limits), resource
        if not local_refs:
            assert '"#' not in json.dumps(resource, separators=(",", ":")), resource
        if v._required_codes_kept(resource, res_type):
            assert not _required_codes_broken(resource, res_type), resource
        try:
            v._check_contained_types(resource, res_type)
        except FhirError:
            continue
        if not v._json_shape_ok(resource):
            continue
        references: list[dict[str, Any]] = []
        types_fine, rules_fine = v._types_and_rules_ok(resource, res_type, references)
        # reference resolution reads the references the walk met: the same objects, in the same order
        assert [id(r) for r in references] == [id(r) for r in _references(resource)], resource
        if types_fine:
            assert v._first_wrong_primitive(resource, res_type, paths=False) is None, resource
        if rules_fine:
            assert not v._breaks_a_rule(resource), resource
        compared += 1
    assert compared > 1000


def test_a_valid_example_is_told_fine_by_the_quick_answers():
    """The quick answers are the common case's whole cost: a valid resource needs no walk after them."""
    examples = _examples(valid_only=True)
    assert examples
    for resource in examples:
        res_type = resource["resourceType"]
        assert v._serialised(resource, v.DEFAULT_LIMITS)[0], res_type
        assert v._types_and_rules_ok(resource, res_type) == (True, True), res_type
        assert v._required_codes_kept(resource, res_type), res_type
