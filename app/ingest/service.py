"""The write pipeline: validate, resolve identities and references, store with history and
search index, then run the hooks (labelling, linkage) — all in the caller's transaction."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session

from app.audit import balp
from app.audit.events import consent_write_event
from app.auth import access
from app.auth.access import require
from app.auth.tokens import Principal
from app.db import Sent, in_list, insert_tables, new_id, plan_each_execution_first, ref_lists
from app.errors import FhirError, bad_request, unprocessable
from app.family.graph import as_shown  # a Bundle's GET entries are read as GET requests are
from app.fhir import store
from app.fhir.indexing import (
    ODS_SYSTEM, STORED_TYPES, WRITABLE_TYPES, IndexRows, identifiers_of, index_resource, parse_reference,
)
from app.fhir.models import (
    ResourceVersion, SearchDate, SearchReference, SearchString, SearchToken, SourceKey, StoredResource,
)
from fhir.resources.R4B import get_fhir_model_class

from app.fhir.search import SearchLimits
from app.fhir.validation import ResourceLimits, foreign_reference, foreign_reference_error, validate_resource
from app.ingest.hooks import IngestHook, Written
from app.ingest.identity import check_same_person
from app.settings import Settings


@dataclass
class EntryRequest:
    """One write or read, from a Bundle entry or a plain REST call."""

    index: int
    method: str
    url: str
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    in_bundle: bool = True
    references: list[dict[str, Any]] | None = None  # its Reference-like objects, found as it was validated

    @property
    def expr_prefix(self) -> str:
        return f"Bundle.entry[{self.index}].resource." if self.in_bundle else ""


@dataclass
class EntryResult:
    status: int
    res_type: str | None = None
    res_id: str | None = None
    version_id: int | None = None
    last_updated: datetime | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    stored: bool = True  # False when nothing was written (a re-send of the same content, ifNoneExist found it)

    @property
    def status_line(self) -> str:
        return {200: "200 OK", 201: "201 Created"}.get(self.status, str(self.status))

    @property
    def location(self) -> str | None:
        if self.res_type and self.res_id and self.version_id:
            return f"{self.res_type}/{self.res_id}/_history/{self.version_id}"
        return None


@dataclass
class _Plan:
    req: EntryRequest
    res_type: str
    res_id: str | None = None
    existing: StoredResource | None = None
    create: bool = True
    noop_result: EntryResult | None = None
    resource: dict[str, Any] | None = None
    resolved_by: str | None = None  # how an identifier (not the id) led to `existing`: checked to be the same person


# Statements built once; IN lists expand at execution.
# by value alone (uq_source_key leads with it): one probe per identifier; type and system are checked on the rows
_SOURCE_KEYS = select(SourceKey.res_type, SourceKey.system, SourceKey.value, SourceKey.res_id).where(
    SourceKey.source_org == bindparam("org"), in_list(SourceKey.value, "values"),
)
_CURRENT_ROWS = select(StoredResource.__table__).where(in_list(StoredResource.res_type, "types"), in_list(StoredResource.res_id, "ids"))


# references from a Bundle to stored records: (type, id) -> each place it is referenced, as
# ((entry index, n-th reference), the element's path, computed only when it is reported)
_Outside = dict[tuple[str, str], list[tuple[tuple[int, int], Callable[[], str]]]]


@dataclass
class _Lookups:
    """The first look-ups of a write (IngestService._first_lookups): sent, and what they read."""

    sent: Sent
    targets: set[tuple[str, ...]]
    values: list[str]


def source_keys(conn, org: str, keys) -> list:
    """Source-key rows of one organisation for (type, system, value) triples: found by value
    (one array bound, not a tuple IN list the driver re-parses every time), exact triples kept."""
    keys = set(keys)
    if not keys:
        return []
    rows = conn.execute(_SOURCE_KEYS, {"org": org, "values": sorted({k[2] for k in keys})})
    return [r for r in rows if (r.res_type, r.system, r.value) in keys]


def current_rows(conn, refs: set[tuple[str, str]]) -> list:
    """Current rows for (type, id) pairs, by IN lists on the primary key's columns."""
    if not refs:
        return []
    rows = conn.execute(_CURRENT_ROWS, ref_lists(refs))
    return [r for r in rows if (r.res_type, r.res_id) in refs]


def _now() -> datetime:
    """Millisecond precision, the precision of meta.lastUpdated, so _lastUpdated searches agree with it."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _criteria(query: str, expr: str) -> list[tuple[str, str]]:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise bad_request("Conditional criteria are empty", expression=expr)
    return pairs


def _references(resource: dict) -> list[dict]:
    """Every Reference-like dict in a resource (excluding contained resources)."""
    found = []
    stack: list[Any] = [resource]
    pop, push = stack.pop, stack.append
    while stack:
        n = pop()
        if isinstance(n, dict):
            if isinstance(n.get("reference"), str) or (isinstance(n.get("identifier"), dict) and "type" in n):
                found.append(n)
            for k, v in n.items():
                if type(v) is not str and isinstance(v, (dict, list)) and k != "contained":
                    push(v)
        else:  # a list: its objects and arrays, in order
            for v in n:
                if type(v) is not str and isinstance(v, (dict, list)):
                    push(v)
    return found


def _path_to(node: Any, target: dict, path: str = "") -> str | None:
    """The element path of `target` inside `node`, for naming it in an error."""
    if node is target:
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        if k != "contained" and isinstance(v, (dict, list)):
            found = _path_to(v, target, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")
            if found is not None:
                return found
    return None


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without server-assigned metadata, to tell a real change from a re-send."""
    body = dict(resource)
    meta = dict(body.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    return body


def _criteria_key(query: str) -> tuple:
    """Conditional criteria in one form: 'Patient?a=1&b=2', 'b=2&a=1' are the same search."""
    query = query.partition("?")[2] if "?" in query else query
    return tuple(sorted(parse_qsl(query, keep_blank_values=True)))


def _check_no_overlap(plans: list[_Plan]) -> None:
    """FHIR R4 transaction rules: if resource identities, including those resolved from
    conditional creates and updates, overlap, the transaction SHALL fail. Two entries are
    the same identity when they resolve to one stored record, give the same conditional
    criteria, or carry the same identifier on the same type (which makes them one record of
    this source). Nothing is written: 400 naming both entries."""
    seen: dict[tuple, int] = {}
    for p in plans:
        req = p.req
        keys: list[tuple] = []
        if p.res_id is not None:
            keys.append((p.res_type, "id", p.res_id))
        if req.if_none_exist:
            keys.append((p.res_type, "criteria", _criteria_key(req.if_none_exist)))
        if req.method == "PUT" and "?" in req.url:
            keys.append((p.res_type, "criteria", _criteria_key(req.url)))
        keys += [(p.res_type, "identifier", s, v) for s, v in identifiers_of(req.resource or {})]
        for key in dict.fromkeys(keys):
            first = seen.setdefault(key, req.index)
            if first == req.index:
                continue
            why = {"id": f"the same record {p.res_type}/{key[2]}", "criteria": "the same conditional criteria",
                   "identifier": f"an identifier of system {key[2]} that entry {first} also carries"}[key[1]]
            raise FhirError(
                400, "duplicate",
                f"Bundle.entry[{req.index}] and Bundle.entry[{first}] are the same {p.res_type} ({why}); "
                "a transaction may write each resource once: send it in one entry",
                expression=[f"Bundle.entry[{first}]", f"Bundle.entry[{req.index}]"], spine_code="DUPLICATE_REJECTED",
            )


def _unique_key_order(e: EntryRequest) -> tuple:
    """Batch entries are independent, so they run in the order of the unique keys they take
    (their type and first identifier, else the URL they write), not the order sent: two clients
    batching overlapping records then take those keys in one order and one waits for the other
    instead of deadlocking. Entries with the same key keep their order (the sort is stable)."""
    if e.method == "GET":
        return (1,)
    raw = e.resource.get("identifier") if isinstance(e.resource, dict) else None  # not validated yet: any shape
    idents = [(str(i.get("system")), str(i.get("value"))) for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
    res_type = e.url.strip("/").partition("?")[0].split("/")[0]
    return (0, res_type, min(idents) if idents else ("", ""), e.url)


def write_event(principal: Principal, interaction: str, written: list[Written], request_id: str = "") -> balp.AccessEvent:
    """The BALP create/update (or transaction) event of one write: an entity per record
    stored, and a patient entity per data subject the records are about."""
    event = balp.AccessEvent(principal, interaction, request_id=request_id,
                             action="C" if interaction == "create" else "U" if interaction == "update" else "E")
    for w in written:
        event.entity(f"{w.res_type}/{w.res_id}", action="create" if w.created else "update", version=str(w.version_id))
        event.about(balp.record_subjects(w.res_type, w.res_id, w.resource))
    event.outcome_desc = f"{len(written)} record(s) written by {principal.org}"
    return event


def search_event(principal: Principal, query: str, bundle: dict[str, Any], request_id: str = "") -> balp.AccessEvent:
    """The BALP query event of a search: the query, each record returned and whose it is."""
    event = balp.AccessEvent(principal, "search-type", query=query, request_id=request_id)
    for entry in bundle.get("entry") or []:
        r = entry.get("resource") or {}
        if r.get("resourceType") and r.get("id"):
            event.entity(f"{r['resourceType']}/{r['id']}")
            event.about(balp.record_subjects(r["resourceType"], r["id"], r))
    event.outcome_desc = f"{bundle.get('total', len(bundle.get('entry') or []))} match(es)"
    return event


class IngestService:
    def __init__(self, session: Session, principal: Principal, settings: Settings, hooks: list[IngestHook] | None = None, *, base: str,
                 trusted_bases: tuple[str, ...] = ()):
        self.base = base  # this server's FHIR base URL: absolute references to it become relative
        self.reference_bases = (base, *trusted_bases)  # absolute references allowed (a sync's upstream too)
        self.session = session
        self.principal = principal
        self.settings = settings
        self.hooks = hooks or []
        self._custom_plans = False
        self.limits = ResourceLimits.of(settings)  # read once, not per entry
        self.interaction: str | None = None  # transaction | batch entry | plain create/update: how the audit names it
        self.request_id = ""

    # ------------------------------------------------------------ public entry points

    def transaction(self, entries: list[EntryRequest]) -> list[EntryResult]:
        """All or nothing: any error raises, and the caller's transaction rolls back."""
        self._check_no_duplicate_targets(entries)
        self.interaction = "transaction"
        writes = [e for e in entries if e.method in ("POST", "PUT")]
        reads = [e for e in entries if e.method == "GET"]
        results: dict[int, EntryResult] = {}
        for e, r in zip(writes, self._apply_writes(writes, allow_urn=True)):
            results[e.index] = r
        for e in reads:
            results[e.index] = self._read_entry(e)
        return [results[e.index] for e in entries]

    def batch(self, entries: list[EntryRequest]) -> list[EntryResult]:
        """Entry by entry: each in its own savepoint, a failure recorded in its response."""
        results: dict[int, EntryResult] = {}
        for e in sorted(entries, key=_unique_key_order):
            savepoint = self.session.begin_nested()
            try:
                if e.method == "GET":
                    result = self._read_entry(e)
                else:
                    result = self._apply_writes([e], allow_urn=False)[0]
                savepoint.commit()
            except FhirError as err:
                savepoint.rollback()
                result = EntryResult(status=err.status, outcome=err.outcome())
            except DataError:  # a value the database cannot hold that validation let through
                savepoint.rollback()
                err = FhirError(400, "invalid", f"Bundle.entry[{e.index}]: a value cannot be stored by this server (too long, out of range or not text)", expression=f"Bundle.entry[{e.index}]")
                result = EntryResult(status=err.status, outcome=err.outcome())
            results[e.index] = result
        return [results[e.index] for e in entries]

    def write_one(self, req: EntryRequest) -> EntryResult:
        return self._apply_writes([req], allow_urn=False)[0]

    def store_generated(self, resource: dict[str, Any]) -> EntryResult:
        """Store a resource the gateway itself made (e.g. a notification to a data
        controller), owned by this service's principal's organisation; no source sent it."""
        res_type = resource["resourceType"]
        get_fhir_model_class(res_type).model_validate(resource)  # the gateway's own output is valid FHIR too
        plan = _Plan(req=EntryRequest(0, "POST", res_type, resource, in_bundle=False), res_type=res_type, res_id=new_id())
        plan.resource = copy.deepcopy(resource)
        plan.resource["id"] = plan.res_id
        return self._store([plan])[0]

    # ------------------------------------------------------------ pipeline

    def _check_no_duplicate_targets(self, entries: list[EntryRequest]) -> None:
        seen: dict[str, int] = {}
        for e in entries:
            if e.full_url:
                if e.full_url in seen:
                    raise bad_request(
                        f"Bundle.entry[{e.index}].fullUrl repeats the fullUrl of entry {seen[e.full_url]}",
                        expression=f"Bundle.entry[{e.index}].fullUrl",
                    )
                seen[e.full_url] = e.index
            if e.method == "PUT" and "?" not in e.url:
                key = e.url.strip("/")
                if key in seen:
                    raise bad_request(f"Bundle.entry[{e.index}] updates the same resource as entry {seen[key]}", expression=f"Bundle.entry[{e.index}].request.url")
                seen[key] = e.index

    def _apply_writes(self, reqs: list[EntryRequest], *, allow_urn: bool) -> list[EntryResult]:
        early = self._send_first_lookups(reqs)  # PostgreSQL: run by the server while the entries are checked
        try:
            types = [self._check_entry(r) for r in reqs]  # on SQLite before the first statement: see _check_entry
        except BaseException:
            if early is not None:
                early.sent.abandon()
            raise
        current, key_rows = self._first_lookups(reqs, types, early)
        plans = [self._plan(r, t, current) for r, t in zip(reqs, types)]
        known_keys = self._dedupe_by_source_key(plans, key_rows)
        if len(plans) > 1:
            _check_no_overlap(plans)
        # Map fullUrl -> literal reference for the entries that will exist after this bundle.
        urn_map: dict[str, str] = {}
        bundle_idents: dict[tuple[str, str, str], str] = {}
        for p in plans:
            if p.res_id is None:
                p.res_id = new_id()
            if p.req.full_url:
                urn_map[p.req.full_url] = f"{p.res_type}/{p.res_id}"
            for system, value in identifiers_of(p.req.resource or {}):
                bundle_idents[(p.res_type, system, value)] = p.res_id
        known_literals = {f"{p.res_type}/{p.res_id}" for p in plans}
        outside: _Outside = {}
        for p in plans:
            if p.noop_result is not None:
                continue
            resource = p.req.resource  # parsed for this request alone: ours to complete in place
            resource["id"] = p.res_id
            self._rewrite_references(p, resource, urn_map if allow_urn else {}, bundle_idents, known_literals, outside)
            for hook in self.hooks:
                hook.prepare(resource)
            p.resource = resource
        self._check_exist(outside)
        self._check_consent_recorders(plans)
        return self._store(plans, known_keys)

    def _lookups(self, reqs: list[EntryRequest], conn) -> tuple[list, set[tuple[str, ...]], list[str]]:
        """The first look-ups' statements (see _first_lookups), with the PUT targets and the
        identifier values they read."""
        statements = []
        if not self._custom_plans:
            statements += plan_each_execution_first(conn)
        targets = {tuple(parts) for r in reqs if r.method == "PUT" and "?" not in r.url and len(parts := r.url.strip("/").split("/")) == 2}
        values = sorted({v for r in reqs for _, v in identifiers_of(r.resource or {})})
        if targets:
            statements.append((_CURRENT_ROWS, ref_lists(targets)))
        if values:
            statements.append((_SOURCE_KEYS, {"org": self.principal.org, "values": values}))
        return statements, targets, values

    def _send_first_lookups(self, reqs: list[EntryRequest]) -> _Lookups | None:
        """On PostgreSQL the first look-ups sent before the entries are checked, from what the
        entries hold (checking reads them and changes none of them; a snapshot taken a few
        milliseconds early reads what any later one would, but for a concurrent writer's key,
        which the unique constraint catches either way); None on SQLite, where the first
        statement takes the one write lock, or when the entries hold something the look-ups
        cannot bind (the checks refuse it)."""
        if self.session.get_bind().dialect.name != "postgresql" or len(reqs) < 2:
            return None
        try:
            conn = self.session.connection()
            statements, targets, values = self._lookups(reqs, conn)
            if any(not isinstance(v, str) or len(v) > 255 or "\x00" in v for v in values) or len(statements) < 2:
                return None
        except (TypeError, AttributeError, KeyError):  # not yet checked: e.g. an identifier that is not an array
            return None
        self._custom_plans = True
        return _Lookups(Sent(conn, statements), targets, values)

    def _first_lookups(self, reqs: list[EntryRequest], types: list[str],
                       early: _Lookups | None = None) -> tuple[dict[tuple[str, str], Any], list]:
        """The current rows of every PUT's target and this source's keys for every identifier
        sent, read together (on PostgreSQL in one round trip, with the transaction's BEGIN and
        plan_each_execution): the dedupe keeps the keys of the entries it writes. `early`: the
        same look-ups, sent before the entries were checked."""
        if early is None:
            conn = self.session.connection()
            statements, targets, values = self._lookups(reqs, conn)
            self._custom_plans = True
            early = _Lookups(Sent(conn, statements), targets, values)
        results = early.sent.rows()
        targets, values = early.targets, early.values
        keys = {(t, s, v) for r, t in zip(reqs, types) for s, v in identifiers_of(r.resource or {})}
        key_rows = [r for r in results.pop() if (r.res_type, r.system, r.value) in keys] if values else []
        current = {(r.res_type, r.res_id): r for r in results.pop() if (r.res_type, r.res_id) in targets} if targets else {}
        return current, key_rows

    def _check_consent_recorders(self, plans: list[_Plan]) -> None:
        """A Consent speaks for the records of the organisation that recorded it, so it must name
        the posting source in Consent.organization: by ODS identifier, or by a reference (literal,
        urn:uuid or conditional, resolved by now) to an Organization carrying that ODS code.
        Otherwise a maternity system could lift a refusal the person gave their GP."""
        consents = [p for p in plans if p.res_type == "Consent" and p.noop_result is None]
        if not consents:
            return
        in_bundle = {f"Organization/{p.res_id}": p.resource or p.req.resource for p in plans if p.res_type == "Organization"}
        for p in consents:
            named: set[str] = set()
            literal: set[tuple[str, str]] = set()
            for ref in p.resource.get("organization") or []:
                if not isinstance(ref, dict):
                    continue
                ident = ref.get("identifier") or {}
                if ident.get("system") == ODS_SYSTEM and ident.get("value"):
                    named.add(str(ident["value"]))
                parsed = parse_reference(ref.get("reference") or "")
                if parsed and parsed[0] == "Organization":
                    target = in_bundle.get(f"Organization/{parsed[1]}")
                    if target is not None:
                        named |= {v for sys_, v in identifiers_of(target) if sys_ == ODS_SYSTEM}
                    else:
                        literal.add(parsed)
            if literal and self.principal.org not in named:
                for row in current_rows(self.session.connection(), literal):
                    if not row.deleted:
                        named |= {v for sys_, v in identifiers_of(json.loads(row.body)) if sys_ == ODS_SYSTEM}
            if self.principal.org not in named:
                raise unprocessable(
                    "Consent.organization must name the organisation recording the Consent (your ODS code "
                    f"{self.principal.org}, as an identifier of system {ODS_SYSTEM} or a reference to that Organization): "
                    "a Consent governs the records held by the organisation that recorded it",
                    expression=f"{p.req.expr_prefix or 'Consent.'}organization", spine_code="INVALID_VALUE",
                )

    def _check_exist(self, outside: _Outside) -> None:
        """References to records outside the Bundle must resolve: one look-up for all of them;
        the first reference that does not, in entry order, is the error."""
        if not outside:
            return
        existing = {(r.res_type, r.res_id) for r in current_rows(self.session.connection(), set(outside)) if not r.deleted}
        missing = [(order, where, key) for key, places in outside.items() if key not in existing for order, where in places]
        if missing:
            _, where, key = min(missing, key=lambda m: m[0])
            raise unprocessable(f"{where()}: {key[0]}/{key[1]} does not exist on this server", expression=where(), code="not-found", spine_code="INVALID_REFERENCE")

    def _check_entry(self, req: EntryRequest) -> str:
        """What an entry can be refused for without the database: method, type, permission and
        validation. Run for every entry before the first statement, so the transaction (on SQLite,
        the one write lock) is not held while resources are validated. Returns the type."""
        prefix = req.expr_prefix
        url = req.url.strip("/")
        if req.method not in ("POST", "PUT"):
            raise bad_request(f"Method {req.method} is not supported here", expression=f"Bundle.entry[{req.index}].request.method")
        res_type = url.partition("?")[0].split("/")[0]
        if res_type not in WRITABLE_TYPES:
            raise FhirError(
                400, "not-supported", f"Writing {res_type or 'this URL'} is not supported by this server",
                expression=f"Bundle.entry[{req.index}].request.url" if req.in_bundle else None,
            )
        require(self.principal, res_type, "c" if req.method == "POST" else "u")
        references: list[dict[str, Any]] = []
        try:
            validate_resource(req.resource, expected_type=res_type, limits=self.limits, references=references)
        except FhirError as err:
            raise err.prefixed(prefix, f"entry {req.index}") if req.in_bundle else err
        access.check_type(self.principal, "fhir.write", res_type)  # e.g. only a source system records a Consent
        req.references = references
        return res_type

    def _plan(self, req: EntryRequest, res_type: str, current: dict[tuple[str, str], Any]) -> _Plan:
        """The entry's target: created, or the stored record its id, criteria or identifiers name."""
        url = req.url.strip("/")
        prefix = req.expr_prefix
        path, _, query = url.partition("?")
        parts = path.split("/")
        plan = _Plan(req=req, res_type=res_type)
        if req.method == "POST":
            if len(parts) != 1 or query:
                raise bad_request("POST goes to the type's URL, e.g. Patient", expression=f"Bundle.entry[{req.index}].request.url")
            if req.if_none_exist:
                matches = self._match(res_type, req.if_none_exist, req)
                if len(matches) > 1:
                    raise FhirError(412, "duplicate", f"ifNoneExist criteria match {len(matches)} {res_type} resources", spine_code="DUPLICATE_REJECTED")
                if matches:
                    row = matches[0]
                    plan.res_id, plan.existing, plan.create = row.res_id, row, False
                    plan.noop_result = EntryResult(200, res_type, row.res_id, row.version_id, row.last_updated, json.loads(row.body), stored=False)
            return plan
        # PUT
        if query:
            matches = self._match(res_type, query, req)
            if len(matches) > 1:
                raise FhirError(412, "duplicate", f"Conditional update criteria match {len(matches)} {res_type} resources", spine_code="DUPLICATE_REJECTED")
            if matches:
                plan.res_id, plan.existing, plan.create = matches[0].res_id, matches[0], False
                plan.resolved_by = "its conditional update criteria"
            body_id = req.resource.get("id")
            if body_id and plan.res_id and body_id != plan.res_id:
                raise bad_request("The resource id does not match the resource the criteria found", expression=f"{prefix or res_type + '.'}id")
            return plan
        if len(parts) != 2:
            raise bad_request("PUT goes to Type/id or Type?identifier=system|value", expression=f"Bundle.entry[{req.index}].request.url")
        res_id = parts[1]
        if req.resource.get("id") != res_id:
            raise bad_request(f"The resource id must equal the id in the URL ({res_id})", expression=f"{res_type}.id")
        existing = current.get((res_type, res_id))
        plan.res_id = res_id
        if existing is not None:
            plan.existing, plan.create = existing, False
        return plan

    def _match(self, res_type: str, query: str, req: EntryRequest) -> list[StoredResource]:
        if query.startswith(f"{res_type}?"):  # ifNoneExist given as a search URL, as HAPI takes it
            query = query[len(res_type) + 1:]
        criteria = _criteria(query, f"Bundle.entry[{req.index}].request")
        result = store.search(self.session, self.principal, res_type, criteria, default_count=2, max_count=2, limits=SearchLimits.of(self.settings))
        return result.rows

    def _dedupe_by_source_key(self, plans: list[_Plan], key_rows: list) -> dict[tuple, str]:
        """A POST of a record this source already sent (same type and identifier) updates it.

        `key_rows` are this source's keys for every identifier sent (_first_lookups). Returns
        those of the identifiers being written ((org, type, system, value) -> id), so that
        storing needs no second look."""
        org = self.principal.org
        written = {(p.res_type, s, v) for p in plans if p.noop_result is None for s, v in identifiers_of(p.req.resource or {})}
        rows = [r for r in key_rows if (r.res_type, r.system, r.value) in written]
        known = {(org, r.res_type, r.system, r.value): r.res_id for r in rows}
        wanted = {
            (p.res_type, s, v): p for p in plans if p.create and p.req.method in ("POST", "PUT") and p.noop_result is None
            for s, v in identifiers_of(p.req.resource or {})
        }
        if not wanted:
            return known
        found: dict[int, set[str]] = {}
        systems: dict[int, set[str]] = {}
        for r in rows:
            plan = wanted.get((r.res_type, r.system, r.value))
            if plan is None:
                continue
            found.setdefault(id(plan), set()).add(r.res_id)
            systems.setdefault(id(plan), set()).add(r.system)
        matched: list[tuple[_Plan, str]] = []
        for plan in {id(p): p for p in wanted.values()}.values():
            ids = found.get(id(plan))
            if not ids:
                continue
            if len(ids) > 1:
                raise FhirError(409, "conflict", f"{plan.res_type} identifiers belong to {len(ids)} different records already sent by this source", expression=f"{plan.req.expr_prefix or plan.res_type + '.'}identifier")
            res_id = ids.pop()
            if plan.res_id and plan.res_id != res_id and plan.req.method == "PUT" and "?" not in plan.req.url:
                raise FhirError(409, "conflict", f"This source already sent that {plan.res_type} identifier as {plan.res_type}/{res_id}", expression=f"{plan.req.expr_prefix or plan.res_type + '.'}identifier")
            matched.append((plan, res_id))
            plan.resolved_by = "identifier " + " and ".join(sorted(systems[id(plan)]))
        if not matched:
            return known
        current = {(r.res_type, r.res_id): r for r in current_rows(self.session.connection(), {(p.res_type, rid) for p, rid in matched})}
        for plan, res_id in matched:
            plan.res_id = res_id
            plan.existing = current.get((plan.res_type, res_id))
            plan.create = plan.existing is None
        return known

    def _rewrite_references(
        self, plan: _Plan, resource: dict[str, Any], urn_map: dict[str, str],
        bundle_idents: dict[tuple[str, str, str], str], known_literals: set[str], outside: _Outside,
    ) -> None:
        """Resolve this entry's references within the Bundle; add those to stored records to
        ``outside`` (checked for all entries at once by :meth:`_check_exist`)."""
        prefix = plan.req.expr_prefix or f"{plan.res_type}."

        def expr(ref: dict) -> str:
            return f"{prefix}{(_path_to(resource, ref) or '').lstrip('.')}.reference"

        found = plan.req.references if plan.req.references is not None and plan.req.resource is resource else _references(resource)
        for n, ref in enumerate(found):
            literal = ref.get("reference")
            if not isinstance(literal, str):
                continue
            if foreign_reference(literal, self.reference_bases):
                raise foreign_reference_error(expr(ref))
            if literal.startswith("urn:uuid:") or literal.startswith("urn:oid:"):
                target = urn_map.get(literal)
                if target is None:
                    where = expr(ref)
                    raise unprocessable(f"{where}: {literal} is not the fullUrl of any entry in this Bundle", expression=where, code="not-found", spine_code="INVALID_REFERENCE")
                ref["reference"] = target
                continue
            if "?" in literal:
                self._resolve_conditional(ref, literal, expr(ref), bundle_idents)
                continue
            base = self.base + "/"
            if literal.startswith(base):
                literal = literal[len(base):]
                ref["reference"] = literal
            parsed = parse_reference(literal)
            if parsed and parsed[0] in STORED_TYPES and "://" not in literal:
                if f"{parsed[0]}/{parsed[1]}" not in known_literals:
                    # where it is, named only if it is missing (walking the resource costs)
                    outside.setdefault(parsed, []).append(((plan.req.index, n), lambda ref=ref: expr(ref)))

    def _resolve_conditional(self, ref: dict, literal: str, expr: str, bundle_idents: dict) -> None:
        """'Patient?identifier=system|value': resolved to one record if exactly one fits, else kept
        as a logical reference by identifier, resolved as records arrive."""
        target_type, _, query = literal.partition("?")
        target_type = target_type.rsplit("/", 1)[-1]
        pairs = parse_qsl(query)
        if target_type not in STORED_TYPES or len(pairs) != 1 or pairs[0][0] != "identifier" or "|" not in pairs[0][1]:
            raise bad_request(f"{expr}: conditional references must be Type?identifier=system|value", expression=expr)
        system, value = pairs[0][1].split("|", 1)
        in_bundle = bundle_idents.get((target_type, system, value))
        if in_bundle:
            ref["reference"] = f"{target_type}/{in_bundle}"
            return
        rows = self.session.execute(
            select(SearchToken.res_id, StoredResource.source_org)
            .join(StoredResource, (StoredResource.res_type == SearchToken.res_type) & (StoredResource.res_id == SearchToken.res_id))
            .where(SearchToken.res_type == target_type, SearchToken.param == "identifier",
                   SearchToken.system == system, SearchToken.code == value, StoredResource.deleted.is_(False))
        ).all()
        own = [r.res_id for r in rows if r.source_org == self.principal.org]
        candidates = own or [r.res_id for r in rows]
        if len(set(candidates)) == 1:
            ref["reference"] = f"{target_type}/{candidates[0]}"
        else:
            del ref["reference"]
            ref["type"] = target_type
            ref["identifier"] = {"system": system, "value": value}

    def _store(self, plans: list[_Plan], known_keys: dict[tuple, str] | None = None) -> list[EntryResult]:
        now = _now()
        results: list[EntryResult] = []
        creates, updates, versions, written = [], [], [], []
        rows = IndexRows()
        new_keys: list[dict] = []
        for p in plans:
            if p.noop_result is not None:
                results.append(p.noop_result)
                continue
            resource = p.resource
            existing = p.existing
            if existing is not None:
                if not access.sees_all_orgs(self.principal, "fhir.write") and existing.source_org != self.principal.org:
                    raise FhirError(403, "forbidden", f"{p.res_type}/{p.res_id} was sent by another organisation; a source may only update its own records", spine_code="ACCESS_DENIED")
                if p.req.if_match and p.req.if_match.strip() not in (store.etag(existing.version_id), f'"{existing.version_id}"', str(existing.version_id)):
                    raise FhirError(412, "conflict", f"Version conflict: {p.res_type}/{p.res_id} is at version {existing.version_id}", spine_code="PRECONDITION_FAILED")
                old = json.loads(existing.body)
                if not existing.deleted and _content(old) == _content(resource):  # a re-send: no new version
                    results.append(EntryResult(200, p.res_type, p.res_id, existing.version_id, existing.last_updated, old, stored=False))
                    continue
                if p.resolved_by and not existing.deleted:
                    check_same_person(p.res_type, p.res_id, old, resource, p.resolved_by, p.req.expr_prefix)
                version = existing.version_id + 1
            else:
                if p.req.if_match:
                    raise FhirError(412, "conflict", f"If-Match given but {p.res_type}/{p.res_id} does not exist", spine_code="PRECONDITION_FAILED")
                version = 1
            meta = dict(resource.get("meta") or {})
            meta["versionId"] = str(version)
            meta["lastUpdated"] = store.format_instant(now)
            resource["meta"] = meta
            body = orjson.dumps(resource).decode()
            row = {
                "res_type": p.res_type, "res_id": p.res_id, "version_id": version, "last_updated": now,
                "deleted": False, "body": body, "source_system": self.principal.source_system,
                # an admin's correction keeps the record with the organisation that sent it
                "source_org": existing.source_org if existing is not None else self.principal.org,
            }
            if existing is None:
                creates.append(row)
            else:
                updates.append({**row, "b_type": p.res_type, "b_id": p.res_id})
            versions.append({k: row[k] for k in ("res_type", "res_id", "version_id", "last_updated", "body", "source_org", "source_system")} | {"method": "POST" if existing is None else "PUT"})
            index_resource(resource, rows)
            for system, value in identifiers_of(resource):
                new_keys.append({"source_org": row["source_org"], "res_type": p.res_type, "system": system, "value": value[:255], "res_id": p.res_id})
            written.append(Written(p.res_type, p.res_id, version, resource, existing is None, row["source_org"], self.principal.source_system))
            results.append(EntryResult(201 if existing is None else 200, p.res_type, p.res_id, version, now, resource))
        extra: list = []
        then: tuple[str, ...] = ()
        for hook in self.hooks:  # e.g. the linkage queue's entries: inserted with the records
            more, statements = hook.stored_with(self.session, written)
            extra += more
            then += statements
        events = []
        consents = [w for w in written if w.res_type == "Consent"]
        if consents:  # a change to who may see a person's records is itself audited, in this transaction
            events.append(consent_write_event(self.principal, consents))
        others = [w for w in written if w.res_type != "Consent"]  # a Consent's write is its consent-write event above
        if others:  # every write is audited in its own transaction: no audit, no write
            interaction = self.interaction or ("create" if all(w.created for w in others) else "update")
            events.append(balp.entry(write_event(self.principal, interaction, others, self.request_id)))
        # on PostgreSQL, when no hook writes after the inserts, appended in their round trip;
        # else after the hooks (record linkage inline, and its own audit): the chain's lock last
        hooks_write = any(getattr(hook, "writes_after_write", lambda: True)() for hook in self.hooks)
        audit = None if hooks_write else balp.appends_with_writes(self.session, events)
        try:
            self._flush(creates, updates, versions, rows, new_keys, known_keys, extra, then, audit)
        except DBAPIError as err:
            if audit is None:
                raise
            raise balp.writes_failed(err, self.request_id) from None
        for hook in self.hooks:
            hook.after_write(self.session, written)
        if events and audit is None:
            balp.record_each(self.session, events, self.request_id)
        return results

    def _flush(self, creates, updates, versions, rows: IndexRows, new_keys, known_keys: dict[tuple, str] | None,
               extra: list, then: tuple[str, ...], after: list | None = None) -> None:
        s = self.session.connection()  # Core executemany: no ORM unit of work on the write path
        if updates:
            stmt = (
                update(StoredResource)
                .where(StoredResource.res_type == bindparam("b_type"), StoredResource.res_id == bindparam("b_id"))
                .values(version_id=bindparam("version_id"), last_updated=bindparam("last_updated"), deleted=False, body=bindparam("body"), source_system=bindparam("source_system"))
            )
            s.execute(stmt, [{k: u[k] for k in ("b_type", "b_id", "version_id", "last_updated", "body", "source_system")} for u in updates])
            by_type: dict[str, list[str]] = {}
            for u in updates:
                by_type.setdefault(u["res_type"], []).append(u["res_id"])
            for table in (SearchToken, SearchString, SearchDate, SearchReference):
                for t, ids in by_type.items():
                    s.execute(delete(table).where(table.res_type == t, table.res_id.in_(ids)))
        # every table's rows in one go (on PostgreSQL one round trip): the records, their history,
        # their search index and the source keys
        insert_tables(s, [
            (StoredResource.__table__, creates), (ResourceVersion.__table__, versions),
            (SearchToken.__table__, rows.tokens), (SearchString.__table__, rows.strings),
            (SearchDate.__table__, rows.dates), (SearchReference.__table__, rows.references),
            (SourceKey.__table__, self._new_source_keys(new_keys, known_keys) if new_keys else []),
            *extra,
        ], then, after)

    def _new_source_keys(self, keys: list[dict], known: dict[tuple, str] | None) -> list[dict]:
        """The source-key rows to insert: each written identifier as this source's key to the
        record. `known` holds the keys of the principal's organisation read at the start of the
        write; a key another transaction inserts since then fails the unique constraint, and the
        write is retried."""
        unique = {(k["source_org"], k["res_type"], k["system"], k["value"]): k for k in keys}
        present = dict(known or {})
        for org in {k[0] for k in unique} - ({self.principal.org} if known is not None else set()):
            present.update({(org, r.res_type, r.system, r.value): r.res_id for r in source_keys(self.session.connection(), org, [k[1:] for k in unique if k[0] == org])})
        missing = []
        for key, k in unique.items():
            holder = present.get(key)
            if holder is None:
                missing.append(k)
            elif holder != k["res_id"]:
                raise FhirError(409, "conflict", f"This source already sent that {k['res_type']} identifier as {k['res_type']}/{holder}", spine_code="DUPLICATE_REJECTED")
        # in key order: two writers inserting overlapping keys wait on each other, never deadlock
        missing.sort(key=lambda k: (k["source_org"], k["res_type"], k["system"], k["value"]))
        return missing

    def _read_entry(self, e: EntryRequest) -> EntryResult:
        path, _, query = e.url.strip("/").partition("?")
        parts = path.split("/")
        if len(parts) == 2 and not query:
            require(self.principal, parts[0], "r")
            row = store.read(self.session, self.principal, parts[0], parts[1])
            body = as_shown(self.session, self.principal, [row])[0]
            balp.record(self.session, balp.AccessEvent(self.principal, "read", request_id=self.request_id)
                        .entity(f"{row.res_type}/{row.res_id}", version=str(row.version_id))
                        .about(balp.record_subjects(row.res_type, row.res_id, json.loads(row.body))))
            return EntryResult(200, row.res_type, row.res_id, row.version_id, row.last_updated, body)
        if len(parts) == 1:
            require(self.principal, parts[0], "s")
            params = parse_qsl(query, keep_blank_values=True)
            result = store.search(self.session, self.principal, parts[0], params, default_count=self.settings.default_page_size,
                                  max_count=self.settings.max_page_size, limits=SearchLimits.of(self.settings))
            bundle = store.searchset_bundle(result, base=self.base, res_type=parts[0], params=params,
                                           resources=as_shown(self.session, self.principal, result.rows))
            balp.record(self.session, search_event(self.principal, f"{parts[0]}?{query}", bundle, self.request_id))
            return EntryResult(200, resource=bundle)
        raise bad_request(f"GET {e.url} is not supported in a Bundle", expression=f"Bundle.entry[{e.index}].request.url")
