"""Pure record-linkage core: person normal form, blocking keys, comparisons and
Fellegi–Sunter scoring.

No database, web or FHIR-model imports: this module works on plain FHIR R4 JSON dicts
and on :class:`PersonRecord` values, so the storage-integrated linkage service, the
tests and ``benchmarks/linkage_febrl.py`` all call the same code.

Pipeline for one new record ``r``::

    keys = blocking_keys(r)                 # DB: SELECT person FROM link_key WHERE key IN keys
    for c in candidates:                    # a handful, never the whole table
        s = score(r, c)                     # Fellegi–Sunter weights of evidence
        decision = classify(s)              # "link" | "possible" | "non-match"
        level = assurance_level(r, c, s)    # level4..level1 or None

Scoring follows Fellegi & Sunter (1969) as Splink does: every comparison puts the pair
into one *level* (e.g. date of birth: exact / day-month swapped / one digit / year ±1 /
other); each level has ``m`` = P(level | same person) and ``u`` = P(level | different
people); the level's weight of evidence is ``log2(m/u)`` (bits); a missing value on
either side is neutral (weight 0).  The match weight is the prior
``log2(λ/(1-λ))`` plus the sum of the level weights and the probability is
``2^W / (1 + 2^W)``.  Parameters are data (``data/default_params.json``) and can be
re-estimated (``app.linkage.training``).

Two records that give one home (same postcode and first address line) are also scored as
two records of one household (:class:`HouseholdParams`): the independent count would take
the shared home, surname and (for twins) birth date as separate evidence of one person.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Mapping

import jellyfish
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler, Levenshtein

from app.identifiers import is_valid_nhs_number
from app.linkage.nicknames import are_nicknames, canonical_forms

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
NHS_VERIFICATION_EXTENSION = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)
NHS_VERIFIED_CODE = "number-present-and-verified"

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_PARAMS_FILE = DATA_DIR / "default_params.json"

# Given names that are placeholders, not names (maternity systems register newborns as
# "Baby" or "Baby of ..."; some systems write "Unknown").  Treated as missing.
PLACEHOLDER_GIVEN = frozenset(
    {"baby", "babyof", "infant", "unknown", "unk", "nk", "notknown", "twin", "male", "female",
     "boy", "girl", "child", "newborn", "nfa", "xx", "x"}
)

# How maternity and child-health systems label the babies of one birth before (and
# sometimes after) they are named: "Twin 1", "Twin 2 of Jane Brown", "Baby B", "2nd twin",
# "Triplet III".  The label says the record is one of a multiple birth and, usually, which.
_ORDINALS = {"one": 1, "two": 2, "three": 3, "four": 4, "i": 1, "ii": 2, "iii": 3, "iv": 4,
             "a": 1, "b": 2, "c": 3, "d": 4, "first": 1, "second": 2, "third": 3, "fourth": 4}
# every label names one of these: a name without any is not searched further
_MARKER_WORDS = ("twin", "triplet", "quad", "baby", "infant")
_ORDER = r"(?P<order>[1-9]|one|two|three|four|iv|i{1,3}|[a-d])"
_BIRTH_MARKERS = (
    # "Twin 1", "Twin-B", "Triplet no. 2", "Baby 2", "Baby B"
    re.compile(r"\b(?P<kind>twin|triplet|quad(?:ruplet)?|baby|infant)[\s.-]*(?:no\.?\s*)?" + _ORDER + r"(?![a-z0-9])"),
    # "1st twin", "2nd triplet", "First twin"
    re.compile(r"\b(?P<order>[1-4])(?:st|nd|rd|th)?\s+(?P<kind>twin|triplet)\b"),
    re.compile(r"\b(?P<order>first|second|third|fourth)\s+(?P<kind>twin|triplet)\b"),
    # "Twin", "Triplet" alone: one of a multiple birth, order not given
    re.compile(r"\b(?P<kind>twin|triplet|quad(?:ruplet)?)s?\b"),
)


def birth_marker(text: str) -> tuple[bool, int | None, str]:
    """(one of a multiple birth, birth order or None, ``text`` without the label) for a
    given name such as "Twin 2" or "Baby B".  A plain "Baby" says nothing about a multiple
    birth (it is how every newborn is first registered); a numbered or lettered one does."""
    lowered = _ascii_lower(text)
    if any(word in lowered for word in _MARKER_WORDS):
        for pattern in _BIRTH_MARKERS:
            m = pattern.search(lowered)
            if m is None:
                continue
            raw = m.groupdict().get("order")
            order = None if raw is None else int(raw) if raw.isdigit() else _ORDINALS[raw]
            rest = (lowered[: m.start()] + " " + lowered[m.end():]).strip()
            return True, order, "" if _OF_PARENT.match(rest) else rest
    return False, None, "" if _BABY_OF_PARENT.match(text) else text


# "Baby of Jane Brown", "Twin 1 of Jane Brown": what follows "of" is the mother's name.
_OF_PARENT = re.compile(r"^\s*of\b", re.IGNORECASE)
_BABY_OF_PARENT = re.compile(r"^\s*(?:baby|infant|newborn|child)[\s-]*of\b", re.IGNORECASE)


# --------------------------------------------------------------------------- assurance
#: FHIR Person.link.assurance, weakest first: level1 a possible match left to a reviewer,
#: level2 a demographic match, level3 a valid NHS number (or a link a source recorded),
#: level4 the record itself.
LEVELS = ("level1", "level2", "level3", "level4")


def level_rank(level: str | None) -> int:
    """1 (level1) to 4 (level4); 0 for no level."""
    return LEVELS.index(level) + 1 if level in LEVELS else 0


# --------------------------------------------------------------------------- NHS number
def nhs_number_is_valid(value: str | None) -> bool:
    """Modulus 11 check of a 10-digit NHS number, as ingest checks it (app.identifiers): ASCII
    digits only, no spaces or hyphens."""
    return _nhs_valid(value) if isinstance(value, str) else is_valid_nhs_number(value)


_nhs_valid = lru_cache(maxsize=65536)(is_valid_nhs_number)  # a record's number is checked twice as it is read


def normalise_nhs_number(value: str | None) -> str | None:
    """The NHS number as a record carries it (10 ASCII digits), or None."""
    if value is None:
        return None
    value = str(value)
    return value if len(value) == 10 and value.isascii() and value.isdigit() else None


# --------------------------------------------------------------------------- normalisation
_NON_NAME = re.compile(r"[^a-z\s-]")
_SPLIT = re.compile(r"[\s-]+")


# The normalisations below are pure functions of one string, and the same strings recur (a
# family's surname and address on every one of its records, a Bundle's records read again by
# the linkage worker): each is cached, so reading a record costs a look-up per field.
@lru_cache(maxsize=65536)
def _ascii_lower(text: str) -> str:
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch)).lower()


def name_tokens(text: str | None) -> tuple[str, ...]:
    """Lower-case ASCII tokens; apostrophes and dots vanish (O'Brien -> obrien),
    hyphens and spaces split (Smith-Jones -> smith, jones)."""
    if not text:
        return ()
    return _name_tokens(str(text))


@lru_cache(maxsize=65536)
def _name_tokens(text: str) -> tuple[str, ...]:
    text = _ascii_lower(text).replace("'", "").replace("’", "").replace(".", " ")
    text = _NON_NAME.sub(" ", text)
    return tuple(t for t in _SPLIT.split(text) if t)


def normalise_text(text: str | None) -> str | None:
    if text is None:
        return None
    return _normalise_text(str(text))


_NON_TEXT = re.compile(r"[^a-z0-9 ]")


@lru_cache(maxsize=65536)
def _normalise_text(text: str) -> str | None:
    out = " ".join(_ascii_lower(text).replace("'", "").split())
    out = _NON_TEXT.sub(" ", out)
    out = " ".join(out.split())
    return out or None


_UK_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)([0-9][A-Z]{2})$")


def normalise_postcode(value: str | None) -> str | None:
    """UK postcodes as 'OUT IN' (e.g. 'LS1 4AP'); anything else upper-case, compact."""
    if value is None:
        return None
    return _normalise_postcode(str(value))


@lru_cache(maxsize=65536)
def _normalise_postcode(value: str) -> str | None:
    compact = re.sub(r"[^A-Za-z0-9]", "", value).upper()
    if not compact:
        return None
    m = _UK_POSTCODE.match(compact)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return compact


def postcode_parts(postcode: str | None) -> tuple[str | None, str | None]:
    """(sector, district) of a normalised UK postcode, e.g. ('LS1 4', 'LS1'); (None, None)
    for non-UK or missing postcodes."""
    if not postcode or " " not in postcode:
        return None, None
    outward, inward = postcode.split(" ", 1)
    return f"{outward} {inward[0]}", outward


def _parse_date(value: Any) -> tuple[date | None, str | None]:
    """(date, digits) from a date, 'YYYY-MM-DD' or 'YYYYMMDD'; digits kept for partial
    or invalid (typo'd) dates so the date comparison can still see one-digit errors."""
    if value is None:
        return None, None
    if isinstance(value, date):
        return value, value.strftime("%Y%m%d")
    digits = re.sub(r"\D", "", str(value))
    if len(digits) != 8:
        return None, None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:])), digits
    except ValueError:
        return None, digits


def _norm_sex(value: str | None) -> str | None:
    if not value:
        return None
    v = str(value).strip().lower()
    if v in {"male", "m"}:
        return "male"
    if v in {"female", "f"}:
        return "female"
    return None  # other / unknown: no evidence either way


# --------------------------------------------------------------------------- PersonRecord
@dataclass(frozen=True)
class PersonRecord:
    """Normal form of one Patient / RelatedPerson (or any person row) for matching.

    Constructing it normalises: names to lower-case ASCII tokens (placeholder given names
    such as "Baby" dropped; a multiple-birth label such as "Twin 2" or "Baby B" is
    dropped too, and kept as ``multiple_birth`` and ``birth_order``, as are FHIR
    ``Patient.multipleBirth[x]``), postcode to 'OUT IN', NHS number validated (Modulus 11 —
    an invalid number is dropped and ``nhs_verified`` cleared), sex to male/female/None.
    ``birth_date`` accepts a ``date`` or a string; ``birth_date_text`` keeps the digits
    of an unparseable date (a typo such as 1956-13-09) for the date comparison only.

    ``address_lines``, ``locality``, ``region`` and ``other_ids`` (system, value) are
    optional extra evidence (FHIR Address.line/city/state, non-NHS identifiers);
    ``other_ids`` are compared only within the same system, fuzzily (they are unchecked
    local identifiers, unlike the NHS number).
    """

    record_ref: str
    given_names: tuple[str, ...] = ()
    family_names: tuple[str, ...] = ()
    birth_date: date | None = None
    sex: str | None = None
    postcode: str | None = None
    nhs_number: str | None = None
    nhs_verified: bool = False
    address_lines: tuple[str, ...] = ()
    locality: str | None = None
    region: str | None = None
    other_ids: tuple[tuple[str, str], ...] = ()
    birth_date_text: str | None = field(default=None, compare=False)
    multiple_birth: bool = False
    birth_order: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        # the given names read as one text, so that a label split over two of them
        # (given: ["Twin", "1"], as a name.text "Twin 1 Brown" is split) is still read
        marked, marked_order, rest = birth_marker(" ".join(str(g) for g in _as_tuple(self.given_names)))
        given = name_tokens(rest)
        multiple = bool(self.multiple_birth) or marked
        order = self.birth_order if self.birth_order is not None else marked_order
        put("multiple_birth", multiple or (order is not None and order > 1))
        put("birth_order", order if order is not None and order > 0 else None)
        put("given_names", tuple(t for t in given if t not in PLACEHOLDER_GIVEN))
        family: list[str] = []
        for f in _as_tuple(self.family_names):
            family.extend(name_tokens(f))
        put("family_names", tuple(family))
        if isinstance(self.birth_date, date):
            parsed, digits = self.birth_date, None
        else:
            parsed, digits = _parse_date(self.birth_date)
        put("birth_date", parsed)
        text = self.birth_date_text if self.birth_date_text is not None else (digits if parsed is None else None)
        if text is not None:
            text = re.sub(r"\D", "", str(text))
            text = text if len(text) == 8 else None
        put("birth_date_text", text)
        put("sex", _norm_sex(self.sex))
        put("postcode", normalise_postcode(self.postcode))
        nhs = normalise_nhs_number(self.nhs_number)
        if nhs is not None and not nhs_number_is_valid(nhs):
            nhs = None
        put("nhs_number", nhs)
        put("nhs_verified", bool(self.nhs_verified and nhs))
        lines = [normalise_text(line) or "" for line in _as_tuple(self.address_lines)]
        while lines and not lines[-1]:
            lines.pop()
        put("address_lines", tuple(lines))
        put("locality", normalise_text(self.locality))
        put("region", normalise_text(self.region))
        put(
            "other_ids",
            tuple(
                (str(s), re.sub(r"\s", "", str(v)).upper())
                for s, v in self.other_ids
                if v is not None and str(v).strip()
            ),
        )

    # -- derived values (cached on the instance; frozen dataclasses allow this) --
    @cached_property
    def first_given(self) -> str | None:
        return self.given_names[0] if self.given_names else None

    @cached_property
    def family_full(self) -> str | None:
        return "".join(self.family_names) or None

    @cached_property
    def dob_digits(self) -> str | None:
        if self.birth_date is not None:
            return self.birth_date.strftime("%Y%m%d")
        return self.birth_date_text

    @classmethod
    def from_fhir(cls, resource: Mapping[str, Any]) -> "PersonRecord":
        """Normal form of a FHIR R4 Patient or RelatedPerson JSON dict."""
        rtype = resource.get("resourceType")
        if rtype not in {"Patient", "RelatedPerson"}:
            raise ValueError(f"not a Patient or RelatedPerson: {rtype!r}")
        ref = f"{rtype}/{resource.get('id')}" if resource.get("id") else rtype

        name = _pick_name(resource.get("name") or [])
        given: tuple[str, ...] = ()
        family: tuple[str, ...] = ()
        if name:
            given = tuple(name.get("given") or ())
            fam = name.get("family")
            family = (fam,) if fam else ()
            if not given and not family and name.get("text"):
                parts = str(name["text"]).split()
                given, family = tuple(parts[:-1]), tuple(parts[-1:])

        nhs, verified = None, False
        others: list[tuple[str, str]] = []
        for ident in resource.get("identifier") or []:
            system, value = ident.get("system"), ident.get("value")
            if not value:
                continue
            if system == NHS_NUMBER_SYSTEM:
                if nhs is None and nhs_number_is_valid(value):
                    nhs = normalise_nhs_number(value)
                    verified = _nhs_verified(ident)
            elif system:
                others.append((system, value))

        address = _pick_address(resource.get("address") or [])
        # Patient.multipleBirth[x]: true, or the birth order.  Order 1 alone is not taken as
        # a multiple birth: maternity systems record 1 for a singleton too.
        order = resource.get("multipleBirthInteger")
        order = order if isinstance(order, int) and not isinstance(order, bool) and order > 0 else None
        return cls(
            multiple_birth=resource.get("multipleBirthBoolean") is True,
            birth_order=order,
            record_ref=ref,
            given_names=given,
            family_names=family,
            birth_date=resource.get("birthDate"),
            sex=resource.get("gender"),
            postcode=(address or {}).get("postalCode"),
            nhs_number=nhs,
            nhs_verified=verified,
            address_lines=tuple((address or {}).get("line") or ()),
            locality=(address or {}).get("city"),
            region=(address or {}).get("district") or (address or {}).get("state"),
            other_ids=tuple(others),
        )


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(v for v in value if v is not None)


def _period_ended(element: Mapping[str, Any]) -> bool:
    end = (element.get("period") or {}).get("end")
    if not end:
        return False
    return str(end)[:10] < date.today().isoformat()


def _pick_name(names: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    current = [n for n in names if n.get("use") not in {"old", "maiden"} and not _period_ended(n)]
    for use in ("official", "usual", None):
        for n in current:
            if n.get("use") == use:
                return n
    return (current or names or [None])[0]


def _pick_address(addresses: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    current = [a for a in addresses if a.get("use") not in {"old", "billing"} and not _period_ended(a)]
    for use in ("home", None, "temp"):
        for a in current:
            if a.get("use") == use:
                return a
    return (current or [None])[0]


def _nhs_verified(identifier: Mapping[str, Any]) -> bool:
    for ext in identifier.get("extension") or []:
        if ext.get("url") != NHS_VERIFICATION_EXTENSION:
            continue
        cc = ext.get("valueCodeableConcept") or {}
        for coding in cc.get("coding") or []:
            if coding.get("code") == NHS_VERIFIED_CODE:
                return True
    return False


# --------------------------------------------------------------------------- blocking
@lru_cache(maxsize=65536)
def _soundex(token: str) -> str:
    return jellyfish.soundex(token) if token else ""


def _given_keys(rec: PersonRecord) -> set[str]:
    """Phonetic codes of the first given name under nickname canonicalisation."""
    if not rec.first_given:
        return set()
    return {_soundex(c) for c in canonical_forms(rec.first_given)} | {_soundex(rec.first_given)}


def blocking_keys(rec: PersonRecord) -> set[str]:
    """Small set of index keys; two records are candidates when they share any key.

    Keys (each bucket stays small at 10^6 UK persons; see the module docs / report):

    ``n:<nhs>``              valid NHS number
    ``i:<system>|<value>``   other identifier (same system only)
    ``nd:<sdx>:<dob>``       Soundex of any name token (family tokens, first given name
                             and its nickname canonical forms) + full date of birth —
                             survives a changed/misspelt other name, a given/family swap,
                             a double-barrelled surname and a new address
    ``dp:<dob>:<district>``  date of birth + postcode district (whole postcode if not
                             UK) — survives any name change (marriage, nickname, typo)
    ``ny:<sdx>+<sdx>:<yyyy>`` sorted Soundex pair (first given canonical, first family
                             token) + birth year — survives day/month typos and moves
    ``np:<sdx>+<sdx>:<district>`` same name pair + postcode district — survives any
                             date-of-birth error
    ``ns:<sdx>+<sdx>:<chars>`` same name pair + the postcode's characters in sorted
                             order — survives a transposed postcode (LS16 ~ LS61, 5031 ~
                             5013) when the date of birth is missing or wrong too (a
                             father recorded by a midwife often has no date of birth)
    ``fp:<sdx>:<postcode>``  family-name Soundex + full postcode (a household) —
                             survives a missing or wrong date of birth and given name
    ``gp:<sdx>:<postcode>``  given-name Soundex (nickname canonical) + full postcode —
                             survives a surname change or misspelling and a bad date
    """
    keys: set[str] = set()
    if rec.nhs_number:
        keys.add(f"n:{rec.nhs_number}")
    for system, value in rec.other_ids:
        keys.add(f"i:{system}|{value}")

    dob = rec.dob_digits if rec.birth_date is not None else None
    _, district = postcode_parts(rec.postcode)
    district = district or rec.postcode
    given_codes = _given_keys(rec)
    family_codes = {_soundex(t) for t in rec.family_names}
    first_family = _soundex(rec.family_names[0]) if rec.family_names else None
    postcode_chars = "".join(sorted(rec.postcode.replace(" ", ""))) if rec.postcode else None

    if dob:
        for code in given_codes | family_codes:
            keys.add(f"nd:{code}:{dob}")
        if district:
            keys.add(f"dp:{dob}:{district}")
    if first_family and given_codes:
        for g in given_codes:
            pair = "+".join(sorted((g, first_family)))
            if rec.birth_date is not None:
                keys.add(f"ny:{pair}:{rec.birth_date.year}")
            if district:
                keys.add(f"np:{pair}:{district}")
            if postcode_chars:
                keys.add(f"ns:{pair}:{postcode_chars}")
    if rec.postcode:
        if first_family:
            keys.add(f"fp:{first_family}:{rec.postcode}")
        for g in given_codes:
            keys.add(f"gp:{g}:{rec.postcode}")
    return keys


# --------------------------------------------------------------------------- comparisons
# Level names per comparison, best first.  A comparison returns a level index or None
# (value missing on either side -> neutral).  The order here is the order of the
# parameters in data/default_params.json.
COMPARISON_LEVELS: dict[str, tuple[str, ...]] = {
    "nhs_number": ("match", "conflict"),
    "given_name": ("exact", "nickname", "typo", "weak", "different"),
    "family_name": ("exact", "part_of_compound", "typo", "weak", "different"),
    "birth_date": ("exact", "day_month_swap", "one_digit", "year_off_by_one", "different"),
    "sex": ("same", "different"),
    "postcode": ("exact", "sector", "typo", "district", "different"),
    "address": ("exact", "close", "partial", "different"),
    "address2": ("exact", "close", "partial", "different"),
    "locality": ("exact", "close", "different"),
    "region": ("exact", "different"),
    "other_id": ("exact", "one_edit", "two_edits", "different"),
}
COMPARISONS: tuple[str, ...] = tuple(COMPARISON_LEVELS)
# Where a person lives: in one household these agree for everybody, so together they say
# "same household", not "same person" (:func:`in_one_household`).
RESIDENCE: tuple[str, ...] = ("postcode", "address", "address2", "locality", "region")
# What people of one household often share as well (a surname, a sex, twins' birth date,
# a father's given name): scored with household u's inside a household.
HOUSEHOLD_SHARED: tuple[str, ...] = ("given_name", "family_name", "birth_date", "sex")


def compare_given(a: str | None, b: str | None, a_all: tuple[str, ...] = (), b_all: tuple[str, ...] = ()) -> int | None:
    """Given names. exact | nickname (Jon~Jonathan, Bill~William, via the nickname table) |
    typo (one edit incl. transposition, or Jaro-Winkler >= 0.92) | weak (JW >= 0.8, an
    initial, a prefix such as Chris~Christopher, or the other's middle name) | different."""
    if not a or not b:
        return None
    if a == b:
        return 0
    if are_nicknames(a, b):
        return 1
    if (min(len(a), len(b)) >= 3 and OSA.distance(a, b) <= 1) or JaroWinkler.similarity(a, b) >= 0.92:
        return 2
    if (
        JaroWinkler.similarity(a, b) >= 0.8
        or (len(a) == 1 and b.startswith(a))
        or (len(b) == 1 and a.startswith(b))
        or (min(len(a), len(b)) >= 3 and (a.startswith(b) or b.startswith(a)))
        or a in b_all[1:]
        or b in a_all[1:]
    ):
        return 3
    return 4


def compare_family(a: tuple[str, ...], b: tuple[str, ...]) -> int | None:
    """Family names. exact | part_of_compound (a double-barrelled or hyphenated name
    shares a part with the other: Smith-Jones~Smith) | typo (one edit incl. transposition
    or JW >= 0.92) | weak (JW >= 0.8 or same Soundex/NYSIIS code) | different."""
    if not a or not b:
        return None
    fa, fb = "".join(a), "".join(b)
    if fa == fb:
        return 0
    if set(a) & set(b) or (len(a) > 1 or len(b) > 1) and (fa in fb or fb in fa):
        return 1
    if (min(len(fa), len(fb)) >= 3 and OSA.distance(fa, fb) <= 1) or JaroWinkler.similarity(fa, fb) >= 0.92:
        return 2
    if (
        JaroWinkler.similarity(fa, fb) >= 0.8
        or _soundex(fa) == _soundex(fb)
        or jellyfish.nysiis(fa) == jellyfish.nysiis(fb)
    ):
        return 3
    return 4


def _same_name_across(given: tuple[str, ...], family: tuple[str, ...]) -> bool:
    """One record's given name(s) and the other's family name are the same name: the first
    given name matches the whole family name (exact, nickname or typo, as
    :func:`compare_given`), or the two token lists agree as family names do (exact, a shared
    part or typo, as :func:`compare_family`) — so a double-barrelled surname keyed into the
    given-name field (``Slack-Smith`` -> given tokens ``slack, smith``) still matches
    ``Slack-Smith`` in the family field of the other record."""
    if not given or not family:
        return False
    return compare_given(given[0], "".join(family)) <= 2 or compare_family(given, family) <= 2


def compare_names(a: PersonRecord, b: PersonRecord) -> tuple[int | None, int | None, bool]:
    """(given level, family level, swapped).

    Forename/surname reversal is a common data-entry error (the name keyed into the wrong
    fields, or a form that asks for "surname, forename"); Splink's name comparisons have a
    "columns reversed" level for it.  When the names disagree as entered (both levels
    'weak' or worse) but agree crosswise in *both* directions — a's given name is b's
    family name and a's family name is b's given name (Smith John ~ John Smith,
    Katelyn Slack-Smith ~ Slack-Smith Katelyn) — both comparisons are scored at the 'typo'
    level: the names agree, with the penalty of an error.  Both directions are required:
    one given name that equals the other's surname alone (James Coleman ~ Howie James) is
    not a reversal.  Twins share the family name, so their family level is 'exact' and
    the reversal check never runs for them.
    """
    g = compare_given(a.first_given, b.first_given, a.given_names, b.given_names)
    f = compare_family(a.family_names, b.family_names)
    if (
        g is not None
        and f is not None
        and g >= 3
        and f >= 3
        and _same_name_across(a.given_names, b.family_names)
        and _same_name_across(b.given_names, a.family_names)
    ):
        return 2, 2, True
    return g, f, False


def compare_birth_date(a: str | None, b: str | None) -> int | None:
    """Dates as 'YYYYMMDD'. exact | day_month_swap (03/04 vs 04/03) | one_digit (one digit
    wrong or two adjacent digits transposed) | year_off_by_one (same day and month) |
    different."""
    if not a or not b:
        return None
    if a == b:
        return 0
    if a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return 1
    if OSA.distance(a, b) <= 1:
        return 2
    if a[4:] == b[4:] and abs(int(a[:4]) - int(b[:4])) == 1:
        return 3
    return 4


def compare_sex(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    return 0 if a == b else 1


def compare_postcode(a: str | None, b: str | None) -> int | None:
    """exact | sector (LS1 4AP~LS1 4XY) | typo (one edit) | district (LS1) | different.
    Non-UK postcodes only reach exact, typo or different."""
    if not a or not b:
        return None
    if a == b:
        return 0
    sa, da = postcode_parts(a)
    sb, db = postcode_parts(b)
    if sa is not None and sa == sb:
        return 1
    if OSA.distance(a.replace(" ", ""), b.replace(" ", "")) <= 1:
        return 2
    if da is not None and da == db:
        return 3
    return 4


def compare_text(a: str | None, b: str | None) -> int | None:
    """Free-text address line: exact | close (normalised Levenshtein >= 0.85 or JW >= 0.92)
    | partial (token-set ratio >= 80: reordered or a missing word) | different."""
    if not a or not b:
        return None
    if a == b:
        return 0
    if Levenshtein.normalized_similarity(a, b) >= 0.85 or JaroWinkler.similarity(a, b) >= 0.92:
        return 1
    if fuzz.token_set_ratio(a, b) >= 80:
        return 2
    return 3


def compare_locality(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return 0
    if JaroWinkler.similarity(a, b) >= 0.9 or OSA.distance(a, b) <= 1:
        return 1
    return 2


def compare_region(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    return 0 if a == b else 1


def compare_other_ids(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> int | None:
    """Unchecked identifiers in a shared system (e.g. a local MRN): exact | one edit |
    two edits | different; best over shared systems."""
    best = None
    bmap: dict[str, list[str]] = {}
    for s, v in b:
        bmap.setdefault(s, []).append(v)
    for s, va in a:
        for vb in bmap.get(s, ()):
            d = OSA.distance(va, vb)
            level = 0 if d == 0 else 1 if d == 1 else 2 if d == 2 else 3
            best = level if best is None else min(best, level)
    return best


# Identifiers shorter than this carry too little information for a one-slip near-miss to
# say "the same identifier": among 6-character values a given value has ~60 one-slip
# neighbours in 10^6, so two different people's values are rarely that close by chance.
_SLIP_MIN_LENGTH = 6


def is_identifier_slip(a: str, b: str) -> bool:
    """``a`` and ``b`` look like one identifier keyed twice with one slip: two adjacent
    characters transposed (1234567 ~ 1243567), or one character substituted anywhere *but
    the last* (1234567 ~ 1284567).

    A difference in the last character alone is deliberately not a slip: sequentially
    allocated identifiers (hospital MRNs, local numbers) give twins registered one after
    the other values that differ exactly there (MRN1/MRN2, 1234567/1234568), so it is no
    evidence of one person.  Sequential values never differ by a transposition (xy and yx
    are 9·|x-y| apart), and a carry (1234569/1234570) changes two characters.  Insertions
    and deletions (a different length) are not slips either: a dropped last digit is
    again indistinguishable from a neighbour's number.
    """
    if len(a) != len(b) or len(a) < _SLIP_MIN_LENGTH or a == b:
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) == 1:
        return diff[0] != len(a) - 1
    i = diff[0]
    return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]


def other_id_slip(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> bool:
    """Some identifier of ``a`` and of ``b`` in the same system differ by one slip
    (:func:`is_identifier_slip`)."""
    bset = set(b)
    return any(is_identifier_slip(va, vb) for s, va in a for sb, vb in bset if sb == s)


def compare_nhs(a: str | None, b: str | None) -> int | None:
    """Valid NHS numbers only (invalid ones were dropped): match | conflict."""
    if not a or not b:
        return None
    return 0 if a == b else 1


def comparison_vector(a: PersonRecord, b: PersonRecord) -> tuple[int | None, ...]:
    """Levels of every comparison, in ``COMPARISONS`` order (None = missing)."""
    g, f, _ = compare_names(a, b)
    a1 = a.address_lines[0] if a.address_lines else None
    b1 = b.address_lines[0] if b.address_lines else None
    a2 = a.address_lines[1] if len(a.address_lines) > 1 else None
    b2 = b.address_lines[1] if len(b.address_lines) > 1 else None
    return (
        compare_nhs(a.nhs_number, b.nhs_number),
        g,
        f,
        compare_birth_date(a.dob_digits, b.dob_digits),
        compare_sex(a.sex, b.sex),
        compare_postcode(a.postcode, b.postcode),
        compare_text(a1, b1),
        compare_text(a2, b2),
        compare_locality(a.locality, b.locality),
        compare_region(a.region, b.region),
        compare_other_ids(a.other_ids, b.other_ids),
    )


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class MatchParams:
    """m and u per comparison level, and the prior λ = P(two random records match).

    ``m[name][i]`` = P(level i | same person), ``u[name][i]`` = P(level i | different
    people); weights are log2(m/u).  Load the shipped defaults with :func:`load_params`.
    """

    m: Mapping[str, tuple[float, ...]]
    u: Mapping[str, tuple[float, ...]]
    prior: float = 1e-6
    household: "HouseholdParams | None" = None

    @cached_property
    def weights(self) -> dict[str, tuple[float, ...]]:
        return {
            name: tuple(math.log2(max(mi, 1e-12) / max(ui, 1e-12)) for mi, ui in zip(self.m[name], self.u[name]))
            for name in COMPARISONS
        }

    @cached_property
    def prior_weight(self) -> float:
        return math.log2(self.prior / (1.0 - self.prior))

    @cached_property
    def household_weights(self) -> dict[str, tuple[float, ...]]:
        """Weights of the comparisons that still tell two people of one household apart: m as
        anywhere (a person's own record agrees as often wherever they live), u of two
        different people of one household for :data:`HOUSEHOLD_SHARED`, the plain u for
        identifiers."""
        hh = self.household
        out = {}
        for name in COMPARISONS:
            if name in RESIDENCE:
                continue
            u = hh.u.get(name, self.u[name]) if hh else self.u[name]
            out[name] = tuple(math.log2(max(mi, 1e-12) / max(ui, 1e-12)) for mi, ui in zip(self.m[name], u))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prior": self.prior,
            "comparisons": {
                name: {
                    "levels": list(COMPARISON_LEVELS[name]),
                    "m": list(self.m[name]),
                    "u": list(self.u[name]),
                }
                for name in COMPARISONS
            },
        }
        if self.household is not None:
            out["household"] = {"prior": self.household.prior, "u": {k: list(v) for k, v in self.household.u.items()}}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MatchParams":
        comps = data["comparisons"]
        m, u = {}, {}
        for name in COMPARISONS:
            spec = comps[name]
            if tuple(spec["levels"]) != COMPARISON_LEVELS[name]:
                raise ValueError(f"levels of {name} do not match the code: {spec['levels']}")
            m[name], u[name] = tuple(spec["m"]), tuple(spec["u"])
        household = None
        if "household" in data:
            hh = data["household"]
            hu = {}
            for name, values in hh["u"].items():
                if name not in HOUSEHOLD_SHARED or len(values) != len(COMPARISON_LEVELS[name]):
                    raise ValueError(f"household u of {name} does not fit the code's levels")
                hu[name] = tuple(values)
            household = HouseholdParams(prior=float(hh["prior"]), u=hu)
        return cls(m=m, u=u, prior=float(data["prior"]), household=household)


@dataclass(frozen=True)
class HouseholdParams:
    """How two records that share a home are scored (:func:`in_one_household`).

    Fellegi–Sunter multiplies the evidence of each comparison as if independent, but
    postcode, address line, surname, and for twins the birth date, all agree for two people
    of one household: counted one by one, they link a father with his same-named son, or a
    newborn "Baby Smith" with her mother. Inside a household the question is which member
    a record is, so the residence becomes the prior (``prior`` = P(same person | two
    candidate records at one address)) and the rest is weighed against household members
    (``u[name]`` = P(level | two different people of one household))."""

    prior: float
    u: Mapping[str, tuple[float, ...]]

    @cached_property
    def prior_weight(self) -> float:
        return math.log2(self.prior / (1.0 - self.prior))


@lru_cache(maxsize=8)
def _load_params_cached(path: str) -> MatchParams:
    return MatchParams.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def load_params(path: str | Path | None = None) -> MatchParams:
    """The m/u parameters from a JSON file (default: the shipped ``default_params.json``)."""
    return _load_params_cached(str(path or DEFAULT_PARAMS_FILE))


# --------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ComparisonResult:
    name: str
    level: str | None  # None: value missing on one side, neutral
    weight: float  # bits (log2 m/u)


@dataclass(frozen=True)
class MatchScore:
    probability: float
    match_weight: float  # prior + sum of comparison weights, in bits
    prior_weight: float
    comparisons: tuple[ComparisonResult, ...]
    names_swapped: bool = False
    other_id_slip: bool = False  # an identifier differs by one keying slip (is_identifier_slip)
    multiple_birth: bool = False  # either record is recorded as one of a multiple birth
    birth_order_conflict: bool = False  # both give a birth order, and they differ
    household: bool = False  # scored as two records of one household (in_one_household)

    def level(self, name: str) -> str | None:
        for c in self.comparisons:
            if c.name == name:
                return c.level
        raise KeyError(name)

    def explain(self) -> str:
        if self.household:
            home = ", ".join(f"{c.name}={c.level}" for c in self.comparisons if c.level is not None and c.name in RESIDENCE)
            parts = [f"one household ({home}) prior {self.prior_weight:+.1f}"]
            parts += [f"{c.name}={c.level} {c.weight:+.1f}" for c in self.comparisons
                      if c.level is not None and c.name not in RESIDENCE]
        else:
            parts = [f"prior {self.prior_weight:+.1f}"]
            parts += [f"{c.name}={c.level} {c.weight:+.1f}" for c in self.comparisons if c.level is not None]
        return f"p={self.probability:.4f} W={self.match_weight:+.1f}: " + ", ".join(parts)


def probability_from_weight(weight: float) -> float:
    if weight > 60:
        return 1.0
    if weight < -60:
        return 0.0
    odds = 2.0**weight
    return odds / (1.0 + odds)


def score(a: PersonRecord, b: PersonRecord, params: MatchParams | None = None) -> MatchScore:
    """Fellegi–Sunter score of a pair, with the per-comparison evidence."""
    params = params or load_params()
    vector = comparison_vector(a, b)
    _, _, swapped = compare_names(a, b) if vector[1] == 2 and vector[2] == 2 else (None, None, False)
    slip = vector[COMPARISONS.index("other_id")] == 1 and other_id_slip(a.other_ids, b.other_ids)
    total, results = _weigh(vector, params.prior_weight, params.weights)
    prior = params.prior_weight
    household = params.household is not None and in_one_household(vector)
    if household:
        # the residence says "this household"; the household score replaces the plain one
        # only where it is lower, so knowing the home never makes a link more likely
        hh_total, hh_results = _weigh(vector, params.household.prior_weight, params.household_weights)
        if hh_total < total:
            total, results, prior = hh_total, hh_results, params.household.prior_weight
        else:
            household = False
    return MatchScore(
        probability=probability_from_weight(total),
        match_weight=total,
        prior_weight=prior,
        comparisons=tuple(results),
        household=household,
        names_swapped=swapped,
        other_id_slip=slip,
        multiple_birth=a.multiple_birth or b.multiple_birth,
        birth_order_conflict=birth_orders_conflict(a, b),
    )


def _weigh(vector, prior_weight: float, weights: Mapping[str, tuple[float, ...]]) -> tuple[float, list[ComparisonResult]]:
    """The match weight and per-comparison evidence; comparisons without a weight (the
    residence, in a household) keep their level and weigh nothing."""
    total = prior_weight
    results = []
    for name, level in zip(COMPARISONS, vector):
        if level is None:
            results.append(ComparisonResult(name, None, 0.0))
            continue
        w = weights[name][level] if name in weights else 0.0
        total += w
        results.append(ComparisonResult(name, COMPARISON_LEVELS[name][level], w))
    return total, results


_POSTCODE = COMPARISONS.index("postcode")
_ADDRESS = COMPARISONS.index("address")


def in_one_household(vector) -> bool:
    """Both records give the same home: the same postcode and the same first address line
    (exactly or nearly). A postcode alone (about 15 households) is not a household."""
    return vector[_POSTCODE] == 0 and vector[_ADDRESS] in (0, 1)


def birth_orders_conflict(a: PersonRecord, b: PersonRecord) -> bool:
    """Both records give a birth order and they differ: two babies of one birth."""
    return a.birth_order is not None and b.birth_order is not None and a.birth_order != b.birth_order


# --------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on the match probability (settings pass their own).

    link (0.95): auto-link only when at most a 1-in-20 chance of joining two different
    people — a wrong link puts one man's GP record in another family's view, so the
    bar is well above the symmetric-cost 0.5; pairs between ``possible`` and ``link``
    go to a human (level1), where a missed link is recoverable.
    possible (0.2): below this the expected yield of review is too low to queue.
    twin_guard: a pair that could be twins (:func:`twin_shaped`: plainly different first
    given names; or a record labelled as one of a multiple birth without the same given
    name on both; or unnamed and of different sex) is never auto-linked without a shared
    identifier — the same valid NHS number, or the same value of another identifier in
    one system, or that value with one keying slip (:func:`shares_identifier`). Twins
    share surname, date of birth, sex and address, so the independence assumption of
    Fellegi–Sunter fails for them; such a pair can still be a possible match for review.
    Names entered reversed (given in the family field and vice versa) are not
    "different" (:func:`compare_names`).  Apart from the guard, two records that give
    different birth orders (Twin 1, Twin 2) are never linked (:func:`classify`).
    """

    link: float = 0.95
    possible: float = 0.2
    twin_guard: bool = True


DEFAULT_THRESHOLDS = Thresholds()

LINK, POSSIBLE, NON_MATCH = "link", "possible", "non-match"


def shares_identifier(s: MatchScore) -> bool:
    """The pair carries the same identifier: the same valid NHS number, or the same value of
    another identifier in the same system — exactly, or with one keying slip (an adjacent
    transposition or a substitution before the last character, :func:`is_identifier_slip`).
    Twins never share one, so such pairs bypass the twin guard.  Values that differ only
    in the last character (MRN1/MRN2: sequential registration of twins) or otherwise
    plainly differ do not."""
    return s.level("nhs_number") == "match" or s.level("other_id") == "exact" or s.other_id_slip


def twin_shaped(s: MatchScore) -> bool:
    """What the twin guard holds back, when no identifier is shared
    (:func:`shares_identifier`):

    - first given names both present and plainly different (Oliver ~ Harry);
    - either record recorded as one of a multiple birth ("Twin 1", Patient.multipleBirth)
      and the given names not exactly the same: a twin's sibling has the same surname,
      birth date and address, and twins' names are often alike (Ella ~ Ellie), so only
      an exact name tells them apart; a missing name ("Twin 1", "Baby") tells nothing;
    - a given name missing on either side and the recorded sexes different: the unnamed
      boy and girl of one birth ("Baby Brown", male and female)."""
    return _twin_reason(s) is not None


def _twin_reason(s: MatchScore) -> str | None:
    if shares_identifier(s):
        return None
    given = s.level("given_name")
    if given == "different":
        return "could be twins: given names plainly differ and no identifier is shared"
    if s.multiple_birth and given != "exact":
        return "could be either baby of a multiple birth: the given names are not the same and no identifier is shared"
    if given is None and s.level("sex") == "different":
        return "could be twins: a given name is missing, the sexes differ and no identifier is shared"
    return None


@dataclass(frozen=True)
class MatchDecision:
    """A pair's label and, when a rule (not the probability alone) set it, the rule's reason:
    what a reviewer reads first when a confident-looking pair is in the review queue."""

    label: str
    reason: str | None = None


def decide(s: MatchScore, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> MatchDecision:
    """The decision on a pair: "link" | "possible" | "non-match", with the rule behind it.

    Rules on top of the probability thresholds:
    - two records giving different birth orders (Twin 1, Twin 2) are two people: never
      linked, and only a shared NHS number puts them in front of a person;
    - conflicting valid NHS numbers are never auto-linked (at most "possible": two valid
      numbers for one person happen only through a duplicate registration, which a
      person must resolve);
    - the twin guard (see :class:`Thresholds` and :func:`twin_shaped`);
    - a valid NHS-number match is at least "possible", even when the demographics
      disagree, and is not auto-linked when they contradict it (date of birth different
      and sex or given name different: e.g. the baby's NHS number recorded on the
      mother's record) — a person checks it.
    """
    p = s.probability
    label = LINK if p >= thresholds.link else POSSIBLE if p >= thresholds.possible else NON_MATCH
    nhs = s.level("nhs_number")
    if s.birth_order_conflict:
        if nhs == "match":
            return MatchDecision(POSSIBLE, "the same NHS number on records that give different birth orders")
        return MatchDecision(NON_MATCH, "the records give different birth orders")
    if label == LINK and nhs == "conflict":
        return MatchDecision(POSSIBLE, "conflicting valid NHS numbers")
    if label == LINK and thresholds.twin_guard:
        why = _twin_reason(s)
        if why is not None:
            return MatchDecision(POSSIBLE, why)
    if nhs == "match":
        if label == NON_MATCH:
            return MatchDecision(POSSIBLE, "the same NHS number, but the demographics disagree")
        contradicted = s.level("birth_date") == "different" and (
            s.level("sex") == "different" or s.level("given_name") == "different"
        )
        if label == LINK and contradicted:
            return MatchDecision(POSSIBLE, "the same NHS number, but date of birth and sex or given name differ")
    return MatchDecision(label)


def classify(s: MatchScore, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """"link" | "possible" | "non-match" (:func:`decide`, without the reason)."""
    return decide(s, thresholds).label


def assurance_level(
    a: PersonRecord, b: PersonRecord, s: MatchScore, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> str | None:
    """FHIR Person.link.assurance for a pair: level4 (same NHS number, verified on both
    sides), level3 (same valid NHS number), level2 (confident demographic match),
    level1 (possible match, for review; not used by the view), None (not a match).

    NHS-number levels require the pair to be a "link" overall: a matching number with
    contradicting demographics is only level1.
    """
    return level_for_label(a, b, classify(s, thresholds))


def level_for_label(a: "PersonRecord", b: "PersonRecord", label: str) -> str | None:
    """The assurance a pair's decision gives it (the link service reuses it without re-scoring)."""
    if label == NON_MATCH:
        return None
    if label == POSSIBLE:
        return "level1"
    if a.nhs_number and a.nhs_number == b.nhs_number:
        return "level4" if a.nhs_verified and b.nhs_verified else "level3"
    return "level2"
