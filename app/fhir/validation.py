"""Every rule a resource must pass before it is stored, in one place.

First the R4B models of fhir.resources (structure, datatypes, cardinality); then what they
let through: codes of required bindings, NHS numbers (10 digits, Modulus 11), ODS code
shape and confidentiality labels. References are checked against the store by ingest.
The rules are described for integrators as StructureDefinitions in fhir_profiles/."""
from __future__ import annotations

import datetime
import decimal
import re
import threading
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class

from app.errors import FhirError, Issue
# one identifier module (app.identifiers), re-exported for the modules that validate through this one
from app.identifiers import ODS_CODE_RE as ODS_CODE_RE
from app.identifiers import is_valid_nhs_number as is_valid_nhs_number
from app.identifiers import is_valid_ods_code as is_valid_ods_code
from app.fhir.indexing import NHS_NUMBER_SYSTEM, ODS_SYSTEM, WRITABLE_TYPES

CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

_ADMIN_GENDER = {"male", "female", "other", "unknown"}
_ENCOUNTER_STATUS = {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "entered-in-error", "unknown"}
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

# Elements bound to a required value set: path -> allowed codes.
REQUIRED_CODES: dict[str, dict[str, set[str]]] = {
    "Patient": {
        "gender": _ADMIN_GENDER,
        "link.type": {"replaced-by", "replaces", "refer", "seealso"},
        "contact.gender": _ADMIN_GENDER,
    },
    "RelatedPerson": {"gender": _ADMIN_GENDER},
    "Practitioner": {"gender": _ADMIN_GENDER},
    "Consent": {"status": {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}},
    "EpisodeOfCare": {
        "status": {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"},
        "statusHistory.status": {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"},
    },
    "CareTeam": {"status": {"proposed", "active", "suspended", "inactive", "entered-in-error"}},
    "Flag": {"status": {"active", "inactive", "entered-in-error"}},
    "Observation": {
        "status": {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
    },
    "MedicationStatement": {
        "status": {"active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken"},
    },
    "MedicationRequest": {
        "status": {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"},
        "intent": {"proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"},
        "priority": {"routine", "urgent", "asap", "stat"},
        "groupIdentifier.use": {"usual", "official", "temp", "secondary", "old"},  # an Identifier not named identifier
    },
    "Encounter": {"status": _ENCOUNTER_STATUS, "statusHistory.status": _ENCOUNTER_STATUS},
    "ServiceRequest": {
        "status": {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"},
        "intent": {"proposal", "plan", "directive", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"},
        "priority": {"routine", "urgent", "asap", "stat"},
    },
    # not written on its own: checked where it is contained (a MedicationStatement's medicine)
    "Medication": {"status": {"active", "inactive", "entered-in-error"}},
}
# CodeableConcepts with a required binding: path -> (system, allowed codes)
REQUIRED_CONCEPTS: dict[str, dict[str, tuple[str, set[str]]]] = {
    "Condition": {
        "clinicalStatus": (_CONDITION_CLINICAL, {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}),
        "verificationStatus": (
            _CONDITION_VERIFICATION,
            {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"},
        ),
    },
}
# Datatype elements with required bindings, checked wherever the datatype appears.
DATATYPE_CODES: dict[tuple[str, str], set[str]] = {
    ("identifier", "use"): {"usual", "official", "temp", "secondary", "old"},
    ("name", "use"): {"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"},
    ("telecom", "system"): {"phone", "fax", "email", "pager", "url", "sms", "other"},
    ("telecom", "use"): {"home", "work", "temp", "old", "mobile"},
    ("address", "use"): {"home", "work", "temp", "old", "billing"},
    ("address", "type"): {"postal", "physical", "both"},
    ("text", "status"): {"generated", "extensions", "additional", "empty"},
    # Timing.repeat (Dosage.timing of medicines, Observation.effectiveTiming)
    ("repeat", "dayOfWeek"): {"mon", "tue", "wed", "thu", "fri", "sat", "sun"},
    ("repeat", "durationUnit"): {"s", "min", "h", "d", "wk", "mo", "a"},
    ("repeat", "periodUnit"): {"s", "min", "h", "d", "wk", "mo", "a"},
}
_DATATYPE_BY_ELEMENT: dict[str, list[tuple[str, set[str]]]] = {}
for (_element, _attr), _allowed in DATATYPE_CODES.items():
    _DATATYPE_BY_ELEMENT.setdefault(_element, []).append((_attr, _allowed))
_DATATYPE_ELEMENTS = frozenset(_DATATYPE_BY_ELEMENT)
_CONSENT_PROVISION = {"type": {"deny", "permit"}, "data.meaning": {"instance", "related", "dependents", "authoredby"}}
_CONFIDENTIALITY_CODES = {"U", "L", "M", "N", "R", "V"}


def _loc_to_expression(res_type: str, loc: tuple) -> str:
    out = res_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "union[", "list[", "json-or-python")):
            out += "." + part
    return out


# FHIR strings (and so ids, codes, URIs) may hold no character below U+0020 but tab, LF and CR
# (PostgreSQL cannot store U+0000 at all)
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Levels of JSON objects and arrays in one resource: far beyond any real resource (a
# nested extension takes two), well within what the validator walks without recursing out.
MAX_DEPTH = 128
MAX_INDEXED = 255  # characters of an identifier's or coding's system and value the indexes hold


def control_char_error(where: str, what: str = "") -> FhirError:
    return FhirError(
        400, "invalid",
        f"{where}: {what or 'the value'} holds a control character (such as U+0000); FHIR strings may hold only tab, CR and LF below U+0020",
        expression=where, spine_code="INVALID_VALUE",
    )


@dataclass(frozen=True)
class ResourceLimits:
    """How large one resource's parts may be (Settings.resource_max_*; documented there).
    Beyond them a 400 (too-costly) naming the element: a 9 MiB family name or a Patient with
    100,000 identifiers is no record a source keeps, and each is matched, indexed and
    compared by linkage at a cost that grows with it."""

    string_length: int = 65_536  # characters of any string (narrative and free text included)
    name_length: int = 200  # characters of each part of a HumanName (family, given, prefix, suffix, text)
    identifiers: int = 20  # identifiers of one resource
    repeats: int = 100  # items of any repeating element (name, telecom, address, coding, extension, ...)

    @classmethod
    def of(cls, settings: Any) -> "ResourceLimits":
        return cls(settings.resource_max_string_length, settings.resource_max_name_length,
                   settings.resource_max_identifiers, settings.resource_max_repeats)


DEFAULT_LIMITS = ResourceLimits()
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")


def too_large(expr: str, message: str) -> FhirError:
    return FhirError(400, "too-costly", f"{expr}: {message}", expression=expr, spine_code="INVALID_VALUE")


def _json_shape_ok(resource: Any, limits: ResourceLimits = DEFAULT_LIMITS) -> bool:
    """Whether no string or key holds a control character, no element is null (FHIR JSON allows
    null only as an item of an array), no string or array is longer than `limits` allow and
    nesting stays within MAX_DEPTH; one walk without building paths (the common case, a fine
    resource, pays only this)."""
    stack: list[tuple[Any, int]] = [(resource, 1)]
    search = CONTROL_CHARS.search
    max_string, max_repeats = limits.string_length, limits.repeats
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(node, dict):
            items: Any = node.items()
        else:
            if len(node) > max_repeats:
                return False
            items = enumerate(node)
        for k, v in items:
            if isinstance(v, str):
                if len(v) > max_string or search(v):
                    return False
            elif isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
            elif v is None and isinstance(k, str):
                return False
            if isinstance(k, str) and search(k):
                return False
    return True


def _serialised(resource: dict[str, Any], limits: ResourceLimits) -> tuple[bool, bool]:
    """(the shape is surely fine, some string starts with "#"), from one C-speed serialisation.
    Conservative: a "fine" holds for the resource; otherwise the walks of check_json_shape
    decide (and a "#" sends it to _check_local_references). In orjson's compact output a null
    member is ':null', and a control character other than tab, LF and CR an escape (backslash
    b, f or u), in a key as in a value; no string is longer than the whole text, and nothing
    nests deeper, or repeats more, than the text has '{' and '[', or ','."""
    try:
        raw = orjson.dumps(resource)
    except (TypeError, orjson.JSONEncodeError):  # not plain JSON (a big integer, a non-string key): walk it
        return False, True
    shape_ok = (
        len(raw) <= limits.string_length
        and b":null" not in raw
        and (b"\\" not in raw or (b"\\u" not in raw and b"\\b" not in raw and b"\\f" not in raw))
        and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
        and raw.count(b",") < limits.repeats
    )
    return shape_ok, b'"#' in raw


def check_json_shape(resource: Any, res_type: str, limits: ResourceLimits = DEFAULT_LIMITS) -> None:
    """400 naming the first element whose string holds a control character, the first null
    element (the models would take it as absent and store it as sent, so that a required
    element such as Patient.link.other went missing), the string or repeating element longer
    than `limits` allow, or the element nested deeper than MAX_DEPTH (which would otherwise
    exhaust the validator's recursion)."""
    if _json_shape_ok(resource, limits):
        return
    stack: list[tuple[Any, int, str]] = [(resource, 1, res_type)]
    while stack:
        node, depth, expr = stack.pop()
        if depth > MAX_DEPTH:
            raise FhirError(
                400, "structure", f"{res_type} is nested more than {MAX_DEPTH} levels deep",
                expression=expr, spine_code="INVALID_RESOURCE",
            )
        if isinstance(node, list) and len(node) > limits.repeats:
            raise too_large(expr, f"at most {limits.repeats} repeats are accepted (this has {len(node)})")
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for k, v in reversed(items):  # the stack pops the first element first
            here = f"{expr}[{k}]" if isinstance(k, int) else f"{expr}.{k}"
            if isinstance(k, str) and CONTROL_CHARS.search(k):
                raise control_char_error(expr, "an element name")
            if isinstance(v, str) and CONTROL_CHARS.search(v):
                raise control_char_error(here)
            if v is None and isinstance(k, str):
                raise FhirError(400, "structure", f"{here}: null is not a FHIR value (leave the element out)",
                                expression=here, spine_code="INVALID_RESOURCE")
            if isinstance(v, str) and len(v) > limits.string_length:
                raise too_large(here, f"a string is at most {limits.string_length} characters here")
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1, here))


def check_sizes(resource: dict[str, Any], res_type: str, limits: ResourceLimits = DEFAULT_LIMITS) -> None:
    """400 for more identifiers than `limits.identifiers`, or a person's name part longer than
    `limits.name_length` (the person's own names and their contacts')."""
    idents = resource.get("identifier")
    if isinstance(idents, list) and len(idents) > limits.identifiers:
        raise too_large(f"{res_type}.identifier", f"at most {limits.identifiers} identifiers are accepted (this has {len(idents)})")
    for path in ("name", "contact.name"):
        for expr, name in _iter_paths(resource, path, res_type):
            if not isinstance(name, dict):
                continue
            for part in _NAME_PARTS:
                value = name.get(part)
                for i, text in (enumerate(value) if isinstance(value, list) else [(None, value)]):
                    if isinstance(text, str) and len(text) > limits.name_length:
                        where = f"{expr}.{part}" + (f"[{i}]" if i is not None else "")
                        raise too_large(where, f"a name is at most {limits.name_length} characters")


# ---------------------------------------------------------------- JSON types of primitives
# The models coerce in lax mode ("yes" and 1 pass as a boolean, "2" as an integer), but the
# body is stored and returned as sent: FHIR JSON fixes each primitive's JSON type.

_JSON_KINDS = {bool: "boolean", int: "integer", decimal.Decimal: "decimal", float: "decimal",
               str: "string", datetime.date: "string", datetime.datetime: "string", datetime.time: "string"}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the element type, whether it repeats) behind Optional, List and Annotated."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None, repeats
            annotation = args[0]
        elif origin in (list, typing.List):
            repeats = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, repeats


@lru_cache(maxsize=None)
def _element_kinds(model_name: str) -> dict[str, tuple[str, str | None]]:
    """JSON name -> ("boolean" | "integer" | "decimal" | "string", None) or ("complex", datatype)."""
    try:
        model = get_fhir_model_class(model_name)
    except (KeyError, ValueError, AttributeError):
        return {}
    out: dict[str, tuple[str, str | None]] = {}
    for name, f in model.model_fields.items():
        alias = f.alias or name
        if alias.startswith("_"):
            continue
        base, _ = _unwrap(f.annotation)
        kind = _JSON_KINDS.get(base) if isinstance(base, type) else None
        if kind:
            out[alias] = (kind, None)
        elif isinstance(base, type) and base.__name__.endswith("Type") and base.__name__ != "ResourceType":
            out[alias] = ("complex", base.__name__[:-4])
    return out


_JSON_WANTED = {"boolean": "true or false", "integer": "a JSON number without a fraction",
                "decimal": "a JSON number", "string": "a JSON string"}


def _json_ok(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return type(value) is bool
    if kind == "integer":
        return type(value) is int
    if kind == "decimal":
        return type(value) in (int, float)
    return type(value) is str


def _first_wrong_primitive(resource: dict[str, Any], res_type: str, paths: bool) -> tuple[str, str] | None:
    """(where, the FHIR kind wanted) of the first primitive sent as the wrong JSON type, or
    None. Without ``paths`` the walk builds no expression (a fine resource, the common case,
    pays only that walk) and ``where`` is empty."""
    stack: list[tuple[dict, str, str]] = [(resource, res_type, res_type)]
    while stack:
        node, model_name, expr = stack.pop()
        kinds = _element_kinds(model_name)
        for key, value in node.items():
            if key == "contained" and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict) and isinstance(item.get("resourceType"), str):
                        stack.append((item, item["resourceType"], f"{expr}.contained[{i}]" if paths else ""))
                continue
            spec = kinds.get(key)
            if spec is None:
                continue
            kind, child = spec
            for i, item in (enumerate(value) if isinstance(value, list) else ((None, value),)):
                here = (f"{expr}.{key}" + (f"[{i}]" if i is not None else "")) if paths else ""
                if kind == "complex":
                    if isinstance(item, dict):
                        stack.append((item, child, here))
                elif item is not None and not _json_ok(item, kind):
                    return here, kind
    return None


_TYPES_OF_KIND = {"boolean": frozenset({bool}), "integer": frozenset({int}), "decimal": frozenset({int, float}), "string": frozenset({str})}
_NO_PLAN: dict[str, Any] = {}


@lru_cache(maxsize=None)
def _type_plan(model_name: str) -> dict[str, frozenset[type] | str]:
    """A model's compiled plan: JSON name -> the Python types its primitive takes (what
    _json_ok accepts), or the datatype of its complex value."""
    return {k: child if kind == "complex" and child else _TYPES_OF_KIND[kind] for k, (kind, child) in _element_kinds(model_name).items()}


# what _rule_error reads, by element name: the (system, value) fields whose length is indexed,
# and the datatype codes bound to a value set
_RULED_ELEMENTS: dict[str, tuple[tuple[str, ...], list[tuple[str, set[str]]]]] = {
    key: ({"identifier": ("system", "value"), "coding": ("system", "code")}.get(key, ()), _DATATYPE_BY_ELEMENT.get(key, []))
    for key in ("identifier", "coding", *_DATATYPE_BY_ELEMENT)
}


def _system_rule_kept(node: dict[str, Any], system: str) -> bool:
    """Whether an Identifier or Coding of a checked system keeps _rule_error's rule for it."""
    if system == NHS_NUMBER_SYSTEM:
        return "value" not in node or is_valid_nhs_number(node.get("value"))
    if system == ODS_SYSTEM:
        return "value" not in node or is_valid_ods_code(node.get("value"))
    if system == CONFIDENTIALITY_SYSTEM:
        code = node.get("code")
        return "code" not in node or (isinstance(code, str) and code in _CONFIDENTIALITY_CODES)
    return True


def _element_kept(key: str, value: Any) -> bool:
    """Whether the element `key` of an object keeps the rules _rule_error checks there: its
    indexed fields' lengths, its datatype codes."""
    lengths, codes = _RULED_ELEMENTS[key]
    for item in value if isinstance(value, list) else (value,):
        if not isinstance(item, dict):
            continue
        for f in lengths:
            v = item.get(f)
            if isinstance(v, str) and len(v) > MAX_INDEXED:
                return False
        for attr, allowed in codes:
            if attr in item:
                v = item[attr]
                for code in v if isinstance(v, list) else (v,):
                    if not isinstance(code, str) or code not in allowed:
                        return False
    return True


_RULE_SYSTEMS = frozenset({NHS_NUMBER_SYSTEM, ODS_SYSTEM, CONFIDENTIALITY_SYSTEM})


def _types_and_rules_ok(resource: dict[str, Any], res_type: str, references: list[dict[str, Any]] | None = None) -> tuple[bool, bool]:
    """(no primitive has the wrong JSON type, no object breaks a rule of _rule_error): one
    walk of every object, each known element checked against its model's compiled plan and
    each element or system that _rule_error reads checked as it does (conservatively: a
    False only means the naming walk runs). A False sends the resource to check_json_types
    or to check_business_rules' naming walk, which find and name the problem. Contained
    resources are walked last, with their own type's plan (_check_contained_types ran first).
    `references`, when given, gets every Reference-like object outside contained resources,
    in the order reference resolution reads them (app.ingest.service._references)."""
    types_ok = rules_ok = True
    stack: list[tuple[Any, dict[str, Any]]] = [(resource, _type_plan(res_type))]
    contained: list[tuple[Any, dict[str, Any]]] = []  # walked once the rest is: no reference is read there
    pop, push, ruled, rule_systems, plan_of = stack.pop, stack.append, _RULED_ELEMENTS, _RULE_SYSTEMS, _type_plan
    collect = references is not None
    while True:
        if not stack:
            if not contained:
                break
            stack, contained, collect = contained, [], False
            pop, push = stack.pop, stack.append
        node, plan = pop()
        if type(node) is not dict:
            if isinstance(node, list):  # an array in an array: walked for the rules alone
                for item in node:
                    if isinstance(item, (dict, list)):
                        push((item, _NO_PLAN))
                continue
        if collect and (isinstance(node.get("reference"), str) or (isinstance(node.get("identifier"), dict) and "type" in node)):
            references.append(node)  # type: ignore[union-attr]
        for key, value in node.items():
            if key in ruled and rules_ok and not _element_kept(key, value):
                rules_ok = False
            spec = plan.get(key)
            kind = type(value)
            if spec is None:  # unknown to the plan (contained, _primitive extensions): rules only
                if key == "contained":
                    if kind is list and plan is not _NO_PLAN:  # resources, each walked by its type's plan
                        for item in value:
                            if isinstance(item, dict):
                                res = item.get("resourceType")
                                contained.append((item, plan_of(res) if type(res) is str else _NO_PLAN))
                            elif isinstance(item, list):
                                contained.append((item, _NO_PLAN))
                    elif isinstance(value, (dict, list)):
                        contained.append((value, _NO_PLAN))
                elif kind is dict or kind is list or isinstance(value, (dict, list)):
                    push((value, _NO_PLAN))
            elif kind is str:  # most values: a string for a string element
                if type(spec) is not str and str not in spec:
                    types_ok = False
            elif kind is list or isinstance(value, list):
                complex_ = type(spec) is str
                for item in value:
                    if isinstance(item, dict):
                        push((item, plan_of(spec) if complex_ else _NO_PLAN))  # type: ignore[arg-type]
                        types_ok = types_ok and complex_
                    elif isinstance(item, list):
                        push((item, _NO_PLAN))
                        types_ok = types_ok and complex_
                    elif not complex_ and item is not None and type(item) not in spec:
                        types_ok = False
            elif isinstance(value, dict):
                complex_ = type(spec) is str
                push((value, plan_of(spec) if complex_ else _NO_PLAN))  # type: ignore[arg-type]
                types_ok = types_ok and complex_
            elif type(spec) is not str and value is not None and kind not in spec:  # a primitive of another JSON type
                types_ok = False
        if rules_ok:
            system = node.get("system")
            if isinstance(system, str) and system in rule_systems and not _system_rule_kept(node, system):
                rules_ok = False
    return types_ok, rules_ok


def check_json_types(resource: dict[str, Any], res_type: str) -> None:
    """400 naming the first primitive sent as the wrong JSON type ("active": "yes")."""
    if _first_wrong_primitive(resource, res_type, paths=False) is None:
        return
    here, kind = _first_wrong_primitive(resource, res_type, paths=True)
    raise FhirError(
        400, "structure", f"{here}: must be {_JSON_WANTED[kind]} (a FHIR {kind} in JSON)",
        expression=here, spine_code="INVALID_RESOURCE",
    )


# fhir.resources checks a choice element ("medication[x]": medicationCodeableConcept or
# medicationReference) on the object that holds it, naming the alternatives but not the element
_PRIMITIVE_RE = re.compile(r"^Value error, ([A-Za-z]{2,20}) value string does not match spec regex")
_CHOICE_RE = re.compile(r"(Expect any of field value from this list|Any of one field value is expected from this list) \[([^\]]*)\]")


def _choice_error(err: dict) -> tuple[str, str] | None:
    """(the choice element as FHIR names it, e.g. "medication[x]", the message) for a
    one-of-many error; None for any other error."""
    if err.get("type") != "value_error":
        return None
    m = _CHOICE_RE.search(str(err.get("msg", "")))
    if not m:
        return None
    names = [n.strip().strip("'\"") for n in m.group(2).split(",") if n.strip()]
    if not names:
        return None
    stem = names[0]
    for n in names[1:]:  # the common start of the alternatives: medicationCodeableConcept, medicationReference -> medication
        while not n.startswith(stem):
            stem = stem[:-1]
    stem = stem.rstrip("_") or names[0]
    if m.group(1).startswith("Expect"):
        return f"{stem}[x]", f"{stem}[x] is required: give one of {', '.join(names)}"
    return f"{stem}[x]", f"{stem}[x] takes one value: give only one of {', '.join(names)}"


def _check_contained_types(resource: dict[str, Any], res_type: str) -> None:
    """400 naming a contained resource whose resourceType is missing or unknown (the models
    would fail on it with an error that is not a validation error)."""
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return
    for i, item in enumerate(contained):
        if not isinstance(item, dict):
            continue
        kind = item.get("resourceType")
        known = False
        if isinstance(kind, str) and kind and kind[0].isupper() and kind.isalnum():
            try:
                get_fhir_model_class(kind)
                known = True
            except (KeyError, ValueError, AttributeError):
                known = False
        if not known:
            where = f"{res_type}.contained[{i}].resourceType"
            raise FhirError(400, "structure", f"{where}: not a FHIR R4 resource type", expression=where, spine_code="INVALID_RESOURCE")


def validate_structure(resource: Any, *, expected_type: str | None = None, limits: ResourceLimits = DEFAULT_LIMITS) -> None:
    """400 unless the resource is a well-formed R4 resource of a type this gateway stores."""
    _validate_structure(resource, expected_type, limits)


class ElementMemo:
    """The datatype elements fhir.resources has found valid, by type and exact JSON.

    The models validate every complex element (a Coding, a Reference, an Address) by building
    its model in Python, one element at a time, and most of a Bundle's elements repeat: the same
    codes, references to the same patient, a household's one address. Whether an element is a
    valid instance of its datatype depends on its JSON alone (no parent, no context), so an
    element whose exact JSON was found valid before is taken as valid again, with the model
    built then. A failure is never kept: what is refused is refused as before, with the same
    errors. On only while `_validate_structure` validates a resource that is surely plain JSON
    (its `_serialised` shape check passed: no null, so no NaN either, which orjson writes as
    null), and the models it builds are thrown away; models built anywhere else are never
    shared. Bounded: emptied when full."""

    def __init__(self, capacity: int = 2048):  # ~7 MB of models; the hits are on common elements (57% of lookups at 1,024, 58% at 8,192)
        self.capacity = capacity
        self.found: dict[tuple[type, bytes], Any] = {}
        self.hits = self.misses = 0
        self._local = threading.local()
        self._installed: bool | None = None  # None: not tried yet
        self._lock = threading.Lock()

    @contextmanager
    def on(self, plain_json: bool = True) -> Iterator[None]:
        if not plain_json or not (self._installed or self._install()):
            yield
            return
        before = getattr(self._local, "on", False)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before

    def _install(self) -> bool:
        """Hook fhir_core's validator of complex elements (FhirBase.fhir_model_validator, which
        every datatype and contained resource goes through), once; False, and no memo, if a
        version of fhir_core has none."""
        with self._lock:
            if self._installed is None:
                self._installed = self._hook()
            return self._installed

    def _hook(self) -> bool:
        try:
            from fhir_core.types import FhirBase

            plain = FhirBase.__dict__["fhir_model_validator"].__func__
        except (ImportError, KeyError, AttributeError):  # pragma: no cover - another fhir_core
            return False
        memo = self

        def fhir_model_validator(cls, value, model_klass):
            if type(value) is not dict or not getattr(memo._local, "on", False):
                return plain(cls, value, model_klass)
            try:  # datetimes, dataclasses and subclasses of str or dict are not plain JSON: never kept
                key = (model_klass, orjson.dumps(value, option=_PLAIN_JSON_ONLY))
            except TypeError:
                return plain(cls, value, model_klass)
            model = memo.found.get(key)
            if model is not None:
                memo.hits += 1
                return model
            model = plain(cls, value, model_klass)  # raises for an invalid element: nothing kept
            memo.misses += 1
            if len(memo.found) >= memo.capacity:
                memo.found.clear()
            memo.found[key] = model
            return model

        FhirBase.fhir_model_validator = classmethod(fhir_model_validator)  # type: ignore[method-assign]
        return True


_PLAIN_JSON_ONLY = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
ELEMENT_MEMO = ElementMemo()


@dataclass(frozen=True, slots=True)
class _Facts:
    """What validating the structure learnt that the business rules need not learn again."""

    may_break_rule: bool  # some element holds what _rule_error reads: its naming walk decides
    local_refs: bool  # some string starts with "#": _check_local_references decides


def _validate_structure(resource: Any, expected_type: str | None, limits: ResourceLimits,
                        references: list[dict[str, Any]] | None = None) -> _Facts:
    if not isinstance(resource, dict):
        raise FhirError(400, "structure", "The resource must be a JSON object", expression="Resource")
    res_type = resource.get("resourceType")
    if not isinstance(res_type, str) or not res_type:
        raise FhirError(400, "required", "resourceType is missing", expression="Resource.resourceType", spine_code="MISSING_VALUE")
    if expected_type and res_type != expected_type:
        raise FhirError(
            400, "invalid", f"resourceType {res_type} does not match the URL type {expected_type}",
            expression=f"{res_type}.resourceType",
        )
    if res_type not in WRITABLE_TYPES:
        try:
            get_fhir_model_class(res_type)
            msg = f"Resource type {res_type} is not supported by this server (see /fhir/metadata)"
        except (ValueError, KeyError, AttributeError):
            msg = f"Unknown resource type {res_type!r}"
        raise FhirError(400, "not-supported", msg, expression=f"{res_type}.resourceType", spine_code="INVALID_RESOURCE")
    shape_ok, local_refs = _serialised(resource, limits)
    if not shape_ok:
        check_json_shape(resource, res_type, limits)
    check_sizes(resource, res_type, limits)
    if isinstance(resource.get("id"), str) and len(resource["id"]) > 64:  # FHIR ids are 1 to 64 characters
        raise FhirError(400, "structure", f"{res_type}.id: an id is at most 64 characters", expression=f"{res_type}.id", spine_code="INVALID_RESOURCE")
    _check_contained_types(resource, res_type)
    model = get_fhir_model_class(res_type)
    try:
        with ELEMENT_MEMO.on(shape_ok):
            model.model_validate(resource)
    except pydantic.ValidationError as exc:
        issues = []
        for err in exc.errors()[:20]:
            expr = _loc_to_expression(res_type, err["loc"])
            choice = _choice_error(err)
            if choice:
                expr, msg = f"{expr}.{choice[0]}", choice[1]
            else:
                # the error message may echo the offending value; only ever name the element
                msg = err["msg"].split(",", 1)[0] if err["type"] == "value_error" else err["msg"]
                bad_primitive = _PRIMITIVE_RE.search(str(err["msg"])) if err["type"] == "value_error" else None
                if bad_primitive:  # "DateTime value string does not match spec regex": which kind, never the value
                    msg = f"not a valid FHIR {bad_primitive.group(1)[:1].lower()}{bad_primitive.group(1)[1:]}"
            issues.append(Issue("structure", f"{expr}: {msg}", expression=[expr], spine_code="INVALID_RESOURCE"))
        raise FhirError(400, "structure", issues[0].diagnostics, issues=issues) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps well below it
        raise FhirError(400, "structure", f"{res_type} is nested too deeply", expression=res_type, spine_code="INVALID_RESOURCE") from None
    except (ValueError, TypeError) as exc:  # pragma: no cover - defensive
        raise FhirError(400, "structure", f"{res_type} is not valid: {type(exc).__name__}", expression=res_type) from None
    types_ok, rules_ok = _types_and_rules_ok(resource, res_type, references)
    if not types_ok:
        check_json_types(resource, res_type)
    return _Facts(not rules_ok, local_refs)


def _iter_paths(node: Any, path: str, expr: str) -> Iterator[tuple[str, Any]]:
    """(FHIRPath-style expression, value) for every value at a dotted path."""
    head, _, rest = path.partition(".")
    if not isinstance(node, dict) or head not in node:
        return
    value = node[head]
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        here = f"{expr}.{head}" + (f"[{i}]" if i is not None else "")
        if rest:
            yield from _iter_paths(item, rest, here)
        else:
            yield here, item


def _walk_dicts(node: Any, expr: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield expr, node
        for k, v in node.items():
            if isinstance(v, (dict, list)):
                yield from _walk_dicts(v, f"{expr}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_dicts(v, f"{expr}[{i}]")


def _code_error(expr: str, value: Any, allowed: set[str]) -> FhirError:
    return FhirError(
        400, "code-invalid",
        f"{expr}: code is not in the required value set ({', '.join(sorted(allowed))})",
        expression=expr, spine_code="INVALID_CODE_VALUE",
    )


def _provisions(node: dict, expr: str) -> Iterator[tuple[str, dict]]:
    prov = node.get("provision")
    if isinstance(prov, dict):
        here = f"{expr}.provision"
        yield here, prov
        yield from _provisions(prov, here)
    elif isinstance(prov, list):
        for i, p in enumerate(prov):
            if isinstance(p, dict):
                here = f"{expr}.provision[{i}]"
                yield here, p
                yield from _provisions(p, here)


def _too_long(expr: str, what: str) -> FhirError:
    return FhirError(
        422, "value",
        f"{expr}: {what} is longer than the {MAX_INDEXED} characters this server can match and search on",
        expression=expr, spine_code="INVALID_VALUE",
    )


def _length_error(node: dict[str, Any], expr: str) -> FhirError | None:
    """Identifier system and value, and Coding system and code, are matched and searched
    through index columns of MAX_INDEXED characters: a longer one could be stored but never
    found, nor recognised when sent again."""
    for key, fields in (("identifier", ("system", "value")), ("coding", ("system", "code"))):
        items = node.get(key)
        if items is None:
            continue
        for i, item in (enumerate(items) if isinstance(items, list) else [(None, items)]):
            if not isinstance(item, dict):
                continue
            for f in fields:
                v = item.get(f)
                if isinstance(v, str) and len(v) > MAX_INDEXED:
                    where = f"{expr}.{key}" + (f"[{i}]" if i is not None else "") + f".{f}"
                    return _too_long(where, f"the {key} {f}")
    return None


def _rule_error(node: dict[str, Any], expr: str) -> FhirError | None:
    """The first datatype, NHS number, ODS or confidentiality rule this element breaks, as the
    error naming it under `expr`; None when it keeps them all."""
    if "identifier" in node or "coding" in node:
        error = _length_error(node, expr)
        if error is not None:
            return error
    for element in _DATATYPE_ELEMENTS.intersection(node):
        for attr, allowed in _DATATYPE_BY_ELEMENT[element]:
            for e, value in _iter_paths(node, f"{element}.{attr}", expr):
                if value not in allowed:
                    return _code_error(e, value, allowed)
    system = node.get("system")
    if system == NHS_NUMBER_SYSTEM and "value" in node:
        if not is_valid_nhs_number(node.get("value")):
            return FhirError(
                422, "value",
                f"{expr}.value: not a valid NHS number (10 digits with a Modulus 11 check digit)",
                expression=f"{expr}.value", spine_code="INVALID_NHS_NUMBER",
            )
    elif system == ODS_SYSTEM and "value" in node:
        if not is_valid_ods_code(node.get("value")):
            return FhirError(
                422, "value", f"{expr}.value: not a valid ODS organisation code (3 to 10 upper-case letters and digits)",
                expression=f"{expr}.value", spine_code="INVALID_VALUE",
            )
    elif system == CONFIDENTIALITY_SYSTEM and "code" in node and node.get("code") not in _CONFIDENTIALITY_CODES:
        return _code_error(f"{expr}.code", node.get("code"), _CONFIDENTIALITY_CODES)
    return None


def _breaks_a_rule(resource: dict[str, Any]) -> bool:
    """Whether any element breaks a rule of _rule_error, walked without building an
    expression for every element: the common case, a valid resource, pays for one walk."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if _rule_error(node, "") is not None:
            return True
        for v in node.values():
            if isinstance(v, (dict, list)):
                stack.append(v)
    return False


@lru_cache(maxsize=None)
def _required_plan(res_type: str) -> tuple[tuple[tuple[str, ...], set[str]], ...]:
    """A type's required bindings (REQUIRED_CODES) as (path parts, allowed codes)."""
    return tuple((tuple(path.split(".")), allowed) for path, allowed in REQUIRED_CODES.get(res_type, {}).items())


def _required_codes_kept(resource: dict[str, Any], res_type: str) -> bool:
    """Whether every code at a required binding's path is in its value set: the values
    _iter_paths yields, gathered level by level without building their expressions."""
    for parts, allowed in _required_plan(res_type):
        values: list[Any] = [resource]
        for part in parts:
            found: list[Any] = []
            for v in values:
                if isinstance(v, dict) and part in v:
                    x = v[part]
                    if isinstance(x, list):
                        found += x
                    else:
                        found.append(x)
            values = found
        for value in values:
            if not isinstance(value, str) or value not in allowed:
                return False
    return True


def check_business_rules(resource: dict[str, Any], facts: _Facts | None = None) -> None:
    """400 for a code outside a required binding (invalid FHIR); 422 for valid FHIR that breaks a
    rule of this gateway (NHS number, ODS code). `facts`: what validate_resource's structure
    check learnt of this resource (else the walks below find it out)."""
    res_type = resource["resourceType"]
    if not _required_codes_kept(resource, res_type):  # find and name the first code outside its value set
        for path, allowed in REQUIRED_CODES.get(res_type, {}).items():
            for expr, value in _iter_paths(resource, path, res_type):
                if value not in allowed:
                    raise _code_error(expr, value, allowed)
    for path, (system, allowed) in REQUIRED_CONCEPTS.get(res_type, {}).items():
        for expr, value in _iter_paths(resource, path, res_type):
            for i, coding in enumerate((value or {}).get("coding") or []):
                if coding.get("system") == system and coding.get("code") not in allowed:
                    raise _code_error(f"{expr}.coding[{i}].code", coding.get("code"), allowed)
    for i, item in enumerate(resource.get("contained") or []):
        kind = item.get("resourceType") if isinstance(item, dict) else None
        for path, allowed in REQUIRED_CODES.get(kind, {}).items():
            for expr, value in _iter_paths(item, path, f"{res_type}.contained[{i}]"):
                if value not in allowed:
                    raise _code_error(expr, value, allowed)
    if facts is None or facts.local_refs:
        _check_local_references(resource, res_type)
    if res_type == "Consent":
        for expr, prov in _provisions(resource, res_type):
            for path, allowed in _CONSENT_PROVISION.items():
                for e, value in _iter_paths(prov, path, expr):
                    if value not in allowed:
                        raise _code_error(e, value, allowed)
    if not (facts.may_break_rule if facts is not None else _breaks_a_rule(resource)):
        return
    for expr, node in _walk_dicts(resource, res_type):  # find and name the first problem
        error = _rule_error(node, expr)
        if error is not None:
            raise error


# a URI scheme ("http:", "urn:"): a reference that has one is absolute
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def foreign_reference(literal: str, bases: tuple[str, ...]) -> bool:
    """Whether a literal reference points outside this server: absolute, and neither a Bundle
    entry's urn:uuid/urn:oid fullUrl nor a URL under one of `bases` (this server's FHIR base,
    and for a sync the upstream it copies). Sources do not know each other's servers: a record
    elsewhere is named by identifier (Reference.identifier), never by a URL this gateway would
    hand to every reader (`http://evil.example/...`)."""
    if not _SCHEME_RE.match(literal) or literal.startswith(("urn:uuid:", "urn:oid:")):
        return False
    return not any(literal.startswith(base.rstrip("/") + "/") for base in bases)


def foreign_reference_error(expr: str) -> FhirError:
    return FhirError(
        422, "business-rule",
        f"{expr}: a reference must be relative (Type/id), to this server's base URL, a Bundle entry's fullUrl, "
        "a contained resource (#id), conditional (Type?identifier=system|value) or logical (identifier); "
        "a record on another server is named by its identifier",
        expression=expr, spine_code="INVALID_REFERENCE",
    )


# elements that must name a resource of one type when they point at a contained resource
_LOCAL_TARGET_TYPES = {"medicationReference": "Medication"}


def _check_local_references(resource: dict[str, Any], res_type: str) -> None:
    """R4 ref-1: a local reference ("#id") names a resource contained in this one (a bare "#"
    names the container, from inside a contained resource). A medicationReference to a
    contained resource names a Medication. 400: the resource is not valid FHIR."""
    try:  # one C-speed serialisation says whether any string starts with "#": most resources hold none
        if b'"#' not in orjson.dumps(resource):
            return
    except (TypeError, orjson.JSONEncodeError):
        pass  # not plain JSON: walk it
    contained = resource.get("contained")
    ids = {c.get("id"): c.get("resourceType") for c in contained if isinstance(c, dict)} if isinstance(contained, list) else {}
    stack: list[tuple[Any, str | None, bool]] = [(resource, None, False)]
    found: list[tuple[dict, str | None, bool]] = []
    while stack:  # cheap pass: most resources hold no local reference at all
        node, key, inside = stack.pop()
        if isinstance(node, list):
            stack.extend((v, key, inside) for v in node)
        elif isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.startswith("#"):
                found.append((node, key, inside))
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, k, inside or (node is resource and k == "contained")))
    for node, key, inside in found:
        target = node["reference"][1:]
        problem = None
        if target == "":
            if not inside:
                problem = 'a bare "#" names the containing resource, and is allowed only inside a contained resource'
        elif target not in ids:
            problem = f"no contained resource has the id {target!r} (ref-1)" if len(target) <= 64 and not CONTROL_CHARS.search(target) else "no contained resource has that id (ref-1)"
        elif key in _LOCAL_TARGET_TYPES and ids[target] != _LOCAL_TARGET_TYPES[key]:
            problem = f"{key} must name a contained {_LOCAL_TARGET_TYPES[key]}, not a {ids[target]}"
        if problem:
            where = next((f"{e}.reference" for e, n in _walk_dicts(resource, res_type) if n is node), f"{res_type}")
            raise FhirError(400, "invalid", f"{where}: {problem}", expression=where, spine_code="INVALID_REFERENCE")


def validate_resource(resource: Any, *, expected_type: str | None = None, limits: ResourceLimits = DEFAULT_LIMITS,
                      references: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """400 or 422 unless the resource passes every rule. `references`, when given, is filled
    with its Reference-like objects outside contained resources, as the one walk of the
    structure check meets them (ingest resolves them without walking the resource again)."""
    check_business_rules(resource, _validate_structure(resource, expected_type, limits, references))
    return resource
