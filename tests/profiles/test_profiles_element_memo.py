"""The element memo (app.fhir.validation.ElementMemo) never changes what the R4B models decide.
An element of a datatype whose exact JSON was found valid is taken as valid again; here
thousands of resources, the examples with values changed at random, are validated by the models
with the memo on (warmed by every resource before them) and with it off: each is accepted by
both or refused by both with the same errors. And the gateway's own validation refuses what it
refused without the memo, with the same OperationOutcome."""
from __future__ import annotations

import contextlib
import copy
import datetime
import random

import pydantic
import pytest
from fhir.resources.R4B import get_fhir_model_class

from app.errors import FhirError
from app.fhir import validation as v
from tests.profiles.test_profiles_fast_checks import _examples, _mutated


def _model_outcome(resource) -> tuple[str, ...] | None:
    """None when the models accept the resource; else its errors (where, what, the message)."""
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except pydantic.ValidationError as exc:
        return tuple(f"{e['loc']}|{e['type']}|{e['msg']}" for e in exc.errors())
    except (ValueError, TypeError, KeyError) as exc:  # what the gateway's checks before the models stop
        return (type(exc).__name__,)
    return None


def _gateway_outcome(resource) -> tuple[int, str] | None:
    try:
        v.validate_resource(copy.deepcopy(resource), limits=v.ResourceLimits(string_length=200, name_length=200, identifiers=20, repeats=5))
    except FhirError as err:
        return err.status, str(err.outcome())
    return None


def test_the_models_decide_alike_with_the_memo_warm_and_without_it():
    examples = _examples()
    rnd = random.Random(20261208)
    corpus = [copy.deepcopy(e) for e in examples] + [_mutated(rnd, examples) for _ in range(1500)]
    plain = [_model_outcome(r) for r in corpus]
    hits = v.ELEMENT_MEMO.hits
    for _ in range(2):  # the second pass finds every element the first found valid
        with v.ELEMENT_MEMO.on():
            warm = [_model_outcome(r) for r in corpus]
        assert warm == plain
    assert v.ELEMENT_MEMO.hits > hits + len(corpus)  # the memo was used, not bypassed
    assert sum(o is not None for o in plain) > len(corpus) // 4  # enough of them are refused to say so


def test_the_gateway_refuses_alike_with_the_memo_and_without_it(monkeypatch):
    examples = _examples()
    rnd = random.Random(20261209)
    corpus = [copy.deepcopy(e) for e in examples] + [_mutated(rnd, examples) for _ in range(600)]
    with_memo = [_gateway_outcome(r) for r in corpus] + [_gateway_outcome(r) for r in corpus]
    monkeypatch.setattr(v.ELEMENT_MEMO, "on", lambda plain_json=True: contextlib.nullcontext())
    without = [_gateway_outcome(r) for r in corpus]
    assert with_memo == without + without
    assert any(o is None for o in without) and any(o is not None and o[0] == 400 for o in without)


def test_an_element_found_valid_before_is_not_built_again():
    coding = {"system": "http://snomed.info/sct", "code": "35489007", "display": "Depressive disorder"}
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/a"}, "code": {"coding": [coding]}}
    v.validate_resource(copy.deepcopy(condition))
    hits = v.ELEMENT_MEMO.hits
    v.validate_resource(copy.deepcopy(condition))
    assert v.ELEMENT_MEMO.hits >= hits + 2  # the Reference and the CodeableConcept at least


def test_an_invalid_element_is_refused_though_a_valid_one_like_it_was_kept():
    good = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "valueQuantity": {"value": 3.4, "unit": "kg"}}
    v.validate_resource(copy.deepcopy(good))
    for bad_value in ("3.4", True, [3.4], {"value": 3.4}):
        bad = copy.deepcopy(good)
        bad["valueQuantity"]["value"] = bad_value
        with pytest.raises(FhirError) as caught:
            v.validate_resource(bad)
        assert caught.value.status == 400
        assert "Observation.valueQuantity.value" in str(caught.value.outcome())


def test_models_built_outside_validation_are_never_shared():
    ref = {"reference": "Patient/shared"}
    v.validate_resource({"resourceType": "Flag", "status": "active", "code": {"text": "x"}, "subject": dict(ref)})
    flag = get_fhir_model_class("Flag")
    one = flag.model_validate({"resourceType": "Flag", "status": "active", "code": {"text": "x"}, "subject": dict(ref)})
    two = flag.model_validate({"resourceType": "Flag", "status": "active", "code": {"text": "x"}, "subject": dict(ref)})
    assert one.subject is not two.subject
    assert all(one.subject is not kept for kept in v.ELEMENT_MEMO.found.values())
    one.subject.reference = "Patient/changed"  # a caller's change to its own model touches nothing kept
    assert not any(getattr(kept, "reference", None) == "Patient/changed" for kept in v.ELEMENT_MEMO.found.values())


def test_what_is_not_plain_json_is_never_kept():
    period = get_fhir_model_class("Period")
    episode = get_fhir_model_class("EpisodeOfCare")
    before = dict(v.ELEMENT_MEMO.found)
    with v.ELEMENT_MEMO.on():
        episode.model_validate({"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": "Patient/a"},
                                "period": {"start": datetime.datetime(2026, 6, 2, tzinfo=datetime.timezone.utc)}})
    assert not [k for k in v.ELEMENT_MEMO.found if k not in before and k[0] is period]
    # NaN is written as null by orjson: a resource holding one is validated without the memo
    hits, misses = v.ELEMENT_MEMO.hits, v.ELEMENT_MEMO.misses
    with pytest.raises(FhirError):
        v.validate_resource({"resourceType": "Observation", "status": "final", "code": {"text": "w"}, "valueQuantity": {"value": float("nan")}})
    assert (v.ELEMENT_MEMO.hits, v.ELEMENT_MEMO.misses) == (hits, misses)


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(v.ELEMENT_MEMO, "capacity", 16)
    monkeypatch.setattr(v.ELEMENT_MEMO, "found", {})
    for i in range(200):
        v.validate_resource({"resourceType": "Flag", "status": "active", "code": {"text": f"flag {i}"}, "subject": {"reference": f"Patient/p{i}"}})
        assert len(v.ELEMENT_MEMO.found) <= 16
