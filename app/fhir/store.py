"""Reading the FHIR store: read, vread, history and search, with the requester's access applied.

A source system or practitioner reads what its own organisation sent; an admin reads all.
Everything else reaches people through the family view, which decides per item."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

from sqlalchemy import and_, exists, false, func, or_, select, tuple_
from sqlalchemy.orm import Session

from consent.engine import restricted_identity_fields

from app.auth import access
from app.auth.tokens import Principal
from app.errors import FhirError, bad_request, not_found
from app.fhir import search as q
from app.fhir.indexing import SEARCH_PARAMS, STORED_TYPES, normalise_string
from app.fhir.search import CONTROL_PARAMS as CONTROL_PARAMS
from app.fhir.search import MAX_OFFSET as MAX_OFFSET
from app.fhir.validation import CONTROL_CHARS, MAX_INDEXED, control_char_error
from app.fhir.models import ResourceVersion, SearchDate, SearchReference, SearchString, SearchToken, StoredResource

_INDEX_TABLES = {"token": SearchToken, "string": SearchString, "date": SearchDate, "reference": SearchReference}
MAX_VERSION = 2**31 - 1  # resource_version.version_id is a 32-bit integer


@lru_cache(maxsize=1024)  # a Bundle stamps every entry with the same instant, twice
def format_instant(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def etag(version_id: int) -> str:
    return f'W/"{version_id}"'  # the same form resource_headers sends


def check_reader(principal: Principal, res_type: str) -> None:
    """The access table's resource-type column (an administrator reads people, not clinical records)."""
    access.check_type(principal, "fhir.read", res_type)


def may_read(principal: Principal, row_source_org: str) -> bool:
    return access.sees_all_orgs(principal, "fhir.read") or principal.org == row_source_org


def visible_to(principal: Principal):
    """SQL filter for what this requester may read through the plain REST API."""
    if access.sees_all_orgs(principal, "fhir.read"):
        return None
    return StoredResource.source_org == principal.org


# ---------------------------------------------------------------- what a reader is shown

CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
# meta.security on a copy with fields withheld (HL7 v3 ObservationValue REDACTED)
REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED",
            "display": "redacted"}


def _confidentiality(resource: dict[str, Any]) -> set[str]:
    return {c.get("code") for c in (resource.get("meta") or {}).get("security") or []
            if isinstance(c, dict) and c.get("system") == CONFIDENTIALITY_SYSTEM}


def shown(principal: Principal, row: StoredResource | ResourceVersion, person_labels: Iterable[str] = ()) -> dict[str, Any]:
    """A stored resource as this reader may see it: as sent, to the source that sent it; to
    anyone else (an administrator reads every organisation's people) without the fields the
    consent engine withholds from a restricted (R) or very restricted (V) person (its own
    labels, and `person_labels` found on the person's other records), marked REDACTED. The
    family view decides per item; this is the same rule for the REST reads."""
    resource: dict[str, Any] = json.loads(row.body)
    if principal.org == row.source_org:
        return resource
    labels = set(person_labels)
    if CONFIDENTIALITY_SYSTEM in row.body:
        labels |= _confidentiality(resource)
    withheld = [f for f in restricted_identity_fields(labels) if f in resource]
    if withheld:
        for name in withheld:
            del resource[name]
        mark_redacted(resource)
    return resource


def mark_redacted(resource: dict[str, Any]) -> None:
    """The REDACTED security label on a resource something was withheld from (once)."""
    meta = resource.setdefault("meta", {})
    if REDACTED not in meta.get("security", []):
        meta["security"] = [*meta.get("security", []), REDACTED]


def check_type(res_type: str) -> None:
    if res_type not in STORED_TYPES:
        raise FhirError(404, "not-supported", f"Resource type {res_type} is not supported by this server", spine_code="INVALID_RESOURCE")


def get_current(session: Session, res_type: str, res_id: str) -> StoredResource | None:
    return session.get(StoredResource, (res_type, res_id))


def read(session: Session, principal: Principal, res_type: str, res_id: str) -> StoredResource:
    check_type(res_type)
    check_reader(principal, res_type)
    if CONTROL_CHARS.search(res_id):
        raise control_char_error(f"{res_type}.id", "the id")
    row = get_current(session, res_type, res_id)
    # another organisation's record is answered as one that does not exist: one status (and
    # one message) for "not found or not yours", so a reader learns nothing of who is held
    if row is None or row.deleted or not may_read(principal, row.source_org):
        raise not_found(f"{res_type}/{res_id} is not known")
    return row


def vread(session: Session, principal: Principal, res_type: str, res_id: str, version: str) -> ResourceVersion:
    current = read(session, principal, res_type, res_id)
    # a version id is a positive whole number that fits the column; anything else is not known
    vid = int(version) if version.isascii() and version.isdigit() and len(version) <= 10 else 0
    row = session.get(ResourceVersion, (res_type, current.res_id, vid)) if 0 < vid <= MAX_VERSION else None
    if row is None:
        raise not_found(f"{res_type}/{res_id}/_history/{version} is not known")
    return row


def history(session: Session, principal: Principal, res_type: str, res_id: str) -> list[ResourceVersion]:
    read(session, principal, res_type, res_id)
    return list(
        session.scalars(
            select(ResourceVersion)
            .where(ResourceVersion.res_type == res_type, ResourceVersion.res_id == res_id)
            .order_by(ResourceVersion.version_id.desc())
        )
    )


# ---------------------------------------------------------------- search

@dataclass
class SearchResult:
    total: int
    rows: list[StoredResource]
    offset: int
    count: int


def _identifiers_of_target(session: Session, target_type: str, target_id: str) -> list[tuple[str | None, str]]:
    return [
        (r.system, r.code)
        for r in session.execute(
            select(SearchToken.system, SearchToken.code).where(
                SearchToken.res_type == target_type, SearchToken.res_id == target_id, SearchToken.param == "identifier"
            )
        )
    ]


def _check_indexed_length(value: str, expr: str) -> None:
    system, code, _ = q.split_token(value)
    for part, what in ((system, "system"), (code, "value")):
        if part and len(part) > MAX_INDEXED:
            raise bad_request(f"The {what} searched for is longer than the {MAX_INDEXED} characters this server indexes", expression=expr)


def _param_condition(session: Session, res_type: str, name: str, modifier: str | None, raw: str, negate: bool = False):
    expr = f"{res_type}?{name}"
    param = SEARCH_PARAMS.get(res_type, {}).get(name)
    kind = {"_id": "token", "_lastUpdated": "date"}.get(name) or (param.kind if param else None)
    if param is None and kind is None:
        raise q.unknown_parameter(res_type, name, sorted(["_id", "_lastUpdated", *SEARCH_PARAMS.get(res_type, {})]))
    if modifier is not None and modifier not in q.MODIFIERS.get(kind, ()) and not (kind == "reference" and modifier in param.targets):
        raise q.unsupported_modifier(name, modifier, q.MODIFIERS.get(kind, ()), expr)
    if modifier == "not":  # every resource that does not match (including those without a value)
        return _param_condition(session, res_type, name, None, raw, negate=True)
    if name == "_id":
        ids = [v for v in raw.split(",") if v]
        return StoredResource.res_id.not_in(ids) if negate else StoredResource.res_id.in_(ids)
    if name == "_lastUpdated":
        return q.instant_condition(StoredResource.last_updated, raw, expr, "Invalid _lastUpdated value")
    table = _INDEX_TABLES[param.kind]
    ors = []
    for value in [v for v in raw.split(",") if v != ""] or [""]:
        if value == "":
            raise bad_request(f"Search parameter '{name}' needs a value", expression=expr, code="required")
        if param.kind == "token" or (param.kind == "reference" and modifier == "identifier"):
            _check_indexed_length(value, expr)
        if param.kind == "token":
            system, code, system_given = q.split_token(value)
            cond = [table.param == name]
            if code is not None:
                cond.append(table.code == code)
            if system_given:
                cond.append(table.system == system if system else table.system.is_(None))
            ors.append(and_(*cond))
        elif param.kind == "string":
            norm = normalise_string(value)
            if modifier == "exact":
                ors.append(and_(table.param == name, table.value == norm))
            elif modifier == "contains":
                ors.append(and_(table.param == name, table.value.contains(norm, autoescape=True)))
            elif modifier in (None, ""):
                # starts-with as a range, which an index serves on both databases (LIKE may not)
                ors.append(and_(table.param == name, table.value >= norm, table.value < norm + "\uffff"))
            else:
                raise bad_request(f"Modifier :{modifier} is not supported on {name}", expression=expr, code="not-supported")
        elif param.kind == "date":
            ors.append(and_(table.param == name, q.date_condition(table.low, table.high, value, expr)))
        elif param.kind == "reference":
            if modifier == "identifier":
                system, code, system_given = q.split_token(value)
                cond = [table.param == name, table.ident_value == code]
                if system_given and system:
                    cond.append(table.ident_system == system)
                ors.append(and_(*cond))
                continue
            if modifier and modifier not in param.targets:
                raise bad_request(f"Modifier :{modifier} is not supported on {name}", expression=expr, code="not-supported")
            if "/" in value:
                target_type, _, target_id = value.rstrip("/").rpartition("/")
                target_type = target_type.rsplit("/", 1)[-1]
            else:
                target_type = modifier or (param.targets[0] if len(param.targets) == 1 else None)
                target_id = value
            if target_type is None:
                raise bad_request(f"Give {name} as Type/id", expression=expr)
            literal = and_(table.param == name, table.target_type == target_type, table.target_id == target_id)
            # a logical reference (Reference.identifier) to any identifier the target carries:
            # one row-value IN for all of them, however many (an OR each overflowed SQLite's
            # expression tree for a target with hundreds of identifiers)
            idents = _identifiers_of_target(session, target_type, target_id)
            with_system = sorted({(system, code) for system, code in idents if system})
            bare = sorted({code for system, code in idents if not system})
            logical = []
            if with_system:
                logical.append(and_(table.param == name, table.target_id.is_(None),
                                    tuple_(table.ident_system, table.ident_value).in_(with_system)))
            if bare:
                logical.append(and_(table.param == name, table.target_id.is_(None), table.ident_system.is_(None),
                                    table.ident_value.in_(bare)))
            ors += [literal, *logical]
    if negate:
        # NOT EXISTS, which PostgreSQL plans as an anti-join (NOT IN over a subquery it cannot,
        # and walks a materialised list per row)
        return and_(*[~exists(select(1).where(table.res_type == StoredResource.res_type, table.res_id == StoredResource.res_id, cond))
                      for cond in ors])
    # one indexed subquery per alternative: an OR inside one subquery defeats the indexes
    return or_(*[StoredResource.res_id.in_(select(table.res_id).where(table.res_type == res_type, cond)) for cond in ors])


def search(
    session: Session,
    principal: Principal,
    res_type: str,
    params: Iterable[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    limits: q.SearchLimits = q.SearchLimits(),
) -> SearchResult:
    check_type(res_type)
    check_reader(principal, res_type)
    params = list(params)
    q.check_limits(params, limits, res_type)
    conditions = [StoredResource.res_type == res_type, StoredResource.deleted == false()]
    vis = visible_to(principal)
    if vis is not None:
        conditions.append(vis)
    paging, sort = q.Paging.start(default_count, max_count), None
    for key, value in params:
        name, _, modifier = key.partition(":")
        if CONTROL_CHARS.search(key) or CONTROL_CHARS.search(value):
            raise control_char_error(f"{res_type}?{name}", "the search parameter")
        if name in CONTROL_PARAMS:
            if not paging.take(name, value) and name == "_sort":
                sort = value
            continue
        conditions.append(_param_condition(session, res_type, name, modifier or None, value))
    order = [StoredResource.last_updated, StoredResource.res_id]
    if sort:
        fields = []
        for part in sort.split(","):
            desc = part.startswith("-")
            col = {"_lastUpdated": StoredResource.last_updated, "_id": StoredResource.res_id}.get(part.lstrip("-"))
            if col is None:
                raise bad_request(f"Sorting by {part.lstrip('-')} is not supported (use _lastUpdated or _id)", expression=f"{res_type}?_sort", code="not-supported")
            fields.append(col.desc() if desc else col)
        order = fields + [StoredResource.res_id]
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(StoredResource).where(where)) or 0
    rows = list(session.scalars(select(StoredResource).where(where).order_by(*order).offset(paging.offset).limit(paging.count))) if paging.count else []
    return SearchResult(total=total, rows=rows, offset=paging.offset, count=paging.count)


_non_negative_int = q.whole_number  # the name the linkage API used


def searchset_bundle(
    result: SearchResult, *, base: str, res_type: str, params: list[tuple[str, str]], resources: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The searchset of `result`; `resources` are its rows as the reader may see them
    (app.family.graph.as_shown), else as stored."""
    paging = q.Paging(count=result.count, offset=result.offset)
    shown_rows = resources if resources is not None else [json.loads(r.body) for r in result.rows]
    return q.searchset(f"{base}/{res_type}", params, paging, result.total,
                       ((f"{base}/{r.res_type}/{r.res_id}", body) for r, body in zip(result.rows, shown_rows)))
