"""How a code or a text is classified, and why: the logic behind `familyview classify`.

Pure: it reads the value sets, code lists and term list that :mod:`consent.labels` loaded
(and, to quote a list's term and source column, that list's CSV, once).
"""

from __future__ import annotations

import csv
import functools
import re
from typing import Any

import yaml

from . import labels as _labels
from .labels import (
    CODE_LISTS,
    CODELIST_DIR,
    CODELISTS_VERSION,
    DMD_SYSTEM,
    SNOMED_SYSTEM,
    TERMS_PATH,
    TERMS_VERSION,
    VALUESET_DIR,
    YAML_VALUE_SETS,
    match_terms,
)

_NUMERIC_ID = re.compile(r"^\d{6,18}$")
_CODING = re.compile(r"^(\S*)\|(\S+)$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

UNCLASSIFIED_NOTE = (
    "No code list, value set or term places this. For a father, male carer or other carer, "
    "a record held by another organisation that nothing places is treated as confidential "
    '("unclassified"): disclosed for direct care only with his Consent, and reached by '
    "safeguarding with the same obligations as a sensitive record."
)


@functools.lru_cache(maxsize=None)
def _list_rows(list_id: str) -> dict[str, tuple[str, str]]:
    """code -> (term, source) of one shipped code list."""
    with open(CODELIST_DIR / CODE_LISTS[list_id].file, encoding="utf-8", newline="") as handle:
        return {row["code"]: (row["term"], row["source"]) for row in csv.DictReader(handle)}


@functools.lru_cache(maxsize=None)
def _yaml_entries(category: str) -> dict[tuple[str, str], dict[str, Any]]:
    vs = YAML_VALUE_SETS[category]
    with open(VALUESET_DIR / vs.sources[0], encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return {(str(c["system"]), str(c["code"])): c for c in data["codes"]}


def _codings_to_try(query: str) -> tuple[str, list[tuple[str, str]]]:
    """How a query is read (coding, code or text, text) and the (system, code) pairs it may be."""
    coding = _CODING.match(query)
    if coding and (coding.group(1) == "" or ":" in coding.group(1)):
        system, code = coding.groups()
        if system:
            return "coding", [(system, code)]
        query = code
    if _NUMERIC_ID.match(query):
        return "coding", [(SNOMED_SYSTEM, query), (DMD_SYSTEM, query)]
    if _TOKEN.match(query):  # one word: a local code, or a word of free text
        return "code or text", sorted(key for key in _labels._CODE_INDEX if key[1] == query)
    return "text", []


def _code_matches(codings: list[tuple[str, str]]) -> list[dict[str, Any]]:
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for system, code in codings:
        for cl in CODE_LISTS.values():
            if system in cl.systems and code in cl.codes:
                entry = found.get(("list", cl.id))
                if entry is None:
                    term, source = _list_rows(cl.id)[code]
                    entry = found[("list", cl.id)] = {
                        "via": "code list",
                        "code": code,
                        "systems": [],
                        "list": cl.id,
                        "file": f"consent/valuesets/codelists/{cl.file}",
                        "source_file": cl.source_file,
                        "provenance": cl.provenance,
                        "version": cl.version,
                        "term": term,
                        "source": source,
                        "category": cl.category,
                        "labels": list(cl.codes[code]),
                    }
                entry["systems"].append(system)
        for vs in YAML_VALUE_SETS.values():
            if (system, code) in vs.codes:
                spec = _yaml_entries(vs.category)[(system, code)]
                found[("yaml", vs.id, system)] = {
                    "via": "value set",
                    "code": code,
                    "systems": [system],
                    "value_set": vs.id,
                    "file": f"consent/valuesets/{vs.sources[0]}",
                    "version": vs.version,
                    "term": str(spec.get("display") or ""),
                    "source": str(spec.get("source") or ""),
                    "category": vs.category,
                    "labels": list(vs.labels),
                }
    return list(found.values())


def explain_classification(query: str) -> dict[str, Any]:
    """How a coding (``system|code``), a bare code (tried as SNOMED CT and dm+d) or a text
    is classified: every code list, value set and term that places it, with the phrase that
    matched and the false friends cut out, and the categories and labels that result."""
    query = " ".join(query.split())
    if not query:
        raise ValueError("nothing to classify: give system|code, a code, or a text")
    read_as, codings = _codings_to_try(query)
    matches = _code_matches(codings)
    false_friends: list[dict[str, Any]] = []
    if read_as != "coding":
        for hit in match_terms(query, include_false_friends=True):
            ts = _labels.TERM_SETS[hit.term_set]
            entry = {
                "via": "term",
                "term_set": hit.term_set,
                "file": "consent/terms/" + TERMS_PATH.name,
                "version": TERMS_VERSION,
                "phrase": hit.phrase,
                "false_friends_removed": list(hit.removed),
                "category": ts.category,
                "labels": list(ts.labels),
            }
            (matches if hit.phrase else false_friends).append(entry)
    categories = sorted({m["category"] for m in matches})
    labels = sorted({label for m in matches for label in m["labels"]})
    return {
        "input": query,
        "read_as": read_as,
        "tried": [f"{s}|{c}" for s, c in codings],
        "matches": matches,
        "false_friends": false_friends,
        "categories": categories,
        "labels": labels,
        "classified": bool(categories),
        "codelists_version": CODELISTS_VERSION,
        "terms_version": TERMS_VERSION,
    }


def format_classification(result: dict[str, Any]) -> str:
    """The explanation as an IG officer reads it."""
    lines = [
        f"{result['input']!r} read as {result['read_as']}"
        + (f" (tried {', '.join(result['tried'])})" if result["tried"] else "")
    ]
    for m in result["matches"]:
        labels = ", ".join(m["labels"]) or "none (the category is the label)"
        if m["via"] == "code list":
            lines += [
                f"- code {m['code']} under {' and '.join(m['systems'])}",
                f"  in code list {m['list']} ({m['file']}; from {m['source_file']}, provenance {m['provenance']}; "
                f"code lists version {m['version']})",
                f"  term: {m['term']}",
                f"  source column: {m['source']}",
            ]
        elif m["via"] == "value set":
            lines += [
                f"- code {m['systems'][0]}|{m['code']} in value set {m['value_set']} ({m['file']}, version {m['version']})",
                f"  display: {m['term']}; source: {m['source']}",
            ]
        else:
            lines.append(f"- term {m['phrase']!r} of term set {m['term_set']} ({m['file']}, version {m['version']})")
            if m["false_friends_removed"]:
                lines.append(f"  false friends cut out first: {', '.join(repr(p) for p in m['false_friends_removed'])}")
        lines.append(f"  -> category {m['category']}, labels {labels}")
    for f in result["false_friends"]:
        lines.append(
            f"- false friend {', '.join(repr(p) for p in f['false_friends_removed'])} cut out of term set "
            f"{f['term_set']} ({f['file']}, version {f['version']}): does not count as {f['category']}"
        )
    if result["classified"]:
        lines.append(f"classified: {', '.join(result['categories'])}; labels {', '.join(result['labels']) or 'none'}")
    else:
        lines.append("unclassified")
        lines.append(UNCLASSIFIED_NOTE)
    lines.append(f"(code lists {result['codelists_version']}; terms {result['terms_version']})")
    return "\n".join(lines)
