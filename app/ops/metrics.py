"""Prometheus metrics (prometheus_client): requests by route template and status with latency
histograms, ingested resources, disclosure decisions by outcome and lawful basis, refused and
throttled requests; the linkage queue depth and the audit length are read from the database
when scraped.

Several workers (``familyview serve --workers N``) share one directory of metric files
(PROMETHEUS_MULTIPROC_DIR, set by serve before the workers start), and a scrape of any worker
sums them all. No label carries an id, a name, an NHS number or a query: routes are templates."""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("familyview_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "familyview_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INGESTED = Counter("familyview_ingested_resources_total", "Resources written through the ingest pipeline", ["type", "action"])
DECISIONS = Counter("familyview_disclosure_decisions_total", "Disclosure decisions of the family view, per item",
                    ["outcome", "basis"])
THROTTLED = Counter("familyview_rate_limited_total", "Requests refused with 429 by the rate limit", ["client_kind"])


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def record_ingested(res_type: str, created: bool, count: int = 1) -> None:
    INGESTED.labels(res_type, "create" if created else "update").inc(count)


def basis_label(lawful_basis: dict[str, Any] | None) -> str:
    """A decision's lawful basis as a short, bounded label: "6(1)(e)+9(2)(h)", or "none"."""
    if not lawful_basis:
        return "none"
    parts = [str(lawful_basis.get(k)) for k in ("article6", "article9", "dpa2018_schedule1") if lawful_basis.get(k)]
    return "+".join(parts)[:80] or "none"


def record_decisions(decisions: Iterable[dict[str, Any]]) -> None:
    for d in decisions:
        DECISIONS.labels(str(d.get("outcome") or "unknown"), basis_label(d.get("lawful_basis"))).inc()


class DatabaseGauges(Collector):
    """Gauges read at scrape time: the linkage queue depth and the audit length (the callable
    returns {name: value}; a database that does not answer yields no sample, not a failed scrape)."""

    def __init__(self, read: Callable[[], dict[str, float]]):
        self.read = read

    def collect(self):  # type: ignore[no-untyped-def]
        try:
            values = self.read()
        except Exception:  # noqa: BLE001 - /readyz says why; a scrape still returns the counters
            values = {}
        help_text = {"familyview_linkage_queue_depth": "Records written and waiting to be linked",
                     "familyview_audit_events": "AuditEvents in the hash chain"}
        for name, value in values.items():
            g = GaugeMetricFamily(name, help_text.get(name, name))
            g.add_metric([], value)
            yield g


def exposition(database_gauges: Collector | None = None) -> tuple[bytes, str]:
    """The text a scrape returns: this process's metrics, or every worker's (multiprocess)."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    if database_gauges is not None:
        extra = CollectorRegistry()
        extra.register(database_gauges)
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


class IngestCounter:
    """An ingest hook that counts what was written, once the write's transaction commits
    (a transaction that rolls back counted nothing)."""

    def prepare(self, resource: dict[str, Any]) -> None:
        return None

    def stored_with(self, session: Any, written: list[Any]) -> tuple[list, tuple[str, ...]]:
        return [], ()

    def writes_after_write(self) -> bool:  # counts in memory at commit
        return False

    def after_write(self, session: Any, written: list[Any]) -> None:
        pending = session.info.get("familyview_ingested")
        if pending is None:
            from sqlalchemy import event

            pending = session.info["familyview_ingested"] = []

            def committed(sess: Any) -> None:  # one increment per type and kind, not per record
                for (res_type, created), count in collections.Counter(sess.info.pop("familyview_ingested", [])).items():
                    record_ingested(res_type, created, count)

            def rolled_back(sess: Any, *_: Any) -> None:
                sess.info.pop("familyview_ingested", None)

            event.listen(session, "after_commit", committed, once=True)
            event.listen(session, "after_soft_rollback", rolled_back, once=True)
        pending.extend((w.res_type, w.created) for w in written)
