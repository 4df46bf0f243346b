"""Search parameters per resource type and the extraction of index rows from a resource.

Index rows are written in the same transaction as the resource, so a search never sees a
resource without its index (or the reverse)."""
from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta
from typing import Any, Iterator

# one place for the identifier systems (app.identifiers), re-exported
from app.identifiers import NHS_NUMBER_SYSTEM as NHS_NUMBER_SYSTEM
from app.identifiers import ODS_SYSTEM as ODS_SYSTEM


@dataclass(frozen=True)
class SearchParam:
    name: str
    kind: str  # token | string | date | reference
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    description: str = ""


def _p(name: str, kind: str, *paths: str, targets: tuple[str, ...] = (), description: str = "") -> SearchParam:
    return SearchParam(name, kind, tuple(paths), targets, description)


_IDENTIFIER = _p("identifier", "token", "identifier", description="A business identifier (system|value)")
_HUMAN = [
    _p("name", "string", "name", description="Any part of a name (starts-with, case and accent insensitive)"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
]

SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {}


def _register(res_type: str, *params: SearchParam) -> None:
    SEARCH_PARAMS[res_type] = {p.name: p for p in (_IDENTIFIER, *params)}


_register(
    "Patient",
    *_HUMAN,
    _p("birthdate", "date", "birthDate"),
    _p("gender", "token", "gender"),
    _p("active", "token", "active"),
    _p("address-postalcode", "string", "address.postalCode"),
    _p("general-practitioner", "reference", "generalPractitioner", targets=("Organization", "Practitioner", "PractitionerRole")),
    _p("organization", "reference", "managingOrganization", targets=("Organization",)),
    _p("link", "reference", "link.other", targets=("Patient", "RelatedPerson")),
)
_register(
    "RelatedPerson",
    *_HUMAN,
    _p("patient", "reference", "patient", targets=("Patient",)),
    _p("birthdate", "date", "birthDate"),
    _p("gender", "token", "gender"),
    _p("relationship", "token", "relationship"),
    _p("active", "token", "active"),
    _p("address-postalcode", "string", "address.postalCode"),
)
_register(
    "Consent",
    _p("patient", "reference", "patient", targets=("Patient",)),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("scope", "token", "scope"),
    _p("date", "date", "dateTime"),
    _p("actor", "reference", "provision.actor.reference", targets=("Organization", "Practitioner", "PractitionerRole", "CareTeam", "Patient", "RelatedPerson")),
)
_register(
    "EpisodeOfCare",
    _p("patient", "reference", "patient", targets=("Patient",)),
    _p("status", "token", "status"),
    _p("type", "token", "type"),
    _p("organization", "reference", "managingOrganization", targets=("Organization",)),
    _p("date", "date", "period"),
)
_register(
    "CareTeam",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("participant", "reference", "participant.member", targets=("Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "Patient", "CareTeam")),
    _p("date", "date", "period"),
)
for _t, _status in (("Flag", "status"), ("Observation", "status"), ("Condition", "clinicalStatus")):
    _register(
        _t,
        _p("patient", "reference", "subject", targets=("Patient",)),
        _p("subject", "reference", "subject", targets=("Patient",)),
        _p("status" if _t != "Condition" else "clinical-status", "token", _status),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("date", "date", {"Flag": "period", "Observation": "effectiveDateTime", "Condition": "recordedDate"}[_t]),
    )
# Medicines (GP Connect sends both). The medicine is coded (dm+d https://dmd.nhs.uk or SNOMED CT)
# in medicationCodeableConcept, or in a contained Medication that medicationReference names
# ("#id"): `code` indexes either. A reference to a Medication held elsewhere carries no code
# here, so `code` (and sensitivity labelling) cannot see it.
_MEDICATION_CODE = ("medicationCodeableConcept", "medicationReference.resolve().code")
_register(
    "MedicationStatement",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("code", "token", *_MEDICATION_CODE, description="The medicine (medicationCodeableConcept, or the code of the contained Medication)"),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("effective", "date", "effectiveDateTime", "effectivePeriod", description="When the medicine is, was or will be taken (effective[x])"),
)
_register(
    "MedicationRequest",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("code", "token", *_MEDICATION_CODE, description="The medicine (medicationCodeableConcept, or the code of the contained Medication)"),
    _p("status", "token", "status"),
    _p("intent", "token", "intent"),
    _p("category", "token", "category"),
    _p("authoredon", "date", "authoredOn", description="When the prescription was written"),
)
_register(
    "Organization",
    _p("name", "string", "name", "alias"),
    _p("type", "token", "type"),
    _p("active", "token", "active"),
)
# Pre-birth contacts: a health visitor's antenatal contact (Encounter) and a pregnancy referral
# to her service (ServiceRequest) give her a legitimate relationship for the pre-birth view.
_register(
    "Encounter",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("status", "token", "status"),
    _p("type", "token", "type"),
    _p("service-provider", "reference", "serviceProvider", targets=("Organization",)),
    _p("date", "date", "period"),
)
_register(
    "ServiceRequest",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("status", "token", "status"),
    _p("intent", "token", "intent"),
    _p("code", "token", "code"),
    _p("performer", "reference", "performer", targets=("Organization", "Practitioner", "PractitionerRole", "CareTeam")),
    _p("authored", "date", "authoredOn"),
)
_register("Practitioner", *_HUMAN, _p("gender", "token", "gender"), _p("active", "token", "active"))
_register(
    "PractitionerRole",
    _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
    _p("organization", "reference", "organization", targets=("Organization",)),
    _p("role", "token", "code"),
    _p("active", "token", "active"),
)
_register(
    "Communication",
    _p("patient", "reference", "subject", targets=("Patient",)),
    _p("subject", "reference", "subject", targets=("Patient",)),
    _p("recipient", "reference", "recipient", targets=("Organization", "Practitioner", "PractitionerRole")),
    _p("status", "token", "status"),
    _p("category", "token", "category"),
    _p("sent", "date", "sent"),
)

# Types that sources may write through the REST API and bundles.
WRITABLE_TYPES = (
    "Patient", "RelatedPerson", "Consent", "EpisodeOfCare", "CareTeam", "Flag", "Condition",
    "Observation", "MedicationStatement", "MedicationRequest", "Organization", "Practitioner", "PractitionerRole",
    "Encounter", "ServiceRequest",
)
STORED_TYPES = WRITABLE_TYPES + ("Communication",)


# ---------------------------------------------------------------- extraction helpers

def walk(node: Any, path: str) -> list[Any]:
    """Every value at a dotted path, flattening lists (a tiny FHIRPath subset). Level by
    level over lists rather than recursive generators: it runs for every search
    parameter of every resource written. `resolve()` turns a local reference ("#id") into
    the resource contained in `node` with that id (other references resolve to nothing)."""
    values = [node]
    for part in _path_parts(path):
        if part == "resolve()":
            values = [c for v in values if isinstance(v, dict) for c in _contained(node, v.get("reference"))]
            if not values:
                return values
            continue
        found = []
        for v in values:
            if isinstance(v, dict):
                x = v.get(part)
                if isinstance(x, list):
                    found.extend(i for i in x if i is not None)
                elif x is not None:
                    found.append(x)
        if not found:
            return found
        values = found
    return values


@lru_cache(maxsize=None)
def _path_parts(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _contained(resource: Any, reference: Any) -> list[dict]:
    """The contained resource a local reference ("#id") names, as a list of zero or one."""
    if not isinstance(reference, str) or not reference.startswith("#") or not isinstance(resource, dict):
        return []
    for c in resource.get("contained") or []:
        if isinstance(c, dict) and c.get("id") == reference[1:]:
            return [c]
    return []


_FOLD = str.maketrans({"Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "ß": "ss", "Œ": "OE", "œ": "oe", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Þ": "TH", "þ": "th", "’": "'"})


def normalise_string(value: str) -> str:
    """Case- and accent-insensitive form used for string search."""
    if value.isascii():  # most names and postcodes: nothing to fold or strip
        return " ".join(value.split()).lower()[:255]
    decomposed = unicodedata.normalize("NFKD", value.translate(_FOLD))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", stripped).strip().lower()[:255]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        # HumanName / Address: every textual part
        for key in ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "postalCode"):
            v = value.get(key)
            if isinstance(v, str):
                yield v
            elif isinstance(v, list):
                yield from (s for s in v if isinstance(s, str))


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "value" in value and isinstance(value.get("value"), str):  # Identifier
            yield value.get("system"), value["value"]
        if "code" in value and isinstance(value.get("code"), str):  # Coding
            yield value.get("system"), value["code"]
        for coding in value.get("coding") or []:  # CodeableConcept
            if isinstance(coding, dict) and coding.get("code"):
                yield coding.get("system"), coding["code"]


_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
# a dateTime to the hour, minute or second (fractions to nine digits), optionally zoned
_DATETIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?)?(Z|[+-]\d{2}:\d{2})?$")


_MIN_INSTANT = datetime(1, 1, 1)
_MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59)


@lru_cache(maxsize=16_384)  # dates repeat (birth dates, recorded dates): each is parsed once
def date_range(value: str) -> tuple[str, str]:
    """The [low, high] instant range a FHIR date/dateTime/instant covers, as UTC ISO strings.
    The value's precision defines the range (FHIR search): a year, month or day covers all of
    it, and so does a time to the hour (2026-11-26T12) or the minute (2026-11-26T12:50); a time
    to the second covers that second. Valid FHIR runs from 0001 to 9999 in its own time zone;
    moved to UTC it may fall outside what Python represents, so the range is clamped to
    0001-01-01T00:00:00..9999-12-31T23:59:59 (the bounds of an open Period). ValueError for a
    value that is not a FHIR date or dateTime (such as 2026-11-26 12:50 or 20261126)."""
    m = _DATE_RE.match(value)
    if m:
        year, month, day = int(m.group(1)), m.group(2), m.group(3)
        if not month:
            low, high = datetime(year, 1, 1), datetime(year, 12, 31)
        elif not day:
            mo = int(month)
            low = datetime(year, mo, 1)
            high = datetime(year, mo, calendar.monthrange(year, mo)[1])
        else:
            low = high = datetime(year, int(month), int(day))
        return _fmt(low), _fmt(high.replace(hour=23, minute=59, second=59))
    m = _DATETIME_RE.match(value)
    if not m:
        raise ValueError(f"not a FHIR date or dateTime: {value!r}")
    year, month, day, hour, minute, second, zone = m.groups()
    low = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
    span = timedelta(0) if second else timedelta(seconds=59) if minute else timedelta(minutes=59, seconds=59)
    high = low + span
    if zone and zone != "Z":
        hh, mm = int(zone[1:3]), int(zone[4:6])
        if hh > 14 or mm > 59 or (hh == 14 and mm):
            raise ValueError(f"not a time-zone offset: {zone!r}")
        offset = timedelta(hours=hh, minutes=mm) * (1 if zone[0] == "+" else -1)
        low, high = _to_utc(low, offset), _to_utc(high, offset)
    return _fmt(low), _fmt(high)


def _to_utc(naive: datetime, offset: timedelta) -> datetime:
    try:
        return naive - offset
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before 0001-01-01 in UTC
        return _MIN_INSTANT if offset > timedelta(0) else _MAX_INSTANT


def _fmt(dt: datetime) -> str:
    # not strftime: "%Y" leaves years before 1000 unpadded, and the strings are compared
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"


def _dates(value: Any) -> Iterator[tuple[str, str]]:
    try:
        if isinstance(value, str):
            yield date_range(value)
        elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
            low = date_range(value["start"])[0] if value.get("start") else "0001-01-01T00:00:00"
            high = date_range(value["end"])[1] if value.get("end") else "9999-12-31T23:59:59"
            yield low, high
    except (ValueError, OverflowError):  # not a date (the validator refuses those first)
        return


_REF_RE = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(?:/_history/[^/]+)?$")


def parse_reference(ref: str) -> tuple[str, str] | None:
    """'Patient/123', or an absolute URL ending so, to (type, id); None for anything else."""
    if ref.startswith("urn:") or ref.startswith("#") or "?" in ref:
        return None
    m = _REF_RE.match(ref)
    return (m.group(1), m.group(2)) if m else None


@dataclass
class IndexRows:
    tokens: list[dict] = field(default_factory=list)
    strings: list[dict] = field(default_factory=list)
    dates: list[dict] = field(default_factory=list)
    references: list[dict] = field(default_factory=list)


@lru_cache(maxsize=None)
def _index_plan(res_type: str) -> tuple[tuple[str, str, SearchParam, tuple[tuple[str, str, bool], ...]], ...]:
    """A type's compiled index plan: per search parameter (name, kind, the parameter, and per
    path its first element, the path, and whether that element alone is the path). A resource
    holds few of its type's elements, so most parameters end at one look-up."""
    return tuple(
        (p.name, p.kind, p, tuple((path.split(".")[0], path, "." not in path) for path in p.paths))
        for p in SEARCH_PARAMS.get(res_type, {}).values()
    )


def index_resource(resource: dict[str, Any], rows: IndexRows | None = None) -> IndexRows:
    rows = rows or IndexRows()
    res_type, res_id = resource["resourceType"], resource["id"]
    tokens, strings, dates, references = rows.tokens, rows.strings, rows.dates, rows.references
    get = resource.get
    for name, kind, param, paths in _index_plan(res_type):
        values: list[Any] = []
        for first, path, alone in paths:
            top = get(first)
            if top is None:
                continue
            if not alone:
                values += walk(resource, path)
            elif isinstance(top, list):
                values += [i for i in top if i is not None]
            else:
                values.append(top)
        if not values:
            continue
        if kind == "token":
            seen: set = set()
            for value in values:
                if isinstance(value, str):  # a code
                    found: Any = ((None, value),)
                elif isinstance(value, dict) and "coding" not in value and "value" not in value:  # a Coding
                    code = value.get("code")
                    found = ((value.get("system"), code),) if isinstance(code, str) else ()
                else:  # an Identifier, a CodeableConcept, a boolean
                    found = _tokens(value)
                for system, code in found:
                    key = (system, code[:255])
                    if key not in seen:
                        seen.add(key)
                        tokens.append({"res_type": res_type, "res_id": res_id, "param": name, "system": system, "code": key[1]})
        elif kind == "string":
            seen = set()
            for value in values:
                for text in (value,) if isinstance(value, str) else _strings(value):
                    n = normalise_string(text)
                    if n and n not in seen:
                        seen.add(n)
                        strings.append({"res_type": res_type, "res_id": res_id, "param": name, "value": n})
        elif kind == "date":
            for value in values:
                for low, high in _dates(value):
                    dates.append({"res_type": res_type, "res_id": res_id, "param": name, "low": low, "high": high})
        elif kind == "reference":
            for value in values:
                if isinstance(value, dict):
                    row = reference_row(value, param)
                    if row is not None:
                        row.update(res_type=res_type, res_id=res_id, param=name)
                        references.append(row)
    return rows


def reference_row(ref: dict[str, Any], param: SearchParam) -> dict | None:
    target_type = target_id = ident_system = ident_value = None
    literal = ref.get("reference")
    if isinstance(literal, str):
        parsed = parse_reference(literal)
        if parsed:
            target_type, target_id = parsed
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        ident_system, ident_value = ident.get("system"), ident["value"]
        target_type = target_type or ref.get("type") or (param.targets[0] if len(param.targets) == 1 else None)
    if target_type and param.targets and target_type not in param.targets:
        return None
    if target_id is None and ident_value is None:
        return None
    return {
        "target_type": target_type,
        "target_id": target_id,
        "ident_system": ident_system,
        "ident_value": ident_value[:255] if ident_value else None,
    }


def identifiers_of(resource: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            out.append((ident["system"], ident["value"]))
    return out
