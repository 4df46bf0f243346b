"""Sensitivity labelling: from the codes on a record to meta.security labels and categories.

Works like a security labelling service: at ingest each record's codes are looked up in
one value set per sensitive category (consent/valuesets/*.yaml), and the record is
stamped with the category's HL7 v3 ActCode labels (ETH, SUD, PSY, SDV, VIO) and a
familyview data-category coding. Disclosure decisions then read the labels, not raw codes,
so a new code only needs adding to a value set.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .model import DATA_CATEGORY_SYSTEM, V3_ACT_CODE, V3_CONFIDENTIALITY, DataItem

VALUESET_DIR = Path(__file__).parent / "valuesets"

ACT_CODE_DISPLAY = {
    "ETH": "substance abuse information sensitivity",
    "SUD": "substance use disorder information sensitivity",
    "PSY": "psychiatry information sensitivity",
    "SDV": "sexual assault, abuse, or domestic violence information sensitivity",
    "VIO": "violence information sensitivity",
}

IDENTITY_TYPES = frozenset({"Patient", "RelatedPerson", "Person"})
CARE_TEAM_TYPES = frozenset({"CareTeam", "EpisodeOfCare", "Practitioner", "PractitionerRole", "Organization"})


@dataclass(frozen=True, slots=True)
class ValueSet:
    """The codes that put a record into one sensitive category."""

    id: str
    version: str
    category: str
    labels: tuple[str, ...]
    codes: frozenset[tuple[str, str]]


def load_value_sets(directory: Path = VALUESET_DIR) -> dict[str, ValueSet]:
    """Read every value set file; a malformed file is an error, not a silent gap."""
    sets: dict[str, ValueSet] = {}
    for path in sorted(directory.glob("*.yaml")):
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        try:
            codes = frozenset((str(c["system"]), str(c["code"])) for c in data["codes"])
            vs = ValueSet(
                id=str(data["id"]),
                version=str(data["version"]),
                category=str(data["category"]),
                labels=tuple(data.get("labels") or ()),
                codes=codes,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path.name}: malformed value set ({exc})") from exc
        for label in vs.labels:
            if label not in ACT_CODE_DISPLAY:
                raise ValueError(f"{path.name}: unknown sensitivity label {label!r}")
        sets[vs.category] = vs
    return sets


VALUE_SETS: dict[str, ValueSet] = load_value_sets()

_CATEGORY_BY_CODE: dict[tuple[str, str], set[str]] = {}
for _vs in VALUE_SETS.values():
    for _code in _vs.codes:
        _CATEGORY_BY_CODE.setdefault(_code, set()).add(_vs.category)

#: A label already on a record, read back as the category it stands for.
CATEGORY_BY_LABEL: dict[str, str] = {
    label: vs.category for vs in VALUE_SETS.values() for label in vs.labels
}


def _walk_codings(node: Any, skip_meta: bool = True) -> list[tuple[str, str]]:
    """Every (system, code) in a resource, except its meta (labels are read separately).
    An explicit stack, not recursive generators: it runs on every resource ingested."""
    found: list[tuple[str, str]] = []
    stack = [node]
    top = node if skip_meta else None
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, dict) or isinstance(n, Mapping):  # dict first: the ABC check is slow
            code = n.get("code")
            if isinstance(code, str) and "system" in n:
                found.append((str(n.get("system") or ""), code))
            for key, value in n.items():
                if isinstance(value, (dict, list)) or isinstance(value, Mapping):
                    if not (n is top and key == "meta"):
                        stack.append(value)
    return found


def _security_codes(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = resource.get("meta") or {}
    return [
        (str(c.get("system") or ""), str(c["code"]))
        for c in meta.get("security") or ()
        if isinstance(c, Mapping) and c.get("code")
    ]


def sensitive_categories(resource: Mapping[str, Any]) -> set[str]:
    """The sensitive categories a record falls into, from its codes and existing labels."""
    found: set[str] = set()
    for coding in _walk_codings(resource):
        found.update(_CATEGORY_BY_CODE.get(coding, ()))
    for system, code in _security_codes(resource):
        if system == DATA_CATEGORY_SYSTEM and code in VALUE_SETS:
            found.add(code)
        elif system in ("", V3_ACT_CODE) and code in CATEGORY_BY_LABEL:
            found.add(CATEGORY_BY_LABEL[code])
    return found


def categories_for_resource(resource: Mapping[str, Any]) -> set[str]:
    """The data categories of a resource: its sensitive ones, else what kind of record it is."""
    found = sensitive_categories(resource)
    if found:
        return found
    kind = resource.get("resourceType")
    if kind in IDENTITY_TYPES:
        return {"identity"}
    if kind in CARE_TEAM_TYPES:
        return {"care-team"}
    return {"record"}


def label_resource(resource: Mapping[str, Any]) -> list[dict[str, str]]:
    """The security Codings to stamp into meta.security (existing labels not repeated).

    One v3 ActCode coding per sensitivity label of each sensitive category found, and one
    familyview data-category coding naming the category itself (so that categories without
    an ActCode label, such as care-leaver, are labelled too). Sorted, so the result is stable.
    """
    present = set(_security_codes(resource))
    wanted: set[tuple[str, str]] = set()
    for category in sensitive_categories(resource):
        for label in VALUE_SETS[category].labels:
            wanted.add((V3_ACT_CODE, label))
        wanted.add((DATA_CATEGORY_SYSTEM, category))
    codings = []
    for system, code in sorted(wanted - present):
        coding = {"system": system, "code": code}
        display = ACT_CODE_DISPLAY.get(code) if system == V3_ACT_CODE else None
        if display:
            coding["display"] = display
        codings.append(coding)
    return codings


_DATE_FIELDS = (
    "recordedDate", "effectiveDateTime", "onsetDateTime", "issued", "authoredOn", "date", "dateTime",
)


def _record_date(resource: Mapping[str, Any]) -> _dt.date | None:
    for key in _DATE_FIELDS:
        value = resource.get(key)
        if isinstance(value, str) and len(value) >= 10:
            try:
                return _dt.date.fromisoformat(value[:10])
            except ValueError:
                continue
    for key in ("effectivePeriod", "period", "onsetPeriod"):
        value = resource.get(key)
        if isinstance(value, Mapping) and isinstance(value.get("start"), str) and len(value["start"]) >= 10:
            try:
                return _dt.date.fromisoformat(value["start"][:10])
            except ValueError:
                continue
    return None


def data_items_for_resource(resource: Mapping[str, Any], source_org: str | None = None) -> list[DataItem]:
    """One :class:`DataItem` per category of a resource, ready for :func:`consent.decide`.

    A record in two sensitive categories (say substance misuse and mental health) gives two
    items; disclose it only if every one is permitted.
    """
    labels = {code for system, code in _security_codes(resource) if system in ("", V3_ACT_CODE, V3_CONFIDENTIALITY)}
    for coding in label_resource(resource):
        if coding["system"] == V3_ACT_CODE:
            labels.add(coding["code"])
    kind = resource.get("resourceType")
    reference = f"{kind}/{resource['id']}" if resource.get("id") else None
    codes = tuple(sorted(set(_walk_codings(resource))))
    return [
        DataItem(
            category=category,
            resource_type=kind,
            security_labels=frozenset(labels),
            source_org=source_org,
            date=_record_date(resource),
            reference=reference,
            codes=codes,
        )
        for category in sorted(categories_for_resource(resource))
    ]
