"""Pull records from an upstream FHIR server through the ingest pipeline, as a named source.

For each resource type, in dependency order, the upstream is searched with `_lastUpdated` and
`_sort=_lastUpdated`, following `Bundle.link` next. Each page is written in ONE database
transaction together with the cursor (the next-page link, the newest lastUpdated seen), so a run
that is killed resumes from the last committed page: nothing lost, nothing written twice.

Records keep the upstream's content but get local ids: an upstream record already synced keeps
its local id (the sync_link table); a new one takes the id of the record this source already sent
with the same identifier, else a deterministic UUID derived from (upstream, source, type, id).
References between synced records are rewritten to the local ids; a reference to a record not yet
synced is fetched from the upstream first (Organization and Practitioner are synced this way,
"if referenced"); a reference that cannot be resolved becomes the absolute upstream URL, which is
what it is in FHIR terms, and is reported as a warning. meta.source records the upstream URL.

A MedicationStatement or MedicationRequest whose medicationReference names a Medication on the
upstream gets that Medication as a contained resource ("#med"), as FHIR allows: the gateway stores
no Medication on its own, and the medicine's code must be in the record for labelling (a
methadone prescription is substance-misuse information) and for `code` searches. A Medication
that cannot be fetched leaves the reference as the upstream URL, with a warning.

The writes go through IngestService.transaction (validation, labelling and linkage hooks, history,
search index, the no-op for an unchanged re-send), so a second run changes nothing."""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import orjson
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from app.auth.tokens import Principal, Scope
from app.db import Database, in_list, insert_rows, plan_each_execution, ref_lists
from app.errors import FhirError
from app.fhir.indexing import WRITABLE_TYPES, identifiers_of
from app.ingest.service import EntryRequest, EntryResult, IngestService, source_keys
from app.settings import Settings
from app.sync.client import UpstreamClient, UpstreamError
from app.sync.models import SyncCursor, SyncLink, SyncUpstream

log = logging.getLogger("familyview.sync")

# The source's own Organization (its name tells a practitioner who holds a withheld record), then
# Patients, then what refers to them (issue 6).
DEFAULT_TYPES = (
    # the professionals before the care teams that name them (else they arrive as a care team's dependency)
    "Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Consent", "EpisodeOfCare", "CareTeam",
    "Flag", "Condition", "Observation", "MedicationStatement", "MedicationRequest",
    # antenatal contacts and pregnancy referrals: a relationship for the pre-birth view
    "Encounter", "ServiceRequest",
)
# The search parameter that restricts each type to given patients (for --identifier); the
# professionals are about no patient and come with what names them.
PATIENT_PARAM = {t: "patient" for t in DEFAULT_TYPES if t not in ("Patient", "Practitioner", "PractitionerRole")}
_SYNC_NS = uuid.UUID("6f0b8a52-6a43-4c1e-9a51-2f8d3b0c6e11")
# Types whose medicationReference to an upstream Medication is brought in as a contained Medication.
MEDICATION_USERS = ("MedicationStatement", "MedicationRequest")
_CONTAINED_MEDICATION_ID = "med"
_MAX_DEPENDENCY_DEPTH = 3
# Read-ahead, bounded: each search is fetched on its own thread up to PREFETCH_PAGES pages ahead
# of the writes, and the next types' searches start while the current type is written, as long
# as fewer than PREFETCH_SEARCHES searches are still fetching and fewer than PREFETCH_BUDGET pages
# are held unwritten or being fetched. An upstream's page latency is mostly not CPU (HAPI polls
# its own search task between pages), so the writes need not stand idle for it; few searches at
# once, so the pages needed next are not slowed by those needed later; memory stays bounded to
# about PREFETCH_BUDGET + PREFETCH_SEARCHES pages.
PREFETCH_PAGES = 2
PREFETCH_SEARCHES = 2
PREFETCH_BUDGET = 6

# A page's look-ups bind each column's values as one list (an array on PostgreSQL) and keep
# the exact pairs in Python: a tuple IN list of a page's 500 pairs is new SQL text each time,
# which the driver re-parsed at every call (a third of a sync's time).
_L = SyncLink.__table__
_OWN_LINKS = select(_L.c.res_type, _L.c.upstream_res_id, _L.c.local_res_id).where(
    _L.c.upstream_id == bindparam("up"), in_list(_L.c.res_type, "types"), in_list(_L.c.upstream_res_id, "ids"))
_ANY_LINKS = (
    select(_L.c.res_type, _L.c.upstream_res_id, _L.c.local_res_id, _L.c.upstream_id)
    .join(SyncUpstream.__table__, SyncUpstream.__table__.c.id == _L.c.upstream_id)
    .where(SyncUpstream.__table__.c.base_url == bindparam("base"), in_list(_L.c.res_type, "types"), in_list(_L.c.upstream_res_id, "ids"))
)
_DEL_LINKS = delete(_L).where(_L.c.upstream_id == bindparam("up"), _L.c.res_type == bindparam("t"), in_list(_L.c.upstream_res_id, "ids"))


def parse_instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _later(a: str | None, b: str | None) -> str | None:
    da, db = parse_instant(a), parse_instant(b)
    if da is None:
        return b
    if db is None:
        return a
    return b if db > da else a


# ---------------------------------------------------------------------------- reporting

@dataclass
class TypeCounts:
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    pages: int = 0

    @property
    def written(self) -> int:
        return self.created + self.updated


@dataclass
class SyncProblem:
    res_type: str
    where: str  # the upstream URL or Type/id it concerns
    message: str
    status: int | None = None
    outcome: dict[str, Any] | None = None

    def line(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.res_type} {self.where}{status}: {self.message}"


@dataclass
class SyncSummary:
    upstream: str
    source_org: str
    service: str
    counts: dict[str, TypeCounts] = field(default_factory=dict)
    errors: list[SyncProblem] = field(default_factory=list)
    warnings: list[SyncProblem] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0
    upstream_wait: float = 0.0  # seconds the writes stood idle waiting for an upstream page
    resumed: list[str] = field(default_factory=list)

    def of(self, res_type: str) -> TypeCounts:
        return self.counts.setdefault(res_type, TypeCounts())

    @property
    def ok(self) -> bool:
        return not self.errors

    def total(self, attr: str) -> int:
        return sum(getattr(c, attr) for c in self.counts.values())

    @property
    def rate(self) -> float:
        return self.total("fetched") / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [f"Sync from {self.upstream} as {self.source_org} ({self.service}) in {self.seconds:.1f}s"]
        if self.resumed:
            lines.append(f"  resumed an interrupted pass for: {', '.join(self.resumed)}")
        lines.append(f"  {'type':<16}{'fetched':>9}{'created':>9}{'updated':>9}{'unchanged':>10}{'failed':>8}")
        for t, c in self.counts.items():
            lines.append(f"  {t:<16}{c.fetched:>9}{c.created:>9}{c.updated:>9}{c.unchanged:>10}{c.failed:>8}")
        lines.append(
            f"  {'total':<16}{self.total('fetched'):>9}{self.total('created'):>9}{self.total('updated'):>9}"
            f"{self.total('unchanged'):>10}{self.total('failed'):>8}"
        )
        lines.append(f"  {self.rate:.0f} resources/s; {self.retries} retries; {len(self.errors)} errors; {len(self.warnings)} warnings")
        if self.seconds:
            lines.append(f"  waiting for the upstream's pages: {self.upstream_wait:.1f}s of {self.seconds:.1f}s")
        for e in self.errors:
            lines.append(f"  error: {e.line()}")
        for w in self.warnings[:50]:
            lines.append(f"  warning: {w.line()}")
        if len(self.warnings) > 50:
            lines.append(f"  … and {len(self.warnings) - 50} more warnings")
        return "\n".join(lines)


class NullProgress:
    def start(self, res_type: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...
    def note(self, text: str) -> None: ...


# ---------------------------------------------------------------------------- the sync

@dataclass
class _Item:
    res_type: str
    upstream_id: str
    resource: dict[str, Any]  # as the upstream sent it
    local_id: str | None = None
    body: dict[str, Any] | None = None  # rewritten for local storage
    dependency: bool = False


class Syncer:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        client: UpstreamClient,
        *,
        source_org: str,
        service: str,
        hooks: list | None = None,
        progress: Any = None,
        page_size: int | None = None,
        extra_params: Iterable[tuple[str, str]] = (),
        local_base: str | None = None,
        after_page: Callable[[str, int], None] | None = None,
        prefetch: bool = True,
    ):
        self.db = db
        self.settings = settings
        self.client = client
        self.base = client.base_url
        self.source_org = source_org
        self.service = service
        self.hooks = hooks or []
        self.progress = progress or NullProgress()
        self.page_size = page_size or settings.sync_page_size
        self.extra_params = list(extra_params)
        self.local_base = local_base or settings.fhir_base(settings.public_base_url or "http://familyview.invalid")
        self.after_page = after_page  # test hook: called after each committed page
        self.prefetch = prefetch
        self.principal = Principal(
            sub=f"sync:{self.base}", role="source-system", org=source_org, service=service,
            scopes=(Scope.parse("system/*.cruds"),),
        )
        self.summary = SyncSummary(self.base, source_org, service)
        self.upstream_id = self._upstream_row()
        self._medications: dict[str, dict[str, Any] | None] = {}  # upstream Medication id -> body, fetched once a run

    # ------------------------------------------------------------------ bookkeeping rows

    def _upstream_row(self) -> int:
        with self.db.session() as s:
            row = s.scalar(select(SyncUpstream).where(SyncUpstream.base_url == self.base, SyncUpstream.source_org == self.source_org))
            if row is None:
                row = SyncUpstream(base_url=self.base, source_org=self.source_org, service=self.service, created_at=datetime.now(timezone.utc))
                s.add(row)
                s.flush()
            return row.id

    def _mark_run(self, *, started: bool, status: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(SyncUpstream, self.upstream_id)
            if started:
                row.last_started = datetime.now(timezone.utc)
            else:
                row.last_finished = datetime.now(timezone.utc)
                row.last_status = (status or "")[:200]

    def cursor(self, res_type: str) -> SyncCursor | None:
        with self.db.session(readonly=True) as s:
            return s.get(SyncCursor, (self.upstream_id, res_type))

    # ------------------------------------------------------------------ entry points

    def run(self, *, since: str | None = None, identifiers: Iterable[str] = (), types: Iterable[str] = DEFAULT_TYPES) -> SyncSummary:
        started = time.perf_counter()
        self._mark_run(started=True)
        identifiers = list(identifiers)
        try:
            if identifiers:
                self._run_scoped(identifiers, since, list(types))
            else:
                self._run_types(list(types), since)
        finally:
            self.summary.seconds = time.perf_counter() - started
            self.summary.retries = self.client.retries
            self._mark_run(started=False, status="ok" if self.summary.ok else f"{len(self.summary.errors)} errors")
        return self.summary

    def sync_references(self, refs: Iterable[tuple[str, str]]) -> SyncSummary:
        """Fetch and write the given upstream records (Type, id): the rest-hook's payload path.
        The cursor is left alone (the next incremental run sees these as unchanged)."""
        started = time.perf_counter()
        for res_type, res_id in refs:
            try:
                resource = self.client.get_json(f"{res_type}/{res_id}")
            except UpstreamError as exc:
                self._error(res_type, f"{res_type}/{res_id}", exc)
                continue
            if resource.get("resourceType") != res_type:
                self._problem(self.summary.errors, res_type, f"{res_type}/{res_id}", f"the upstream answered with a {resource.get('resourceType')}")
                continue
            self.summary.of(res_type).fetched += 1
            self._write_page(res_type, [resource])
        self.summary.seconds = time.perf_counter() - started
        self.summary.retries = self.client.retries
        return self.summary

    # ------------------------------------------------------------------ searching

    def _pages(self, first_url: str, params: list[tuple[str, str]] | None) -> Iterator[tuple[str, dict[str, Any] | None, UpstreamError | None]]:
        """(url, bundle, error) for each page; with prefetch, the next pages are fetched while the caller writes."""
        pager = _Pager(self, first_url, params)
        if self.prefetch:
            pager.start()
        try:
            yield from pager.pages()
        finally:
            pager.stop()

    def _get_page(self, url: str, params) -> dict[str, Any]:
        bundle = self.client.get_json(url, params)
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
            raise UpstreamError(f"The upstream answered a search with a {bundle.get('resourceType')} of type {bundle.get('type')!r}, not a searchset Bundle", url=url)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UpstreamError("The search page's Bundle.entry is malformed", url=url)
        return bundle

    def _matches(self, res_type: str, url: str, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for i, e in enumerate(bundle.get("entry") or []):
            if (e.get("search") or {}).get("mode", "match") != "match":
                continue
            r = e.get("resource")
            if not isinstance(r, dict) or r.get("resourceType") != res_type or not r.get("id"):
                self.summary.of(res_type).failed += 1
                self._problem(self.summary.errors, res_type, f"{url} entry {i}", "the entry has no resource of this type with an id")
                continue
            out.append(r)
        return out

    def _search_params(self, since: str | None) -> list[tuple[str, str]]:
        params = [("_sort", "_lastUpdated"), ("_count", str(self.page_size))]
        if since:
            params.append(("_lastUpdated", f"ge{since}"))
        return params + self.extra_params

    def _plan_pass(self, res_type: str, since: str | None) -> "_Pass":
        """Where this type's pass starts: the interrupted pass's next-page link, else a search from
        the high-water mark (or `since`)."""
        cur = self.cursor(res_type)
        if cur is not None and cur.next_url and since is None:
            pager = _Pager(self, cur.next_url, None)
            return _Pass(res_type, pager, cur.pass_since, resumed_after=cur.pages)
        pass_since = since or (cur.high_water if cur else None)
        return _Pass(res_type, _Pager(self, f"{self.base}/{res_type}", self._search_params(pass_since)), pass_since)

    def _run_types(self, types: list[str], since: str | None) -> None:
        """Type by type, in order; with prefetch, later types' searches already under way."""
        ahead = _ReadAhead(self, types, since)
        try:
            for i in range(len(types)):
                self._run_pass(ahead.take(i), ahead.top_up)
        finally:
            ahead.stop()

    def _run_pass(self, p: "_Pass", read_ahead: Callable[[], None] = lambda: None) -> None:
        """One type's pages, each written with the cursor; ``read_ahead`` is called while waiting
        for a page and after each write (to start the next searches)."""
        res_type, counts = p.res_type, self.summary.of(p.res_type)
        if p.resumed_after is not None:
            self.summary.resumed.append(res_type)
            self.progress.note(f"{res_type}: resuming the interrupted pass after page {p.resumed_after}")
        self.progress.start(res_type, None)
        first = True
        try:
            for page_url, bundle, err in p.pager.pages(read_ahead):
                if err is not None:
                    self._error(res_type, page_url, err)
                    return
                assert bundle is not None
                if first and isinstance(bundle.get("total"), int):
                    self.progress.start(res_type, bundle["total"])
                first = False
                resources = self._matches(res_type, page_url, bundle)
                counts.fetched += len(resources)
                nxt = _next_link(bundle)
                self._write_page(res_type, resources, cursor=(p.pass_since, nxt))
                counts.pages += 1
                self.progress.advance(len(resources))
                if self.after_page:
                    self.after_page(res_type, counts.pages)
                read_ahead()
        finally:
            p.pager.stop()
            self.progress.finish()

    def _run_scoped(self, identifiers: list[str], since: str | None, types: list[str]) -> None:
        """Only the patients with these identifiers and what refers to them; the cursor is not moved
        (a partial pass says nothing about the rest of the upstream)."""
        patient_ids: list[str] = []
        for ident in identifiers:
            params = [("identifier", ident), ("_count", str(self.page_size))] + ([("_lastUpdated", f"ge{since}")] if since else [])
            for page_url, bundle, err in self._pages(f"{self.base}/Patient", params + self.extra_params):
                if err is not None:
                    self._error("Patient", page_url, err)
                    break
                found = self._matches("Patient", page_url, bundle)
                patient_ids += [r["id"] for r in found]
                if "Patient" in types:
                    self.summary.of("Patient").fetched += len(found)
                    self._write_page("Patient", found)
        if not patient_ids:
            return
        for res_type in types:
            if res_type == "Patient" or res_type not in PATIENT_PARAM:
                continue
            counts = self.summary.of(res_type)
            self.progress.start(res_type, None)
            for chunk_start in range(0, len(patient_ids), 20):
                refs = ",".join(f"Patient/{p}" for p in patient_ids[chunk_start:chunk_start + 20])
                params = [(PATIENT_PARAM[res_type], refs), ("_count", str(self.page_size))]
                if since:
                    params.append(("_lastUpdated", f"ge{since}"))
                for page_url, bundle, err in self._pages(f"{self.base}/{res_type}", params + self.extra_params):
                    if err is not None:
                        self._error(res_type, page_url, err)
                        break
                    resources = self._matches(res_type, page_url, bundle)
                    counts.fetched += len(resources)
                    self._write_page(res_type, resources)
                    counts.pages += 1
                    self.progress.advance(len(resources))
            self.progress.finish()

    # ------------------------------------------------------------------ problems

    def _problem(self, where_list: list, res_type: str, where: str, message: str, status: int | None = None, outcome=None) -> None:
        where_list.append(SyncProblem(res_type, where, message, status, outcome))
        log.warning("sync %s %s: %s", res_type, where, message)

    def _error(self, res_type: str, where: str, exc: UpstreamError) -> None:
        self._problem(self.summary.errors, res_type, where, exc.diagnostics if exc.outcome else str(exc), exc.status, exc.outcome)
        self.progress.note(f"error: {res_type} {where}: {exc.diagnostics}")

    # ------------------------------------------------------------------ writing a page

    def _local_id(self, res_type: str, upstream_id: str) -> str:
        return str(uuid.uuid5(_SYNC_NS, f"{self.base}|{self.source_org}|{res_type}/{upstream_id}"))

    def _write_page(self, res_type: str, resources: list[dict[str, Any]], *, cursor: tuple[str | None, str | None] | None = None) -> None:
        """Write one page and (when given) the cursor in one transaction."""
        self.summary.of(res_type)  # every type synced appears in the summary, even with no records
        items = [_Item(r["resourceType"], str(r["id"]), r) for r in resources]
        with self.db.session() as s:
            plan_each_execution(s.connection())  # its look-ups bind a page's values as arrays, as ingest's do
            planned = self._plan(s, items)
            entries = [EntryRequest(i, "PUT", f"{it.res_type}/{it.local_id}", it.body) for i, it in enumerate(planned)]
            service = IngestService(s, self.principal, self.settings, self.hooks, base=self.local_base, trusted_bases=(self.base,))
            results: list[EntryResult]
            try:
                with s.begin_nested():
                    results = service.transaction(entries) if entries else []
            except FhirError:
                # one bad record must not cost the page: write entry by entry, report the failures
                results = service.batch(entries)
            ok: list[_Item] = []
            for it, res in zip(planned, results):
                c = self.summary.of(it.res_type)
                if res.status >= 400:
                    c.failed += 1
                    diag = "; ".join(i.get("diagnostics", "") for i in (res.outcome or {}).get("issue", []))
                    self._problem(self.summary.errors, it.res_type, f"{self.base}/{it.res_type}/{it.upstream_id}", f"refused by ingest: {diag}", res.status, res.outcome)
                    continue
                ok.append(it)
                if it.dependency and it.res_type != res_type:
                    c.fetched += 1
                if res.status == 201:
                    c.created += 1
                elif res.stored:
                    c.updated += 1
                else:
                    c.unchanged += 1
            self._save_links(s, ok)
            if cursor is not None:
                self._save_cursor(s, res_type, resources, *cursor)

    def _save_links(self, s: Session, items: list[_Item]) -> None:
        if not items:
            return
        by_key = {(it.res_type, it.upstream_id): it for it in items}
        conn = s.connection()
        for t in sorted({t for t, _ in by_key}):  # type by type: a cross product of types and ids could hit another record
            conn.execute(_DEL_LINKS, {"up": self.upstream_id, "t": t, "ids": sorted(u for tt, u in by_key if tt == t)})
        insert_rows(conn, _L, [
            {
                "upstream_id": self.upstream_id, "res_type": t, "upstream_res_id": u, "local_res_id": it.local_id,
                "upstream_version": str((it.resource.get("meta") or {}).get("versionId") or "")[:64] or None,
                "upstream_last_updated": (it.resource.get("meta") or {}).get("lastUpdated"),
            }
            for (t, u), it in by_key.items()
        ])

    def _save_cursor(self, s: Session, res_type: str, resources: list[dict[str, Any]], pass_since: str | None, next_url: str | None) -> None:
        cur = s.get(SyncCursor, (self.upstream_id, res_type))
        if cur is None:
            cur = SyncCursor(upstream_id=self.upstream_id, res_type=res_type, pages=0, updated_at=datetime.now(timezone.utc))
            s.add(cur)
        high = cur.pass_high if cur.next_url else None  # a new pass starts afresh
        for r in resources:
            high = _later(high, (r.get("meta") or {}).get("lastUpdated"))
        cur.updated_at = datetime.now(timezone.utc)
        if next_url:
            cur.next_url, cur.pass_since, cur.pass_high = next_url, pass_since, high
            cur.pages = (cur.pages or 0) + 1
        else:  # the pass is complete: everything up to its newest record is in
            cur.high_water = _later(cur.high_water, high) or cur.high_water or pass_since
            cur.next_url = cur.pass_since = cur.pass_high = None
            cur.pages = 0

    # ------------------------------------------------------------------ planning ids and references

    def _plan(self, s: Session, items: list[_Item]) -> list[_Item]:
        """Local ids for the page, references rewritten; dependencies fetched go first."""
        self._assign_ids(s, items)
        in_page = {(it.res_type, it.upstream_id): it.local_id for it in items}
        deps: list[_Item] = []
        self._rewrite(s, items, in_page, deps, depth=0)
        return deps + items

    def _assign_ids(self, s: Session, items: list[_Item]) -> None:
        if not items:
            return
        keys = {(it.res_type, it.upstream_id) for it in items}
        conn = s.connection()
        known = {
            (r.res_type, r.upstream_res_id): r.local_res_id
            for r in conn.execute(_OWN_LINKS, {"up": self.upstream_id, **ref_lists(keys)})
            if (r.res_type, r.upstream_res_id) in keys
        }
        new = [it for it in items if (it.res_type, it.upstream_id) not in known]
        adopted: dict[tuple[str, str, str], str] = {}
        wanted = [(it.res_type, sys_, val) for it in new for sys_, val in identifiers_of(it.resource)]
        # a record this source already sent (by another feed) with the same identifier is the same record
        for r in source_keys(conn, self.source_org, wanted):
            adopted[(r.res_type, r.system, r.value)] = r.res_id
        for it in items:
            it.local_id = known.get((it.res_type, it.upstream_id))
            if it.local_id is None:
                it.local_id = next((adopted[(it.res_type, a, b)] for a, b in identifiers_of(it.resource) if (it.res_type, a, b) in adopted), None)
            if it.local_id is None:
                it.local_id = self._local_id(it.res_type, it.upstream_id)

    def _target(self, literal: str) -> tuple[str, str] | None | bool:
        """(Type, upstream id) for a reference into the upstream; None to keep it as it is."""
        if literal.startswith("#") or literal.startswith("urn:") or "?" in literal:
            return None
        if "://" in literal:
            if not literal.startswith(self.base + "/"):
                return None  # another server's record: an absolute reference stays absolute
            literal = literal[len(self.base) + 1:]
        parts = literal.split("/")
        if len(parts) >= 2 and parts[0][:1].isupper():
            return parts[0], parts[1]
        return None

    def _rewrite(self, s: Session, items: list[_Item], in_page: dict, deps: list[_Item], depth: int) -> None:
        pending: list[tuple[_Item, dict, tuple[str, str]]] = []
        for it in items:
            body = orjson.loads(orjson.dumps(it.resource))  # a deep copy of JSON data, several times faster than deepcopy
            body.pop("id", None)
            meta = dict(body.get("meta") or {})
            for k in ("versionId", "lastUpdated"):
                meta.pop(k, None)
            meta["source"] = f"{self.base}/{it.res_type}/{it.upstream_id}"
            body["meta"] = meta
            body["id"] = it.local_id
            it.body = body
            if it.res_type in MEDICATION_USERS:
                self._contain_medication(it, body)
            for ref in _references(body):
                target = self._target(ref["reference"])
                if target is not None:
                    pending.append((it, ref, target))
        if not pending:
            return
        unresolved = {t for _, _, t in pending if t not in in_page}
        links = self._links(s, unresolved) if unresolved else {}
        missing = [t for t in unresolved if t not in links and t[0] in WRITABLE_TYPES]
        if missing and depth < _MAX_DEPENDENCY_DEPTH:
            fetched: list[_Item] = []
            for res_type, up_id in sorted(set(missing)):
                try:
                    r = self.client.get_json(f"{res_type}/{up_id}")
                except UpstreamError as exc:
                    self._problem(self.summary.warnings, res_type, f"{self.base}/{res_type}/{up_id}",
                                  f"a referenced record could not be fetched: {exc.diagnostics}", exc.status, exc.outcome)
                    continue
                if r.get("resourceType") == res_type and r.get("id"):
                    fetched.append(_Item(res_type, str(r["id"]), r, dependency=True))
            if fetched:
                self._assign_ids(s, fetched)
                for f in fetched:
                    in_page[(f.res_type, f.upstream_id)] = f.local_id
                sub_deps: list[_Item] = []
                self._rewrite(s, fetched, in_page, sub_deps, depth + 1)
                deps.extend(sub_deps + fetched)
        for it, ref, target in pending:
            local = in_page.get(target) or links.get(target)
            if local:
                ref["reference"] = f"{target[0]}/{local}"
            else:
                absolute = f"{self.base}/{target[0]}/{target[1]}"
                if ref["reference"] != absolute:
                    self._problem(self.summary.warnings, it.res_type, f"{self.base}/{it.res_type}/{it.upstream_id}",
                                  f"reference {target[0]}/{target[1]} is not synced; kept as the upstream URL")
                ref["reference"] = absolute

    def _contain_medication(self, it: _Item, body: dict[str, Any]) -> None:
        """medicationReference to a Medication on the upstream: fetch it (once a run) and carry
        it as the contained resource "#med", so the record holds its medicine's code."""
        ref = body.get("medicationReference")
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            return
        target = self._target(ref["reference"])
        if not target or target[0] != "Medication" or not target[1]:
            return
        med_id = target[1]
        if med_id not in self._medications:
            try:
                med = self.client.get_json(f"Medication/{med_id}")
            except UpstreamError as exc:
                med = None
                self._problem(self.summary.warnings, it.res_type, f"{self.base}/{it.res_type}/{it.upstream_id}",
                              f"its Medication/{med_id} could not be fetched ({exc.diagnostics}): the medicine's code is not in the record", exc.status, exc.outcome)
            self._medications[med_id] = med if isinstance(med, dict) and med.get("resourceType") == "Medication" else None
        med = self._medications[med_id]
        if med is None:
            return  # left to the reference rewriting: the upstream URL, as for any record not synced
        if med.get("contained"):  # FHIR allows no contained resource inside a contained one
            self._problem(self.summary.warnings, it.res_type, f"{self.base}/{it.res_type}/{it.upstream_id}",
                          f"its Medication/{med_id} has contained resources of its own and cannot be contained: the medicine's code is not in the record")
            return
        contained = [c for c in body.get("contained") or [] if isinstance(c, dict)]
        taken = {c.get("id") for c in contained}
        local_id = _CONTAINED_MEDICATION_ID
        n = 1
        while local_id in taken:
            n += 1
            local_id = f"{_CONTAINED_MEDICATION_ID}{n}"
        inline = orjson.loads(orjson.dumps(med))
        inline.pop("meta", None)  # a contained resource has no versionId or lastUpdated of its own
        inline.pop("text", None)
        inline["id"] = local_id
        for inner in _references(inline):  # its own references stay pointing at the upstream
            t = self._target(inner["reference"])
            if t is not None:
                inner["reference"] = f"{self.base}/{t[0]}/{t[1]}"
        body["contained"] = contained + [inline]
        ref["reference"] = f"#{local_id}"

    def _links(self, s: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Local ids of upstream records already synced from this upstream, by any source (own first)."""
        if not keys:
            return {}
        rows = [r for r in s.connection().execute(_ANY_LINKS, {"base": self.base, **ref_lists(keys)}) if (r.res_type, r.upstream_res_id) in keys]
        out: dict[tuple[str, str], str] = {}
        for r in sorted(rows, key=lambda r: r.upstream_id != self.upstream_id, reverse=True):
            out[(r.res_type, r.upstream_res_id)] = r.local_res_id  # own row written last wins
        return out


def _references(node: Any) -> Iterator[dict]:
    """Every Reference with a literal reference string (not inside contained resources)."""
    stack = [node]
    while stack:  # iterative (a recursive generator re-yields each Reference once per level), in document order
        n = stack.pop()
        if isinstance(n, dict):
            if isinstance(n.get("reference"), str):
                yield n
            stack.extend(reversed([v for k, v in n.items() if k != "contained" and isinstance(v, (dict, list))]))
        elif isinstance(n, list):
            stack.extend(reversed([v for v in n if isinstance(v, (dict, list))]))


def _next_link(bundle: dict[str, Any]) -> str | None:
    return next((link.get("url") for link in bundle.get("link") or [] if isinstance(link, dict) and link.get("relation") == "next"), None)


_END = object()


def _has_records(item: Any) -> bool:
    return item is not _END and item[1] is not None and bool(item[1].get("entry"))


class _Pager:
    """One search's pages, following its next links. Started, it fetches on its own thread up
    to PREFETCH_PAGES pages ahead of the reader (a bounded queue); not started, each page is
    fetched when read. Fetching only reads the upstream: what is written, and the cursor, stay
    with the reader, page by page."""

    def __init__(self, syncer: "Syncer", first_url: str, params: list[tuple[str, str]] | None):
        self.syncer, self.first_url, self.params = syncer, first_url, params
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_PAGES)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = 0  # pages with records fetched and not yet read
        self._held_lock = threading.Lock()
        self.fetching = False

    @property
    def load(self) -> int:
        """Pages this search holds unread or is fetching: what the read-ahead budget counts."""
        return self.held + (1 if self.fetching else 0)

    def start(self) -> None:
        self.fetching = True
        self._thread = threading.Thread(target=self._fetch_all, name="familyview-sync-pages", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop fetching (a request under way finishes, within the client's timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _fetched(self) -> Iterator[tuple[str, dict[str, Any] | None, BaseException | None]]:
        url: str | None = self.first_url
        p, seen = self.params, set()
        while url and not self._stop.is_set():
            try:
                bundle = self.syncer._get_page(url, p)
                nxt = _next_link(bundle)
            except Exception as exc:  # an UpstreamError is reported; anything else is raised by the reader
                self.fetching = False
                yield url, None, exc
                return
            if nxt and (nxt in seen or nxt == url):
                nxt = None  # a server that links a page to itself would loop forever
            seen.add(url)
            if not nxt:
                self.fetching = False  # the last page: nothing more asked of the upstream
            yield url, bundle, None
            url, p = nxt, None

    def _fetch_all(self) -> None:
        try:
            for item in self._fetched():
                if not self._put(item):
                    return
            self._put(_END)
        finally:
            self.fetching = False

    def _put(self, item: Any) -> bool:
        counted = _has_records(item)
        if counted:
            self._count(1)  # before the reader can take it
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        if counted:
            self._count(-1)
        return False

    def _get(self, while_waiting: Callable[[], None]) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"sync: the thread fetching {self.first_url} stopped without its pages") from None
                while_waiting()

    def _count(self, n: int) -> None:
        with self._held_lock:
            self.held += n

    def pages(self, while_waiting: Callable[[], None] = lambda: None) -> Iterator[tuple[str, dict[str, Any] | None, UpstreamError | None]]:
        """(url, bundle, error) for each page, in order; an error ends the pages. The time the
        reader stands waiting for a page is added to the summary's upstream_wait."""
        source = self._fetched() if self._thread is None else None
        while True:
            waited = time.perf_counter()
            try:
                item: Any = next(source, _END) if source is not None else self._get(while_waiting)
            finally:
                self.syncer.summary.upstream_wait += time.perf_counter() - waited
            if item is _END:
                return
            if source is None and _has_records(item):
                self._count(-1)
            url, bundle, exc = item
            if exc is not None:
                if isinstance(exc, UpstreamError):
                    yield url, None, exc
                    return
                raise exc
            yield url, bundle, None


class _ReadAhead:
    """The passes of a run's types, planned (cursor read) and started in order ahead of the writes,
    within PREFETCH_BUDGET; a type is planned only once its earlier pass in the list is written
    (its cursor must be read after that pass's last page)."""

    def __init__(self, syncer: "Syncer", types: list[str], since: str | None):
        self.syncer, self.types, self.since = syncer, types, since
        self.passes: dict[int, _Pass] = {}  # planned, not yet taken
        self.current = 0
        self.active: _Pass | None = None  # the pass being written
        self.planned = 0  # types[:planned] have their pass

    def take(self, i: int) -> "_Pass":
        self.current, self.active = i, None
        self.top_up()
        self.active = self.passes.pop(i)
        return self.active

    def top_up(self) -> None:
        """Plan and start the next passes while the budget allows (always the current one)."""
        while self.planned < len(self.types):
            j, i = self.planned, self.current
            if j > i:
                if not self.syncer.prefetch or self.types[j] in self.types[i:j]:
                    return
                pagers = [p.pager for p in [*self.passes.values(), *([self.active] if self.active else [])]]
                if sum(p.fetching for p in pagers) >= PREFETCH_SEARCHES or sum(p.load for p in pagers) >= PREFETCH_BUDGET:
                    return
            p = self.passes[j] = self.syncer._plan_pass(self.types[j], self.since)
            if self.syncer.prefetch:
                p.pager.start()
            self.planned += 1

    def stop(self) -> None:
        for p in self.passes.values():
            p.pager.stop()


@dataclass
class _Pass:
    """One type's pass over the upstream: its pages and where its cursor stands."""
    res_type: str
    pager: _Pager
    pass_since: str | None
    resumed_after: int | None = None  # the pages an interrupted pass had committed, when resuming it
