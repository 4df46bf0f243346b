"""The one search layer of every search endpoint (FHIR type search in app.fhir.store,
AuditEvent, Person and the linkage review queue): the paging parameters and their guards,
the paging links of a searchset, the date prefixes and precision, token values and the
parameters that shape a result rather than filter it.

Anything a client sends that this layer cannot take is a 400 OperationOutcome naming the
parameter, never a 500: `_count=²`, `_offset=-1`, `_offset=99999999999999999999999`,
`_count=1_000`, a date in another script's digits."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable
from urllib.parse import urlencode

from sqlalchemy import and_, or_

from app.errors import FhirError, bad_request
from app.fhir.indexing import date_range
from app.settings import Settings

# Parameters that shape the result rather than filter it.
CONTROL_PARAMS = frozenset({"_count", "_offset", "_sort", "_format", "_pretty", "_total", "_totalMethod", "_summary", "_elements"})
# Parameters every endpoint takes and ignores (they say how to answer, not what).
FORMAT_PARAMS = frozenset({"_format", "_pretty"})
MAX_OFFSET = 2**31 - 1  # beyond what either database takes as an OFFSET, and beyond any store
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
# search modifiers understood per kind of parameter (reference also takes a target type)
MODIFIERS = {"token": ("not",), "string": ("exact", "contains"), "date": (), "reference": ("identifier",)}


# ---------------------------------------------------------------- paging

def whole_number(value: str, name: str, maximum: int | None = None) -> int:
    """A non-negative whole number in ASCII digits, at most `maximum`; 400 otherwise."""
    value = value.strip()
    if not value.isascii() or not value.lstrip("-").isdigit():  # int() also takes "1_000" and other scripts' digits
        raise bad_request(f"{name} must be a whole number", expression=name)
    if len(value) > 30:  # far beyond any bound, and not worth converting
        raise bad_request(f"{name} must be at most {maximum}" if maximum is not None else f"{name} is too large", expression=name)
    n = int(value)
    if n < 0:
        raise bad_request(f"{name} must not be negative", expression=name)
    if maximum is not None and n > maximum:
        raise bad_request(f"{name} must be at most {maximum}", expression=name)
    return n


@dataclass
class Paging:
    """`_count` (clamped to the endpoint's maximum, as FHIR lets a server do) and `_offset`."""

    count: int
    offset: int = 0
    max_count: int = 500

    @classmethod
    def start(cls, default: int, max_count: int) -> "Paging":
        return cls(count=min(default, max_count), offset=0, max_count=max_count)

    def take(self, name: str, value: str) -> bool:
        """Read `name` if it is a paging parameter (True), else leave it (False)."""
        if name == "_count":
            self.count = min(whole_number(value, "_count"), self.max_count)
        elif name == "_offset":
            self.offset = whole_number(value, "_offset", maximum=MAX_OFFSET)
        else:
            return False
        return True

    @classmethod
    def of(cls, params: Iterable[tuple[str, str]], default: int, max_count: int) -> "Paging":
        paging = cls.start(default, max_count)
        for name, value in params:
            paging.take(name, value)
        return paging


def paging_links(url: str, params: Iterable[tuple[str, str]], paging: Paging, total: int) -> list[dict[str, str]]:
    """self, next and previous links of a searchset at `url` (the endpoint, no query)."""
    filters = [(k, v) for k, v in params if k not in ("_offset", "_count")]

    def link(relation: str, offset: int) -> dict[str, str]:
        q = urlencode(filters + [("_count", str(paging.count)), ("_offset", str(offset))])
        return {"relation": relation, "url": f"{url}?{q}"}

    links = [link("self", paging.offset)]
    if paging.count and paging.offset + paging.count < total:
        links.append(link("next", paging.offset + paging.count))
    if paging.offset > 0:
        links.append(link("previous", max(0, paging.offset - paging.count)))
    return links


def searchset(url: str, params: Iterable[tuple[str, str]], paging: Paging, total: int,
              entries: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A searchset Bundle: total, paging links and one match entry per (fullUrl, resource)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total,
                              "link": paging_links(url, params, paging, total)}
    found = [{"fullUrl": full_url, "resource": resource, "search": {"mode": "match"}} for full_url, resource in entries]
    if found:  # FHIR JSON has no empty arrays
        bundle["entry"] = found
    return bundle


# ---------------------------------------------------------------- limits

@dataclass(frozen=True)
class SearchLimits:
    """How much one search may ask for (Settings.search_max_*). Every alternative becomes a
    subquery: unbounded, `name=a0&...&name=a999` ran for minutes on PostgreSQL and overflowed
    SQLite's expression tree (a 500)."""

    parameters: int = 20
    repeats: int = 4
    values: int = 50
    value_length: int = 256

    @classmethod
    def of(cls, settings: Settings) -> "SearchLimits":
        return cls(settings.search_max_parameters, settings.search_max_repeats,
                   settings.search_max_values, settings.search_max_value_length)


def too_costly(message: str, expression: str) -> FhirError:
    return FhirError(400, "too-costly", message, expression=expression, spine_code="INVALID_PARAMETER")


def check_limits(params: list[tuple[str, str]], limits: SearchLimits, res_type: str) -> None:
    """400 too-costly when a search names more parameters, repeats one more often, gives more
    comma-separated alternatives in all, or a longer value (a token's system and code each) than
    `limits` allows; before any
    parameter is read, so nothing of it reaches the database."""
    if len(params) > limits.parameters:
        raise too_costly(f"A search takes at most {limits.parameters} parameters (this one has {len(params)})", f"{res_type}")
    seen: dict[str, int] = {}
    alternatives = 0
    for key, value in params:
        name = key.partition(":")[0]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > limits.repeats:
            raise too_costly(f"A search may give {name} at most {limits.repeats} times", f"{res_type}?{name}")
        parts = [value] if name in CONTROL_PARAMS else value.split(",")
        if any(len(piece) > limits.value_length for part in parts for piece in part.split("|")):  # a token's system and code each
            raise too_costly(f"A search value is at most {limits.value_length} characters", f"{res_type}?{name}")
        if name not in CONTROL_PARAMS:
            alternatives += len(parts)
    if alternatives > limits.values:
        raise too_costly(f"A search takes at most {limits.values} values in all (alternatives separated by commas included)", f"{res_type}")


# ---------------------------------------------------------------- parameters

def values(name: str, raw: str, expr: str) -> list[str]:
    """The comma-separated alternatives of one parameter (OR); 400 when there are none."""
    found = [v for v in raw.split(",") if v != ""]
    if not found:
        raise bad_request(f"Search parameter '{name}' needs a value", expression=expr, code="required")
    return found


def unknown_parameter(res_type: str, name: str, supported: Iterable[str]) -> FhirError:
    return bad_request(f"Unknown search parameter '{name}' for {res_type}. Supported: {', '.join(supported)}",
                       expression=f"{res_type}?{name}", code="not-supported")


def unsupported_modifier(name: str, modifier: str, allowed: Iterable[str], expr: str) -> FhirError:
    listed = ", ".join(":" + m for m in allowed) or "none"
    # a modifier the server does not understand SHALL be refused, never dropped
    return bad_request(f"Modifier :{modifier} is not supported on {name} (supported: {listed})", expression=expr, code="not-supported")


def split_token(value: str) -> tuple[str | None, str | None, bool]:
    """'system|code' -> (system, code, system_given); '|code' -> ('', code); 'code' -> (None, code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code or None, True
    return None, value, False


# ---------------------------------------------------------------- dates

def date_prefix(value: str) -> tuple[str, str]:
    """('ge', '2024-01-01') from 'ge2024-01-01'; 'eq' when no prefix is given."""
    if value[:2] in DATE_PREFIXES and value[2:3].isascii() and value[2:3].isdigit():
        return value[:2], value[2:]
    return "eq", value


def date_bounds(value: str, expr: str, message: str | None = None) -> tuple[str, str]:
    """The [low, high] range (UTC ISO strings, to the second) that a date's precision covers:
    a year, a month, a day, an hour, a minute or a second; 400 for anything else."""
    try:
        if not (value.isascii() and value.isprintable()):  # \d takes other scripts' digits, $ a final newline
            raise ValueError(value)
        return date_range(value)
    except (ValueError, OverflowError):
        raise bad_request(message or f"Invalid date parameter value for {expr}", expression=expr) from None


def date_condition(low_col, high_col, raw: str, expr: str):
    """A date parameter (prefix and precision) against an indexed [low, high] range."""
    prefix, value = date_prefix(raw)
    p_low, p_high = date_bounds(value, expr)
    return {
        "eq": lambda: and_(low_col >= p_low, high_col <= p_high),
        "ap": lambda: and_(low_col >= p_low, high_col <= p_high),
        "ne": lambda: ~and_(low_col >= p_low, high_col <= p_high),
        "lt": lambda: low_col < p_low,
        "gt": lambda: high_col > p_high,
        "le": lambda: low_col <= p_high,
        "ge": lambda: high_col >= p_low,
        "sa": lambda: low_col > p_high,
        "eb": lambda: high_col < p_low,
    }[prefix]()


def instant_condition(col, raw: str, expr: str, message: str | None = None):
    """A date parameter (prefix and precision) against an instant column (_lastUpdated,
    AuditEvent.recorded). To the second, the value covers its second; with fractions of a
    second, that instant."""
    prefix, value = date_prefix(raw)
    p_low, p_high = date_bounds(value, expr, message)
    try:
        lo = datetime.fromisoformat(p_low).replace(tzinfo=timezone.utc)
        hi = datetime.fromisoformat(p_high).replace(tzinfo=timezone.utc, microsecond=999999)
        if p_low == p_high and "." in value:
            exact = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if exact.tzinfo is not None:
                try:
                    lo = hi = exact.astimezone(timezone.utc)
                except OverflowError:  # beyond 0001..9999 in UTC: date_range clamped it already
                    lo = hi = datetime.fromisoformat(p_low).replace(tzinfo=timezone.utc)
            else:
                lo = hi = exact.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise bad_request(message or f"Invalid date parameter value for {expr}", expression=expr) from None
    return {
        "eq": lambda: and_(col >= lo, col <= hi), "ap": lambda: and_(col >= lo, col <= hi), "ne": lambda: or_(col < lo, col > hi),
        "lt": lambda: col < lo, "gt": lambda: col > hi, "le": lambda: col <= hi, "ge": lambda: col >= lo,
        "sa": lambda: col > hi, "eb": lambda: col < lo,
    }[prefix]()
