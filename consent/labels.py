"""Sensitivity labelling: from the codes and words on a record to meta.security labels and categories.

Works like a security labelling service: at ingest each record's codes are looked up in the
sensitive categories' value sets, and its texts in a term list, and the record is stamped
with the HL7 v3 ActCode labels of what matched (ETH, SUD, PSY, SDV, VIO, HIV, STD) and a
familyview data-category coding per category. Disclosure decisions then read the labels,
not raw codes, so a new code only needs adding to a value set.

Three sources, all data, read once at import:

* the UK code lists (``valuesets/codelists/``: SNOMED CT condition lists and dm+d medicine
  lists with their provenance, brought in by ``scripts/build_valuesets.py``; the manifest
  gives each list its category, labels and the code systems it matches);
* the hand-kept value sets (``valuesets/*.yaml``: practice-local codes, and the categories
  no public list covers: care leaving, young parenthood, own childhood adversity);
* the term backstop (``terms/terms.yaml``) for local codes, free text and concepts newer
  than the lists.

A record's categories are the union of all three. The labels are per entry, not per
category: a sexual-health record gets HIV or STD according to the list (or term set) that
placed it. Classifying a coding is one dict look-up; a text is normalised once and only
the term sets whose first words occur in it are searched.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import re
from collections.abc import Mapping as _AbcMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .model import DATA_CATEGORY_SYSTEM, V3_ACT_CODE, V3_CONFIDENTIALITY, DataItem

PACKAGE_DIR = Path(__file__).parent
VALUESET_DIR = PACKAGE_DIR / "valuesets"
CODELIST_DIR = VALUESET_DIR / "codelists"
TERMS_PATH = PACKAGE_DIR / "terms" / "terms.yaml"

SNOMED_SYSTEM = "http://snomed.info/sct"
DMD_SYSTEM = "https://dmd.nhs.uk"
_HL7_TERMINOLOGY = "http://terminology.hl7.org/"

ACT_CODE_DISPLAY = {
    "ETH": "substance abuse information sensitivity",
    "SUD": "substance use disorder information sensitivity",
    "PSY": "psychiatry information sensitivity",
    "SDV": "sexual assault, abuse, or domestic violence information sensitivity",
    "VIO": "violence information sensitivity",
    "HIV": "HIV/AIDS information sensitivity",
    "STD": "sexually transmitted disease information sensitivity",
}

IDENTITY_TYPES = frozenset({"Patient", "RelatedPerson", "Person"})
CARE_TEAM_TYPES = frozenset({"CareTeam", "EpisodeOfCare", "Practitioner", "PractitionerRole", "Organization"})


@dataclass(frozen=True, slots=True)
class ValueSet:
    """The codes that put a record into one sensitive category.

    ``labels`` are all the labels a record of the category can get; which of them a record
    gets depends on the entry that placed it (see :func:`label_resource`). ``sources`` names
    the files the codes come from (value set YAML and code list CSVs)."""

    id: str
    version: str
    category: str
    labels: tuple[str, ...]
    codes: frozenset[tuple[str, str]]
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CodeList:
    """One shipped code list (a CSV under ``valuesets/codelists``) as its manifest describes it."""

    id: str
    file: str
    source_file: str
    provenance: str
    category: str
    labels: tuple[str, ...]
    systems: tuple[str, ...]
    version: str
    sha256: str
    codes: Mapping[str, tuple[str, ...]]  # code -> the labels this code gives


@dataclass(frozen=True, slots=True)
class TermSet:
    """Phrases that place a text in one category, with the false friends cut out first."""

    id: str
    category: str
    labels: tuple[str, ...]
    terms: tuple[str, ...]
    false_friends: tuple[str, ...]
    pattern: re.Pattern[str]
    not_pattern: re.Pattern[str] | None
    keys: frozenset[str]  # the first four letters of each term's first word


@dataclass(frozen=True, slots=True)
class TermHit:
    """What a text matched in one term set (``phrase`` None: only false friends were found)."""

    term_set: str
    category: str
    labels: tuple[str, ...]
    phrase: str | None
    removed: tuple[str, ...]


def _check_labels(labels: Iterable[str], where: str) -> tuple[str, ...]:
    labels = tuple(labels or ())
    for label in labels:
        if label not in ACT_CODE_DISPLAY:
            raise ValueError(f"{where}: unknown sensitivity label {label!r}")
    return labels


# ---------------------------------------------------------------------------
# Value sets kept by hand (YAML)
# ---------------------------------------------------------------------------


def load_value_sets(directory: Path = VALUESET_DIR) -> dict[str, ValueSet]:
    """Read every hand-kept value set file; a malformed file is an error, not a silent gap."""
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
                sources=(path.name,),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path.name}: malformed value set ({exc})") from exc
        _check_labels(vs.labels, path.name)
        sets[vs.category] = vs
    return sets


# ---------------------------------------------------------------------------
# UK code lists (CSV + manifest, built by scripts/build_valuesets.py)
# ---------------------------------------------------------------------------


def _label_rules(
    entry: Mapping[str, Any], where: str
) -> list[tuple[str | None, re.Pattern[str] | None, tuple[str, ...]]]:
    rules = []
    for rule in entry.get("label_rules") or ():
        term = rule.get("term_matches")
        rules.append(
            (rule.get("source_contains"), re.compile(term) if term else None, _check_labels(rule["labels"], where))
        )
    return rules


def load_code_lists(directory: Path = CODELIST_DIR) -> tuple[str, dict[str, CodeList]]:
    """The manifest's version and every list it names, checked against its count and sha256."""
    manifest_path = directory / "manifest.yaml"
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    version = str(manifest["version"])
    lists: dict[str, CodeList] = {}
    for entry in manifest["lists"]:
        where = f"{directory.name}/{entry['file']}"
        data = (directory / entry["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{where}: differs from manifest.yaml (sha256); rebuild with scripts/build_valuesets.py")
        labels = _check_labels(entry["labels"], where)
        rules = _label_rules(entry, where)
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        if next(reader) != ["code", "term", "source"]:
            raise ValueError(f"{where}: header must be code,term,source")
        codes: dict[str, tuple[str, ...]] = {}
        for code, term, source in reader:
            if rules:
                got = {
                    label
                    for contains, pattern, rule_labels in rules
                    if (contains and contains in source) or (pattern is not None and pattern.search(term))
                    for label in rule_labels
                }
                codes[code] = tuple(sorted(got)) if got else labels  # no rule met: every label
            else:
                codes[code] = labels
        if len(codes) != entry["codes"]:
            raise ValueError(f"{where}: {len(codes)} codes, manifest says {entry['codes']}")
        lists[entry["id"]] = CodeList(
            id=str(entry["id"]),
            file=str(entry["file"]),
            source_file=str(entry.get("source_file") or entry["file"]),
            provenance=str(entry.get("provenance") or ""),
            category=str(entry["category"]),
            labels=labels,
            systems=tuple(entry["systems"]),
            version=version,
            sha256=str(entry["sha256"]),
            codes=codes,
        )
    return version, lists


# ---------------------------------------------------------------------------
# The term backstop
# ---------------------------------------------------------------------------

_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_text(text: str) -> str:
    """Lower case, every run of other characters one space: how texts and terms are compared."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _phrase_pattern(phrases: Iterable[str], where: str) -> tuple[re.Pattern[str], frozenset[str]]:
    fragments, keys = [], set()
    for phrase in phrases:
        words: list[str] = []
        for raw in phrase.split():
            star = raw.endswith("*")
            body = raw[:-1] if star else raw
            pieces = normalise_text(body).split()
            if "*" in body or not pieces or (star and not words and len(pieces) == 1 and len(pieces[0]) < 4):
                raise ValueError(
                    f"{where}: bad term {phrase!r} (* only ends a word; a starred first word has 4 letters or more)"
                )
            words += pieces[:-1] + [pieces[-1] + ("*" if star else "")]
        parts = [re.escape(w[:-1]) + "[a-z0-9]*" if w.endswith("*") else re.escape(w) for w in words]
        fragments.append(" ".join(parts))
        keys.add(words[0].rstrip("*")[:4])
    # Longest first, so the phrase reported is the fullest one that matched.
    fragments.sort(key=lambda f: (-len(f), f))
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(fragments) + r")(?![a-z0-9])"), frozenset(keys)


def load_terms(path: Path = TERMS_PATH) -> tuple[str, dict[str, TermSet]]:
    """The term file's version and its term sets, each compiled to one pattern (plus one for its false friends)."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    version = str(data["version"])
    sets: dict[str, TermSet] = {}
    for set_id, spec in data["term_sets"].items():
        where = f"{path.name}: {set_id}"
        terms = tuple(str(t) for t in spec["terms"])
        not_terms = tuple(str(t) for t in spec.get("not") or ())
        pattern, keys = _phrase_pattern(terms, where)
        not_pattern = _phrase_pattern(not_terms, where)[0] if not_terms else None
        sets[set_id] = TermSet(
            id=set_id,
            category=str(spec["category"]),
            labels=_check_labels(spec.get("labels"), where),
            terms=terms,
            false_friends=not_terms,
            pattern=pattern,
            not_pattern=not_pattern,
            keys=keys,
        )
    return version, sets


def _match_normalised(norm: str, want_misses: bool = False) -> list[TermHit]:
    candidates: set[str] = set()
    for word in norm.split(" "):
        ids = _SETS_BY_KEY.get(word[:4])
        if ids:
            candidates.update(ids)
    hits = []
    for set_id in sorted(candidates):
        ts = TERM_SETS[set_id]
        found = ts.pattern.search(norm)
        if found is None:
            continue
        removed: tuple[str, ...] = ()
        if ts.not_pattern is not None:
            removed = tuple(m.group(0) for m in ts.not_pattern.finditer(norm))
            if removed:
                found = ts.pattern.search(ts.not_pattern.sub(" | ", norm))
        if found is not None or (want_misses and removed):
            hits.append(TermHit(set_id, ts.category, ts.labels, found.group(0) if found else None, removed))
    return hits


def match_terms(text: str, include_false_friends: bool = False) -> list[TermHit]:
    """The term sets a text matches (with ``include_false_friends``, also those where only a
    false friend was found, with ``phrase`` None)."""
    norm = normalise_text(text)
    return _match_normalised(norm, include_false_friends) if norm else []


_TEXT_CACHE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
_TEXT_CACHE_MAX = 20_000
_TEXT_CACHE_LONGEST = 200


def _classify_text(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(category, labels) per matching term set; remembered, since displays repeat."""
    got = _TEXT_CACHE.get(text)
    if got is None:
        norm = normalise_text(text)
        got = tuple((h.category, h.labels) for h in _match_normalised(norm)) if norm else ()
        if len(text) <= _TEXT_CACHE_LONGEST:  # displays and short texts; long notes are not kept
            if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
                _TEXT_CACHE.clear()
            _TEXT_CACHE[text] = got
    return got


# ---------------------------------------------------------------------------
# Loaded once: the value sets by category and the code index
# ---------------------------------------------------------------------------

YAML_VALUE_SETS: dict[str, ValueSet] = load_value_sets()
CODELISTS_VERSION, CODE_LISTS = load_code_lists()
TERMS_VERSION, TERM_SETS = load_terms()

_index: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
_labels_seen: dict[str, list[frozenset[str]]] = {}


def _add(key: tuple[str, str], category: str, labels: tuple[str, ...]) -> None:
    cats, labs = _index.setdefault(key, (set(), set()))  # noqa: F821 (module-level, deleted after the index is built)
    cats.add(category)
    labs.update(labels)
    _labels_seen.setdefault(category, []).append(frozenset(labels))  # noqa: F821


for _vs in YAML_VALUE_SETS.values():
    for _key in _vs.codes:
        _add(_key, _vs.category, _vs.labels)
for _cl in CODE_LISTS.values():
    for _code, _code_labels in _cl.codes.items():
        for _system in _cl.systems:
            _add((_system, _code), _cl.category, _code_labels)

_frozen: dict[tuple[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]] = {}
#: (system, code) -> (categories, labels): one look-up per coding.
_CODE_INDEX: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}
for _key, (_cats, _labs) in _index.items():
    _value = (frozenset(_cats), frozenset(_labs))
    _CODE_INDEX[_key] = _frozen.setdefault(_value, _value)
#: Kept for callers of the old name: (system, code) -> categories.
_CATEGORY_BY_CODE: dict[tuple[str, str], frozenset[str]] = {k: v[0] for k, v in _CODE_INDEX.items()}

for _ts in TERM_SETS.values():
    _labels_seen.setdefault(_ts.category, []).append(frozenset(_ts.labels))


def _merge_value_sets() -> dict[str, ValueSet]:
    merged: dict[str, ValueSet] = {}
    categories = list(YAML_VALUE_SETS) + [cl.category for cl in CODE_LISTS.values()]
    for category in dict.fromkeys(categories):
        yaml_vs = YAML_VALUE_SETS.get(category)
        lists = [cl for cl in CODE_LISTS.values() if cl.category == category]
        codes = set(yaml_vs.codes if yaml_vs else ())
        labels = list(yaml_vs.labels if yaml_vs else ())
        for cl in lists:
            codes.update((system, code) for code in cl.codes for system in cl.systems)
            labels += [label for label in cl.labels if label not in labels]
        versions = ([yaml_vs.version] if yaml_vs else []) + ([f"codelists {CODELISTS_VERSION}"] if lists else [])
        merged[category] = ValueSet(
            id=yaml_vs.id if yaml_vs else category,
            version=" + ".join(versions),
            category=category,
            labels=tuple(labels),
            codes=frozenset(codes),
            sources=(yaml_vs.sources if yaml_vs else ()) + tuple(f"codelists/{cl.file}" for cl in lists),
        )
    return merged


#: One value set per sensitive category: the hand-kept YAML and the code lists together.
VALUE_SETS: dict[str, ValueSet] = _merge_value_sets()

for _ts in TERM_SETS.values():
    if _ts.category not in VALUE_SETS:
        raise ValueError(f"terms.yaml: {_ts.id}: category {_ts.category!r} has no value set")
    if set(_ts.labels) - set(VALUE_SETS[_ts.category].labels):
        raise ValueError(
            f"terms.yaml: {_ts.id}: labels {_ts.labels} are not the category's {VALUE_SETS[_ts.category].labels}"
        )

#: The labels every entry of a category gives (ETH and SUD for substance misuse; none for
#: sexual health, whose entries give HIV or STD): what an existing ActCode label implies.
_COMMON_LABELS: dict[str, frozenset[str]] = {c: frozenset.intersection(*seen) for c, seen in _labels_seen.items()}

#: A label already on a record, read back as the category it stands for.
CATEGORY_BY_LABEL: dict[str, str] = {label: vs.category for vs in VALUE_SETS.values() for label in vs.labels}

_SETS_BY_KEY: dict[str, tuple[str, ...]] = {}
for _ts in TERM_SETS.values():
    for _k in _ts.keys:
        _SETS_BY_KEY[_k] = tuple(sorted(set(_SETS_BY_KEY.get(_k, ())) | {_ts.id}))

del _index, _frozen, _labels_seen


def classify_coding(system: str, code: str) -> tuple[frozenset[str], frozenset[str]]:
    """(categories, labels) a coding gives; both empty when no value set holds it."""
    return _CODE_INDEX.get((system, code), (frozenset(), frozenset()))


def classify_text(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(categories, labels) a text gives through the term backstop."""
    cats: set[str] = set()
    labels: set[str] = set()
    for category, labs in _classify_text(text):
        cats.add(category)
        labels.update(labs)
    return frozenset(cats), frozenset(labels)


# ---------------------------------------------------------------------------
# Reading a resource
# ---------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))

#: Texts under these keys are names, addresses and the like, not clinical words.
_NOT_CLINICAL_TEXT = frozenset({"name", "address", "telecom", "identifier", "photo", "extension", "modifierExtension"})


def _is_container(value: Any) -> bool:
    # dict and list first, scalars next: the Mapping ABC check is slow
    return isinstance(value, (dict, list)) or (not isinstance(value, _SCALARS) and isinstance(value, _AbcMapping))


def _scan(node: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """Every (system, code) in a resource and every text the term backstop reads, except
    its meta (labels are read separately). An explicit stack, not recursive generators: it
    runs on every resource ingested; only objects and arrays are pushed on it."""
    codings: list[tuple[str, str]] = []
    texts: list[str] = []
    if not _is_container(node):
        return codings, texts
    stack: list[tuple[Any, Any]] = [(None, node)]
    pop, push, top, not_clinical = stack.pop, stack.append, node, _NOT_CLINICAL_TEXT
    while stack:
        parent, n = pop()
        if isinstance(n, list):
            for v in n:
                if type(v) is not str and _is_container(v):
                    push((parent, v))
            continue
        code = n.get("code")
        if isinstance(code, str) and "system" in n:
            system = str(n.get("system") or "")
            codings.append((system, code))
            display = n.get("display")
            if isinstance(display, str) and not system.startswith(_HL7_TERMINOLOGY) and system != DATA_CATEGORY_SYSTEM:
                texts.append(display)
        elif "code" in n and isinstance(n.get("display"), str):  # a coding with no system: its words still count
            texts.append(n["display"])
        if parent not in not_clinical:
            text = n.get("text")
            if isinstance(text, str):
                texts.append(text)
            value = n.get("valueString")
            if isinstance(value, str):
                texts.append(value)
        at_top = n is top
        for key, value in n.items():
            if type(value) is str:  # most values: nothing below
                continue
            if _is_container(value) and not (at_top and key == "meta"):
                push((key, value))
    return codings, texts


def _walk_codings(node: Any, skip_meta: bool = True) -> list[tuple[str, str]]:
    """Every (system, code) in a resource, except its meta."""
    return _scan(node)[0] if skip_meta else _scan({"_": node})[0]


def _security_codes(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    meta = resource.get("meta") or {}
    return [
        (str(c.get("system") or ""), str(c["code"]))
        for c in meta.get("security") or ()
        if isinstance(c, Mapping) and c.get("code")
    ]


def _analyse(resource: Mapping[str, Any]) -> tuple[set[str], set[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """(categories, ActCode labels wanted, codings, security codes present) for a resource."""
    codings, texts = _scan(resource)
    categories: set[str] = set()
    labels: set[str] = set()
    for coding in codings:
        hit = _CODE_INDEX.get(coding)
        if hit is not None:
            categories.update(hit[0])
            labels.update(hit[1])
    for text in texts:
        for category, labs in _classify_text(text):
            categories.add(category)
            labels.update(labs)
    present = _security_codes(resource)
    if present:
        from_labels: set[str] = set()
        labelled: set[str] = set()
        for system, code in present:
            if system == DATA_CATEGORY_SYSTEM and code in VALUE_SETS:
                from_labels.add(code)
            elif system in ("", V3_ACT_CODE) and code in CATEGORY_BY_LABEL:
                from_labels.add(CATEGORY_BY_LABEL[code])
                labelled.add(CATEGORY_BY_LABEL[code])
        for category in from_labels - categories:
            # Known only from labels already on the record: an ActCode label brings what every
            # entry of its category gives; a bare data-category coding, all the category's labels.
            labels.update(_COMMON_LABELS.get(category, ()) if category in labelled else VALUE_SETS[category].labels)
        categories |= from_labels
    return categories, labels, codings, present


def sensitive_categories(resource: Mapping[str, Any]) -> set[str]:
    """The sensitive categories a record falls into, from its codes, words and existing labels."""
    return _analyse(resource)[0]


def _kind_category(resource: Mapping[str, Any]) -> set[str]:
    kind = resource.get("resourceType")
    if kind in IDENTITY_TYPES:
        return {"identity"}
    if kind in CARE_TEAM_TYPES:
        return {"care-team"}
    return {"record"}


def categories_for_resource(resource: Mapping[str, Any]) -> set[str]:
    """The data categories of a resource: its sensitive ones, else what kind of record it is."""
    return sensitive_categories(resource) or _kind_category(resource)


def _label_codings(categories: set[str], labels: set[str], present: list[tuple[str, str]]) -> list[dict[str, str]]:
    wanted = {(V3_ACT_CODE, label) for label in labels} | {(DATA_CATEGORY_SYSTEM, c) for c in categories}
    codings = []
    for system, code in sorted(wanted - set(present)):
        coding = {"system": system, "code": code}
        display = ACT_CODE_DISPLAY.get(code) if system == V3_ACT_CODE else None
        if display:
            coding["display"] = display
        codings.append(coding)
    return codings


def label_resource(resource: Mapping[str, Any]) -> list[dict[str, str]]:
    """The security Codings to stamp into meta.security (existing labels not repeated).

    One v3 ActCode coding per label of what matched (a code list entry, a hand-kept value
    set code, a term), and one familyview data-category coding per sensitive category found
    (so that categories without an ActCode label, such as care-leaver, are labelled too).
    Sorted, so the result is stable.
    """
    categories, labels, _codings, present = _analyse(resource)
    return _label_codings(categories, labels, present)


_DATE_FIELDS = (
    "recordedDate",
    "effectiveDateTime",
    "onsetDateTime",
    "issued",
    "authoredOn",
    "date",
    "dateTime",
)


def record_date(resource: Mapping[str, Any]) -> _dt.date | None:
    """The date a record is about (recorded, effective, onset, authored...), for Consent dataPeriod."""
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
    categories, wanted, codings, present = _analyse(resource)
    labels = {code for system, code in present if system in ("", V3_ACT_CODE, V3_CONFIDENTIALITY)}
    labels.update(wanted)
    kind = resource.get("resourceType")
    reference = f"{kind}/{resource['id']}" if resource.get("id") else None
    codes = tuple(sorted(set(codings)))
    return [
        DataItem(
            category=category,
            resource_type=kind,
            security_labels=frozenset(labels),
            source_org=source_org,
            date=record_date(resource),
            reference=reference,
            codes=codes,
        )
        for category in sorted(categories or _kind_category(resource))
    ]
