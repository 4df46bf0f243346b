#!/usr/bin/env python3
"""Bring the UK sensitive-record code lists into the package as versioned data.

Reads the shared code lists (SNOMED CT condition lists and dm+d medicine lists, each a CSV
``code,term,source`` with a PROVENANCE.md beside it) and writes, under
``consent/valuesets/codelists/``:

* ``<list>.csv``: each list, its rows unchanged (line endings normalised to LF);
* ``PROVENANCE.md`` and ``PROVENANCE-medicines.md``: the two provenance files, verbatim;
* ``manifest.yaml``: per list its file, gateway category, v3 ActCode labels (and, for the
  sexual-health list, the rules that give each code HIV or STD), the code systems it
  matches, the number of codes, the sha256 of the shipped file (and of the source file),
  and one version for the whole set.

The version is the latest date in the provenance tables plus a digest of the lists'
contents, their provenance and this script's mapping, never the wall clock, so rerunning on the same input gives byte-identical output
(a test checks the shipped files against a fresh build).

    .venv/bin/python scripts/build_valuesets.py [SOURCE_DIR]   # default ../shared/codelists
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "codelists"
DEFAULT_DEST = REPO_ROOT / "consent" / "valuesets" / "codelists"

SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"
#: SNOMED CT condition lists match SNOMED CT; dm+d ids are SNOMED CT UK drug-extension ids,
#: and GP Connect sends them under either system.
CONDITION_SYSTEMS = [SNOMED]
MEDICINE_SYSTEMS = [DMD, SNOMED]

#: (source path under the code list folder, shipped id, category, labels, systems, extra)
LISTS: list[tuple[str, str, str, list[str], list[str], dict]] = [
    ("substance-misuse.csv", "substance-misuse", "substance-misuse", ["ETH", "SUD"], CONDITION_SYSTEMS, {}),
    ("medicines/opioid-substitution.csv", "opioid-substitution", "substance-misuse", ["ETH", "SUD"], MEDICINE_SYSTEMS, {}),
    ("mental-health.csv", "mental-health", "mental-health", ["PSY"], CONDITION_SYSTEMS, {}),
    ("medicines/antipsychotics-lithium.csv", "antipsychotics-lithium", "mental-health", ["PSY"], MEDICINE_SYSTEMS, {}),
    ("medicines/antidepressants.csv", "antidepressants", "mental-health", ["PSY"], MEDICINE_SYSTEMS, {}),
    ("domestic-abuse.csv", "domestic-abuse", "domestic-abuse", ["SDV"], CONDITION_SYSTEMS, {}),
    ("violence.csv", "violence", "violence", ["VIO"], CONDITION_SYSTEMS, {}),
    # The category's data-category coding is its label: no v3 ActCode fits.
    ("safeguarding.csv", "safeguarding", "child-safeguarding", [], CONDITION_SYSTEMS, {}),
    ("sexual-health-hiv.csv", "sexual-health-hiv", "sexual-health", ["HIV", "STD"], CONDITION_SYSTEMS, {
        # Each code gets the labels of every rule it meets; a code meeting none gets all the
        # list's labels (the safe side). HIV lists give HIV, the genital tract (STI) list STD.
        "label_rules": [
            {"source_contains": "hiv", "labels": ["HIV"]},
            {"source_contains": "genital-tract-infections", "labels": ["STD"]},
        ],
    }),
    ("medicines/hiv-antiretrovirals.csv", "hiv-antiretrovirals", "sexual-health", ["HIV"], MEDICINE_SYSTEMS, {}),
]

PROVENANCE_FILES = [("PROVENANCE.md", "PROVENANCE.md"), ("medicines/PROVENANCE.md", "PROVENANCE-medicines.md")]
HEADER = ["code", "term", "source"]
DATE = re.compile(r"\b(20\d\d-\d\d-\d\d)\b")


class BuildError(Exception):
    pass


def _normalise(raw: bytes, where: str) -> bytes:
    """LF line endings, no BOM, a final newline: the only change made to a list."""
    data = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    if b"\r" in data:
        raise BuildError(f"{where}: stray carriage return")
    return data if data.endswith(b"\n") else data + b"\n"


def _check_rows(data: bytes, where: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    if reader.fieldnames != HEADER:
        raise BuildError(f"{where}: header must be {','.join(HEADER)}, not {reader.fieldnames}")
    rows = list(reader)
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):
        code = row["code"]
        if not (code.isdigit() and 6 <= len(code) <= 18):
            raise BuildError(f"{where} line {n}: {code!r} is not a SNOMED CT / dm+d id")
        if code in seen:
            raise BuildError(f"{where} line {n}: {code} repeated")
        if not row["term"] or not row["source"]:
            raise BuildError(f"{where} line {n}: {code} has no term or no source")
        seen.add(code)
    if not rows:
        raise BuildError(f"{where}: no codes")
    return rows


def _label_counts(rows: list[dict[str, str]], labels: list[str], rules: list[dict]) -> dict[str, int]:
    compiled = [(r.get("source_contains"), re.compile(r["term_matches"]) if "term_matches" in r else None, r["labels"]) for r in rules]
    counts = dict.fromkeys(labels, 0)
    for row in rows:
        got: set[str] = set()
        for contains, pattern, rule_labels in compiled:
            if (contains and contains in row["source"]) or (pattern and pattern.search(row["term"])):
                got.update(rule_labels)
        for label in got or labels:
            counts[label] += 1
    return counts


def build(source: Path, dest: Path) -> dict:
    """Write the lists, provenance and manifest into ``dest``; return the manifest."""
    source = Path(source)
    if not source.is_dir():
        raise BuildError(f"{source}: no such folder (give the code list folder as an argument)")
    outputs: dict[str, bytes] = {}
    entries = []
    digest = hashlib.sha256()
    for path, list_id, category, labels, systems, extra in LISTS:
        raw = (source / path).read_bytes()
        data = _normalise(raw, path)
        rows = _check_rows(data, path)
        name = f"{list_id}.csv"
        outputs[name] = data
        digest.update(name.encode() + b"\0" + data + b"\0")
        entry = {
            "id": list_id,
            "file": name,
            "source_file": path,
            "provenance": "PROVENANCE-medicines.md" if path.startswith("medicines/") else "PROVENANCE.md",
            "category": category,
            "labels": list(labels),
            "systems": list(systems),
            "codes": len(rows),
            "sha256": hashlib.sha256(data).hexdigest(),
            "source_sha256": hashlib.sha256(raw).hexdigest(),
        }
        if extra.get("label_rules"):
            entry["label_rules"] = [dict(r, labels=list(r["labels"])) for r in extra["label_rules"]]
            entry["codes_by_label"] = _label_counts(rows, labels, extra["label_rules"])
        entries.append(entry)

    # The mapping (categories, labels, systems, rules) is part of the version too.
    digest.update(json.dumps(entries, sort_keys=True).encode())
    dates: list[str] = []
    provenance_hashes = {}
    for path, name in PROVENANCE_FILES:
        text = (source / path).read_bytes()
        outputs[name] = text
        provenance_hashes[name] = hashlib.sha256(text).hexdigest()
        dates += DATE.findall(text.decode("utf-8"))
        digest.update(name.encode() + b"\0" + text + b"\0")
    if not dates:
        raise BuildError("no dates found in the provenance files")
    earliest, latest = min(dates), max(dates)

    manifest = {
        "version": f"{latest}+{digest.hexdigest()[:12]}",
        "snapshot_dates": {"earliest": earliest, "latest": latest},
        "built_by": "scripts/build_valuesets.py",
        "built_from": "../shared/codelists (code,term,source CSVs; rows copied unchanged, line endings normalised to LF)",
        "provenance": provenance_hashes,
        "lists": entries,
    }
    header = (
        "# Generated by scripts/build_valuesets.py; do not edit by hand, rebuild instead:\n"
        "#   .venv/bin/python scripts/build_valuesets.py ../shared/codelists\n"
        "# version: latest provenance date + digest of the lists, provenance and mapping (no build clock,\n"
        "# so the same input always gives the same files).\n"
    )
    outputs["manifest.yaml"] = (header + yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=120)).encode("utf-8")

    dest.mkdir(parents=True, exist_ok=True)
    expected = set(outputs)
    for stale in dest.iterdir():
        if stale.is_file() and stale.name not in expected:
            stale.unlink()  # a list dropped from LISTS leaves no file behind
    for name in sorted(outputs):
        target = dest / name
        if not target.exists() or target.read_bytes() != outputs[name]:
            target.write_bytes(outputs[name])
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE), help="the code list folder (default ../shared/codelists)")
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="where to write (default consent/valuesets/codelists)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.is_absolute() and not source.exists():
        source = REPO_ROOT / source  # relative to the repo root, as documented
    try:
        manifest = build(source, Path(args.dest))
    except (BuildError, OSError) as exc:
        print(f"build_valuesets: {exc}", file=sys.stderr)
        return 1
    total = sum(e["codes"] for e in manifest["lists"])
    print(f"code lists {manifest['version']}: {len(manifest['lists'])} lists, {total} codes -> {args.dest}")
    for e in manifest["lists"]:
        print(f"  {e['file']:<28} {e['codes']:>5}  {e['category']:<18} {','.join(e['labels']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
